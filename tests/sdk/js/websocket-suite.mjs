// The WebSocket smoke flow, shared by the JSON and the Protobuf test files.
// `codec` describes how payloads are built and compared for that build of the SDK:
// JSON payloads are plain objects, Protobuf payloads must be Uint8Array.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, connectClient, subscribe, adminPublish, disconnectAll,
  withTimeout, expectRejection, uniqueChannel, toNumber, safeJson,
} from './harness.mjs';

const TEST_TIMEOUT_MS = 20000;

export const jsonCodec = {
  name: 'json',
  // A publish payload, and a second distinct one.
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
  // JSON bytes for publications...
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

export function defineWebsocketSuite(title, Ctor, codec) {
  describe(title, { timeout: 55000 }, () => {
    let server;
    const clients = [];
    // Fail fast: once the basic connect test has failed, every later test fails
    // at once instead of waiting for its own connect timeout.
    let connectWorks = null;
    // Every wait: bounded in time, and cut short if the server process dies.
    const w = (promise, ms, what) => withTimeout(server.watch(promise), ms, what);
    const connect = async () => {
      if (connectWorks === false) {
        throw new Error('not attempted: the basic connect test failed (see its error)');
      }
      return connectClient(Ctor, server, clients);
    };

    before(async () => {
      server = await startServer();
    });

    afterEach(() => {
      disconnectAll(clients);
    });

    after(async () => {
      disconnectAll(clients);
      if (server) await server.stop();
    });

    it('connects and reports a client id', { timeout: TEST_TIMEOUT_MS }, async () => {
      connectWorks = false;
      const { client, ctx, clientId } = await connectClient(Ctor, server, clients);
      connectWorks = true;
      assert.equal(typeof clientId, 'string');
      assert.ok(clientId.length > 0, 'connected ctx.client must be non-empty');
      assert.equal(ctx.transport, 'websocket');
      assert.equal(client.state, 'connected');
    });

    it('subscribes to a channel', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = uniqueChannel(`sub-${codec.name}`);
      const { sub, subscribedCtx } = await subscribe(server, client, channel);
      assert.equal(subscribedCtx.channel, channel);
      assert.equal(sub.state, 'subscribed');
    });

    it('receives its own publication with info and offsets', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId } = await connect();
      const channel = uniqueChannel(`pub-${codec.name}`);
      const { sub, nextPublication } = await subscribe(server, client, channel);

      const first = codec.payload(1);
      const publishResult = await w(client.publish(channel, first), 5000, 'client.publish');
      assert.deepEqual(publishResult, {});
      const p1 = await nextPublication(5000, 'own publication #1');
      assert.equal(p1.channel, channel);
      codec.assertEqualData(p1.data, first, 'publication #1 data');
      assert.ok(p1.info, `publication must carry info, got ${safeJson(p1)}`);
      assert.equal(p1.info.client, clientId, 'info.client must be the publisher client id');
      assert.equal(p1.info.user, '', 'anonymous publisher has user ""');
      assert.equal(toNumber(p1.offset), 1, 'first publication in a fresh channel has offset 1');

      // Second one through the Subscription API: offsets increase, order is kept.
      const second = codec.payload(2);
      await w(sub.publish(second), 5000, 'sub.publish');
      const p2 = await nextPublication(5000, 'own publication #2');
      codec.assertEqualData(p2.data, second, 'publication #2 data');
      assert.equal(toNumber(p2.offset), 2);
    });

    it('delivers a publication to a second client', { timeout: TEST_TIMEOUT_MS }, async () => {
      const a = await connect();
      const b = await connect();
      assert.notEqual(a.clientId, b.clientId, 'two connections must get distinct client ids');
      const channel = uniqueChannel(`fanout-${codec.name}`);
      const subA = await subscribe(server, a.client, channel);
      const subB = await subscribe(server, b.client, channel);

      const data = codec.payload(7);
      await w(a.client.publish(channel, data), 5000, 'publish by client A');
      const gotB = await subB.nextPublication(5000, "client B receiving A's publication");
      codec.assertEqualData(gotB.data, data, 'data received by B');
      assert.equal(gotB.info?.client, a.clientId, 'info.client on B must be A');
      const gotA = await subA.nextPublication(5000, 'client A receiving its own publication');
      codec.assertEqualData(gotA.data, data, 'data received by A');
      assert.equal(gotA.info?.client, a.clientId);
      assert.equal(toNumber(gotA.offset), toNumber(gotB.offset), 'same offset for both subscribers');
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
    });

    it('subscribing to a $-channel is refused with 103', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = `$${uniqueChannel(`private-${codec.name}`)}`;
      const sub = client.newSubscription(channel);
      sub.on('error', () => {});
      const unsubscribed = new Promise((res) => sub.once('unsubscribed', res));
      sub.subscribe();
      const ctx = await w(unsubscribed, 5000, `'unsubscribed' on ${channel}`);
      assert.equal(ctx.code, 103, `expected unsubscribed code 103, got ${safeJson(ctx)}`);
      assert.equal(sub.state, 'unsubscribed');
      assert.equal(client.state, 'connected');
    });

    it('presence and presence stats list the subscribed client', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId } = await connect();
      const channel = uniqueChannel(`presence-${codec.name}`);
      const { sub } = await subscribe(server, client, channel);
      const presence = await w(sub.presence(), 5000, 'presence');
      assert.ok(presence.clients[clientId], `own client ${clientId} missing from ${safeJson(presence)}`);
      assert.equal(presence.clients[clientId].client, clientId);
      assert.equal(presence.clients[clientId].user, '');
      assert.equal(Object.keys(presence.clients).length, 1);
      const stats = await w(sub.presenceStats(), 5000, 'presence_stats');
      assert.equal(stats.numClients, 1, `presence_stats: ${safeJson(stats)}`);
    });

    it('history returns client publications', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client, clientId } = await connect();
      const channel = uniqueChannel(`history-${codec.name}`);
      const { nextPublication } = await subscribe(server, client, channel);
      const sent = [codec.payload(10), codec.payload(11)];
      for (const d of sent) {
        await w(client.publish(channel, d), 5000, 'publish');
        await nextPublication(5000, 'publication before history');
      }
      const h = await w(client.history(channel, { limit: 10 }), 5000, 'history');
      assert.equal(h.publications.length, 2, `history: ${safeJson(h)}`);
      assert.equal(toNumber(h.offset), 2);
      assert.equal(typeof h.epoch, 'string');
      assert.ok(h.epoch.length > 0, 'history epoch must be non-empty');
      h.publications.forEach((p, i) => {
        codec.assertEqualData(p.data, sent[i], `history publication ${i}`);
        assert.equal(toNumber(p.offset), i + 1);
        assert.equal(p.info?.client, clientId);
      });
    });

    it('a server API publish arrives as a publication', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { client } = await connect();
      const channel = uniqueChannel(`api-${codec.name}`);
      const { nextPublication } = await subscribe(server, client, channel);
      const data = { from: 'server-api', codec: codec.name, n: 7, list: [1, 2, 3] };
      const body = await w(adminPublish(server, channel, data), 6000, 'POST /api/publish');
      assert.ok(body.result, `server API reply must have "result": ${safeJson(body)}`);
      assert.equal(body.result.offset, 1, `first publication in a fresh channel: ${safeJson(body)}`);
      assert.equal(typeof body.result.epoch, 'string');
      const pub = await nextPublication(5000, 'server API publication');
      assert.deepStrictEqual(codec.decodeJson(pub.data), data);
      assert.equal(toNumber(pub.offset), body.result.offset);
    });

    it('server is still running after the suite', () => {
      assert.ok(server.alive(), `sidewire exited: ${safeJson(server.exitInfo())}; stderr:\n${server.stderrTail()}`);
    });
  });
}
