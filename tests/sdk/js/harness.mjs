// Shared harness for the real-SDK smoke tests: starts the sidewire binary on
// ephemeral ports (WebSocket, HTTP-streaming and SSE enabled), parses its
// "listening" line, and offers small helpers (timeouts, event queues, publication
// collection, connection tokens, server API calls).
//
// Binary: $SIDEWIRE_BIN if set, else <repo>/target/debug/sidewire.
// Set SIDEWIRE_TEST_LOG=1 to copy the server's stderr (at sidewire=debug) to this
// process' stderr. `node --test` does not show a test file's stderr, so run one
// file directly to read it: SIDEWIRE_TEST_LOG=1 node tests/sdk/js/sse-json.test.mjs

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHmac, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..', '..');
export const SIDEWIRE_BIN = process.env.SIDEWIRE_BIN
  ? resolve(process.env.SIDEWIRE_BIN)
  : join(REPO_ROOT, 'target', 'debug', 'sidewire');

const STARTUP_TIMEOUT_MS = 15000;
const LISTEN_RE = /^sidewire listening client=(\S+) admin=(\S+)\s*$/;
const STDERR_TAIL_BYTES = 8192;

// Every server started by this process, so that a crash of the test process
// still does not leave a sidewire running.
const liveServers = new Set();
process.on('exit', () => {
  for (const child of liveServers) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Rejects with a descriptive error if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const extra = typeof what === 'function' ? what() : what;
      reject(new Error(`timeout after ${ms} ms: ${extra}`));
    }, ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the promise's rejection value; rejects if it fulfils instead. */
export function expectRejection(promise, what) {
  return Promise.resolve(promise).then(
    (value) => { throw new Error(`${what}: expected a rejection, got ${safeJson(value)}`); },
    (err) => err,
  );
}

export function safeJson(v) {
  try {
    return JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? `<bytes ${Buffer.from(x).toString('hex')}>` : x));
  } catch {
    return String(v);
  }
}

/** Distinct JSON values with their counts, to keep repeated reconnect errors short. */
export function summarize(list) {
  if (!list.length) return 'none';
  const counts = new Map();
  for (const x of list) {
    const k = safeJson(x);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  return [...counts].map(([k, n]) => (n > 1 ? `${n} x ${k}` : k)).join(', ');
}

/** Unique channel name, so that tests never see each other's publications. */
export function uniqueChannel(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** Unique user id, so that a server API disconnect by user reaches exactly one client. */
export function uniqueUser(prefix = 'user') {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/** Channel options (flow YAML) of `hub.channel.without_namespace` in the suites: everything on. */
export const PERMISSIVE_CHANNELS = '{presence: true, join_leave: true, history_size: 100, history_ttl: "300s", allow_subscribe_for_client: true, allow_subscribe_for_anonymous: true, allow_publish_for_client: true, allow_publish_for_anonymous: true, allow_history_for_client: true, allow_history_for_anonymous: true, allow_presence_for_client: true, allow_presence_for_anonymous: true}';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** HS256 JWT (header {alg:HS256,typ:JWT}) with `sub` = user, for `hub.client.token.hmac_secret_key`. */
export function makeToken(secret, user, extraClaims = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify({ sub: user, ...extraClaims }));
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/** Number from a JS number, bigint, string or protobufjs Long. */
export function toNumber(v) {
  if (v === undefined || v === null) return v;
  if (typeof v === 'object' && typeof v.toNumber === 'function') return v.toNumber();
  return Number(v);
}

/**
 * Starts `sidewire --config <tmp yaml>` and waits for its listening line. WebSocket,
 * HTTP-streaming and SSE are all enabled. With `tokenSecret`, the hub requires HS256
 * connection tokens (connectClient then makes one per client, each with its own user).
 * Returns { clientAddr, adminAddr, wsUrl, httpStreamUrl, sseUrl, emulationUrl, adminUrl,
 * tokenSecret, stop(), alive(), watch(promise), exitInfo(), stderrTail() }.
 */
export async function startServer({ extraConfig = '', tokenSecret = null } = {}) {
  if (!existsSync(SIDEWIRE_BIN)) {
    throw new Error(`sidewire binary not found at ${SIDEWIRE_BIN} (build it, or set SIDEWIRE_BIN)`);
  }
  const ownHub = /^hub:/m.test(extraConfig);
  if (ownHub && tokenSecret) {
    throw new Error('startServer: tokenSecret needs the harness hub section; put the key in extraConfig instead');
  }
  const dir = mkdtempSync(join(tmpdir(), 'sidewire-sdk-js-'));
  const configPath = join(dir, 'sidewire.yaml');
  writeFileSync(configPath, [
    'listen: "127.0.0.1:0"',
    'admin_listen: "127.0.0.1:0"',
    'allowed_origins: ["*"]',
    'websocket: true',
    'http_stream: true',
    'sse: true',
    // The hub's defaults are secure (as Centrifugo's): the suites opt in to anonymous
    // connects and to channels open to every client (history, presence, join/leave on),
    // unless the test brings its own `hub:` section (which then opts in itself).
    ...(ownHub ? [] : [
      'hub:',
      tokenSecret
        ? `  client: {allow_anonymous_connect_without_token: true, token: {hmac_secret_key: ${JSON.stringify(tokenSecret)}}}`
        : '  client: {allow_anonymous_connect_without_token: true}',
      `  channel: {without_namespace: ${PERMISSIVE_CHANNELS}}`,
    ]),
    ...(process.env.SIDEWIRE_TEST_LOG ? ['log:', '  level: "sidewire=debug,info"'] : []),
    extraConfig,
    '',
  ].join('\n'));

  const child = spawn(SIDEWIRE_BIN, ['--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env },
  });
  liveServers.add(child);

  let stderrBuf = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    if (process.env.SIDEWIRE_TEST_LOG) process.stderr.write(chunk);
    stderrBuf = (stderrBuf + chunk).slice(-STDERR_TAIL_BYTES);
  });
  const stderrTail = () => stderrBuf.trim() || '<empty>';

  let exited = null; // { code, signal } once the process is gone
  const exitPromise = new Promise((res) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      liveServers.delete(child);
      res(exited);
    });
  });

  // Rejects once the process has exited: raced against every wait through
  // watch(), so that a crash fails the running test at once with the server's stderr.
  const died = exitPromise.then(({ code, signal }) => {
    throw new Error(`sidewire exited unexpectedly (code=${code} signal=${signal}); stderr:\n${stderrTail()}`);
  });
  died.catch(() => {});
  const watch = (promise) => Promise.race([Promise.resolve(promise), died]);

  const listening = new Promise((res, rej) => {
    let buf = '';
    child.stdout.setEncoding('utf8');
    // Keep draining stdout for the whole life of the process.
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        const m = LISTEN_RE.exec(line);
        if (m) res({ clientAddr: m[1], adminAddr: m[2] });
      }
    });
    child.on('error', (err) => rej(new Error(`failed to spawn ${SIDEWIRE_BIN}: ${err.message}`)));
    exitPromise.then(({ code, signal }) => rej(new Error(
      `sidewire exited before listening (code=${code} signal=${signal}); stderr:\n${stderrTail()}`)));
  });

  const stop = async () => {
    try {
      if (exited === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => { if (exited === null) child.kill('SIGKILL'); }, 3000);
        await exitPromise;
        clearTimeout(timer);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  let addrs;
  try {
    addrs = await withTimeout(listening, STARTUP_TIMEOUT_MS,
      () => `waiting for "sidewire listening client=… admin=…" on stdout; stderr:\n${stderrTail()}`);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    ...addrs,
    wsUrl: `ws://${addrs.clientAddr}/connection/websocket`,
    httpStreamUrl: `http://${addrs.clientAddr}/connection/http_stream`,
    sseUrl: `http://${addrs.clientAddr}/connection/sse`,
    emulationUrl: `http://${addrs.clientAddr}/emulation`,
    adminUrl: `http://${addrs.adminAddr}`,
    tokenSecret,
    stop,
    alive: () => exited === null,
    watch,
    exitInfo: () => exited,
    stderrTail,
  };
}

/** Endpoint URL of `transport` ('websocket' | 'http_stream' | 'sse') on `server`. */
export function endpointUrl(server, transport) {
  switch (transport) {
    case 'websocket': return server.wsUrl;
    case 'http_stream': return server.httpStreamUrl;
    case 'sse': return server.sseUrl;
    default: throw new Error(`unknown transport ${transport}`);
  }
}

/**
 * Creates a client (JSON or protobuf build, chosen by `Ctor`), records its
 * events, connects and waits for `connected`.
 * Options (besides SDK options):
 *  - transport: pin this transport with a one-element endpoint array (default: the
 *    plain `ws://` string form, WebSocket without emulation mode);
 *  - endpoints: a full `[{transport, endpoint}]` array (overrides `transport`);
 *  - user: the `sub` of the connection token when the server has a token secret
 *    (default: a fresh unique user).
 * Returns { client, ctx, clientId, user, errors, disconnects, connectings, connecteds }.
 * `track` collects clients for the after hook.
 */
export async function connectClient(Ctor, server, track, opts = {}) {
  const { transport, endpoints, user: wantedUser, ...sdkOpts } = opts;
  const endpoint = endpoints
    ?? (transport ? [{ transport, endpoint: endpointUrl(server, transport) }] : server.wsUrl);
  const user = server.tokenSecret ? (wantedUser ?? uniqueUser()) : '';
  const client = new Ctor(endpoint, {
    websocket: WebSocket,
    eventsource: EventSource,
    emulationEndpoint: server.emulationUrl,
    timeout: 3000,
    minReconnectDelay: 200,
    maxReconnectDelay: 1000,
    ...(server.tokenSecret ? { token: makeToken(server.tokenSecret, user) } : {}),
    ...sdkOpts,
  });
  track.push(client);
  const errors = [];
  // The SDK's emitter throws on an 'error' event without a listener.
  client.on('error', (ctx) => errors.push(ctx));
  const disconnects = [];
  client.on('disconnected', (ctx) => disconnects.push(ctx));
  const connectings = [];
  client.on('connecting', (ctx) => connectings.push(ctx));
  const connecteds = [];
  client.on('connected', (ctx) => connecteds.push(ctx));
  const connected = new Promise((res) => client.once('connected', res));
  client.connect();
  if (!server.alive()) {
    throw new Error(`sidewire is not running (${safeJson(server.exitInfo())}); stderr:\n${server.stderrTail()}`);
  }
  const ctx = await withTimeout(server.watch(connected), 6000,
    () => `client 'connected' event over ${safeJson(endpoint)} (errors: ${summarize(errors)}; disconnects: ${summarize(disconnects)}; server alive: ${server.alive()}; server stderr:\n${server.stderrTail()})`);
  await withTimeout(server.watch(client.ready(3000)), 4000, 'client.ready()');
  return { client, ctx, clientId: ctx.client, user, errors, disconnects, connectings, connecteds };
}

/**
 * Queues every `name` event of `emitter`; `next(ms, what, pred?)` resolves with the
 * next queued or future event (matching `pred` if given; non-matching ones are
 * dropped), bounded by `ms` and by the server's life.
 */
export function eventQueue(server, emitter, name) {
  const queue = [];
  const waiters = [];
  const all = [];
  emitter.on(name, (ctx) => {
    all.push(ctx);
    const i = waiters.findIndex((wt) => wt.pred(ctx));
    if (i >= 0) waiters.splice(i, 1)[0].res(ctx); else queue.push(ctx);
  });
  const next = (ms, what, pred = () => true) => {
    while (queue.length) {
      const ctx = queue.shift();
      if (pred(ctx)) return Promise.resolve(ctx);
    }
    let waiter;
    const p = new Promise((res) => { waiter = { res, pred }; waiters.push(waiter); });
    return withTimeout(server.watch(p), ms,
      () => `${what} (all '${name}' events so far: ${summarize(all)})`).catch((err) => {
      const i = waiters.indexOf(waiter);
      if (i >= 0) waiters.splice(i, 1);
      throw err;
    });
  };
  return { next, all, pending: () => queue.length };
}

/**
 * Creates a subscription that queues its events, subscribes and waits for `subscribed`.
 * Returns { sub, subscribedCtx, nextPublication(ms, what), joins, leaves, subscribeds,
 * log, errors }: joins/leaves/subscribeds are eventQueue()s, `log` lists
 * ['subscribed' | 'publication' | 'subscribing' | 'unsubscribed', ctx] in arrival order.
 * `server` (from startServer) makes the waits fail at once if the server dies.
 */
export async function subscribe(server, client, channel, opts = {}) {
  const sub = client.newSubscription(channel, opts);
  const errors = [];
  const unsubscribes = [];
  const log = [];
  sub.on('error', (ctx) => errors.push(ctx));
  sub.on('unsubscribed', (ctx) => unsubscribes.push(ctx));
  for (const name of ['subscribed', 'publication', 'subscribing', 'unsubscribed']) {
    sub.on(name, (ctx) => log.push([name, ctx]));
  }
  const publications = eventQueue(server, sub, 'publication');
  const subscribeds = eventQueue(server, sub, 'subscribed');
  const joins = eventQueue(server, sub, 'join');
  const leaves = eventQueue(server, sub, 'leave');
  sub.subscribe();
  const subscribedCtx = await subscribeds.next(5000,
    `'subscribed' on ${channel} (errors: ${summarize(errors)}; unsubscribed: ${summarize(unsubscribes)})`);
  const nextPublication = (ms = 5000, what = `publication on ${channel}`) => publications.next(ms, what);
  return { sub, subscribedCtx, nextPublication, publications, subscribeds, joins, leaves, log, errors };
}

/** POST <admin>/api/publish with a JSON body; returns the parsed JSON response. */
export function adminPublish(server, channel, data) {
  return adminCall(server, 'publish', { channel, data });
}

/** POST <admin>/api/<method> with a JSON body; returns the parsed JSON response. */
export async function adminCall(server, method, body) {
  const res = await fetch(`${server.adminUrl}/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`server API ${method}: HTTP ${res.status}: ${text}`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`server API ${method}: response is not JSON: ${text}`);
  }
}

/** Disconnects every tracked client (errors ignored) and empties the list. */
export function disconnectAll(clients) {
  while (clients.length) {
    const c = clients.pop();
    try { c.disconnect(); } catch { /* ignore */ }
  }
}
