// The real-SDK smoke flow, shared by every transport x encoding test file.
//
// defineTransportSuite(title, Ctor, codec, transport) runs the same flow with the
// client under test pinned to one transport (a one-element endpoint array:
// websocket, http_stream or sse), while "other" clients (publisher, joiner) use
// plain WebSocket with the same SDK build. `codec` describes how payloads are built
// and compared for that build: JSON payloads are plain objects, Protobuf payloads
// must be Uint8Array.
//
// Each file gets its own sidewire with HS256 connection tokens, and every client
// gets its own user, so that the server API disconnect in the recovery test
// (by user) reaches exactly one client.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  startServer, connectClient, subscribe, adminPublish, adminCall, disconnectAll,
  eventQueue, withTimeout, expectRejection, uniqueChannel, toNumber, safeJson,
} from './harness.mjs';

const TEST_TIMEOUT_MS = 20000;

export const jsonCodec = {
  name: 'json',
  // A publish payload; distinct for distinct i.
  payload: (i = 0) => ({ text: `hello ${i}`, n: 42 + i, nested: { ok: true, list: [1, 'two', null] } }),
  rpcPayload: () => ({ q: 'echo me', num: 3.5, arr: [true, false], obj: { k: 'v' } }),
  assertEqualData: (actual, expected, what) => assert.deepStrictEqual(actual, expected, what),
  // Data published through the server API as JSON, as received by this client.
  decodeJson: (actual) => actual,
};

const enc = new TextEncoder();
const dec = new TextDecoder();

export const protobufCodec = {
  name: 'protobuf',
  // JSON text bytes for publications...
  payload: (i = 0) => enc.encode(JSON.stringify({ text: `hello ${i}`, n: 42 + i })),
  // ...and arbitrary non-UTF-8 bytes (NUL, newline, 0xff) for rpc.
  rpcPayload: () => new Uint8Array([0x00, 0x01, 0x0a, 0x7b, 0xfe, 0xff, 0x00, 0x22]),
  assertEqualData: (actual, expected, what) => {
    assert.ok(actual instanceof Uint8Array, `${what}: expected Uint8Array, got ${safeJson(actual)}`);
    assert.equal(Buffer.from(actual).toString('hex'), Buffer.from(expected).toString('hex'), what);
  },
  decodeJson: (actual) => {
    assert.ok(actual instanceof Uint8Array, `expected bytes, got ${safeJson(actual)}`);
    return JSON.parse(dec.decode(actual));
  },
};

export function defineTransportSuite(title, Ctor, codec, transport) {
  describe(title, { timeout: 80000 }, () => {
    let server;
    const clients = [];
    // Fail fast: once the basic connect test has failed, every later test fails
    // at once instead of waiting for its own connect timeout.
    let connectWorks = null;
    // Every wait: bounded in time, and cut short if the server process dies.
    const w = (promise, ms, what) => withTimeout(server.watch(promise), ms, what);
    const guard = () => {
      if (connectWorks === false) {
        throw new Error(`not attempted: the basic ${transport} connect test failed (see its error)`);
      }
    };
    // The client under test, on the pinned transport.
    const connect = async (opts = {}) => {
      guard();
      const c = await connectClient(Ctor, server, clients, { transport, ...opts });
      assert.equal(c.ctx.transport, transport, `connected ctx.transport: ${safeJson(c.ctx)}`);
      return c;
    };
    // Another client, on plain WebSocket.
    const connectOther = async (opts = {}) => {
      guard();
      const c = await connectClient(Ctor, server, clients, opts);
      assert.equal(c.ctx.transport, 'websocket');
      return c;
    };
    const tag = `${transport}-${codec.name}`;

    before(async () => {
      server = await startServer({ tokenSecret: `secret-${randomBytes(8).toString('hex')}` });
    });

    afterEach(() => {
      disconnectAll(clients);
    });

    after(async () => {
      disconnectAll(clients);
      if (server) await server.stop();
    });

    it(`connects over ${transport} and reports a client id`, { timeout: TEST_TIMEOUT_MS }, async () => {
      connectWorks = false;
      const { client, ctx, clientId, errors } = await connectClient(Ctor, server, clients, { transport });
      connectWorks = true;
      assert.equal(ctx.transport, transport, `connected ctx: ${safeJson(ctx)}`);
      assert.equal(typeof clientId, 'string');
      assert.ok(clientId.length > 0, 'connected ctx.client must be non-empty');
      assert.equal(client.state, 'connected');
      assert.deepEqual(errors, [], 'no error events while connecting');
    });

    it('subscribes to a channel', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = uniqueChannel(`sub-${tag}`);
      const { sub, subscribedCtx } = await subscribe(server, client, channel);
      assert.equal(subscribedCtx.channel, channel);
      assert.equal(sub.state, 'subscribed');
    });

    it("receives another client's publication", { timeout: TEST_TIMEOUT_MS }, async () => {
      const a = await connect();
      const b = await connectOther();
      assert.notEqual(a.clientId, b.clientId, 'two connections must get distinct client ids');
      const channel = uniqueChannel(`fanout-${tag}`);
      const subA = await subscribe(server, a.client, channel);
      const subB = await subscribe(server, b.client, channel);

      const data = codec.payload(7);
      await w(b.client.publish(channel, data), 5000, 'publish by the other (websocket) client');
      const gotA = await subA.nextPublication(5000, `${transport} client receiving the other client's publication`);
      assert.equal(gotA.channel, channel);
      codec.assertEqualData(gotA.data, data, `data received over ${transport}`);
      assert.equal(gotA.info?.client, b.clientId, `info.client must be the publisher: ${safeJson(gotA)}`);
      assert.equal(gotA.info?.user, b.user, 'info.user must be the publisher user');
      const gotB = await subB.nextPublication(5000, 'the publisher receiving its own publication');
      assert.equal(toNumber(gotA.offset), toNumber(gotB.offset), 'same offset for both subscribers');
      assert.equal(toNumber(gotA.offset), 1, 'first publication in a fresh channel has offset 1');
    });

    it('receives its own publication with info and offsets', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId, user } = await connect();
      const channel = uniqueChannel(`pub-${tag}`);
      const { sub, nextPublication } = await subscribe(server, client, channel);

      const first = codec.payload(1);
      const publishResult = await w(client.publish(channel, first), 5000, 'client.publish');
      assert.deepEqual(publishResult, {});
      const p1 = await nextPublication(5000, 'own publication #1');
      assert.equal(p1.channel, channel);
      codec.assertEqualData(p1.data, first, 'publication #1 data');
      assert.ok(p1.info, `publication must carry info, got ${safeJson(p1)}`);
      assert.equal(p1.info.client, clientId, 'info.client must be the own client id');
      assert.equal(p1.info.user, user, 'info.user must be the token sub');
      assert.equal(toNumber(p1.offset), 1, 'first publication in a fresh channel has offset 1');

      // Second one through the Subscription API: offsets increase, order is kept.
      const second = codec.payload(2);
      await w(sub.publish(second), 5000, 'sub.publish');
      const p2 = await nextPublication(5000, 'own publication #2');
      codec.assertEqualData(p2.data, second, 'publication #2 data');
      assert.equal(toNumber(p2.offset), 2);
      assert.equal(p2.info?.client, clientId);
    });

    it('history: offsets, epoch, limit, reverse, since', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId } = await connect();
      const channel = uniqueChannel(`history-${tag}`);
      const { nextPublication } = await subscribe(server, client, channel);
      const sent = [codec.payload(10), codec.payload(11), codec.payload(12)];
      for (const d of sent) {
        await w(client.publish(channel, d), 5000, 'publish');
        await nextPublication(5000, 'publication before history');
      }
      const offsetsOf = (h) => h.publications.map((p) => toNumber(p.offset));

      const all = await w(client.history(channel, { limit: 10 }), 5000, 'history limit 10');
      assert.deepEqual(offsetsOf(all), [1, 2, 3], `history limit 10: ${safeJson(all)}`);
      assert.equal(toNumber(all.offset), 3, 'history top offset');
      assert.equal(typeof all.epoch, 'string');
      assert.ok(all.epoch.length > 0, 'history epoch must be non-empty');
      all.publications.forEach((p, i) => {
        codec.assertEqualData(p.data, sent[i], `history publication ${i}`);
        assert.equal(p.info?.client, clientId, `history publication ${i} info.client`);
      });

      const firstTwo = await w(client.history(channel, { limit: 2 }), 5000, 'history limit 2');
      assert.deepEqual(offsetsOf(firstTwo), [1, 2], `history limit 2 (oldest first): ${safeJson(firstTwo)}`);
      assert.equal(toNumber(firstTwo.offset), 3);
      assert.equal(firstTwo.epoch, all.epoch, 'epoch is stable');

      const lastTwo = await w(client.history(channel, { limit: 2, reverse: true }), 5000, 'history reverse');
      assert.deepEqual(offsetsOf(lastTwo), [3, 2], `history limit 2 reverse (newest first): ${safeJson(lastTwo)}`);
      codec.assertEqualData(lastTwo.publications[0].data, sent[2], 'newest publication data');
      assert.equal(toNumber(lastTwo.offset), 3);

      const since = await w(client.history(channel, { limit: 10, since: { offset: 1, epoch: all.epoch } }),
        5000, 'history since offset 1');
      assert.deepEqual(offsetsOf(since), [2, 3], `history since offset 1: ${safeJson(since)}`);
    });

    it('presence and presence stats list the subscribed client', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId, user } = await connect();
      const channel = uniqueChannel(`presence-${tag}`);
      const { sub } = await subscribe(server, client, channel);
      const presence = await w(sub.presence(), 5000, 'presence');
      assert.ok(presence.clients[clientId], `own client ${clientId} missing from ${safeJson(presence)}`);
      assert.equal(presence.clients[clientId].client, clientId);
      assert.equal(presence.clients[clientId].user, user);
      assert.equal(Object.keys(presence.clients).length, 1, `presence: ${safeJson(presence)}`);
      const stats = await w(sub.presenceStats(), 5000, 'presence_stats');
      assert.equal(stats.numClients, 1, `presence_stats: ${safeJson(stats)}`);
      assert.equal(stats.numUsers, 1, `presence_stats: ${safeJson(stats)}`);
    });

    it('rpc echo returns the request data', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const data = codec.rpcPayload();
      const res = await w(client.rpc('echo', data), 5000, "rpc('echo')");
      codec.assertEqualData(res.data, data, 'rpc echo result');
    });

    it('rpc to an unknown method fails with 104', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const err = await w(expectRejection(client.rpc('nope', codec.rpcPayload()), "rpc('nope')"),
        5000, "rpc('nope') rejection");
      assert.equal(err.code, 104, `expected code 104, got ${safeJson(err)}`);
      assert.equal(client.state, 'connected', 'an rpc error must not drop the connection');
      // The connection still works after the error.
      const res = await w(client.rpc('echo', codec.rpcPayload()), 5000, "rpc('echo') after the error");
      codec.assertEqualData(res.data, codec.rpcPayload(), 'rpc echo after an error');
    });

    it('subscribing to a $-channel is refused with 103', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = `$${uniqueChannel(`private-${tag}`)}`;
      const sub = client.newSubscription(channel);
      sub.on('error', () => {});
      const unsubscribed = new Promise((res) => sub.once('unsubscribed', res));
      sub.subscribe();
      const ctx = await w(unsubscribed, 5000, `'unsubscribed' on ${channel}`);
      assert.equal(ctx.code, 103, `expected unsubscribed code 103, got ${safeJson(ctx)}`);
      assert.equal(sub.state, 'unsubscribed');
      assert.equal(client.state, 'connected');
    });

    it('join/leave: sees another client subscribe and unsubscribe', { timeout: TEST_TIMEOUT_MS }, async () => {
      const a = await connect();
      const channel = uniqueChannel(`joinleave-${tag}`);
      const subA = await subscribe(server, a.client, channel, { joinLeave: true });
      const b = await connectOther();
      const subB = await subscribe(server, b.client, channel);

      const isB = (ctx) => ctx.info?.client === b.clientId;
      const join = await subA.joins.next(5000, `join of the other client ${b.clientId}`, isB);
      assert.equal(join.channel, channel);
      assert.equal(join.info.user, b.user, `join info.user: ${safeJson(join)}`);

      subB.sub.unsubscribe();
      const leave = await subA.leaves.next(5000, `leave of the other client ${b.clientId}`, isB);
      assert.equal(leave.channel, channel);
      assert.equal(leave.info.user, b.user, `leave info.user: ${safeJson(leave)}`);
      assert.equal(subA.sub.state, 'subscribed');
    });

    it('recovers missed publications after a server-forced reconnect', { timeout: TEST_TIMEOUT_MS }, async () => {
      // Slow reconnect, so that the server API publishes below happen while the
      // client is away (they run right after the disconnect call returns anyway).
      const a = await connect({ minReconnectDelay: 800, maxReconnectDelay: 1500 });
      const channel = uniqueChannel(`recover-${tag}`);
      const s = await subscribe(server, a.client, channel, { recoverable: true, positioned: true });
      assert.equal(s.subscribedCtx.recoverable, true, `first subscribed ctx: ${safeJson(s.subscribedCtx)}`);
      assert.equal(s.subscribedCtx.positioned, true);
      assert.equal(s.subscribedCtx.wasRecovering, false);
      assert.equal(s.subscribedCtx.recovered, false);
      const epoch = s.subscribedCtx.streamPosition?.epoch;
      assert.ok(typeof epoch === 'string' && epoch.length > 0,
        `streamPosition.epoch must be non-empty: ${safeJson(s.subscribedCtx)}`);
      assert.equal(toNumber(s.subscribedCtx.streamPosition.offset), 0);

      // Two live publications: the stream position is now offset 2.
      for (const i of [1, 2]) {
        await w(a.client.publish(channel, codec.payload(i)), 5000, `publish #${i}`);
        const p = await s.nextPublication(5000, `live publication #${i}`);
        assert.equal(toNumber(p.offset), i);
      }

      const connecting = eventQueue(server, a.client, 'connecting');
      const connected = eventQueue(server, a.client, 'connected');
      const logMark = s.log.length;
      const disc = await w(adminCall(server, 'disconnect', {
        user: a.user, disconnect: { code: 3011, reason: 'force reconnect' },
      }), 6000, 'POST /api/disconnect');
      assert.ok(disc.result, `server API disconnect reply: ${safeJson(disc)}`);

      // Missed while away.
      const missed = [
        { missed: 1, codec: codec.name }, { missed: 2, list: [1, 2] }, { missed: 3, s: 'x\ny' },
      ];
      const offsets = [];
      for (const data of missed) {
        const r = await w(adminPublish(server, channel, data), 6000, 'POST /api/publish while reconnecting');
        assert.equal(r.result?.epoch, epoch, `server API publish epoch: ${safeJson(r)}`);
        offsets.push(r.result.offset);
      }
      assert.deepEqual(offsets, [3, 4, 5]);

      const cctx = await connecting.next(5000, "client 'connecting' after the forced disconnect");
      assert.equal(cctx.code, 3011, `connecting ctx: ${safeJson(cctx)}`);
      const again = await connected.next(8000, "client 'connected' again after the forced disconnect");
      assert.equal(again.transport, transport, `reconnected ctx: ${safeJson(again)}`);

      const rctx = await s.subscribeds.next(8000, "'subscribed' again after the reconnect");
      assert.equal(rctx.wasRecovering, true, `resubscribed ctx: ${safeJson(rctx)}`);
      assert.equal(rctx.recovered, true, `resubscribed ctx: ${safeJson(rctx)}`);
      assert.equal(rctx.streamPosition?.epoch, epoch, 'same epoch after recovery');
      assert.equal(toNumber(rctx.streamPosition?.offset), 5, 'stream position after recovery is the top');

      const got = [];
      for (let i = 0; i < missed.length; i++) {
        got.push(await s.nextPublication(5000, `recovered publication #${i + 1} of ${missed.length}`));
      }
      assert.deepEqual(got.map((p) => toNumber(p.offset)), [3, 4, 5], 'recovered offsets in order');
      got.forEach((p, i) => assert.deepStrictEqual(codec.decodeJson(p.data), missed[i], `recovered data #${i + 1}`));
      // They came with the subscribe reply (after the new 'subscribed'), not as live pushes.
      const after = s.log.slice(logMark).map(([name, ctx]) => (
        name === 'publication' ? `publication@${toNumber(ctx.offset)}` : name));
      assert.deepEqual(after, ['subscribing', 'subscribed', 'publication@3', 'publication@4', 'publication@5'],
        'subscription events after the forced disconnect');

      // Live stream continues after recovery, without duplicates.
      await w(a.client.publish(channel, codec.payload(6)), 5000, 'publish after recovery');
      const p6 = await s.nextPublication(5000, 'live publication after recovery');
      assert.equal(toNumber(p6.offset), 6);
      codec.assertEqualData(p6.data, codec.payload(6), 'live publication after recovery');
      assert.equal(p6.info?.client, again.client, 'info.client is the new client id');
    });

    it('a server API publish arrives as a publication', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = uniqueChannel(`api-${tag}`);
      const { nextPublication } = await subscribe(server, client, channel);
      const data = { from: 'server-api', codec: codec.name, transport, n: 7, list: [1, 2, 3] };
      const body = await w(adminPublish(server, channel, data), 6000, 'POST /api/publish');
      assert.ok(body.result, `server API reply must have "result": ${safeJson(body)}`);
      assert.equal(body.result.offset, 1, `first publication in a fresh channel: ${safeJson(body)}`);
      assert.equal(typeof body.result.epoch, 'string');
      const pub = await nextPublication(5000, 'server API publication');
      assert.deepStrictEqual(codec.decodeJson(pub.data), data);
      assert.equal(toNumber(pub.offset), body.result.offset);
      assert.equal(pub.info, undefined, `a server API publication has no client info: ${safeJson(pub)}`);
    });

    it('server is still running after the suite', () => {
      assert.ok(server.alive(), `sidewire exited: ${safeJson(server.exitInfo())}; stderr:\n${server.stderrTail()}`);
    });
  });
}
