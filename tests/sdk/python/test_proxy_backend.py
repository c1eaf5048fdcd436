"""centrifuge-python -> sidewire -> examples/centrifugo-backend, a Node backend written for
Centrifugo's proxy hooks (the hub config is examples/centrifugo-backend/sidewire.yaml with the
backend's real address). The session cookie goes on the WebSocket upgrade (the SDK's
``headers``), reaches the connect hook, and the backend decides: connect data, a refused
user, subscribe data and a denied channel, rewritten publications, rpc by method; JSON and
Protobuf clients.

Run from the repo root:  python3 -m pytest tests/sdk/python/test_proxy_backend.py -q
Needs node (>= 20) on PATH and a built binary ($SIDEWIRE_BIN, else target/debug/sidewire).
"""

import asyncio
import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from centrifuge import Client, ClientEventHandler, ReplyError, SubscriptionEventHandler

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "centrifugo-backend"
SIDEWIRE_BIN = Path(os.environ["SIDEWIRE_BIN"]).resolve() if os.environ.get("SIDEWIRE_BIN") \
    else REPO_ROOT / "target" / "debug" / "sidewire"
SECRET = "python-proxy-secret"
STEP = 5.0
STARTUP = 15.0


def _spawn_until(args, pattern, env=None, stdin=None):
    """Starts a process and waits (bounded) for a stdout line matching `pattern`."""
    proc = subprocess.Popen(args, stdin=stdin or subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise AssertionError(f"{args[0]}: no line matching {pattern!r} in {STARTUP}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"{args[0]} exited: {proc.stderr.read()[-4000:]}")
        m = re.search(pattern, line)
        if m:
            return proc, m


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def ws_url(tmp_path_factory):
    if not SIDEWIRE_BIN.exists():
        pytest.fail(f"sidewire binary not found at {SIDEWIRE_BIN}", pytrace=False)
    env = {**os.environ, "PROXY_SECRET": SECRET}
    backend, m = _spawn_until(["node", str(EXAMPLE / "server.mjs"), "--port", "0"],
                              r"centrifugo-backend listening (\S+)", env=env)
    url = m.group(1)
    hub = (EXAMPLE / "sidewire.yaml").read_text() \
        .replace("http://127.0.0.1:3000", url).replace("change-me", SECRET)
    config = tmp_path_factory.mktemp("sidewire") / "sidewire.yaml"
    config.write_text('listen: "127.0.0.1:0"\nadmin_listen: "127.0.0.1:0"\n' + hub)
    try:
        server, m = _spawn_until([str(SIDEWIRE_BIN), "--config", str(config)],
                                 r"^sidewire listening client=(\S+) admin=(\S+)")
    except Exception:
        _stop(backend)
        raise
    try:
        yield f"ws://{m.group(1)}/connection/websocket"
    finally:
        _stop(server)
        _stop(backend)


class Events(ClientEventHandler):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.connected = loop.create_future()
        self.disconnected = loop.create_future()

    async def on_connected(self, ctx):
        if not self.connected.done():
            self.connected.set_result(ctx)

    async def on_disconnected(self, ctx):
        if not self.disconnected.done():
            self.disconnected.set_result(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.subscribed = loop.create_future()
        self.unsubscribed = loop.create_future()
        self.publications = asyncio.Queue()

    async def on_subscribed(self, ctx):
        if not self.subscribed.done():
            self.subscribed.set_result(ctx)

    async def on_unsubscribed(self, ctx):
        if not self.unsubscribed.done():
            self.unsubscribed.set_result(ctx)

    async def on_publication(self, ctx):
        self.publications.put_nowait(ctx.pub)


def run(body):
    return asyncio.run(asyncio.wait_for(body, 30))


def decode(data, use_protobuf):
    return json.loads(bytes(data)) if use_protobuf else data


def encode(value, use_protobuf):
    return json.dumps(value).encode() if use_protobuf else value


def new_client(url, session, use_protobuf=False):
    events = Events()
    client = Client(url, events=events, use_protobuf=use_protobuf, timeout=3.0,
                    headers={"Cookie": f"theme=dark; session={session}"})
    return client, events


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
def test_cookie_connect_rpc_and_rewritten_publish(ws_url, use_protobuf):
    async def body():
        client, events = new_client(ws_url, "alice-session", use_protobuf)
        try:
            await client.connect()
            ctx = await asyncio.wait_for(events.connected, STEP)
            assert decode(ctx.data, use_protobuf)["greeting"] == "hello Alice"
            who = await asyncio.wait_for(client.rpc("whoami", encode({}, use_protobuf)), STEP)
            assert decode(who.data, use_protobuf) == {"user": "alice"}

            channel = f"chat:py-{secrets.token_hex(4)}"
            sub_events = SubEvents()
            sub = client.new_subscription(channel, events=sub_events)
            await sub.subscribe()
            subscribed = await asyncio.wait_for(sub_events.subscribed, STEP)
            assert decode(subscribed.data, use_protobuf) == {"welcome": channel}
            await asyncio.wait_for(sub.publish(encode({"text": "hi"}, use_protobuf)), STEP)
            pub = await asyncio.wait_for(sub_events.publications.get(), STEP)
            assert decode(pub.data, use_protobuf) == {"text": "hi", "by": "alice", "moderated": True}
            with pytest.raises(ReplyError) as refused:
                await asyncio.wait_for(sub.publish(encode({"text": "spam!"}, use_protobuf)), STEP)
            assert refused.value.code == 1002
        finally:
            await client.disconnect()

    run(body())


def test_banned_user_gets_the_backend_error(ws_url):
    async def body():
        client, events = new_client(ws_url, "banned-session")
        try:
            await client.connect()
            ctx = await asyncio.wait_for(events.disconnected, STEP)
            assert (ctx.code, ctx.reason) == (403, "banned")
        finally:
            await client.disconnect()

    run(body())


def test_denied_subscription_is_unsubscribed_with_the_backend_code(ws_url):
    async def body():
        client, events = new_client(ws_url, "bob-session")
        try:
            await client.connect()
            await asyncio.wait_for(events.connected, STEP)
            sub_events = SubEvents()
            sub = client.new_subscription("admin:panel", events=sub_events)
            await sub.subscribe()
            ctx = await asyncio.wait_for(sub_events.unsubscribed, STEP)
            assert (ctx.code, ctx.reason) == (403, "admins only")
        finally:
            await client.disconnect()

    run(body())
