// examples/chat: a small existing-style web app (plain node:http, no framework) that sits behind
// sidewire. sidewire's `backend.url` points here, so the browser loads this page through
// sidewire's passthrough and opens its real-time connection to sidewire on the same origin.
//
//   GET  /                 the chat page (public/index.html, public/app.js, public/style.css)
//   GET  /centrifuge.js    the centrifuge-js browser bundle, straight from the npm package
//   POST /send             {name, text} -> sidewire's server API /api/publish (admin listener,
//                          with the API key); the page never talks to the server API itself
//   GET  /stream?id=ID     a streamed response (chunked, text/plain): chunk i+1 is written only
//                          after the page acknowledged chunk i with POST /stream/ack?id=ID&i=i,
//                          so the page can prove the chunks crossed the proxy one by one
//
// Run it:  SIDEWIRE_API=http://127.0.0.1:9100 SIDEWIRE_API_KEY=... PORT=3000 node server.mjs
// (see README.md here for the one command that runs it with sidewire).

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Chat channel the page subscribes to and /send publishes into. */
export const CHAT_CHANNEL = 'chat';
const MAX_BODY_BYTES = 16 * 1024;
const MAX_TEXT_CHARS = 500;
const STREAM_CHUNKS = 5;
const STREAM_ACK_TIMEOUT_MS = 10000;
const MAX_OPEN_STREAMS = 64;
const API_TIMEOUT_MS = 5000;

const STATIC = {
  '/': { file: join(here, 'public', 'index.html'), type: 'text/html; charset=utf-8' },
  '/index.html': { file: join(here, 'public', 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: join(here, 'public', 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: join(here, 'public', 'style.css'), type: 'text/css; charset=utf-8' },
  // The browser bundle centrifuge-js 5.8.0 ships (an IIFE that sets globalThis.Centrifuge).
  '/centrifuge.js': {
    file: join(here, 'node_modules', 'centrifuge', 'dist', 'centrifuge.js'),
    type: 'text/javascript; charset=utf-8',
  },
};

/**
 * Creates the chat app's HTTP server (not yet listening). `options.api` is read on every
 * /send, so a test may fill it in after the server started: { url, key }.
 */
export function createChatServer(options = {}) {
  const api = options.api ?? { url: process.env.SIDEWIRE_API ?? 'http://127.0.0.1:9100', key: process.env.SIDEWIRE_API_KEY ?? '' };
  // Open /stream responses waiting for the page's acknowledgement, by id (bounded).
  const acks = new Map();

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? '/', 'http://app.invalid');
      const route = STATIC[url.pathname];
      if (req.method === 'GET' && route) {
        const body = await readFile(route.file);
        res.writeHead(200, { 'content-type': route.type, 'cache-control': 'no-store' });
        res.end(body);
      } else if (req.method === 'POST' && url.pathname === '/send') {
        await send(req, res, api);
      } else if (req.method === 'GET' && url.pathname === '/stream') {
        await stream(url, res, acks);
      } else if (req.method === 'POST' && url.pathname === '/stream/ack') {
        const waiter = acks.get(url.searchParams.get('id') ?? '');
        if (waiter && String(waiter.index) === url.searchParams.get('i')) waiter.resolve();
        res.writeHead(waiter ? 204 : 404).end();
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      }
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`error: ${err.message}\n`);
    }
  });
  server.on('upgrade', (_req, socket) => socket.destroy()); // this app has no WebSocket of its own
  return server;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// POST /send: validates {name, text} and publishes it through sidewire's server API.
async function send(req, res, api) {
  let msg;
  try {
    msg = JSON.parse(await readBody(req));
  } catch (err) {
    res.writeHead(err.status ?? 400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: err.status ? err.message : 'body must be JSON' }));
    return;
  }
  const name = String(msg?.name ?? '').slice(0, 40) || 'anonymous';
  const text = String(msg?.text ?? '').slice(0, MAX_TEXT_CHARS);
  if (!text.trim()) {
    res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'empty text' }));
    return;
  }
  const headers = { 'content-type': 'application/json' };
  if (api.key) headers['x-api-key'] = api.key;
  const upstream = await fetch(`${api.url}/api/publish`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ channel: CHAT_CHANNEL, data: { name, text, at: Date.now() } }),
    signal: AbortSignal.timeout(API_TIMEOUT_MS),
  });
  const reply = await upstream.text();
  const ok = upstream.ok && !/"error"/.test(reply);
  res.writeHead(ok ? 200 : 502, { 'content-type': 'application/json' });
  res.end(ok ? reply : JSON.stringify({ error: `server API: HTTP ${upstream.status}: ${reply}` }));
}

// GET /stream?id=ID: STREAM_CHUNKS chunks, each written after the previous one was acknowledged.
async function stream(url, res, acks) {
  const id = url.searchParams.get('id') ?? '';
  if (!id || acks.has(id) || acks.size >= MAX_OPEN_STREAMS) {
    res.writeHead(409, { 'content-type': 'text/plain' }).end('stream id missing, busy or too many streams\n');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
  res.flushHeaders();
  try {
    for (let i = 0; i < STREAM_CHUNKS; i += 1) {
      const acked = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ack for chunk ${i}`)), STREAM_ACK_TIMEOUT_MS);
        acks.set(id, { index: i, resolve: () => { clearTimeout(timer); resolve(); } });
      });
      res.write(`chunk ${i}\n`);
      await acked;
    }
    res.end('done\n');
  } catch (err) {
    res.end(`aborted: ${err.message}\n`);
  } finally {
    acks.delete(id);
  }
}

/** Starts the server on `port` (0: ephemeral) and `host`; resolves with { server, url }. */
export function startChatServer({ port = 0, host = '127.0.0.1', api } = {}) {
  const server = createChatServer({ api });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({ server, url: `http://${host}:${addr.port}`, port: addr.port });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const port = Number(process.env.PORT ?? 3000);
  const host = process.env.HOST ?? '127.0.0.1';
  const { url } = await startChatServer({ port, host });
  console.log(`chat app listening on ${url} (server API: ${process.env.SIDEWIRE_API ?? 'http://127.0.0.1:9100'})`);
}
