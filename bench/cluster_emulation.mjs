// Cost of routing an /emulation POST through Redis to the replica holding the stream, against
// the same POST answered by that replica itself, measured in the same run (POSTs alternate
// local / routed, one at a time, on keep-alive connections), so machine noise hits both alike.
//
// Two sidewire replicas (engine.type redis, embedded hubs) on one redis-server. One HTTP-stream
// session on replica A; each POST carries one JSON command (a pong `{}`), sent either straight
// to A ("local") or to B naming A's node ("routed": B -> Redis -> A -> Redis -> B).
//
// Use: SIDEWIRE_BIN=path/to/sidewire node bench/cluster_emulation.mjs [posts per kind]
// Output: a Markdown table (latency percentiles in microseconds) on stdout.

import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const POSTS = Number(process.argv[2] ?? 2000);
const BIN = process.env.SIDEWIRE_BIN ?? 'target/release/sidewire';

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

function freePort() {
  return new Promise((res) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  children.push(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' }));
  await sleep(300);
  return `redis://127.0.0.1:${port}`;
}

function startReplica(redis) {
  const dir = mkdtempSync(join(tmpdir(), 'sidewire-bench-'));
  const config = join(dir, 'sidewire.yaml');
  writeFileSync(config, [
    'listen: "127.0.0.1:0"', 'admin_listen: "127.0.0.1:0"', 'allowed_origins: ["*"]',
    'http_stream: true', 'log:', '  level: "warn"',
    'engine:', '  type: redis', '  redis:', `    address: "${redis}"`, '',
  ].join('\n'));
  const child = spawn(BIN, ['--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((res) => {
    let buf = '';
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      const m = /client=(\S+) admin=(\S+)/.exec(buf);
      if (m) res({ client: m[1], admin: m[2] });
    });
  });
}

async function openStream(client) {
  const [host, port] = client.split(':');
  return new Promise((res, rej) => {
    const req = http.request({ host, port, method: 'POST', path: '/connection/http_stream', headers: { 'content-type': 'application/json' } });
    req.on('response', (answer) => {
      let buf = '';
      answer.on('data', (chunk) => {
        buf += chunk;
        const nl = buf.indexOf('\n');
        if (nl >= 0 && !answer.connected) {
          answer.connected = true;
          const reply = JSON.parse(buf.slice(0, nl));
          res({ session: reply.connect.session, node: reply.connect.node });
        }
      });
    });
    req.on('error', rej);
    req.end(JSON.stringify({ id: 1, connect: {} }));
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function post(client, body) {
  const [host, port] = client.split(':');
  return new Promise((res, rej) => {
    const started = process.hrtime.bigint();
    const req = http.request({ host, port, method: 'POST', path: '/emulation', agent, headers: { 'content-type': 'application/json' } });
    req.on('response', (answer) => {
      answer.resume();
      answer.on('end', () => res([answer.statusCode, Number(process.hrtime.bigint() - started) / 1000]));
    });
    req.on('error', rej);
    req.end(body);
  });
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

const redis = await startRedis();
const a = await startReplica(redis);
const b = await startReplica(redis);
const stream = await openStream(a.client);
const body = JSON.stringify({ node: stream.node, session: stream.session, data: '{}' });
// Wait until B knows A.
for (let i = 0; i < 200; i++) {
  if ((await post(b.client, body))[0] === 204) break;
  await sleep(50);
}
const times = { local: [], routed: [] };
for (let i = 0; i < POSTS + 200; i++) {
  for (const [kind, target] of [['local', a.client], ['routed', b.client]]) {
    const [status, us] = await post(target, body);
    if (status !== 204) throw new Error(`${kind} POST answered ${status}`);
    if (i >= 200) times[kind].push(us); // the first 200 of each warm up
  }
}
console.log(`| POST | n | p50 µs | p90 µs | p99 µs | mean µs |`);
console.log(`|---|---|---|---|---|---|`);
for (const [kind, list] of Object.entries(times)) {
  list.sort((x, y) => x - y);
  const mean = list.reduce((s, x) => s + x, 0) / list.length;
  console.log(`| ${kind} | ${list.length} | ${pct(list, 50).toFixed(0)} | ${pct(list, 90).toFixed(0)} | ${pct(list, 99).toFixed(0)} | ${mean.toFixed(0)} |`);
}
process.exit(0);
