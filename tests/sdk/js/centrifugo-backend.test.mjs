// The real centrifuge-js SDK -> sidewire (embedded hub with Centrifugo-compatible proxy hooks)
// -> examples/centrifugo-backend, a Node backend written for Centrifugo that knows nothing of
// sidewire. The hub config is examples/centrifugo-backend/sidewire.yaml with the backend's
// real address. Over WebSocket and HTTP-streaming: cookie authentication through the connect
// hook (the Cookie header set on the connection request), a refused and a disconnected user,
// server-side channels, subscribe allowed / denied with data, publish rewritten, rpc by
// method, and the refresh hook prolonging (and, once revoked, ending) a 2 s session.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import {
  REPO_ROOT, startServer, subscribe, adminPublish, disconnectAll, eventQueue, withTimeout,
  summarize, uniqueChannel,
} from './harness.mjs';

const SECRET = 'centrifugo-backend-secret';
const SESSION_TTL = 2;
const EXAMPLE = join(REPO_ROOT, 'examples', 'centrifugo-backend');

/** Starts examples/centrifugo-backend on an ephemeral port; resolves with { url, stop }. */
async function startBackend() {
  const child = spawn(process.execPath, [join(EXAMPLE, 'server.mjs'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, SESSION_TTL: String(SESSION_TTL), PROXY_SECRET: SECRET },
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-8192); });
  process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
  const url = await withTimeout(new Promise((res, rej) => {
    let buf = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      const m = /centrifugo-backend listening (\S+)/.exec(buf);
      if (m) res(m[1]);
    });
    child.on('exit', (code) => rej(new Error(`backend exited (${code}): ${stderr}`)));
  }), 10000, () => `backend listening line; stderr: ${stderr}`);
  return { url, stop: () => { try { child.kill('SIGTERM'); } catch { /* gone */ } } };
}

/** The example's sidewire.yaml pointed at `url`, with its placeholder secret replaced. */
export function exampleConfig(url) {
  return readFileSync(join(EXAMPLE, 'sidewire.yaml'), 'utf8')
    .replaceAll('http://127.0.0.1:3000', url)
    .replaceAll('change-me', SECRET);
}

/** A `ws` WebSocket class that sends `cookie` on the upgrade request. */
function cookieWebSocket(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { cookie } });
    }
  };
}

/** A fetch that sends `cookie` (HTTP-streaming connect POST and emulation POSTs). */
function cookieFetch(cookie) {
  return (url, options = {}) => fetch(url, {
    ...options,
    headers: { ...(options.headers || {}), cookie },
  });
}

function newClient(server, transport, session) {
  const cookie = `theme=dark; session=${session}`;
  const endpoint = transport === 'websocket'
    ? server.wsUrl
    : [{ transport, endpoint: server.httpStreamUrl }];
  return new Centrifuge(endpoint, {
    websocket: cookieWebSocket(cookie),
    fetch: cookieFetch(cookie),
    emulationEndpoint: server.emulationUrl,
    timeout: 3000,
    minReconnectDelay: 200,
    maxReconnectDelay: 1000,
  });
}

for (const transport of ['websocket', 'http_stream']) {
  describe(`centrifuge-js ${transport} -> sidewire -> Centrifugo proxy backend`, { timeout: 60000 }, () => {
    let backend;
    let server;
    const clients = [];

    before(async () => {
      backend = await startBackend();
      server = await startServer({ extraConfig: exampleConfig(backend.url) });
    });
    after(async () => {
      disconnectAll(clients);
      if (server) await server.stop();
      if (backend) backend.stop();
    });
    afterEach(() => disconnectAll(clients));

    async function connect(session) {
      const client = newClient(server, transport, session);
      clients.push(client);
      const errors = [];
      client.on('error', (ctx) => errors.push(ctx));
      const subscribeds = eventQueue(server, client, 'subscribed');
      const publications = eventQueue(server, client, 'publication');
      const connectings = eventQueue(server, client, 'connecting');
      const connected = new Promise((res) => client.once('connected', res));
      client.connect();
      const ctx = await withTimeout(server.watch(connected), 6000,
        () => `connected as ${session} (errors: ${summarize(errors)})`);
      return { client, ctx, subscribeds, publications, connectings };
    }

    it('authenticates by cookie, returns connect data and server-side channels', async () => {
      const { ctx, subscribeds, publications } = await connect('alice-session');
      assert.equal(ctx.data.greeting, 'hello Alice');
      assert.equal(ctx.data.client, ctx.client);
      const sub = await subscribeds.next(5000, 'server-side subscribed', (s) => s.channel === 'notifications:alice');
      assert.equal(sub.channel, 'notifications:alice');
      await adminPublish(server, 'notifications:alice', { note: 'for alice' });
      const pub = await publications.next(5000, 'server-side publication');
      assert.equal(pub.channel, 'notifications:alice');
      assert.deepEqual(pub.data, { note: 'for alice' });
    });

    it('refuses a banned user with the backend error and disconnects a kicked one', async () => {
      for (const [session, code, reason] of [['banned-session', 403, 'banned'], ['kicked-session', 4501, 'kicked'], ['nobody', 401, 'unauthorized']]) {
        const client = newClient(server, transport, session);
        clients.push(client);
        client.on('error', () => {});
        const disconnected = new Promise((res) => client.once('disconnected', res));
        client.connect();
        const ctx = await withTimeout(server.watch(disconnected), 6000, `disconnected as ${session}`);
        assert.deepEqual([ctx.code, ctx.reason], [code, reason], session);
      }
    });

    it('subscribes through the hook with data, and is denied where the backend says so', async () => {
      const { client } = await connect('bob-session');
      const channel = uniqueChannel('chat:room');
      const { subscribedCtx } = await subscribe(server, client, channel);
      assert.deepEqual(subscribedCtx.data, { welcome: channel });
      const denied = client.newSubscription('admin:panel');
      const unsubscribed = new Promise((res) => denied.once('unsubscribed', res));
      denied.on('error', () => {});
      denied.subscribe();
      const ctx = await withTimeout(server.watch(unsubscribed), 5000, 'admin:panel unsubscribed');
      assert.equal(ctx.code, 403);
      assert.equal(ctx.reason, 'admins only');
    });

    it('publishes what the backend rewrote, and nothing it refused', async () => {
      const { client } = await connect('alice-session');
      const channel = uniqueChannel('chat:pub');
      const { sub, nextPublication } = await subscribe(server, client, channel);
      await withTimeout(sub.publish({ text: 'hi' }), 5000, 'publish');
      const pub = await nextPublication();
      assert.deepEqual(pub.data, { text: 'hi', by: 'alice', moderated: true });
      const refused = await sub.publish({ text: 'buy spam' }).then(() => null, (err) => err);
      assert.equal(refused?.code, 1002, `publish refused: ${JSON.stringify(refused)}`);
    });

    it('answers rpc by method from the backend', async () => {
      const { client } = await connect('bob-session');
      const sum = await withTimeout(client.rpc('sum', { a: 20, b: 22 }), 5000, 'rpc sum');
      assert.deepEqual(sum.data, { sum: 42 });
      const who = await client.rpc('whoami', {});
      assert.deepEqual(who.data, { user: 'bob' });
      const unknown = await client.rpc('nope', {}).then(() => null, (err) => err);
      assert.equal(unknown?.code, 404);
    });

    it('stays connected across refresh-hook renewals, and is closed once revoked', async () => {
      const { client, connectings } = await connect('alice-session');
      // Sessions last 2 s; 5 s later (two renewals) the same connection still answers.
      await new Promise((res) => setTimeout(res, 5000));
      const reconnects = connectings.all.filter((c) => c.code !== 0); // 0: the first connect()
      assert.equal(reconnects.length, 0, `reconnected: ${summarize(reconnects)}`);
      const who = await withTimeout(client.rpc('whoami', {}), 5000, 'rpc after refreshes');
      assert.deepEqual(who.data, { user: 'alice' });
      await client.rpc('revoke', {});
      const ctx = await connectings.next(8000, 'connection expired (3005)', (c) => c.code === 3005);
      assert.equal(ctx.code, 3005);
    });
  });
}
