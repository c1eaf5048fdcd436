// The chat page: connects to sidewire with the centrifuge-js browser bundle, shows the
// connection state, the transport in use, messages and presence, and sends through the app's
// own POST /send (which calls sidewire's server API).
//
// Query parameters (all optional):
//   sidewire=URL          sidewire's client origin (default: this page's origin, i.e. the page
//                         came through sidewire's passthrough)
//   transports=a,b,c      transports to offer, in order (default websocket,http_stream,sse)
//   broken=a,b            point these transports at a path sidewire does not serve, to force
//                         centrifuge-js's fallback to the next transport
//   name=NAME             the name put on messages
(() => {
  'use strict';
  const params = new URLSearchParams(location.search);
  const base = (params.get('sidewire') || location.origin).replace(/\/+$/, '');
  const wsBase = base.replace(/^http/, 'ws');
  const PATHS = { websocket: '/connection/websocket', http_stream: '/connection/http_stream', sse: '/connection/sse' };
  const list = (v, dflt) => (v === null ? dflt : v.split(',').map((s) => s.trim()).filter(Boolean));
  const transports = list(params.get('transports'), ['websocket', 'http_stream', 'sse']).filter((t) => t in PATHS);
  const broken = new Set(list(params.get('broken'), []));
  const endpoints = transports.map((transport) => {
    const path = broken.has(transport) ? '/connection/broken-on-purpose' : PATHS[transport];
    return { transport, endpoint: (transport === 'websocket' ? wsBase : base) + path };
  });
  const CHANNEL = 'chat';
  const $ = (id) => document.getElementById(id);

  // Everything the page saw, for people (rendered) and for the browser test (window.chat).
  const chat = window.chat = { endpoints, states: [], errors: [], messages: [], presence: [], connected: null };

  const setState = (state) => {
    chat.states.push(state);
    document.body.dataset.state = state;
    $('state').textContent = state;
  };
  const showProblem = (text) => {
    $('problem').hidden = !text;
    $('problem').textContent = text || '';
  };

  $('channel').textContent = CHANNEL;
  $('origin').textContent = location.origin;
  $('endpoint').textContent = endpoints.map((e) => e.endpoint).join(' → ') || 'none';
  $('name').value = params.get('name') || `guest-${Math.random().toString(16).slice(2, 6)}`;

  const client = new Centrifuge(endpoints, {
    emulationEndpoint: `${base}/emulation`,
    minReconnectDelay: 300,
    maxReconnectDelay: 2000,
    timeout: 4000,
  });
  chat.client = client;

  client.on('connecting', (ctx) => {
    setState('connecting');
    $('transport').textContent = '–';
    if (ctx.code !== 0) chat.lastConnecting = ctx;
  });
  client.on('connected', (ctx) => {
    chat.connected = { transport: ctx.transport, client: ctx.client };
    setState('connected');
    $('transport').textContent = ctx.transport;
    showProblem('');
  });
  client.on('disconnected', (ctx) => {
    setState('disconnected');
    $('transport').textContent = '–';
    showProblem(`disconnected: ${ctx.reason} (${ctx.code})`);
  });
  client.on('error', (ctx) => {
    const e = ctx.error || {};
    chat.errors.push({ type: ctx.type, transport: ctx.transport, code: e.code, message: e.message });
    if (client.state !== 'connected') {
      const n = chat.errors.length;
      showProblem(`not connected: ${n} failed attempt${n === 1 ? '' : 's'}; last: ${ctx.type}` +
        `${ctx.transport ? ` on ${ctx.transport}` : ''}${e.message ? ` (${e.message})` : ''}` +
        (chat.connected ? '' : ' — is this page\'s origin in sidewire\'s allowed_origins?'));
    }
  });

  const renderPresence = async () => {
    try {
      const res = await sub.presence();
      chat.presence = Object.values(res.clients).map((c) => ({ client: c.client, user: c.user }));
    } catch (err) {
      chat.presenceError = String(err && err.message || err);
      return;
    }
    $('presence-count').textContent = String(chat.presence.length);
    $('presence').replaceChildren(...chat.presence.map((c) => {
      const li = document.createElement('li');
      li.append(`${c.user || 'anonymous'} `);
      const code = document.createElement('code');
      code.textContent = c.client === chat.connected?.client ? `${c.client.slice(0, 8)} (you)` : c.client.slice(0, 8);
      li.append(code);
      return li;
    }));
  };

  const sub = client.newSubscription(CHANNEL, { joinLeave: true });
  chat.sub = sub;
  sub.on('subscribed', () => { chat.subscribed = true; renderPresence(); });
  sub.on('join', renderPresence);
  sub.on('leave', renderPresence);
  sub.on('publication', (ctx) => {
    const { name, text } = ctx.data || {};
    chat.messages.push({ name, text, transport: chat.connected?.transport });
    const li = document.createElement('li');
    const b = document.createElement('b');
    b.textContent = `${name}: `;
    li.append(b, String(text));
    $('messages').append(li);
  });
  sub.subscribe();
  client.connect();

  // Sends through the app (same origin as this page), never to sidewire's server API directly.
  chat.send = async (text) => {
    const res = await fetch('send', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: $('name').value, text }),
    });
    if (!res.ok) throw new Error(`send: HTTP ${res.status}: ${await res.text()}`);
  };
  $('send').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('text').value;
    if (!text.trim()) return;
    chat.send(text).then(() => { $('text').value = ''; }, (err) => showProblem(err.message));
  });

  // Reads /stream chunk by chunk and acknowledges each one; the app writes the next chunk only
  // after the acknowledgement, so chunks can only arrive here if the proxy forwards them as
  // they come. Resolves with [{ text, ms }] (ms since the request started).
  chat.streamDemo = async () => {
    const id = Math.random().toString(16).slice(2);
    const started = performance.now();
    const res = await fetch(`stream?id=${id}`);
    if (!res.ok) throw new Error(`stream: HTTP ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const chunks = [];
    $('stream').replaceChildren();
    let buffered = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const ms = Math.round(performance.now() - started);
        chunks.push({ text, ms });
        const li = document.createElement('li');
        li.textContent = `${text} (+${ms} ms)`;
        $('stream').append(li);
        const m = /^chunk (\d+)$/.exec(text);
        if (m) await fetch(`stream/ack?id=${id}&i=${m[1]}`, { method: 'POST' });
      }
    }
    return chunks;
  };
  $('stream-button').addEventListener('click', () => { chat.streamDemo().catch((err) => showProblem(err.message)); });
})();
