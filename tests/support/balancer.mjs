// A round-robin HTTP balancer with no affinity, for the multi-replica tests (Rust and JS).
//
// - Every HTTP request goes to the next replica, per request: a client's keep-alive
//   connection does not pin a replica (each request is forwarded on its own upstream request).
// - WebSocket upgrades are proxied as raw byte streams to the next replica.
// - Responses are streamed (headers flushed at once, chunks forwarded as they arrive), so
//   HTTP-streaming and SSE sessions work through it.
// - Passive health: a replica that refuses a connection is skipped for DOWN_MS (the request
//   that found out gets 502, as from a real balancer; the client reconnects).
// - Bounded and local: listens on 127.0.0.1 only, at most MAX_CONNECTIONS client
//   connections, at most MAX_UPSTREAM_SOCKETS pooled sockets per replica.
// - `GET /__balancer` answers {"requests":[n0,n1,...],"upgrades":[...]} locally (per replica
//   counts, for tests that check the spread); every proxied response carries
//   `x-balancer-replica: <index>`.
//
// Use: `node balancer.mjs 127.0.0.1:8001 127.0.0.1:8002 ...` prints `listening 127.0.0.1:<port>`
// on stdout; or `import { startBalancer } from './balancer.mjs'`.

import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const MAX_CONNECTIONS = 20000;
const MAX_UPSTREAM_SOCKETS = 1024;
const DOWN_MS = 2000;
const HEADERS_TIMEOUT_MS = 10000;

const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te',
  'trailer', 'proxy-authorization', 'proxy-authenticate',
]);

function parseTarget(text) {
  const at = text.lastIndexOf(':');
  if (at < 0) throw new Error(`bad target ${text}, want host:port`);
  return { host: text.slice(0, at), port: Number(text.slice(at + 1)) };
}

/**
 * Starts a balancer in front of `targets` ("host:port" strings or {host, port}).
 * Resolves to { port, url, stats(), setTargets(list), close() }.
 */
export async function startBalancer(targets, { port = 0 } = {}) {
  let replicas = [];
  const setTargets = (list) => {
    replicas = list.map((t) => {
      const target = typeof t === 'string' ? parseTarget(t) : t;
      return {
        ...target,
        agent: new http.Agent({ keepAlive: true, maxSockets: MAX_UPSTREAM_SOCKETS }),
        downUntil: 0,
        requests: 0,
        upgrades: 0,
      };
    });
  };
  setTargets(targets);
  let next = 0;

  // The next replica not marked down (all down: the next one anyway).
  const pick = () => {
    const now = Date.now();
    for (let tries = 0; tries < replicas.length; tries++) {
      const index = next++ % replicas.length;
      if (replicas[index].downUntil <= now) return index;
    }
    return next++ % replicas.length;
  };
  const markDown = (index, error) => {
    if (error && (error.code === 'ECONNREFUSED' || error.code === 'ECONNRESET')) {
      replicas[index].downUntil = Date.now() + DOWN_MS;
    }
  };

  const stats = () => ({
    requests: replicas.map((r) => r.requests),
    upgrades: replicas.map((r) => r.upgrades),
  });

  const server = http.createServer({ keepAlive: true }, (req, res) => {
    if (req.url === '/__balancer') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(stats()));
      return;
    }
    const index = pick();
    const replica = replicas[index];
    replica.requests++;
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(name)) headers[name] = value;
    }
    const upstream = http.request({
      host: replica.host,
      port: replica.port,
      method: req.method,
      path: req.url,
      headers,
      agent: replica.agent,
    });
    upstream.on('response', (answer) => {
      const out = {};
      for (const [name, value] of Object.entries(answer.headers)) {
        if (!HOP_BY_HOP.has(name)) out[name] = value;
      }
      out['x-balancer-replica'] = String(index);
      res.writeHead(answer.statusCode, answer.statusMessage, out);
      res.flushHeaders();
      answer.pipe(res);
      answer.on('error', () => res.destroy());
      res.on('close', () => answer.destroy());
    });
    upstream.on('error', (error) => {
      markDown(index, error);
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain', 'x-balancer-replica': String(index) });
        res.end('bad gateway');
      } else {
        res.destroy();
      }
    });
    req.pipe(upstream);
    req.on('error', () => upstream.destroy());
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  // Streaming responses and long-lived upgrades: no overall request timeout.
  server.requestTimeout = 0;
  server.timeout = 0;

  server.on('upgrade', (req, socket, head) => {
    const index = pick();
    const replica = replicas[index];
    replica.upgrades++;
    const upstream = net.connect({ host: replica.host, port: replica.port });
    upstream.setNoDelay(true);
    socket.setNoDelay(true);
    const close = () => {
      socket.destroy();
      upstream.destroy();
    };
    upstream.on('connect', () => {
      let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      }
      upstream.write(text + '\r\n');
      if (head && head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on('error', (error) => {
      markDown(index, error);
      if (socket.writable && !upstream.bytesRead) {
        socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      }
      close();
    });
    socket.on('error', close);
    upstream.on('close', close);
    socket.on('close', close);
  });
  server.on('clientError', (_error, socket) => socket.destroy());

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const bound = server.address().port;
  return {
    port: bound,
    url: `http://127.0.0.1:${bound}`,
    stats,
    setTargets,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const replica of replicas) replica.agent.destroy();
      }),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const targets = process.argv.slice(2);
  if (targets.length === 0) {
    console.error('usage: node balancer.mjs host:port [host:port ...]');
    process.exit(2);
  }
  const balancer = await startBalancer(targets);
  console.log(`listening 127.0.0.1:${balancer.port}`);
  // Ends with its parent (stdin closed) or a signal.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
  process.on('SIGTERM', () => process.exit(0));
}
