// Helpers for the browser tests: start the sidewire binary on ephemeral ports with a given
// config, start the example chat app, launch Debian's Chromium through puppeteer-core.
//
// Binary: $SIDEWIRE_BIN if set, else <repo>/target/debug/sidewire.
// Chromium: $CHROMIUM_BIN if set, else /usr/bin/chromium (never downloaded).
// SIDEWIRE_TEST_LOG=1 copies sidewire's stderr to this process' stderr.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..');
export const SIDEWIRE_BIN = process.env.SIDEWIRE_BIN
  ? resolve(process.env.SIDEWIRE_BIN)
  : join(REPO_ROOT, 'target', 'debug', 'sidewire');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

const STARTUP_TIMEOUT_MS = 15000;
const LISTEN_RE = /^sidewire listening client=(\S+) admin=(\S+)\s*$/;
const STDERR_TAIL_BYTES = 8192;

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** Rejects if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${typeof what === 'function' ? what() : what}`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts `sidewire --config <tmp>` with `yamlLines` (an array of lines) and waits for its
 * listening line. Returns { clientAddr, adminAddr, clientUrl, adminUrl, stop(), stderrTail() }.
 */
export async function startSidewire(yamlLines) {
  if (!existsSync(SIDEWIRE_BIN)) throw new Error(`sidewire binary not found at ${SIDEWIRE_BIN} (build it, or set SIDEWIRE_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), 'sidewire-browser-'));
  const configPath = join(dir, 'sidewire.yaml');
  writeFileSync(configPath, [
    ...yamlLines,
    ...(process.env.SIDEWIRE_TEST_LOG ? ['log:', '  level: "sidewire=debug,info"'] : []),
    '',
  ].join('\n'));
  const child = spawn(SIDEWIRE_BIN, ['--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    if (process.env.SIDEWIRE_TEST_LOG) process.stderr.write(chunk);
    stderr = (stderr + chunk).slice(-STDERR_TAIL_BYTES);
  });
  const stderrTail = () => stderr.trim() || '<empty>';
  let exited = null;
  const exit = new Promise((res) => child.on('exit', (code, signal) => { exited = { code, signal }; live.delete(child); res(exited); }));
  const listening = new Promise((res, rej) => {
    let buf = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const m = LISTEN_RE.exec(buf.slice(0, nl).replace(/\r$/, ''));
        buf = buf.slice(nl + 1);
        if (m) res({ clientAddr: m[1], adminAddr: m[2] });
      }
    });
    child.on('error', (err) => rej(err));
    exit.then(({ code, signal }) => rej(new Error(`sidewire exited (code=${code} signal=${signal}); stderr:\n${stderrTail()}`)));
  });
  const stop = async () => {
    try {
      if (exited === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => { if (exited === null) child.kill('SIGKILL'); }, 3000);
        await exit;
        clearTimeout(timer);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  let addrs;
  try {
    addrs = await withTimeout(listening, STARTUP_TIMEOUT_MS, () => `sidewire listening line; stderr:\n${stderrTail()}`);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    ...addrs,
    clientUrl: `http://${addrs.clientAddr}`,
    adminUrl: `http://${addrs.adminAddr}`,
    alive: () => exited === null,
    stop,
    stderrTail,
  };
}

/** Value of an unlabelled metric in sidewire's /metrics (0 when absent). */
export async function metricValue(adminUrl, name) {
  const res = await fetch(`${adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/** Launches Debian's Chromium, headless, through puppeteer-core (no browser download). */
export async function launchChromium() {
  if (!existsSync(CHROMIUM_BIN)) {
    throw new Error(`Chromium not found at ${CHROMIUM_BIN}: apt-get install -y chromium (or set CHROMIUM_BIN)`);
  }
  return puppeteer.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox; /dev/shm is small.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
    defaultViewport: { width: 1000, height: 540 },
  });
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
