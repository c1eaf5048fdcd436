"""Real-SDK smoke tests: PyPI ``centrifuge-python`` against the sidewire binary.

Run from the repo root:  python3 -m pytest tests/sdk/python -q
Binary: $SIDEWIRE_BIN if set, else <repo>/target/debug/sidewire.
Set SIDEWIRE_TEST_LOG=1 to print the server's stderr when the module finishes.

No pytest-asyncio: every test is a plain function running an async body with
asyncio.run(), and every await inside is bounded by asyncio.wait_for().
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
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    SubscriptionEventHandler,
    SubscriptionState,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
# `hub.channel.without_namespace` of the test server (flow YAML): every operation allowed.
PERMISSIVE_CHANNELS = (
    '{presence: true, join_leave: true, history_size: 100, history_ttl: "300s", '
    'allow_subscribe_for_client: true, allow_subscribe_for_anonymous: true, '
    'allow_publish_for_client: true, allow_publish_for_anonymous: true, '
    'allow_history_for_client: true, allow_history_for_anonymous: true, '
    'allow_presence_for_client: true, allow_presence_for_anonymous: true}'
)

SIDEWIRE_BIN = Path(os.environ["SIDEWIRE_BIN"]).resolve() if os.environ.get("SIDEWIRE_BIN") \
    else REPO_ROOT / "target" / "debug" / "sidewire"

STARTUP_TIMEOUT = 15.0
LISTEN_RE = re.compile(r"^sidewire listening client=(\S+) admin=(\S+)\s*$")
STEP = 5.0        # bound on any single await
TEST_BUDGET = 30.0  # bound on a whole test body


# --------------------------------------------------------------------------- server

class Server:
    def __init__(self, proc: subprocess.Popen, stderr_path: Path, client_addr: str, admin_addr: str):
        self.proc = proc
        self.stderr_path = stderr_path
        self.client_addr = client_addr
        self.admin_addr = admin_addr
        self.ws_url = f"ws://{client_addr}/connection/websocket"
        self.admin_url = f"http://{admin_addr}"

    def stderr_tail(self, limit: int = 8192) -> str:
        try:
            data = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "<unreadable>"
        return data[-limit:].strip() or "<empty>"

    def assert_alive(self) -> None:
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"sidewire is not running (exit code {rc}); stderr:\n{self.stderr_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not SIDEWIRE_BIN.exists():
        pytest.fail(f"sidewire binary not found at {SIDEWIRE_BIN} (build it, or set SIDEWIRE_BIN)", pytrace=False)
    tmp = tmp_path_factory.mktemp("sidewire")
    config = tmp / "sidewire.yaml"
    config.write_text(
        'listen: "127.0.0.1:0"\n'
        'admin_listen: "127.0.0.1:0"\n'
        'allowed_origins: ["*"]\n'
        # Secure defaults (as Centrifugo's): opt in to anonymous connects and open channels.
        'hub:\n'
        '  client: {allow_anonymous_connect_without_token: true}\n'
        f'  channel: {{without_namespace: {PERMISSIVE_CHANNELS}}}\n'
    )
    stderr_path = tmp / "stderr.log"
    stderr_file = open(stderr_path, "wb")
    proc = subprocess.Popen(
        [str(SIDEWIRE_BIN), "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
    )
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        # Keeps draining stdout for the life of the process.
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, name="sidewire-stdout", daemon=True).start()

    srv = None
    failure = None
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        seen = []
        while srv is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no listening line")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=5)
                raise RuntimeError(f"exited with code {proc.returncode}")
            seen.append(line)
            m = LISTEN_RE.match(line)
            if m:
                srv = Server(proc, stderr_path, m.group(1), m.group(2))
    except Exception as e:  # noqa: BLE001 - reported with context below
        failure = e
    if srv is None:
        _stop(proc)
        stderr_file.close()
        tail = Server(proc, stderr_path, "", "").stderr_tail()
        pytest.fail(
            f'sidewire did not print "sidewire listening client=... admin=..." '
            f"(startup limit {STARTUP_TIMEOUT:.0f}s): {failure}; stdout lines: {seen!r}; stderr:\n{tail}",
            pytrace=False,
        )

    try:
        yield srv
    finally:
        _stop(proc)
        stderr_file.close()
        if os.environ.get("SIDEWIRE_TEST_LOG"):
            print(f"--- sidewire stderr ---\n{srv.stderr_tail(1 << 20)}")


# --------------------------------------------------------------------------- codecs

@dataclass
class Codec:
    name: str
    use_protobuf: bool
    payload: Callable[[int], Any]
    rpc_payload: Callable[[], Any]
    decode_json: Callable[[Any], Any]  # server-API JSON data, as received


def _bytes_to_json(data: Any) -> Any:
    assert isinstance(data, (bytes, bytearray)), f"expected bytes, got {data!r}"
    return json.loads(bytes(data).decode("utf-8"))


JSON = Codec(
    name="json",
    use_protobuf=False,
    payload=lambda i: {"text": f"hello {i}", "n": 42 + i, "nested": {"ok": True, "list": [1, "two", None]}},
    rpc_payload=lambda: {"q": "echo me", "num": 3.5, "arr": [True, False], "obj": {"k": "v"}},
    decode_json=lambda data: data,
)

PROTOBUF = Codec(
    name="protobuf",
    use_protobuf=True,
    # JSON bytes for publications, arbitrary non-UTF-8 bytes for rpc.
    payload=lambda i: json.dumps({"text": f"hello {i}", "n": 42 + i}).encode(),
    rpc_payload=lambda: b"\x00\x01\n{\xfe\xff\x00\"",
    decode_json=_bytes_to_json,
)


@pytest.fixture(params=[JSON, PROTOBUF], ids=lambda c: c.name)
def codec(request) -> Codec:
    return request.param


# --------------------------------------------------------------------------- helpers

# Once a connect failed for a codec, later tests of that codec fail at once
# instead of each waiting for its own connect timeout.
_connect_broken: Dict[str, str] = {}


def run(body, budget: float = TEST_BUDGET):
    """Runs an async test body with an overall time bound."""
    return asyncio.run(asyncio.wait_for(body, budget))


async def step(awaitable, what: str, timeout: float = STEP):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timeout after {timeout}s: {what}") from None


def channel_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


class ClientEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.connected: asyncio.Future = asyncio.get_running_loop().create_future()
        self.errors: list = []
        self.disconnects: list = []

    async def on_connected(self, ctx) -> None:
        if not self.connected.done():
            self.connected.set_result(ctx)

    async def on_error(self, ctx) -> None:
        self.errors.append(ctx)

    async def on_disconnected(self, ctx) -> None:
        self.disconnects.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future = loop.create_future()
        self.unsubscribed: asyncio.Future = loop.create_future()
        self.publications: asyncio.Queue = asyncio.Queue()
        self.errors: list = []

    async def on_subscribed(self, ctx) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(ctx)

    async def on_unsubscribed(self, ctx) -> None:
        if not self.unsubscribed.done():
            self.unsubscribed.set_result(ctx)

    async def on_publication(self, ctx) -> None:
        self.publications.put_nowait(ctx.pub)

    async def on_error(self, ctx) -> None:
        self.errors.append(ctx)

    async def next_publication(self, what: str):
        return await step(self.publications.get(), what)


@asynccontextmanager
async def connected_client(server: Server, codec: Codec):
    """Yields (client, client_id) for a connected client; always disconnects it."""
    server.assert_alive()
    if codec.name in _connect_broken:
        raise AssertionError(f"not attempted: an earlier {codec.name} connect failed: {_connect_broken[codec.name]}")
    events = ClientEvents()
    client = Client(
        server.ws_url,
        events=events,
        use_protobuf=codec.use_protobuf,
        proxy=None,
        timeout=3.0,
        min_reconnect_delay=0.2,
        max_reconnect_delay=1.0,
    )
    try:
        try:
            await step(client.connect(), "client.connect()")
            ctx = await step(events.connected, "on_connected")
            await step(client.ready(timeout=3.0), "client.ready()")
        except AssertionError as e:
            msg = (f"{e} (errors: {events.errors!r}; disconnects: {events.disconnects!r}; "
                   f"server alive: {server.proc.poll() is None}; stderr:\n{server.stderr_tail()})")
            _connect_broken[codec.name] = str(e)
            raise AssertionError(msg) from None
        assert client.state == ClientState.CONNECTED
        yield client, ctx.client
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), STEP)
        except Exception:  # noqa: BLE001 - cleanup must not mask the test result
            pass


async def subscribe(client: Client, channel: str):
    events = SubEvents()
    sub = client.new_subscription(channel, events=events)
    await step(sub.subscribe(), f"subscribe({channel})")
    ctx = await step(events.subscribed, f"on_subscribed for {channel} (errors: {events.errors!r})")
    assert ctx.channel == channel
    assert sub.state == SubscriptionState.SUBSCRIBED
    return sub, events


def admin_publish(server: Server, channel: str, data: Any) -> dict:
    req = urllib.request.Request(
        f"{server.admin_url}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=STEP) as resp:
        assert resp.status == 200, f"server API publish: HTTP {resp.status}"
        return json.loads(resp.read())


# --------------------------------------------------------------------------- tests

def test_connect(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, client_id):
            assert isinstance(client_id, str) and client_id, f"bad client id {client_id!r}"
    run(body())


def test_publish_and_receive_own_publication(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, client_id):
            channel = channel_name(f"py-pub-{codec.name}")
            sub, events = await subscribe(client, channel)

            first = codec.payload(1)
            await step(client.publish(channel, first), "client.publish")
            pub = await events.next_publication("own publication #1")
            assert pub.data == first
            assert pub.info is not None, f"publication without info: {pub!r}"
            assert pub.info.client == client_id
            assert pub.info.user == ""
            assert pub.offset == 1

            second = codec.payload(2)
            await step(sub.publish(second), "sub.publish")
            pub2 = await events.next_publication("own publication #2")
            assert pub2.data == second
            assert pub2.offset == 2
    run(body())


def test_second_client_receives_publication(server, codec):
    async def body():
        async with connected_client(server, codec) as (a, a_id), \
                connected_client(server, codec) as (b, b_id):
            assert a_id != b_id
            channel = channel_name(f"py-fanout-{codec.name}")
            _, events_b = await subscribe(b, channel)
            data = codec.payload(7)
            await step(a.publish(channel, data), "publish by client A")
            pub = await events_b.next_publication("client B receiving A's publication")
            assert pub.data == data
            assert pub.info is not None and pub.info.client == a_id
    run(body())


def test_rpc_echo(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, _):
            data = codec.rpc_payload()
            result = await step(client.rpc("echo", data), "rpc echo")
            assert result.data == data
    run(body())


def test_rpc_unknown_method(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, _):
            with pytest.raises(ReplyError) as info:
                await step(client.rpc("nope", codec.rpc_payload()), "rpc nope")
            assert info.value.code == 104, f"expected 104, got {info.value!r}"
            assert client.state == ClientState.CONNECTED
    run(body())


def test_presence_contains_own_client(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, client_id):
            channel = channel_name(f"py-presence-{codec.name}")
            await subscribe(client, channel)
            presence = await step(client.presence(channel), "presence")
            assert client_id in presence.clients, f"own client missing: {presence!r}"
            assert presence.clients[client_id].client == client_id
            assert presence.clients[client_id].user == ""
            assert len(presence.clients) == 1
            stats = await step(client.presence_stats(channel), "presence_stats")
            assert stats.num_clients == 1, f"{stats!r}"
    run(body())


def test_dollar_channel_refused(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, _):
            channel = "$" + channel_name(f"py-private-{codec.name}")
            events = SubEvents()
            sub = client.new_subscription(channel, events=events)
            await step(sub.subscribe(), "subscribe($...)")
            ctx = await step(events.unsubscribed, "on_unsubscribed for a $-channel")
            assert ctx.code == 103, f"expected 103, got {ctx!r}"
            assert sub.state == SubscriptionState.UNSUBSCRIBED
            assert client.state == ClientState.CONNECTED
    run(body())


def test_history(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, client_id):
            channel = channel_name(f"py-history-{codec.name}")
            _, events = await subscribe(client, channel)
            sent = [codec.payload(10), codec.payload(11)]
            for d in sent:
                await step(client.publish(channel, d), "publish")
                await events.next_publication("publication before history")
            h = await step(client.history(channel, limit=10), "history")
            assert [p.data for p in h.publications] == sent
            assert [p.offset for p in h.publications] == [1, 2]
            assert all(p.info is not None and p.info.client == client_id for p in h.publications)
            assert h.offset == 2
            assert h.epoch
    run(body())


def test_server_api_publish(server, codec):
    async def body():
        async with connected_client(server, codec) as (client, _):
            channel = channel_name(f"py-api-{codec.name}")
            _, events = await subscribe(client, channel)
            data = {"from": "server-api", "codec": codec.name, "n": 7, "list": [1, 2, 3]}
            reply = await step(asyncio.to_thread(admin_publish, server, channel, data), "POST /api/publish")
            assert "result" in reply, f"{reply!r}"
            assert reply["result"]["offset"] == 1, f"{reply!r}"
            assert isinstance(reply["result"].get("epoch"), str)
            pub = await events.next_publication("server API publication")
            assert codec.decode_json(pub.data) == data
            assert pub.offset == 1
    run(body())


def test_server_still_running(server):
    server.assert_alive()
