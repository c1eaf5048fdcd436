//! The streaming transports' client: a session that reads an HTTP-stream (JSON or Protobuf)
//! or SSE response incrementally and checks its framing byte for byte ([`StreamClient`]),
//! `/emulation` requests in both encodings, and a sidecar started with both transports on.
//!
//! Every wait is bounded; nothing sleeps to let something happen.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use ::http::{HeaderMap, Request};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message as _;
use serde_json::{Value, json};
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Command, ConnectRequest, EmulationRequest, Push, Reply};
use tokio::time::Instant;

use super::{
    Conn, Fetched, Payload, ReqBody, Server, WAIT, eventually, fetch, http, presence_clients,
    request,
};

/// The one Origin the test server allows.
pub const ALLOWED_ORIGIN: &str = "http://ok.example";
/// An Origin the test server refuses.
pub const EVIL_ORIGIN: &str = "http://evil.example";
/// Largest single message the stream parser accepts, bytes.
const MAX_MESSAGE: usize = 1 << 20;

/// Starts a sidecar with HTTP-stream and SSE on, [`ALLOWED_ORIGIN`] allowed and `extra` YAML
/// lines, and waits until it is ready (Link up).
pub async fn start_server(extra: &str) -> Server {
    let server = Server::start(&format!(
        "http_stream: true\nsse: true\nallowed_origins: [\"{ALLOWED_ORIGIN}\"]\n{extra}"
    ))
    .await;
    server.wait_ready(Duration::from_secs(10)).await;
    server
}

// === client protocol framing ===

/// `{"id":1,"connect":{}}` as a command.
pub fn connect_command() -> Command {
    Command {
        id: 1,
        connect: Some(ConnectRequest::default()),
        ..Default::default()
    }
}

/// Commands framed for a request body: JSON lines joined by `\n`, or varint-delimited
/// Protobuf messages.
pub fn frame_commands(encoding: Encoding, commands: &[Command]) -> Bytes {
    match encoding {
        Encoding::Json => {
            let lines: Vec<String> = commands
                .iter()
                .map(|c| serde_json::to_string(c).expect("encode command"))
                .collect();
            Bytes::from(lines.join("\n"))
        }
        Encoding::Protobuf => {
            let mut out = Vec::new();
            for command in commands {
                out.extend_from_slice(&command.encode_length_delimited_to_vec());
            }
            Bytes::from(out)
        }
    }
}

/// `POST /connection/http_stream` carrying `commands` (the connect first) in `encoding`, with
/// its Content-Type (`application/json` or exactly `application/octet-stream`).
pub fn http_stream_request(
    addr: SocketAddr,
    encoding: Encoding,
    commands: &[Command],
    origin: Option<&str>,
) -> Request<ReqBody> {
    let content_type = match encoding {
        Encoding::Json => "application/json",
        Encoding::Protobuf => "application/octet-stream",
    };
    let mut headers = vec![("content-type", content_type)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    let body = frame_commands(encoding, commands);
    request(
        addr,
        "POST",
        "/connection/http_stream",
        &headers,
        Payload::Sized(body),
    )
}

/// A command with `id` set.
pub fn with_id(mut command: Command, id: u32) -> Command {
    command.id = id;
    command
}

/// An `/emulation` POST carrying `data` (already framed commands) for `session` on `node`:
/// JSON `{"node","session","data"}` (data as a string) or a Protobuf `EmulationRequest` with
/// `Content-Type: application/octet-stream`.
pub fn emulation_request(
    addr: SocketAddr,
    encoding: Encoding,
    node: &str,
    session: &str,
    data: &[u8],
    origin: Option<&str>,
) -> Request<ReqBody> {
    let (content_type, body) = match encoding {
        Encoding::Json => {
            let data = std::str::from_utf8(data).expect("JSON emulation data is text");
            let body = json!({"node": node, "session": session, "data": data});
            ("application/json", Bytes::from(body.to_string()))
        }
        Encoding::Protobuf => {
            let body = EmulationRequest {
                node: node.to_owned(),
                session: session.to_owned(),
                data: Bytes::copy_from_slice(data),
            };
            (
                "application/octet-stream",
                Bytes::from(body.encode_to_vec()),
            )
        }
    };
    let mut headers = vec![("content-type", content_type)];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    request(addr, "POST", "/emulation", &headers, Payload::Sized(body))
}

// === streaming session client ===

/// Which streaming transport a [`StreamClient`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// HTTP-stream in the given encoding.
    HttpStream(Encoding),
    /// SSE (JSON).
    Sse,
}

impl Flavor {
    /// Encoding of the session's messages.
    pub fn encoding(self) -> Encoding {
        match self {
            Flavor::HttpStream(encoding) => encoding,
            Flavor::Sse => Encoding::Json,
        }
    }
}

/// A streaming session: the connect request's response read incrementally. Framing is
/// checked as bytes arrive: JSON HTTP-stream messages are non-empty `\n`-terminated lines,
/// SSE starts with `\r\n` and then has only `data: <one-line JSON>\n\n` events, Protobuf is
/// varint-delimited; a response must never end inside a message.
pub struct StreamClient {
    /// Transport and encoding.
    pub flavor: Flavor,
    addr: SocketAddr,
    /// Response status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    body: Incoming,
    /// Every byte of the response body, as received.
    raw: Vec<u8>,
    /// Unparsed bytes (JSON / SSE / Protobuf).
    pending: Vec<u8>,
    /// Bytes of whole Protobuf messages taken out of `pending` (prefixes included).
    consumed: usize,
    sse_preamble_seen: bool,
    inbox: VecDeque<Reply>,
    /// Server pings read so far.
    pub pings: usize,
    /// Answer pings at once with a pong through `/emulation` (they then skip the inbox).
    pub auto_pong: bool,
    /// Origin sent with the connect request, reused for emulation POSTs.
    origin: Option<String>,
    ended: bool,
    /// Emulation session id from the connect reply.
    pub session: String,
    /// Node id from the connect reply.
    pub node: String,
    /// Client id from the connect reply.
    pub client: String,
    _conn: Conn,
}

impl StreamClient {
    /// Sends `request` on a new connection and returns the client whatever the status (the
    /// body has not been read yet).
    pub async fn open(
        addr: SocketAddr,
        flavor: Flavor,
        request: Request<ReqBody>,
        origin: Option<&str>,
    ) -> StreamClient {
        let mut conn = Conn::open(addr).await;
        let response = conn.send(request).await;
        let (parts, body) = response.into_parts();
        StreamClient {
            flavor,
            addr,
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            raw: Vec::new(),
            pending: Vec::new(),
            consumed: 0,
            sse_preamble_seen: false,
            inbox: VecDeque::new(),
            pings: 0,
            auto_pong: false,
            origin: origin.map(str::to_owned),
            ended: false,
            session: String::new(),
            node: String::new(),
            client: String::new(),
            _conn: conn,
        }
    }

    /// `POST /connection/http_stream` with a connect command in `encoding` (Content-Type
    /// `application/json` or exactly `application/octet-stream`); checks 200 and reads the
    /// connect reply.
    pub async fn http_stream(
        addr: SocketAddr,
        encoding: Encoding,
        origin: Option<&str>,
    ) -> StreamClient {
        let request = http_stream_request(addr, encoding, &[connect_command()], origin);
        let mut client =
            StreamClient::open(addr, Flavor::HttpStream(encoding), request, origin).await;
        client.expect_connected().await;
        client
    }

    /// `GET /connection/sse?cf_connect=<url-encoded connect>`; checks 200 and reads the connect
    /// reply.
    pub async fn sse(addr: SocketAddr, origin: Option<&str>) -> StreamClient {
        let mut headers = vec![];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        let request = request(
            addr,
            "GET",
            &sse_connect_path(r#"{"id":1,"connect":{}}"#),
            &headers,
            Payload::Empty,
        );
        let mut client = StreamClient::open(addr, Flavor::Sse, request, origin).await;
        client.expect_connected().await;
        client
    }

    /// Expects a 200 and, as the very first message, a successful connect reply (id 1) with
    /// `client`, `session` and `node`; remembers them.
    pub async fn expect_connected(&mut self) -> Reply {
        assert_eq!(
            self.status, 200,
            "{:?} connect: status {} headers {:?}",
            self.flavor, self.status, self.headers
        );
        let reply = self.next_message("the connect reply").await;
        assert_eq!(
            reply.id, 1,
            "first message is not the connect reply: {reply:?}"
        );
        let result = reply
            .connect
            .clone()
            .unwrap_or_else(|| panic!("connect failed: {reply:?}"));
        assert!(
            !result.client.is_empty() && !result.session.is_empty() && !result.node.is_empty(),
            "connect reply without client/session/node: {reply:?}"
        );
        self.session = result.session;
        self.node = result.node;
        self.client = result.client;
        reply
    }

    /// Every byte of the response body received so far.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Unconsumed messages.
    pub fn unconsumed(&self) -> &VecDeque<Reply> {
        &self.inbox
    }

    // --- emulation ---

    /// POSTs `commands` to `/emulation` for this session (in the session's encoding, with the
    /// connect request's Origin) on a new connection; returns the response.
    pub async fn emulate_commands(&self, commands: &[Command]) -> Fetched {
        let encoding = self.flavor.encoding();
        let data = frame_commands(encoding, commands);
        fetch(
            self.addr,
            emulation_request(
                self.addr,
                encoding,
                &self.node,
                &self.session,
                &data,
                self.origin.as_deref(),
            ),
        )
        .await
    }

    /// [`StreamClient::emulate_commands`] that must answer 204.
    pub async fn emulate(&self, commands: &[Command]) {
        let fetched = self.emulate_commands(commands).await;
        assert_eq!(
            fetched.status,
            204,
            "emulation POST of {commands:?}: {} {:?}",
            fetched.text(),
            fetched.headers
        );
    }

    /// Sends `command` with `id` through `/emulation` and waits for its reply on the stream.
    pub async fn request(&mut self, command: Command, id: u32) -> Reply {
        self.emulate(&[with_id(command, id)]).await;
        self.expect_reply(id).await
    }

    // --- reading ---

    /// Reads one more body frame into the inbox. `false` on timeout; panics if the response
    /// already ended (naming `waiting_for`).
    async fn fill(&mut self, deadline: Instant, waiting_for: &str) -> bool {
        if self.ended {
            panic!(
                "{:?} response ended while waiting for {waiting_for}; unconsumed: {:?}",
                self.flavor, self.inbox
            );
        }
        self.read_frame(deadline).await.is_some()
    }

    /// Reads one body frame (or the end); `None` on timeout.
    async fn read_frame(&mut self, deadline: Instant) -> Option<()> {
        let frame = tokio::time::timeout_at(deadline, self.body.frame())
            .await
            .ok()?;
        match frame {
            None => {
                self.ended = true;
                let leftover = match self.flavor {
                    Flavor::HttpStream(Encoding::Protobuf) => self.raw.len() != self.consumed,
                    _ => !self.pending.is_empty(),
                };
                assert!(
                    !leftover && (self.flavor != Flavor::Sse || self.sse_preamble_seen),
                    "{:?} response ended inside a message; raw body: {:?}",
                    self.flavor,
                    String::from_utf8_lossy(&self.raw)
                );
            }
            Some(Err(e)) => panic!(
                "{:?} response body error: {e}; raw so far: {:?}",
                self.flavor,
                String::from_utf8_lossy(&self.raw)
            ),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.raw.extend_from_slice(&data);
                    for reply in self.parse(&data) {
                        if reply == Reply::default() {
                            self.pings += 1;
                            if self.auto_pong {
                                // A pong is an empty command.
                                self.emulate(&[Command::default()]).await;
                                continue;
                            }
                        }
                        self.inbox.push_back(reply);
                    }
                }
            }
        }
        Some(())
    }

    /// Splits newly received bytes into messages, checking the transport's framing.
    fn parse(&mut self, data: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        match self.flavor {
            Flavor::HttpStream(Encoding::Json) => {
                self.pending.extend_from_slice(data);
                while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    let line = &line[..end];
                    assert!(
                        !line.is_empty(),
                        "empty line in the http_stream response: {:?}",
                        String::from_utf8_lossy(&self.raw)
                    );
                    replies.push(json_reply(line));
                }
            }
            Flavor::HttpStream(Encoding::Protobuf) => {
                self.pending.extend_from_slice(data);
                while let Some((prefix, size)) = delimited_len(&self.pending, &self.raw) {
                    let message: Vec<u8> =
                        self.pending.drain(..prefix + size).skip(prefix).collect();
                    self.consumed += prefix + size;
                    replies.push(
                        Reply::decode(&message[..])
                            .unwrap_or_else(|e| panic!("bad Protobuf reply {message:?}: {e}")),
                    );
                }
            }
            Flavor::Sse => {
                self.pending.extend_from_slice(data);
                if !self.sse_preamble_seen {
                    if self.pending.len() < 2 {
                        return replies;
                    }
                    assert_eq!(
                        &self.pending[..2],
                        b"\r\n",
                        "SSE body does not start with \\r\\n: {:?}",
                        String::from_utf8_lossy(&self.raw)
                    );
                    self.pending.drain(..2);
                    self.sse_preamble_seen = true;
                }
                while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                    let event = &event[..end];
                    let data = event.strip_prefix(b"data: ").unwrap_or_else(|| {
                        panic!(
                            "SSE event is not a single `data: ` line: {:?} (raw: {:?})",
                            String::from_utf8_lossy(event),
                            String::from_utf8_lossy(&self.raw)
                        )
                    });
                    assert!(
                        !data.is_empty() && !data.contains(&b'\n') && !data.contains(&b'\r'),
                        "SSE data line is empty or spans lines: {:?}",
                        String::from_utf8_lossy(event)
                    );
                    replies.push(json_reply(data));
                }
            }
        }
        replies
    }

    /// The next message in order (pings included unless auto-ponged), within [`WAIT`].
    pub async fn next_message(&mut self, what: &str) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return reply;
            }
            if !self.fill(deadline, what).await {
                panic!("{:?}: no {what} within {WAIT:?}", self.flavor);
            }
        }
    }

    /// Waits (within [`WAIT`]) for a message matching `matches`; others stay queued.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(index) = self.inbox.iter().position(&matches) {
                return self.inbox.remove(index).expect("index in range");
            }
            if !self.fill(deadline, what).await {
                panic!(
                    "{:?}: no {what} within {WAIT:?}; unconsumed: {:?}",
                    self.flavor, self.inbox
                );
            }
        }
    }

    /// Waits for the reply with `id`.
    pub async fn expect_reply(&mut self, id: u32) -> Reply {
        self.expect(&format!("reply {id}"), |r| r.id == id).await
    }

    /// Waits for a push matching `matches`.
    pub async fn expect_push(&mut self, what: &str, matches: impl Fn(&Push) -> bool) -> Push {
        self.expect(what, |r| r.id == 0 && r.push.as_ref().is_some_and(&matches))
            .await
            .push
            .expect("matched a push")
    }

    /// Waits for a publication on `channel` and returns its data as JSON.
    pub async fn expect_publication(&mut self, channel: &str) -> Value {
        let push = self
            .expect_push(&format!("publication on {channel}"), |p| {
                p.channel == channel && p.r#pub.is_some()
            })
            .await;
        let data = push.r#pub.expect("publication").data;
        serde_json::from_slice(&data).expect("publication data is JSON")
    }

    /// Waits until `count` pings have been read in total (answered when `auto_pong`).
    pub async fn wait_pings(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pings < count {
            if !self.fill(deadline, &format!("{count} pings")).await {
                panic!(
                    "{:?}: only {} of {count} pings within {timeout:?}; unconsumed: {:?}",
                    self.flavor, self.pings, self.inbox
                );
            }
        }
    }

    /// Reads until the response ends (within `timeout`) and returns every unconsumed message
    /// in arrival order.
    pub async fn expect_end(&mut self, timeout: Duration) -> Vec<Reply> {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            if self.read_frame(deadline).await.is_none() {
                panic!(
                    "{:?} response did not end within {timeout:?}; unconsumed: {:?}",
                    self.flavor, self.inbox
                );
            }
        }
        self.inbox.drain(..).collect()
    }

    /// Reads until the end and checks that the last message is a disconnect push with
    /// `code`; returns the messages before it.
    pub async fn expect_disconnect(&mut self, code: u32, timeout: Duration) -> Vec<Reply> {
        let mut messages = self.expect_end(timeout).await;
        let last = messages
            .pop()
            .unwrap_or_else(|| panic!("{:?} ended without a disconnect push", self.flavor));
        let disconnect = last
            .push
            .as_ref()
            .and_then(|p| p.disconnect.clone())
            .unwrap_or_else(|| panic!("last message is not a disconnect push: {last:?}"));
        assert_eq!(
            (last.id, disconnect.code),
            (0, code),
            "{:?} disconnect push: {last:?} (before it: {messages:?})",
            self.flavor
        );
        assert!(!disconnect.reason.is_empty(), "disconnect without reason");
        messages
    }
}

/// The varint prefix length and message size of the first whole varint-delimited message in
/// `pending`, `None` while more bytes are needed; panics (with the raw body) on a bad prefix or
/// a message larger than [`MAX_MESSAGE`].
fn delimited_len(pending: &[u8], raw: &[u8]) -> Option<(usize, usize)> {
    let mut peek = pending;
    let size = match prost::encoding::decode_varint(&mut peek) {
        Ok(size) => usize::try_from(size).unwrap_or(usize::MAX),
        // A varint is at most 10 bytes; fewer buffered, ending in a continuation byte (or
        // none at all), may be incomplete.
        Err(_) if pending.len() < 10 && pending.last().is_none_or(|b| b & 0x80 != 0) => {
            return None;
        }
        Err(e) => panic!("bad Protobuf framing: {e}; raw: {raw:?}"),
    };
    assert!(
        size <= MAX_MESSAGE,
        "Protobuf message of {size} bytes; raw: {raw:?}"
    );
    let prefix = pending.len() - peek.len();
    (peek.len() >= size).then_some((prefix, size))
}

/// One JSON message of the stream: a client-protocol reply (checked to be a JSON object).
fn json_reply(bytes: &[u8]) -> Reply {
    let value: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "stream message is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    assert!(
        value.is_object(),
        "stream message is not an object: {value}"
    );
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "stream message is not a Reply ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// `/connection/sse?cf_connect=<command, url-encoded>`.
pub fn sse_connect_path(command: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(command.as_bytes()).collect();
    format!("/connection/sse?cf_connect={encoded}")
}

/// Waits (polling the server API, at most `timeout`) until `client`'s presence in `channel`
/// is `present`.
pub async fn await_presence(
    api: SocketAddr,
    channel: &str,
    client: &str,
    present: bool,
    timeout: Duration,
) {
    let what = format!(
        "client {client} {} in the presence of {channel}",
        if present { "listed" } else { "not listed" }
    );
    eventually(timeout, &what, || async {
        presence_clients(api, channel)
            .await
            .iter()
            .any(|c| c == client)
            == present
    })
    .await;
}

/// Publishes `{"y":[1,2]}` through the server API, written over several lines.
pub async fn publish_pretty(api: std::net::SocketAddr, channel: &str) {
    let body = format!(
        "{{\n  \"channel\": \"{channel}\",\n  \"data\": {{\n    \"y\": [\n      1,\n      2\n    ]\n  }}\n}}"
    );
    let (status, text) = http(api, "POST", "/api/publish", &[], Some(&body)).await;
    assert_eq!(status, 200, "{text}");
}
