"""The real server-API client, PyPI ``cent``, against the sidewire binary's embedded hub.

Every method of cent's sync ``Client`` that Centrifugo OSS has (publish, broadcast, subscribe,
unsubscribe, disconnect, refresh, presence, presence_stats, history, history_remove, channels,
info, batch) is called unchanged and must succeed, with assertions on its result. Methods that
act on connections are checked from a real ``centrifuge-python`` client's side.

Run from the repo root:  python3 -m pytest tests/sdk/python -q
Binary: $SIDEWIRE_BIN if set, else <repo>/target/debug/sidewire.
Set SIDEWIRE_TEST_LOG=1 to print the server's stderr when the module finishes.

No pytest-asyncio: each test runs an async body with asyncio.run(); cent's blocking calls go
through asyncio.to_thread so the SDK client keeps reading meanwhile; every wait is bounded.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Client as CentClient,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import Disconnect, StreamPosition
from centrifuge import Client, ClientEventHandler, ClientState

REPO_ROOT = Path(__file__).resolve().parents[3]
SIDEWIRE_BIN = Path(os.environ["SIDEWIRE_BIN"]).resolve() if os.environ.get("SIDEWIRE_BIN") \
    else REPO_ROOT / "target" / "debug" / "sidewire"

STARTUP_TIMEOUT = 15.0
LISTEN_RE = re.compile(r"^sidewire listening client=(\S+) admin=(\S+)\s*$")
STEP = 5.0          # bound on any single await
TEST_BUDGET = 30.0  # bound on a whole test body
API_KEY = "cent-test-key"
SECRET = "cent-test-secret"


# --------------------------------------------------------------------------- server

class Server:
    def __init__(self, proc, stderr_path: Path, client_addr: str, admin_addr: str):
        self.proc = proc
        self.stderr_path = stderr_path
        self.ws_url = f"ws://{client_addr}/connection/websocket"
        self.api_url = f"http://{admin_addr}/api"

    def stderr_tail(self, limit: int = 8192) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:].strip() or "<empty>"
        except OSError:
            return "<unreadable>"


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
    tmp = tmp_path_factory.mktemp("sidewire-cent")
    config = tmp / "sidewire.yaml"
    config.write_text(
        'listen: "127.0.0.1:0"\n'
        'admin_listen: "127.0.0.1:0"\n'
        'allowed_origins: ["*"]\n'
        'hub:\n'
        f'  http_api: {{key: "{API_KEY}"}}\n'
        f'  client: {{token: {{hmac_secret_key: "{SECRET}"}}}}\n'
        # Secure defaults (as Centrifugo's): the users' channels are opened explicitly.
        '  channel: {without_namespace: {allow_subscribe_for_client: true, '
        'allow_publish_for_client: true, presence: true, allow_presence_for_client: true, '
        'history_size: 100, history_ttl: "300s", allow_history_for_client: true}}\n'
    )
    stderr_path = tmp / "stderr.log"
    stderr_file = open(stderr_path, "wb")
    proc = subprocess.Popen(
        [str(SIDEWIRE_BIN), "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
    )
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, name="sidewire-stdout", daemon=True).start()
    srv = None
    seen = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while srv is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        m = LISTEN_RE.match(line)
        if m:
            srv = Server(proc, stderr_path, m.group(1), m.group(2))
    if srv is None:
        _stop(proc)
        stderr_file.close()
        tail = stderr_path.read_text(errors="replace")[-8192:]
        pytest.fail(f"sidewire did not start: stdout {seen!r}; stderr:\n{tail}", pytrace=False)
    try:
        yield srv
    finally:
        _stop(proc)
        stderr_file.close()
        if os.environ.get("SIDEWIRE_TEST_LOG"):
            print(f"--- sidewire stderr ---\n{srv.stderr_tail(1 << 20)}")


@pytest.fixture(scope="module")
def cent(server):
    client = CentClient(server.api_url, API_KEY, timeout=STEP)
    yield client


# --------------------------------------------------------------------------- helpers

def run(body, budget: float = TEST_BUDGET):
    return asyncio.run(asyncio.wait_for(body, budget))


async def step(awaitable, what: str, timeout: float = STEP):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timeout after {timeout}s: {what}") from None


async def api(call, request):
    """Runs one blocking cent call off the event loop."""
    return await step(asyncio.to_thread(call, request), f"cent {type(request).__name__}")


def channel_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(user: str, exp_in: int = 600) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"sub": user, "exp": int(time.time()) + exp_in}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


class Events(ClientEventHandler):
    """Connection events, including server-side subscriptions."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future = loop.create_future()
        self.server_subscribed: asyncio.Queue = asyncio.Queue()
        self.server_unsubscribed: asyncio.Queue = asyncio.Queue()
        self.server_publications: asyncio.Queue = asyncio.Queue()
        self.disconnected: asyncio.Queue = asyncio.Queue()
        self.connecting: asyncio.Queue = asyncio.Queue()

    async def on_connecting(self, ctx) -> None:
        self.connecting.put_nowait(ctx)

    async def on_connected(self, ctx) -> None:
        if not self.connected.done():
            self.connected.set_result(ctx)

    async def on_subscribed(self, ctx) -> None:
        self.server_subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx) -> None:
        self.server_unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx) -> None:
        self.server_publications.put_nowait(ctx)

    async def on_disconnected(self, ctx) -> None:
        self.disconnected.put_nowait(ctx)


@asynccontextmanager
async def user_client(server: Server, user: str):
    """Yields (client, client_id, events) for a client connected as `user`."""
    events = Events()
    client = Client(
        server.ws_url, events=events, token=hs256_token(user), proxy=None, timeout=3.0,
        min_reconnect_delay=0.2, max_reconnect_delay=1.0,
    )
    try:
        await step(client.connect(), "client.connect()")
        ctx = await step(events.connected, f"on_connected (stderr:\n{server.stderr_tail()})")
        assert client.state == ClientState.CONNECTED
        yield client, ctx.client, events
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), STEP)
        except Exception:  # noqa: BLE001 - cleanup must not mask the test result
            pass


# --------------------------------------------------------------------------- tests

def test_publish_broadcast_history_and_history_remove(cent):
    async def body():
        channel = channel_name("cent-pub")
        first = await api(cent.publish, PublishRequest(channel=channel, data={"n": 1}, tags={"t": "v"}))
        assert first.offset == 1 and first.epoch
        again = await api(cent.publish, PublishRequest(channel=channel, data={"n": 2}, idempotency_key="k1"))
        repeat = await api(cent.publish, PublishRequest(channel=channel, data={"n": 2}, idempotency_key="k1"))
        assert (again.offset, again.epoch) == (repeat.offset, repeat.epoch) == (2, first.epoch)
        await api(cent.publish, PublishRequest(channel=channel, data={"n": 3}, skip_history=True))

        other = channel_name("cent-bc")
        broadcast = await api(cent.broadcast, BroadcastRequest(channels=[channel, other], data={"b": 1}))
        assert [r.result.offset for r in broadcast.responses] == [4, 1]
        assert all(r.error is None for r in broadcast.responses)

        position = await api(cent.history, HistoryRequest(channel=channel))
        assert position.publications == [] and position.offset == 4 and position.epoch == first.epoch
        history = await api(cent.history, HistoryRequest(channel=channel, limit=10))
        assert [p.offset for p in history.publications] == [1, 2, 4]
        assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}, {"b": 1}]
        assert history.publications[0].tags == {"t": "v"}
        newest = await api(cent.history, HistoryRequest(channel=channel, limit=1, reverse=True))
        assert [p.offset for p in newest.publications] == [4]
        since = await api(cent.history, HistoryRequest(
            channel=channel, limit=10, since=StreamPosition(offset=2, epoch=first.epoch)))
        assert [p.offset for p in since.publications] == [4]

        await api(cent.history_remove, HistoryRemoveRequest(channel=channel))
        emptied = await api(cent.history, HistoryRequest(channel=channel, limit=10))
        assert emptied.publications == []
    run(body())


def test_subscribe_presence_channels_info_and_unsubscribe(server, cent):
    async def body():
        channel = channel_name("cent-sub")
        async with user_client(server, "alice") as (client, client_id, events):
            await api(cent.subscribe, SubscribeRequest(user="alice", channel=channel, data={"hello": "alice"}))
            subscribed = await step(events.server_subscribed.get(), "server-side on_subscribed")
            assert subscribed.channel == channel
            assert subscribed.data == {"hello": "alice"}

            await api(cent.publish, PublishRequest(channel=channel, data={"to": "alice"}))
            publication = await step(events.server_publications.get(), "server-side publication")
            assert publication.channel == channel and publication.pub.data == {"to": "alice"}

            presence = await api(cent.presence, PresenceRequest(channel=channel))
            assert list(presence.presence) == [client_id]
            assert presence.presence[client_id].user == "alice"
            stats = await api(cent.presence_stats, PresenceStatsRequest(channel=channel))
            assert (stats.num_clients, stats.num_users) == (1, 1)

            listed = await api(cent.channels, ChannelsRequest(pattern="cent-sub-*"))
            assert listed.channels[channel].num_clients == 1
            unmatched = await api(cent.channels, ChannelsRequest(pattern="nothing-*"))
            assert unmatched.channels == {}

            info = await api(cent.info, InfoRequest())
            assert len(info.nodes) == 1
            node = info.nodes[0]
            assert node.uid and node.name and node.num_clients >= 1 and node.num_channels >= 1

            await api(cent.unsubscribe, UnsubscribeRequest(user="alice", channel=channel))
            unsubscribed = await step(events.server_unsubscribed.get(), "server-side on_unsubscribed")
            assert unsubscribed.channel == channel
            stats = await api(cent.presence_stats, PresenceStatsRequest(channel=channel))
            assert (stats.num_clients, stats.num_users) == (0, 0)
    run(body())


def test_refresh_and_disconnect(server, cent):
    async def body():
        async with user_client(server, "bob") as (client, client_id, events):
            await api(cent.refresh, RefreshRequest(user="bob", expire_at=int(time.time()) + 3600))
            assert client.state == ClientState.CONNECTED
            await api(cent.refresh, RefreshRequest(user="bob", client=client_id, expired=True))
            # 3005 is not terminal: the SDK goes to connecting with that code, then reconnects.
            while True:
                expired = await step(events.connecting.get(), "connecting after refresh expired")
                if expired.code == 3005:
                    break
            # Then a terminal custom disconnect.
            await step(_reconnected(client), "reconnect after 3005")
            await api(cent.disconnect, DisconnectRequest(
                user="bob", disconnect=Disconnect(code=4501, reason="bye")))
            gone = await step(events.disconnected.get(), "custom disconnect")
            assert (gone.code, gone.reason) == (4501, "bye")
    run(body())


async def _reconnected(client) -> None:
    while client.state != ClientState.CONNECTED:
        await asyncio.sleep(0.05)


def test_batch(cent):
    async def body():
        channel = channel_name("cent-batch")
        result = await api(cent.batch, BatchRequest(requests=[
            PublishRequest(channel=channel, data={"i": 1}),
            PublishRequest(channel=channel, data={"i": 2}),
            HistoryRequest(channel=channel, limit=10),
            PresenceStatsRequest(channel=channel),
        ], parallel=True))
        publish_1, publish_2, history, stats = result.replies
        assert (publish_1.offset, publish_2.offset) == (1, 2)
        assert [p.data for p in history.publications] == [{"i": 1}, {"i": 2}]
        assert stats.num_clients == 0
    run(body())


def test_errors_are_centrifugo_errors(server, cent):
    async def body():
        with pytest.raises(CentApiResponseError) as refused:
            await api(cent.publish, PublishRequest(channel="", data={}))
        assert refused.value.code == 107
        wrong = CentClient(server.api_url, "wrong-key", timeout=STEP)
        with pytest.raises(CentUnauthorizedError):
            await api(wrong.info, InfoRequest())
    run(body())
