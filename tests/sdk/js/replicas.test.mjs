// The real npm `centrifuge` SDK through a round-robin balancer with no affinity in front of
// three sidewire replicas (embedded hubs, engine.type redis on one real redis-server), on
// every transport: websocket (json, protobuf), http_stream (json, protobuf) and sse (json).
// The server API is called on replica 0 only. Each transport's clients are spread over the
// replicas by the balancer (every request, every upgrade to the next replica); http_stream
// and SSE sessions have their /emulation POSTs land on other replicas, which route them to
// the replica holding the stream.
//
// Needs redis-server on PATH (.ci/run installs it) and node >= 20.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import {
  startServer, connectClient, subscribe, adminPublish, adminCall, disconnectAll, makeToken,
  eventQueue, withTimeout, uniqueChannel, toNumber, safeJson,
} from './harness.mjs';
import { jsonCodec, protobufCodec } from './suite.mjs';
import { startBalancer } from '../../support/balancer.mjs';

const REPLICAS = 3;
const TEST_TIMEOUT_MS = 30000;
const READY_TIMEOUT_MS = 15000;

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

/** Polls `check` every 50 ms until it resolves truthy, at most `ms`. */
async function eventually(ms, what, check) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms: ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(50);
  }
}

function freePort() {
  return new Promise((res, rej) => {
    const server = net.createServer();
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => res(port));
    });
  });
}

/** redis-server on an ephemeral loopback port, nothing on disk; resolves once it answers. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  const spawned = new Promise((_, rej) => child.once('error', (err) => rej(new Error(`redis-server: ${err.message}`))));
  spawned.catch(() => {});
  const ping = () => new Promise((res) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.setTimeout(500, () => { socket.destroy(); res(false); });
    socket.once('error', () => res(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => { socket.destroy(); res(data.toString() === '+PONG\r\n'); });
  });
  await Promise.race([eventually(10000, `redis-server on ${port} answers PING`, ping), spawned]);
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}

/** The node id in the connect reply of an HTTP-stream session opened straight on `clientAddr`. */
async function nodeOf(clientAddr, token) {
  const controller = new AbortController();
  const res = await fetch(`http://${clientAddr}/connection/http_stream`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: 1, connect: { token } }),
    signal: AbortSignal.any([controller.signal, AbortSignal.timeout(5000)]),
  });
  const reader = res.body.getReader();
  let text = '';
  while (!text.includes('\n')) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  controller.abort();
  const reply = JSON.parse(text.split('\n')[0]);
  assert.ok(reply.connect?.node, `connect reply without node: ${text}`);
  return reply.connect.node;
}

/** Status of an /emulation POST to `clientAddr` naming `node` and a session nobody holds. */
async function probe(clientAddr, node) {
  const res = await fetch(`http://${clientAddr}/emulation`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ node, session: 'no-such-session', data: '{}' }),
    signal: AbortSignal.timeout(8000),
  });
  await res.arrayBuffer();
  return res.status;
}

/** `sidewire_sessions_live` of one replica. */
async function sessionsLive(replica) {
  const res = await fetch(`${replica.adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith('sidewire_sessions_live '));
  return line ? Number(line.split(' ')[1]) : 0;
}

const TRANSPORTS = [
  ['websocket', 'json', JsonCentrifuge, jsonCodec],
  ['websocket', 'protobuf', ProtobufCentrifuge, protobufCodec],
  ['http_stream', 'json', JsonCentrifuge, jsonCodec],
  ['http_stream', 'protobuf', ProtobufCentrifuge, protobufCodec],
  ['sse', 'json', JsonCentrifuge, jsonCodec],
];

describe('centrifuge-js through a round-robin balancer, three replicas on Redis', { timeout: 600000 }, () => {
  let redis;
  const replicas = [];
  let balancer;
  // What the harness's connectClient and waits need, pointing at the balancer; the server
  // API (adminUrl) is replica 0's.
  let front;
  const clients = [];
  const tokenSecret = `secret-${randomBytes(8).toString('hex')}`;

  before(async () => {
    redis = await startRedis();
    const prefix = `js${randomBytes(6).toString('hex')}`;
    const extraConfig = [
      'engine:',
      '  type: redis',
      '  redis:',
      `    address: "${redis.url}"`,
      `    prefix: "${prefix}"`,
    ].join('\n');
    for (let i = 0; i < REPLICAS; i++) {
      replicas.push(await startServer({ extraConfig, tokenSecret }));
    }
    for (const replica of replicas) {
      await eventually(READY_TIMEOUT_MS, `replica ${replica.adminUrl} ready`, async () => {
        const res = await fetch(`${replica.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
        await res.arrayBuffer();
        return res.status === 200;
      });
    }
    // Every replica knows every other node (answers 204, not 404, for its sessions).
    const token = makeToken(tokenSecret, 'probe');
    const nodes = [];
    for (const replica of replicas) nodes.push(await nodeOf(replica.clientAddr, token));
    for (let from = 0; from < REPLICAS; from++) {
      for (let to = 0; to < REPLICAS; to++) {
        if (from === to) continue;
        await eventually(READY_TIMEOUT_MS, `replica ${from} routes to replica ${to}`,
          async () => (await probe(replicas[from].clientAddr, nodes[to])) === 204);
      }
    }
    balancer = await startBalancer(replicas.map((r) => r.clientAddr));
    const died = Promise.race(replicas.map((r) => r.watch(new Promise(() => {}))));
    died.catch(() => {});
    front = {
      wsUrl: `ws://127.0.0.1:${balancer.port}/connection/websocket`,
      httpStreamUrl: `${balancer.url}/connection/http_stream`,
      sseUrl: `${balancer.url}/connection/sse`,
      emulationUrl: `${balancer.url}/emulation`,
      adminUrl: replicas[0].adminUrl,
      tokenSecret,
      alive: () => replicas.every((r) => r.alive()),
      watch: (promise) => Promise.race([Promise.resolve(promise), died]),
      exitInfo: () => replicas.map((r) => r.exitInfo()),
      stderrTail: () => replicas.map((r, i) => `--- replica ${i}:\n${r.stderrTail()}`).join('\n'),
    };
  });

  afterEach(() => {
    disconnectAll(clients);
  });

  after(async () => {
    disconnectAll(clients);
    if (balancer) await balancer.close();
    for (const replica of replicas) await replica.stop();
    if (redis) redis.stop();
  });

  const w = (promise, ms, what) => withTimeout(front.watch(promise), ms, what);

  for (const [transport, encoding, Ctor, codec] of TRANSPORTS) {
    const tag = `${transport}-${encoding}`;
    // The client under test, on the pinned transport, through the balancer.
    const connect = async (opts = {}) => {
      const c = await connectClient(Ctor, front, clients, { transport, ...opts });
      assert.equal(c.ctx.transport, transport, `connected ctx.transport: ${safeJson(c.ctx)}`);
      return c;
    };

    describe(`${transport} ${encoding}`, () => {
      it('clients spread over the replicas; a server API publication on replica 0 reaches each exactly once',
        { timeout: TEST_TIMEOUT_MS }, async () => {
          // Earlier tests' clients are gone (their disconnects are asynchronous).
          await eventually(10000, 'no live session left on any replica', async () =>
            (await Promise.all(replicas.map(sessionsLive))).every((n) => n === 0));
          const subscribers = [];
          const channel = uniqueChannel(`fanout-${tag}`);
          for (let i = 0; i < REPLICAS; i++) {
            const c = await connect();
            subscribers.push({ ...c, s: await subscribe(front, c.client, channel) });
          }
          const live = await Promise.all(replicas.map(sessionsLive));
          assert.ok(live.filter((n) => n > 0).length >= 2, `sessions per replica: ${live}`);
          for (const offset of [1, 2]) {
            const data = { from: 'api', transport, encoding, offset };
            const r = await w(adminPublish(front, channel, data), 6000, 'POST /api/publish on replica 0');
            assert.equal(r.result?.offset, offset, `publish result: ${safeJson(r)}`);
            for (const [i, sub] of subscribers.entries()) {
              const pub = await sub.s.nextPublication(5000, `publication ${offset} at subscriber ${i}`);
              assert.equal(toNumber(pub.offset), offset, `subscriber ${i}: ${safeJson(pub)}`);
              assert.deepStrictEqual(codec.decodeJson(pub.data), data);
            }
          }
          for (const [i, sub] of subscribers.entries()) {
            assert.equal(sub.s.publications.pending(), 0, `subscriber ${i} got a duplicate`);
          }
        });

      it("a client's publication reaches subscribers on the other replicas, in order",
        { timeout: TEST_TIMEOUT_MS }, async () => {
          const channel = uniqueChannel(`clientpub-${tag}`);
          const subscribers = [];
          for (let i = 0; i < REPLICAS; i++) {
            const c = await connect();
            subscribers.push({ ...c, s: await subscribe(front, c.client, channel) });
          }
          const publisher = subscribers[0];
          for (let n = 0; n < 5; n++) {
            await w(publisher.client.publish(channel, codec.payload(n)), 5000, `publish #${n}`);
          }
          for (const [i, sub] of subscribers.entries()) {
            for (let n = 0; n < 5; n++) {
              const pub = await sub.s.nextPublication(5000, `publication #${n} at subscriber ${i}`);
              codec.assertEqualData(pub.data, codec.payload(n), `subscriber ${i} publication #${n}`);
              assert.equal(toNumber(pub.offset), n + 1);
              assert.equal(pub.info?.client, publisher.clientId);
            }
          }
        });

      it('presence and presence stats count the clients of every replica', { timeout: TEST_TIMEOUT_MS }, async () => {
        const channel = uniqueChannel(`presence-${tag}`);
        const members = [];
        for (let i = 0; i < REPLICAS; i++) {
          const c = await connect();
          members.push({ ...c, s: await subscribe(front, c.client, channel) });
        }
        for (const [i, member] of members.entries()) {
          const presence = await w(member.s.sub.presence(), 5000, `presence asked by client ${i}`);
          const ids = Object.keys(presence.clients).sort();
          assert.deepEqual(ids, members.map((m) => m.clientId).sort(), `presence: ${safeJson(presence)}`);
          const stats = await w(member.s.sub.presenceStats(), 5000, `presence_stats asked by client ${i}`);
          assert.equal(stats.numClients, REPLICAS, `presence_stats: ${safeJson(stats)}`);
          assert.equal(stats.numUsers, REPLICAS, `presence_stats: ${safeJson(stats)}`);
        }
        const api = await w(adminCall(front, 'presence_stats', { channel }), 5000, 'API presence_stats on replica 0');
        assert.equal(api.result?.num_clients, REPLICAS, `API presence_stats: ${safeJson(api)}`);
      });

      it('rpc echo round-trips through the balancer', { timeout: TEST_TIMEOUT_MS }, async () => {
        const { client } = await connect();
        for (let n = 0; n < 3; n++) {
          const data = codec.rpcPayload();
          const res = await w(client.rpc('echo', data), 5000, `rpc('echo') #${n}`);
          codec.assertEqualData(res.data, data, `rpc echo result #${n}`);
        }
      });

      it('history agrees on every replica and a client that reconnects recovers what it missed',
        { timeout: TEST_TIMEOUT_MS }, async () => {
          const a = await connect();
          const channel = uniqueChannel(`recover-${tag}`);
          const s = await subscribe(front, a.client, channel, { recoverable: true, positioned: true });
          const epoch = s.subscribedCtx.streamPosition?.epoch;
          assert.ok(typeof epoch === 'string' && epoch.length > 0, `epoch: ${safeJson(s.subscribedCtx)}`);
          for (const i of [1, 2]) {
            await w(a.client.publish(channel, codec.payload(i)), 5000, `publish #${i}`);
            assert.equal(toNumber((await s.nextPublication(5000, `live #${i}`)).offset), i);
          }
          // History asked by clients spread over the replicas agrees.
          for (let i = 0; i < REPLICAS; i++) {
            const other = await connect();
            const history = await w(other.client.history(channel, { limit: 10 }), 5000, `history via client ${i}`);
            assert.deepEqual(history.publications.map((p) => toNumber(p.offset)), [1, 2], safeJson(history));
            assert.equal(history.epoch, epoch, 'one epoch on every replica');
          }
          // The client goes away, misses two publications made on replica 0, and comes back
          // through the balancer (most likely to another replica).
          a.client.disconnect();
          const missed = [{ missed: 1 }, { missed: 2 }];
          for (const data of missed) {
            const r = await w(adminPublish(front, channel, data), 6000, 'publish while away');
            assert.equal(r.result?.epoch, epoch, `publish result: ${safeJson(r)}`);
          }
          a.client.connect();
          const again = await s.subscribeds.next(10000, "'subscribed' again after reconnecting");
          assert.equal(again.wasRecovering, true, `resubscribed ctx: ${safeJson(again)}`);
          assert.equal(again.recovered, true, `resubscribed ctx: ${safeJson(again)}`);
          const got = [];
          for (let i = 0; i < missed.length; i++) got.push(await s.nextPublication(5000, `recovered #${i + 1}`));
          assert.deepEqual(got.map((p) => toNumber(p.offset)), [3, 4]);
          got.forEach((p, i) => assert.deepStrictEqual(codec.decodeJson(p.data), missed[i]));
        });

      it('a server API disconnect on replica 0 reaches a client held by another replica, which recovers',
        { timeout: TEST_TIMEOUT_MS }, async () => {
          await eventually(10000, 'no live session left on any replica', async () =>
            (await Promise.all(replicas.map(sessionsLive))).every((n) => n === 0));
          // A client whose session is not on replica 0 (round robin: at most a few tries).
          let a;
          for (let tries = 0; tries < 2 * REPLICAS && !a; tries++) {
            const c = await connect({ minReconnectDelay: 800, maxReconnectDelay: 1500 });
            if ((await sessionsLive(replicas[0])) === 0) a = c;
            else c.client.disconnect();
            await eventually(5000, 'replica 0 has no session', async () => (await sessionsLive(replicas[0])) === 0 || a);
          }
          assert.ok(a, 'no session landed outside replica 0');
          const channel = uniqueChannel(`apidisc-${tag}`);
          const s = await subscribe(front, a.client, channel, { recoverable: true, positioned: true });
          const connected = eventQueue(front, a.client, 'connected');
          const connecting = eventQueue(front, a.client, 'connecting');
          const disc = await w(adminCall(front, 'disconnect', {
            user: a.user, disconnect: { code: 3011, reason: 'force reconnect' },
          }), 6000, 'POST /api/disconnect on replica 0');
          assert.ok(disc.result, `disconnect reply: ${safeJson(disc)}`);
          const r = await w(adminPublish(front, channel, { missed: 1 }), 6000, 'publish while away');
          const cctx = await connecting.next(5000, "'connecting' after the server API disconnect");
          assert.equal(cctx.code, 3011, `connecting ctx: ${safeJson(cctx)}`);
          await connected.next(10000, "'connected' again");
          const again = await s.subscribeds.next(10000, "'subscribed' again");
          assert.equal(again.recovered, true, `resubscribed ctx: ${safeJson(again)}`);
          const pub = await s.nextPublication(5000, 'recovered publication');
          assert.equal(toNumber(pub.offset), r.result.offset);
        });
    });
  }

  it('every replica is still running', () => {
    assert.ok(front.alive(), `a replica exited: ${safeJson(front.exitInfo())}\n${front.stderrTail()}`);
  });
});
