// Real npm `centrifuge` SDK (JSON build): transport fallback against the sidewire binary.
// The SDK tries the endpoint array in order and moves on when a transport closes
// before it ever opened (here: a WebSocket upgrade to a path the server does not serve).

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import {
  startServer, connectClient, subscribe, disconnectAll,
  withTimeout, uniqueChannel, toNumber, safeJson, summarize,
} from './harness.mjs';
import { jsonCodec as codec } from './suite.mjs';

const TEST_TIMEOUT_MS = 20000;

describe('centrifuge-js transport fallback', { timeout: 60000 }, () => {
  let server;
  const clients = [];
  const w = (promise, ms, what) => withTimeout(server.watch(promise), ms, what);
  const base = () => `127.0.0.1:${server.clientAddr.split(':').pop()}`;

  before(async () => {
    // No token secret here: anonymous connections.
    server = await startServer();
  });

  afterEach(() => {
    disconnectAll(clients);
  });

  after(async () => {
    disconnectAll(clients);
    if (server) await server.stop();
  });

  // Connects, then checks that the fallen-back-to transport carries a full round trip.
  const roundTrip = async (c, expectedTransport) => {
    assert.equal(c.ctx.transport, expectedTransport,
      `connected ctx: ${safeJson(c.ctx)}; errors: ${summarize(c.errors)}`);
    assert.equal(c.client.state, 'connected');
    const channel = uniqueChannel(`fallback-${expectedTransport}`);
    const { nextPublication } = await subscribe(server, c.client, channel);
    const data = codec.payload(3);
    await w(c.client.publish(channel, data), 5000, `publish over ${expectedTransport}`);
    const pub = await nextPublication(5000, `own publication over ${expectedTransport}`);
    codec.assertEqualData(pub.data, data, 'publication data');
    assert.equal(pub.info?.client, c.clientId);
    assert.equal(pub.info?.user, '', 'this server has no token secret: anonymous user ""');
    assert.equal(toNumber(pub.offset), 1);
    const res = await w(c.client.rpc('echo', { via: expectedTransport }), 5000, "rpc('echo')");
    assert.deepStrictEqual(res.data, { via: expectedTransport });
  };

  it('falls back from an unusable websocket endpoint to http_stream', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await connectClient(Centrifuge, server, clients, {
      endpoints: [
        { transport: 'websocket', endpoint: `ws://${base()}/connection/does-not-exist` },
        { transport: 'http_stream', endpoint: server.httpStreamUrl },
      ],
    });
    await roundTrip(c, 'http_stream');
    assert.ok(c.errors.some((e) => e.type === 'transport' && e.transport === 'websocket'),
      `expected a websocket transport error before the fallback, got: ${summarize(c.errors)}`);
  });

  it('falls back through websocket and http_stream to sse', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await connectClient(Centrifuge, server, clients, {
      endpoints: [
        { transport: 'websocket', endpoint: `ws://${base()}/connection/does-not-exist` },
        { transport: 'http_stream', endpoint: `http://${base()}/connection/does-not-exist` },
        { transport: 'sse', endpoint: server.sseUrl },
      ],
    });
    await roundTrip(c, 'sse');
    assert.ok(c.errors.some((e) => e.type === 'transport' && e.transport === 'http_stream'),
      `expected an http_stream transport error before the fallback, got: ${summarize(c.errors)}`);
  });

  it('server is still running after the suite', () => {
    assert.ok(server.alive(), `sidewire exited: ${safeJson(server.exitInfo())}; stderr:\n${server.stderrTail()}`);
  });
});
