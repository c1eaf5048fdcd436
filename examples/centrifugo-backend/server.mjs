// An application backend written for Centrifugo's HTTP proxy hooks (v6 JSON), with no
// knowledge of sidewire: Node 20, `node:http` only, no npm dependencies.
//
//   node examples/centrifugo-backend/server.mjs [--port 3000] [--host 127.0.0.1]
//
// Prints "centrifugo-backend listening http://HOST:PORT" once it accepts requests
// (--port 0 picks a free port). Endpoints, all POST with Centrifugo's request body:
//   /centrifugo/connect      authenticates by the `session` cookie (sent by the client on its
//                            connection request, forwarded through `http_headers: [cookie]`)
//   /centrifugo/refresh      prolongs a session
//   /centrifugo/subscribe    permits or denies by channel, returns data
//   /centrifugo/publish      rewrites the published data (or refuses it)
//   /centrifugo/sub_refresh  prolongs a subscription
//   /centrifugo/rpc          answers by method
// With PROXY_SECRET set, every hook must carry `x-proxy-secret: $PROXY_SECRET` (the proxy's
// `http.static_headers`), else it answers 403 (the server then gives the client error 100).
// SESSION_TTL (seconds, default 3600) is how long a connection lives before a refresh.

import { createServer } from 'node:http';

const SESSION_TTL = Number(process.env.SESSION_TTL || 3600);
const PROXY_SECRET = process.env.PROXY_SECRET || '';
const MAX_BODY = 64 * 1024;

// session cookie -> user. A real backend looks sessions up in its own store.
const SESSIONS = new Map([
  ['alice-session', { user: 'alice', name: 'Alice', role: 'admin' }],
  ['bob-session', { user: 'bob', name: 'Bob', role: 'member' }],
  ['banned-session', { user: 'mallory', banned: true }],
  ['kicked-session', { user: 'trudy', kicked: true }],
]);
// Users whose sessions were revoked after connecting: their refresh says `expired`.
const REVOKED = new Set();

const now = () => Math.floor(Date.now() / 1000);

function cookie(headers, name) {
  for (const part of String(headers.cookie || '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return decodeURIComponent(value.join('='));
  }
  return '';
}

const result = (r) => ({ result: r });
const error = (code, message) => ({ error: { code, message } });
const disconnect = (code, reason) => ({ disconnect: { code, reason } });

const hooks = {
  // Centrifugo calls it for clients that connect without a token.
  connect(body, headers) {
    const session = SESSIONS.get(cookie(headers, 'session'));
    if (!session) return error(401, 'unauthorized');
    if (session.banned) return error(403, 'banned');
    if (session.kicked) return disconnect(4501, 'kicked');
    return result({
      user: session.user,
      expire_at: now() + SESSION_TTL,
      info: { name: session.name },
      data: { greeting: `hello ${session.name}`, client: body.client },
      channels: [`notifications:${session.user}`],
      meta: { role: session.role },
    });
  },

  refresh(body) {
    if (REVOKED.has(body.user)) return result({ expired: true });
    return result({ expire_at: now() + SESSION_TTL });
  },

  subscribe(body) {
    const { channel, user } = body;
    if (channel.startsWith('chat:')) {
      return result({ data: { welcome: channel }, info: { joined: now() } });
    }
    if (channel.startsWith('admin:')) {
      if (user === 'alice') return result({ data: { welcome: channel } });
      return error(403, 'admins only');
    }
    return error(404, 'no such room');
  },

  publish(body) {
    const data = body.data ?? {};
    if (typeof data.text === 'string' && data.text.includes('spam')) {
      return error(1002, 'spam refused');
    }
    // The published data is replaced by what the backend returns.
    return result({ data: { ...data, by: body.user, moderated: true } });
  },

  sub_refresh() {
    return result({ expire_at: now() + SESSION_TTL });
  },

  rpc(body) {
    const data = body.data ?? {};
    switch (body.method) {
      case 'whoami': return result({ data: { user: body.user } });
      case 'sum': return result({ data: { sum: Number(data.a || 0) + Number(data.b || 0) } });
      case 'revoke': REVOKED.add(body.user); return result({ data: { revoked: body.user } });
      default: return error(404, 'unknown method');
    }
  },
};

function send(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') return send(res, 200, { ok: true });
  const name = req.url?.startsWith('/centrifugo/') ? req.url.slice('/centrifugo/'.length) : '';
  const hook = Object.hasOwn(hooks, name) ? hooks[name] : null;
  if (req.method !== 'POST' || !hook) return send(res, 404, { error: 'not found' });
  if (PROXY_SECRET && req.headers['x-proxy-secret'] !== PROXY_SECRET) {
    return send(res, 403, { error: 'bad proxy secret' });
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) { send(res, 413, { error: 'too large' }); req.destroy(); return; }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (res.headersSent) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
    } catch {
      return send(res, 400, { error: 'bad json' });
    }
    try {
      send(res, 200, hook(body, req.headers));
    } catch (err) {
      send(res, 500, { error: String(err) });
    }
  });
});

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
server.listen(Number(arg('port', process.env.PORT || 3000)), host, () => {
  const { port } = server.address();
  console.log(`centrifugo-backend listening http://${host}:${port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
