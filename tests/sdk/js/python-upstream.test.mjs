// The Link contract is language-neutral: the real centrifuge-js SDK -> the sidewire sidecar ->
// the Python example upstream (examples/upstream-python, grpcio, code generated from proto/ at
// start-up), with a Link token (given to the sidecar through SIDEWIRE_UPSTREAM_TOKEN).
// Connect, subscribe, publish, receive, rpc, and a refused connect. Needs the pip packages
// of examples/upstream-python/requirements.txt (run.sh installs them).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Centrifuge } from 'centrifuge';
import {
  REPO_ROOT, startServer, connectClient, subscribe, withTimeout, uniqueChannel, toNumber,
} from './harness.mjs';

const LINK_TOKEN = 'python-smoke-token';
const READY_TIMEOUT_MS = 15000;

/** Starts the Python upstream on an ephemeral port; resolves with { addr, stop, stderr }. */
async function startPythonUpstream() {
  const script = join(REPO_ROOT, 'examples', 'upstream-python', 'server.py');
  const child = spawn('python3', [script, '--listen', '127.0.0.1:0', '--token', LINK_TOKEN], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-8192); });
  process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
  const addr = await withTimeout(new Promise((res, rej) => {
    let buf = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      const m = /upstream listening (\S+)/.exec(buf);
      if (m) res(m[1]);
    });
    child.on('exit', (code) => rej(new Error(`python upstream exited (${code}): ${stderr}`)));
  }), READY_TIMEOUT_MS, () => `python upstream listening line; stderr: ${stderr}`);
  return {
    addr,
    stderr: () => stderr,
    stop: () => { try { child.kill('SIGTERM'); } catch { /* gone */ } },
  };
}

async function waitReady(server) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${server.adminUrl}/readyz`);
      if (res.status === 200) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`sidecar never ready; stderr:\n${server.stderrTail()}`);
}

describe('centrifuge-js -> sidewire -> Python upstream', { timeout: 60000 }, () => {
  let upstream;
  let server;
  const clients = [];

  before(async () => {
    upstream = await startPythonUpstream();
    // The sidecar takes its Link token from the environment (no token key in the config).
    process.env.SIDEWIRE_UPSTREAM_TOKEN = LINK_TOKEN;
    server = await startServer({
      extraConfig: [
        'upstream:',
        `  endpoint: "http://${upstream.addr}"`,
        '  reconnect_backoff_min: "50ms"',
        '  reconnect_backoff_max: "500ms"',
      ].join('\n'),
    });
    await waitReady(server);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (server) await server.stop();
    if (upstream) upstream.stop();
  });

  for (const transport of ['websocket', 'http_stream']) {
    it(`connect, subscribe, publish, receive, rpc over ${transport}`, async () => {
      const channel = uniqueChannel('py');
      const { client: subscriber } = await connectClient(Centrifuge, server, clients, { transport });
      const { client: publisher } = await connectClient(Centrifuge, server, clients);
      const { nextPublication } = await subscribe(server, subscriber, channel);
      await publisher.publish(channel, { hello: 'python', n: 1 });
      await publisher.publish(channel, { hello: 'python', n: 2 });
      const first = await nextPublication(5000, 'first publication');
      const second = await nextPublication(5000, 'second publication');
      assert.deepEqual(first.data, { hello: 'python', n: 1 });
      assert.deepEqual(second.data, { hello: 'python', n: 2 });
      assert.equal(toNumber(second.offset), toNumber(first.offset) + 1);
      const rpc = await subscriber.rpc('echo', { ping: true });
      assert.deepEqual(rpc.data, { ping: true });
    });
  }

  it('a refused connect ends in disconnected, not in a retry loop on a dead socket', async () => {
    const client = new Centrifuge(server.wsUrl, {
      websocket: (await import('ws')).default,
      data: { user: 'refuse' },
      minReconnectDelay: 200,
      maxReconnectDelay: 1000,
    });
    clients.push(client);
    client.on('error', () => {});
    const disconnected = new Promise((res) => client.once('disconnected', res));
    client.connect();
    const ctx = await withTimeout(disconnected, 6000,
      () => `'disconnected' after a refused connect; upstream stderr:\n${upstream.stderr()}`);
    assert.equal(ctx.code, 101, JSON.stringify(ctx));
    // The sidecar's close after the refusal does not send the SDK back into connecting.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(client.state, 'disconnected');
  });
});
