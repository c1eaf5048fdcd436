// examples/chat in a real browser: Debian's headless Chromium (puppeteer-core, no download)
// loads the chat page through the real sidewire binary's passthrough and chats over every
// transport; fallback, cross-origin pages (allowed and refused) and a streamed passthrough
// response are checked from inside the page.
//
// Origins: the page served through sidewire is http://127.0.0.1:<sidewire>; the same app is
// also served directly at http://localhost:<allowed> (listed in allowed_origins) and at
// http://localhost:<denied> (not listed), both pointing the page at sidewire with ?sidewire=.
// BROWSER_SCREENSHOTS=DIR saves the screenshots there (docs/img for the README), else to a
// temporary directory.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startChatServer } from '../../examples/chat/server.mjs';
import { startSidewire, launchChromium, metricValue, withTimeout } from './lib.mjs';

const API_KEY = 'browser-test-key';
const WAIT_MS = 10000;
const TRANSPORTS = ['websocket', 'http_stream', 'sse'];

describe('examples/chat in headless Chromium', { timeout: 180000 }, () => {
  const api = { url: '', key: API_KEY };
  const apps = [];
  const pages = [];
  let sw;
  let browser;
  let allowedOrigin;
  let deniedOrigin;
  const shots = process.env.BROWSER_SCREENSHOTS
    ? resolve(process.env.BROWSER_SCREENSHOTS)
    : mkdtempSync(join(tmpdir(), 'sidewire-browser-shots-'));

  before(async () => {
    mkdirSync(shots, { recursive: true });
    const backend = await startChatServer({ api });
    const allowed = await startChatServer({ api });
    const denied = await startChatServer({ api });
    apps.push(backend, allowed, denied);
    allowedOrigin = `http://localhost:${allowed.port}`;
    deniedOrigin = `http://localhost:${denied.port}`;
    sw = await startSidewire([
      'listen: "127.0.0.1:0"',
      'admin_listen: "127.0.0.1:0"',
      // The page through passthrough, and one other origin; `deniedOrigin` is not listed.
      `allowed_origins: ["http://127.0.0.1:*", ${JSON.stringify(allowedOrigin)}]`,
      'websocket: true',
      'http_stream: true',
      'sse: true',
      // A plain EventSource needs no SDK (Centrifugo's uni_sse).
      'uni_sse: true',
      'backend:',
      `  url: ${JSON.stringify(backend.url)}`,
      'hub:',
      `  http_api: {key: ${JSON.stringify(API_KEY)}}`,
      // The example's opt-ins (examples/chat/sidewire.yaml): anonymous visitors subscribe
      // with join/leave and read presence; only the app publishes.
      '  client: {allow_anonymous_connect_without_token: true}',
      '  channel:',
      '    without_namespace: {presence: true, join_leave: true, allow_subscribe_for_client: true, allow_subscribe_for_anonymous: true, allow_presence_for_subscriber: true, allow_presence_for_anonymous: true}',
    ]);
    api.url = sw.adminUrl;
    browser = await launchChromium();
  });

  afterEach(async () => {
    while (pages.length) await pages.pop().close().catch(() => {});
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (sw) await sw.stop();
    if (!process.env.BROWSER_SCREENSHOTS) rmSync(shots, { recursive: true, force: true });
    await Promise.all(apps.map(({ server }) => new Promise((res) => { server.closeAllConnections(); server.close(res); })));
  });

  // Opens a page and records what it logs, for failure messages.
  const open = async (url) => {
    const page = await browser.newPage();
    pages.push(page);
    page.log = [];
    page.on('console', (m) => page.log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => page.log.push(`pageerror: ${e.message}`));
    await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });
    return page;
  };
  // A background tab renders no frames in headless mode: bring the page to the front first.
  const shoot = async (page, file) => {
    await page.bringToFront();
    await withTimeout(page.screenshot({ path: join(shots, file) }), WAIT_MS, `screenshot ${file}`);
  };
  const snapshot = (page) => page.evaluate(() => JSON.stringify({
    state: document.body.dataset.state,
    connected: window.chat?.connected,
    errors: window.chat?.errors,
    states: window.chat?.states,
    problem: document.getElementById('problem')?.textContent,
  })).catch((e) => `<page gone: ${e.message}>`);
  const waitFor = async (page, fn, arg, what) => {
    try {
      await page.waitForFunction(fn, { timeout: WAIT_MS, polling: 50 }, arg);
    } catch (err) {
      throw new Error(`${what}: ${err.message}; page: ${await snapshot(page)}; console: ${page.log.join(' | ')}; sidewire alive: ${sw.alive()}; sidewire stderr:\n${sw.stderrTail()}`);
    }
  };
  const connectedOver = async (page, transport) => {
    await waitFor(page, () => window.chat?.connected && window.chat.subscribed, null, `page connected and subscribed (want ${transport})`);
    const info = await page.evaluate(() => ({ transport: window.chat.connected.transport, shown: document.getElementById('transport').textContent }));
    assert.equal(info.transport, transport, `connected transport; page: ${await snapshot(page)}`);
    assert.equal(info.shown, transport, 'the page shows the transport in use');
  };
  // Types a message into the page's form; waits until `pages` all show it (published by the
  // app's /send through sidewire's server API, delivered back over each page's transport).
  const say = async (from, text, seenBy = [from]) => {
    await from.bringToFront(); // input events reach only the front tab
    await from.type('#text', text);
    await from.click('#send button');
    for (const page of seenBy) {
      await waitFor(page, (t) => window.chat.messages.some((m) => m.text === t), text, `message "${text}" shown`);
      const shown = await page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
      assert.ok(shown.some((s) => s.endsWith(`: ${text}`)), `message list shows "${text}": ${JSON.stringify(shown)}`);
    }
  };
  const seesInPresence = (page, count) => waitFor(page,
    (n) => window.chat.presence.length >= n && window.chat.presence.some((c) => c.client === window.chat.connected.client)
      && document.getElementById('presence-count').textContent === String(window.chat.presence.length),
    count, `presence lists this client and ${count} in all`);

  it('same-origin pages through passthrough chat over websocket and sse and see each other in presence', async () => {
    const a = await open(`${sw.clientUrl}/?name=alice`);
    await connectedOver(a, 'websocket');
    const b = await open(`${sw.clientUrl}/?name=bob&transports=sse`);
    await connectedOver(b, 'sse');
    await seesInPresence(a, 2);
    await seesInPresence(b, 2);
    await say(a, 'hello from a WebSocket', [a, b]);
    await say(b, 'hi from SSE (with /emulation)', [a, b]);
    await withTimeout(a.evaluate(() => window.chat.streamDemo()), WAIT_MS, 'stream demo on the screenshot page');
    await shoot(a, 'chat-websocket.png');
  });

  it('falls back to http_stream when websocket is broken', async () => {
    const page = await open(`${sw.clientUrl}/?broken=websocket`);
    await connectedOver(page, 'http_stream');
    const errors = await page.evaluate(() => window.chat.errors);
    assert.ok(errors.some((e) => e.type === 'transport' && e.transport === 'websocket'), `a websocket transport error first: ${JSON.stringify(errors)}`);
    await seesInPresence(page, 1);
    await say(page, 'over http_stream after fallback');
  });

  it('falls back through http_stream to sse when both are broken', async () => {
    const page = await open(`${sw.clientUrl}/?broken=websocket,http_stream`);
    await connectedOver(page, 'sse');
    const errors = await page.evaluate(() => window.chat.errors);
    assert.ok(errors.some((e) => e.type === 'transport' && e.transport === 'http_stream'), `an http_stream transport error first: ${JSON.stringify(errors)}`);
    await seesInPresence(page, 1);
    await say(page, 'over sse after fallback');
  });

  for (const transport of TRANSPORTS) {
    it(`a page from an allowed other origin works over ${transport}`, async () => {
      const page = await open(`${allowedOrigin}/?sidewire=${encodeURIComponent(sw.clientUrl)}&transports=${transport}`);
      assert.notEqual(new URL(page.url()).origin, sw.clientUrl, 'the page is cross-origin');
      await connectedOver(page, transport);
      await seesInPresence(page, 1);
      await say(page, `cross-origin over ${transport}`);
      if (transport === 'http_stream') await shoot(page, 'chat-cross-origin.png');
    });
  }

  for (const transport of TRANSPORTS) {
    it(`a page from a disallowed origin is refused over ${transport}`, async () => {
      const before = await metricValue(sw.adminUrl, 'sidewire_origin_rejections_total');
      const page = await open(`${deniedOrigin}/?sidewire=${encodeURIComponent(sw.clientUrl)}&transports=${transport}`);
      // The refusal is sidewire's (403 before any session), seen by the page as a failed attempt.
      await waitFor(page, (t) => window.chat.errors.some((e) => e.transport === t), transport, `a ${transport} error on the page`);
      await withTimeout((async () => {
        while (await metricValue(sw.adminUrl, 'sidewire_origin_rejections_total') <= before) await new Promise((r) => setTimeout(r, 50));
      })(), WAIT_MS, `sidewire_origin_rejections_total above ${before}`);
      const seen = await page.evaluate(() => ({
        connected: window.chat.connected,
        states: window.chat.states,
        problem: document.getElementById('problem').hidden ? '' : document.getElementById('problem').textContent,
      }));
      assert.equal(seen.connected, null, `never connected: ${JSON.stringify(seen)}`);
      assert.ok(!seen.states.includes('connected'), `never connected: ${JSON.stringify(seen)}`);
      assert.match(seen.problem, /not connected/, 'the page shows the refusal');
      if (transport === 'websocket') await shoot(page, 'chat-refused.png');
    });
  }

  it('a streamed passthrough response reaches the page chunk by chunk', async () => {
    const page = await open(`${sw.clientUrl}/`);
    // The app writes chunk i+1 only after the page acknowledged chunk i: if sidewire buffered
    // the response, the page would never see chunk 0 and this would time out.
    const chunks = await withTimeout(page.evaluate(() => window.chat.streamDemo()), WAIT_MS,
      'the page reading /stream (through sidewire) to the end');
    assert.deepEqual(chunks.map((c) => c.text), ['chunk 0', 'chunk 1', 'chunk 2', 'chunk 3', 'chunk 4', 'done']);
    for (let i = 1; i < chunks.length; i += 1) assert.ok(chunks[i].ms >= chunks[i - 1].ms, 'in order');
    const shown = await page.$$eval('#stream li', (lis) => lis.length);
    assert.equal(shown, 6, 'the page lists every chunk');
  });

  it('a plain EventSource receives publications over uni_sse, no SDK', async () => {
    const page = await open(`${sw.clientUrl}/?name=plain`);
    // The page's own origin is sidewire (through passthrough): open a bare EventSource there.
    await page.evaluate(() => {
      window.uni = { messages: [], errors: 0 };
      const url = `${location.origin}/connection/uni_sse?cf_connect=${encodeURIComponent('{}')}`;
      const source = new EventSource(url);
      source.onmessage = (event) => window.uni.messages.push(JSON.parse(event.data));
      source.onerror = () => { window.uni.errors += 1; };
      window.uni.source = source;
    });
    await withTimeout(page.waitForFunction(() => window.uni.messages.some((m) => m.connect), { timeout: WAIT_MS }),
      WAIT_MS + 1000, 'uni_sse connect push');
    const client = await page.evaluate(() => window.uni.messages.find((m) => m.connect).connect.client);
    assert.ok(client, 'the connect push names the client');
    const call = async (method, body) => {
      const response = await fetch(`${api.url}/api/${method}`, {
        method: 'POST',
        headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      assert.equal(answer.error, undefined, `${method}: ${JSON.stringify(answer)}`);
    };
    // A uni client cannot subscribe itself: the server subscribes it, then publishes.
    await call('subscribe', { user: '', client, channel: 'plain-news' });
    await call('publish', { channel: 'plain-news', data: { text: 'to a bare EventSource' } });
    await withTimeout(page.waitForFunction(
      () => window.uni.messages.some((m) => m.channel === 'plain-news' && m.pub && m.pub.data.text === 'to a bare EventSource'),
      { timeout: WAIT_MS }), WAIT_MS + 1000, 'publication on the EventSource');
    const errors = await page.evaluate(() => { window.uni.source.close(); return window.uni.errors; });
    assert.equal(errors, 0, 'the EventSource never errored');
  });

  it('sidewire is still running', () => {
    assert.ok(sw.alive(), `sidewire exited; stderr:\n${sw.stderrTail()}`);
  });
});
