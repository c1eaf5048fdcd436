#!/usr/bin/env python3
"""A minimal sidewire Link upstream in Python (grpcio), written from docs/link.md.

It keeps everything in memory: connect (anyone, or users named by `connect.data.user`),
subscribe / unsubscribe (with Membership frames), publish (one ChannelPush per stream with
members), rpc "echo". Every other command gets error 108 "not available". Exactly one reply per
command with an id, always.

The Python code for the Link is generated from ../../proto at start-up with grpc_tools.protoc
(pip packages grpcio and grpcio-tools; no system protoc needed).

    python3 server.py --listen 127.0.0.1:9300 [--token SECRET]

With --token (or $LINK_TOKEN), a stream without `authorization: Bearer SECRET` is refused with
UNAUTHENTICATED before `welcome`. The process prints "upstream listening <addr>" when ready.
"""

import argparse
import asyncio
import hmac
import importlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
import uuid

import grpc
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PROTO_ROOT = HERE.parent.parent / "proto"
PROTOCOL_VERSION = 1
# Optional frames this upstream wants from the sidecar (docs/link.md, "Versioning").
CAPABILITIES = ["command_timeout", "link_error"]
# Frames queued towards one sidecar before the stream is considered stuck and ended.
MAX_QUEUED_FRAMES = 10_000

log = logging.getLogger("upstream")


def generate(proto_root: pathlib.Path):
    """Generates link/client modules into a temp dir and imports them."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="sidewire-link-py-"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "sidewire/v1/client.proto",
        "sidewire/v1/link.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed for {proto_root}")
    sys.path.insert(0, str(out))
    client = importlib.import_module("sidewire.v1.client_pb2")
    link = importlib.import_module("sidewire.v1.link_pb2")
    link_grpc = importlib.import_module("sidewire.v1.link_pb2_grpc")
    return client, link, link_grpc


class Channel:
    """History-less channel state: an epoch and the offset of the last publication."""

    def __init__(self):
        # A new epoch per process: offsets restart at 0 after a restart, and clients that
        # compare epochs know their position is from another history.
        self.epoch = uuid.uuid4().hex[:8]
        self.offset = 0


class Hub:
    """State shared by all streams. asyncio runs one callback at a time, so the subscribe
    reply, its Membership and the offset it reports are atomic w.r.t. publications."""

    def __init__(self, pb, lpb):
        self.pb, self.lpb = pb, lpb
        self.streams = {}  # stream id -> Stream
        self.channels = {}  # name -> Channel
        self.next_stream = 1

    def channel(self, name):
        return self.channels.setdefault(name, Channel())

    def publish(self, name, data):
        channel = self.channel(name)
        channel.offset += 1
        publication = self.pb.Publication(data=data, offset=channel.offset)
        push = self.pb.Push(channel=name, pub=publication)
        # One ChannelPush per sidecar stream that has members: the sidecar fans out.
        for stream in self.streams.values():
            if any(name in chans for chans in stream.sessions.values()):
                stream.send(push=self.lpb.ChannelPush(channel=name, push=push))
        return channel


class Stream:
    """One Link stream (one sidecar, or one of two during a reload). Sessions are keyed by
    the sidecar's session id, which is unique only within this stream."""

    def __init__(self, hub, stream_id):
        self.hub, self.id = hub, stream_id
        self.pb, self.lpb = hub.pb, hub.lpb
        self.queue = asyncio.Queue()
        self.sessions = {}  # session id -> set of channel names
        self.ended = False

    def send(self, **frame):
        if self.queue.qsize() >= MAX_QUEUED_FRAMES:
            log.warning("stream %s: sidecar not reading, ending the stream", self.id)
            self.ended = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(self.lpb.UpstreamFrame(**frame))

    def reply(self, session, reply):
        self.send(reply=self.lpb.SessionReply(session=session, reply=reply))

    def error(self, session, command_id, code, message, temporary=False):
        err = self.pb.Error(code=code, message=message, temporary=temporary)
        self.reply(session, self.pb.Reply(id=command_id, error=err))

    def handle(self, frame):
        kind = frame.WhichOneof("frame")
        if kind == "hello":
            log.info(
                "stream %s: hello from node %s (sidewire %s, protocol %s, capabilities %s)",
                self.id, frame.hello.node, frame.hello.version,
                frame.hello.protocol_version, list(frame.hello.capabilities),
            )
        elif kind == "open":
            self.open(frame.open)
        elif kind == "command":
            self.command(frame.command.session, frame.command.command)
        elif kind == "close":
            # Leaves would be produced here if channels had join/leave.
            self.sessions.pop(frame.close.session, None)
        elif kind == "command_timeout":
            log.warning("stream %s: session %s command %s timed out in the sidecar",
                        self.id, frame.command_timeout.session, frame.command_timeout.id)
        elif kind == "error":
            log.warning("stream %s: sidecar reports link error %s: %s",
                        self.id, frame.error.code, frame.error.message)
        # Anything else: a frame from a newer sidecar, ignored (docs/link.md, "Versioning").

    def open(self, open_):
        cmd = open_.connect
        user = ""
        if cmd.connect.data:
            try:
                user = str(json.loads(cmd.connect.data).get("user", ""))
            except (ValueError, AttributeError):
                return self.error(open_.session, cmd.id, 107, "bad request")
        if user == "refuse":
            # A refusal: the sidecar writes it, ends the connection, and sends SessionClose.
            return self.error(open_.session, cmd.id, 101, "unauthorized")
        self.sessions[open_.session] = set()
        # client, ping, pong, session and node are left to the sidecar.
        self.reply(open_.session, self.pb.Reply(id=cmd.id, connect=self.pb.ConnectResult()))
        log.info("stream %s: session %s connected (client %s, user %r, %s)",
                 self.id, open_.session, open_.client, user, open_.transport)

    def command(self, session, cmd):
        if session not in self.sessions:
            return  # closed meanwhile; nothing to answer to
        pb, lpb = self.pb, self.lpb
        if cmd.HasField("subscribe"):
            name = cmd.subscribe.channel
            if name in self.sessions[session]:
                return self.error(session, cmd.id, 105, "already subscribed")
            channel = self.hub.channel(name)
            self.sessions[session].add(name)
            result = pb.SubscribeResult(epoch=channel.epoch, offset=channel.offset)
            # Reply and Membership together, with no publication in between.
            self.reply(session, pb.Reply(id=cmd.id, subscribe=result))
            self.send(membership=lpb.Membership(session=session, channel=name, subscribed=True))
        elif cmd.HasField("unsubscribe"):
            name = cmd.unsubscribe.channel
            self.sessions[session].discard(name)
            self.send(membership=lpb.Membership(session=session, channel=name, subscribed=False))
            self.reply(session, pb.Reply(id=cmd.id, unsubscribe=pb.UnsubscribeResult()))
        elif cmd.HasField("publish"):
            data = cmd.publish.data
            try:
                json.loads(data)  # JSON clients can only receive JSON
            except ValueError:
                return self.error(session, cmd.id, 107, "bad request")
            self.hub.publish(cmd.publish.channel, data)
            self.reply(session, pb.Reply(id=cmd.id, publish=pb.PublishResult()))
        elif cmd.HasField("rpc") and cmd.rpc.method == "echo":
            self.reply(session, pb.Reply(id=cmd.id, rpc=pb.RPCResult(data=cmd.rpc.data)))
        elif cmd.id:
            self.error(session, cmd.id, 108, "not available")
        # id 0 (a `send`): no reply.


class LinkService:
    """The `sidewire.v1.Link` service: one `Multiplex` call per sidecar stream."""

    def __init__(self, hub, token):
        self.hub, self.token = hub, token

    async def Multiplex(self, request_iterator, context):
        if self.token is not None:
            metadata = dict(context.invocation_metadata())
            presented = metadata.get("authorization", "")
            if not hmac.compare_digest(presented.encode(), f"Bearer {self.token}".encode()):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid link token")
        hub = self.hub
        stream = Stream(hub, hub.next_stream)
        hub.next_stream += 1
        hub.streams[stream.id] = stream

        async def read():
            try:
                async for frame in request_iterator:
                    stream.handle(frame)
                    if stream.ended:
                        break
            except grpc.aio.AioRpcError as error:
                log.info("stream %s: read ended: %s", stream.id, error)
            finally:
                stream.queue.put_nowait(None)

        yield hub.lpb.UpstreamFrame(welcome=hub.lpb.Welcome(
            version="python-upstream 0.1", protocol_version=PROTOCOL_VERSION,
            capabilities=CAPABILITIES))
        reader = asyncio.ensure_future(read())
        try:
            while True:
                frame = await stream.queue.get()
                if frame is None:
                    break
                yield frame
        finally:
            reader.cancel()
            # Link loss: every session of this stream is gone (the sidecar closed them 3004).
            hub.streams.pop(stream.id, None)
            log.info("stream %s: ended, %d sessions forgotten", stream.id, len(stream.sessions))


async def serve(listen, token, proto_root):
    pb, lpb, link_grpc = generate(proto_root)
    hub = Hub(pb, lpb)
    # The sidecar sends HTTP/2 keepalive pings every 10 s, also while no data flows. gRPC's
    # default policy (at most one ping per 5 min without data) would answer with GOAWAY "too
    # many pings" after about 30 s of quiet and drop the Link: allow them.
    server = grpc.aio.server(options=[
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    link_grpc.add_LinkServicer_to_server(LinkService(hub, token), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        sys.exit(f"cannot listen on {listen}")
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"upstream listening {host}:{port}", flush=True)
    await server.wait_for_termination()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9300", help="host:port (port 0: any)")
    parser.add_argument("--token", default=os.environ.get("LINK_TOKEN"),
                        help="required bearer token (default: $LINK_TOKEN; none: open)")
    parser.add_argument("--proto", default=str(DEFAULT_PROTO_ROOT), help="proto/ directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    try:
        asyncio.run(serve(args.listen, args.token, pathlib.Path(args.proto)))
    except KeyboardInterrupt:
        log.info("stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
