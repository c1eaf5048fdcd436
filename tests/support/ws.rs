//! The WebSocket client-protocol v2 client ([`WsClient`]), the command builders and test
//! tokens.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::Value;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{
    Command, ConnectRequest, HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest,
    Push, RefreshRequest, Reply, RpcRequest, SendRequest, StreamPosition, SubscribeRequest,
    UnsubscribeRequest,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use super::WAIT;

// === WebSocket client ===

/// How to open a WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Request path (default `/connection/websocket`).
    pub path: String,
    /// Query string without `?`.
    pub query: Option<String>,
    /// `Origin` header.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` header value as sent.
    pub subprotocols: Option<String>,
    /// The encoding the test expects the server to pick (and that the client speaks).
    pub encoding: Encoding,
    /// `SO_RCVBUF` of the client socket (small values make a non-reading client back up fast).
    pub recv_buffer: Option<u32>,
    /// Extra request headers (e.g. `Cookie`).
    pub headers: Vec<(String, String)>,
}

impl WsOptions {
    /// JSON, no subprotocol (what centrifuge-js does for JSON).
    pub fn json() -> WsOptions {
        WsOptions {
            path: "/connection/websocket".to_owned(),
            query: None,
            origin: None,
            subprotocols: None,
            encoding: Encoding::Json,
            recv_buffer: None,
            headers: Vec::new(),
        }
    }

    /// Protobuf via the `centrifuge-protobuf` subprotocol (what centrifuge-js does).
    pub fn protobuf() -> WsOptions {
        WsOptions {
            subprotocols: Some("centrifuge-protobuf".to_owned()),
            encoding: Encoding::Protobuf,
            ..WsOptions::json()
        }
    }

    /// [`WsOptions::json`] or [`WsOptions::protobuf`].
    pub fn for_encoding(encoding: Encoding) -> WsOptions {
        match encoding {
            Encoding::Json => WsOptions::json(),
            Encoding::Protobuf => WsOptions::protobuf(),
        }
    }

    /// Sets the Origin header.
    pub fn origin(mut self, origin: &str) -> WsOptions {
        self.origin = Some(origin.to_owned());
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> WsOptions {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the query string (without `?`).
    pub fn query(mut self, query: &str) -> WsOptions {
        self.query = Some(query.to_owned());
        self
    }
}

/// Why a WebSocket handshake failed.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The server answered the upgrade with a non-101 status.
    Status(u16),
    /// Anything else (TCP error, bad handshake response, timeout).
    Other(String),
}

/// Something read from the connection.
enum Inbound {
    Replies(Vec<Reply>),
    Close(u16, String),
    Ended(String),
}

/// A client-protocol v2 WebSocket client that keeps every decoded message in arrival order,
/// so that tests can wait for a reply by id or a push by predicate whatever the interleaving.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// Encoding spoken on this connection.
    pub encoding: Encoding,
    /// Headers of the server's 101 response.
    pub response_headers: ::http::HeaderMap,
    /// Received and not yet consumed messages (replies and pushes; pings unless auto-ponged).
    inbox: VecDeque<Reply>,
    /// Answer server pings with a pong as soon as they are read (they never reach the inbox).
    pub auto_pong: bool,
    /// Number of server pings read so far.
    pub pings: usize,
    next_id: u32,
    /// Close frame (or end of stream) seen while waiting for something else.
    ended: Option<Result<(u16, String), String>>,
}

impl WsClient {
    /// Connects and panics (failing the test) when the handshake fails.
    pub async fn connect(addr: SocketAddr, options: WsOptions) -> WsClient {
        match WsClient::try_connect(addr, options).await {
            Ok(client) => client,
            Err(e) => panic!("WebSocket handshake to {addr} failed: {e:?}"),
        }
    }

    /// Connects; returns the HTTP status when the server refuses the upgrade.
    pub async fn try_connect(
        addr: SocketAddr,
        options: WsOptions,
    ) -> Result<WsClient, HandshakeFailure> {
        let mut url = format!("ws://{addr}{}", options.path);
        if let Some(query) = &options.query {
            url.push('?');
            url.push_str(query);
        }
        let mut request = url
            .into_client_request()
            .map_err(|e| HandshakeFailure::Other(e.to_string()))?;
        if let Some(origin) = &options.origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        for (name, value) in &options.headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| HandshakeFailure::Other(e.to_string()))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| HandshakeFailure::Other(e.to_string()))?;
            request.headers_mut().append(name, value);
        }
        if let Some(protocols) = &options.subprotocols {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(protocols).unwrap(),
            );
        }
        let handshake = async {
            let socket = tokio::net::TcpSocket::new_v4()
                .map_err(|e| HandshakeFailure::Other(format!("socket: {e}")))?;
            if let Some(size) = options.recv_buffer {
                socket
                    .set_recv_buffer_size(size)
                    .map_err(|e| HandshakeFailure::Other(format!("SO_RCVBUF: {e}")))?;
            }
            let tcp = socket
                .connect(addr)
                .await
                .map_err(|e| HandshakeFailure::Other(format!("tcp connect: {e}")))?;
            tcp.set_nodelay(true).ok();
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(64 << 20));
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| match e {
                    WsError::Http(response) => HandshakeFailure::Status(response.status().as_u16()),
                    other => HandshakeFailure::Other(other.to_string()),
                })
        };
        let (ws, response) = tokio::time::timeout(WAIT, handshake)
            .await
            .map_err(|_| HandshakeFailure::Other("handshake timed out".to_owned()))??;
        Ok(WsClient {
            ws,
            encoding: options.encoding,
            response_headers: response.headers().clone(),
            inbox: VecDeque::new(),
            auto_pong: false,
            pings: 0,
            next_id: 1,
            ended: None,
        })
    }

    /// The `Sec-WebSocket-Protocol` the server answered with, if any.
    pub fn selected_subprotocol(&self) -> Option<String> {
        self.response_headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    // --- sending ---

    /// Sends the commands as one WebSocket message (JSON joined by `\n` in a text frame,
    /// Protobuf varint-delimited in a binary frame).
    pub async fn send_commands(&mut self, commands: &[Command]) {
        let message = match self.encoding {
            Encoding::Json => {
                let lines: Vec<String> = commands
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("encode command"))
                    .collect();
                Message::text(lines.join("\n"))
            }
            Encoding::Protobuf => {
                let mut frame = Vec::new();
                for command in commands {
                    frame.extend_from_slice(&command.encode_length_delimited_to_vec());
                }
                Message::binary(frame)
            }
        };
        self.send_message(message).await;
    }

    /// Sends one raw text message.
    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text.to_owned())).await;
    }

    /// Sends one raw binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_message(Message::binary(bytes)).await;
    }

    /// Sends a pong (empty command: `{}` or `0x00`).
    pub async fn send_pong(&mut self) {
        match self.encoding {
            Encoding::Json => self.send_text("{}").await,
            Encoding::Protobuf => self.send_binary(vec![0]).await,
        }
    }

    async fn send_message(&mut self, message: Message) {
        match tokio::time::timeout(WAIT, self.ws.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("WebSocket send failed: {e}"),
            Err(_) => panic!("WebSocket send did not complete within {WAIT:?}"),
        }
    }

    /// Allocates the next command id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `command` with a fresh id and waits for the reply carrying that id.
    pub async fn request(&mut self, mut command: Command) -> Reply {
        command.id = self.next_id();
        let id = command.id;
        self.send_commands(&[command]).await;
        self.expect_reply(id, WAIT).await
    }

    /// Sends `connect` and returns its reply (result or error).
    pub async fn connect_with(&mut self, request: ConnectRequest) -> Reply {
        self.request(Command {
            connect: Some(request),
            ..Default::default()
        })
        .await
    }

    /// Connects anonymously and returns the client id; panics on an error reply.
    pub async fn handshake(&mut self) -> String {
        self.handshake_with(ConnectRequest::default()).await
    }

    /// Connects and returns the client id; panics on an error reply.
    pub async fn handshake_with(&mut self, request: ConnectRequest) -> String {
        let reply = self.connect_with(request).await;
        assert_eq!(reply.error, None, "connect failed: {reply:?}");
        let result = reply.connect.expect("connect reply without ConnectResult");
        assert!(!result.client.is_empty(), "empty client id: {result:?}");
        result.client
    }

    // --- receiving ---

    /// Reads one WebSocket message (bounded by `deadline`) and decodes it.
    async fn read_inbound(&mut self, deadline: Instant) -> Option<Inbound> {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            let message = match next {
                None => return Some(Inbound::Ended("stream ended without close frame".into())),
                Some(Err(e)) => return Some(Inbound::Ended(format!("read error: {e}"))),
                Some(Ok(message)) => message,
            };
            let payload: Bytes = match (message, self.encoding) {
                (Message::Text(text), Encoding::Json) => Bytes::copy_from_slice(text.as_bytes()),
                (Message::Binary(bytes), Encoding::Protobuf) => bytes,
                (Message::Text(text), Encoding::Protobuf) => {
                    panic!("text frame on a Protobuf connection: {text:?}")
                }
                (Message::Binary(bytes), Encoding::Json) => {
                    panic!("binary frame on a JSON connection: {bytes:?}")
                }
                (Message::Close(frame), _) => {
                    return Some(match frame {
                        Some(frame) => {
                            Inbound::Close(u16::from(frame.code), frame.reason.to_string())
                        }
                        None => Inbound::Close(1005, String::new()),
                    });
                }
                // WebSocket-level ping/pong: tungstenite answers pings itself.
                (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => continue,
            };
            return Some(Inbound::Replies(decode_replies(self.encoding, &payload)));
        }
    }

    /// Reads more messages into the inbox; false on timeout. Panics if the connection ended.
    async fn fill(&mut self, deadline: Instant, waiting_for: &str) -> bool {
        if let Some(ended) = &self.ended {
            panic!(
                "connection already ended ({ended:?}) while waiting for {waiting_for}; unconsumed: {:?}",
                self.inbox
            );
        }
        match self.read_inbound(deadline).await {
            None => false,
            Some(Inbound::Replies(replies)) => {
                for reply in replies {
                    if reply == Reply::default() {
                        self.pings += 1;
                        if self.auto_pong {
                            self.send_pong().await;
                            continue;
                        }
                    }
                    self.inbox.push_back(reply);
                }
                true
            }
            Some(Inbound::Close(code, reason)) => {
                self.ended = Some(Ok((code, reason.clone())));
                panic!(
                    "connection closed with {code} {reason:?} while waiting for {waiting_for}; unconsumed: {:?}",
                    self.inbox
                );
            }
            Some(Inbound::Ended(why)) => {
                self.ended = Some(Err(why.clone()));
                panic!(
                    "connection ended ({why}) while waiting for {waiting_for}; unconsumed: {:?}",
                    self.inbox
                );
            }
        }
    }

    /// The next received message in order (replies, pushes, and pings unless auto-ponged).
    pub async fn next_reply(&mut self, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return reply;
            }
            if !self.fill(deadline, "any message").await {
                panic!("no message within {timeout:?}");
            }
        }
    }

    /// Waits for the reply with `id` (pushes and other replies stay in the inbox).
    pub async fn expect_reply(&mut self, id: u32, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        let what = format!("reply id {id}");
        loop {
            if let Some(index) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(index).unwrap();
            }
            if !self.fill(deadline, &what).await {
                panic!("no {what} within {timeout:?}; unconsumed: {:?}", self.inbox);
            }
        }
    }

    /// Waits for a push matching `matches` (other messages stay in the inbox).
    pub async fn expect_push(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Push) -> bool,
    ) -> Push {
        let deadline = Instant::now() + timeout;
        let waiting_for = format!("push: {what}");
        loop {
            if let Some(index) = self
                .inbox
                .iter()
                .position(|r| r.id == 0 && r.push.as_ref().is_some_and(&matches))
            {
                return self.inbox.remove(index).unwrap().push.unwrap();
            }
            if !self.fill(deadline, &waiting_for).await {
                panic!(
                    "no {waiting_for} within {timeout:?}; unconsumed: {:?}",
                    self.inbox
                );
            }
        }
    }

    /// Waits for a publication push on `channel` with the given offset.
    pub async fn expect_publication(
        &mut self,
        channel: &str,
        offset: u64,
    ) -> sidewire::protocol::client::Publication {
        let push = self
            .expect_push(&format!("publication {channel}@{offset}"), WAIT, |p| {
                p.channel == channel && p.r#pub.as_ref().is_some_and(|p| p.offset == offset)
            })
            .await;
        push.r#pub.unwrap()
    }

    /// Pushes received and not consumed yet that match `matches`, removed from the inbox.
    pub fn take_pushes(&mut self, matches: impl Fn(&Push) -> bool) -> Vec<Push> {
        let (taken, kept): (Vec<Reply>, Vec<Reply>) = self
            .inbox
            .drain(..)
            .partition(|r| r.id == 0 && r.push.as_ref().is_some_and(&matches));
        self.inbox = kept.into();
        taken.into_iter().filter_map(|r| r.push).collect()
    }

    /// Unconsumed messages, for assertions and diagnostics.
    pub fn unconsumed(&self) -> &VecDeque<Reply> {
        &self.inbox
    }

    /// Reads until the server's close frame and returns (code, reason); data messages before it
    /// are discarded. Panics if the stream ends without a close frame or nothing comes in time.
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        if let Some(ended) = self.ended.take() {
            return match ended {
                Ok(close) => close,
                Err(why) => panic!("expected a close frame, but the connection ended: {why}"),
            };
        }
        let deadline = Instant::now() + timeout;
        let mut discarded = 0usize;
        loop {
            match self.read_inbound(deadline).await {
                None => panic!(
                    "no close frame within {timeout:?} ({discarded} messages read meanwhile; last unconsumed: {:?})",
                    self.inbox.back()
                ),
                Some(Inbound::Close(code, reason)) => return (code, reason),
                Some(Inbound::Ended(why)) => panic!(
                    "expected a close frame, but the connection ended: {why} ({discarded} messages read before)"
                ),
                Some(Inbound::Replies(replies)) => {
                    discarded += replies.len();
                    self.pings += replies.iter().filter(|r| **r == Reply::default()).count();
                    // Keep the last few for diagnostics only.
                    self.inbox.extend(replies);
                    while self.inbox.len() > 8 {
                        self.inbox.pop_front();
                    }
                }
            }
        }
    }

    /// Waits until `count` server pings have been read in total, answering each with a pong
    /// when `auto_pong` is set. Other messages stay in the inbox.
    pub async fn wait_pings(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pings < count {
            if !self.fill(deadline, &format!("{count} pings")).await {
                panic!(
                    "only {} of {count} pings within {timeout:?}; unconsumed: {:?}",
                    self.pings, self.inbox
                );
            }
        }
    }
}

/// Splits one server WebSocket message into replies: JSON lines (no empty line allowed) or
/// varint-delimited Protobuf messages (no trailing partial message allowed).
pub fn decode_replies(encoding: Encoding, payload: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    match encoding {
        Encoding::Json => {
            let text = std::str::from_utf8(payload).expect("JSON frame is not UTF-8");
            for line in text.split('\n') {
                assert!(
                    !line.is_empty(),
                    "empty line in a JSON frame from the server: {text:?}"
                );
                let reply: Reply = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("server sent an invalid JSON reply {line:?}: {e}"));
                replies.push(reply);
            }
        }
        Encoding::Protobuf => {
            let mut rest = payload;
            assert!(!rest.is_empty(), "empty binary frame from the server");
            while !rest.is_empty() {
                let size = prost::encoding::decode_varint(&mut rest)
                    .unwrap_or_else(|e| panic!("bad varint in {payload:?}: {e}"))
                    as usize;
                assert!(
                    size <= rest.len(),
                    "truncated Protobuf reply in frame {payload:?}"
                );
                let reply = Reply::decode(&rest[..size])
                    .unwrap_or_else(|e| panic!("server sent an invalid Protobuf reply: {e}"));
                rest = &rest[size..];
                replies.push(reply);
            }
        }
    }
    replies
}

// === command builders ===

/// `subscribe` with default options.
pub fn subscribe(channel: &str) -> Command {
    subscribe_with(SubscribeRequest {
        channel: channel.to_owned(),
        ..Default::default()
    })
}

/// `subscribe` with the given request.
pub fn subscribe_with(request: SubscribeRequest) -> Command {
    Command {
        subscribe: Some(request),
        ..Default::default()
    }
}

/// `unsubscribe`.
pub fn unsubscribe(channel: &str) -> Command {
    Command {
        unsubscribe: Some(UnsubscribeRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `publish` of a JSON document.
pub fn publish(channel: &str, data: &Value) -> Command {
    Command {
        publish: Some(PublishRequest {
            channel: channel.to_owned(),
            data: json_bytes(data),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `presence`.
pub fn presence(channel: &str) -> Command {
    Command {
        presence: Some(PresenceRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `presence_stats`.
pub fn presence_stats(channel: &str) -> Command {
    Command {
        presence_stats: Some(PresenceStatsRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `history` with a limit, optional `since` position and direction.
pub fn history(channel: &str, limit: i32, since: Option<(u64, &str)>, reverse: bool) -> Command {
    Command {
        history: Some(HistoryRequest {
            channel: channel.to_owned(),
            limit,
            since: since.map(|(offset, epoch)| StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            }),
            reverse,
        }),
        ..Default::default()
    }
}

/// `rpc`.
pub fn rpc(method: &str, data: &Value) -> Command {
    Command {
        rpc: Some(RpcRequest {
            method: method.to_owned(),
            data: json_bytes(data),
        }),
        ..Default::default()
    }
}

/// `rpc` with `data` as given (not necessarily JSON).
pub fn rpc_raw(method: &str, data: &[u8]) -> Command {
    Command {
        rpc: Some(RpcRequest {
            method: method.to_owned(),
            data: Bytes::copy_from_slice(data),
        }),
        ..Default::default()
    }
}

/// `send` (asynchronous message; sent with id 0).
pub fn send(data: &Value) -> Command {
    Command {
        send: Some(SendRequest {
            data: json_bytes(data),
        }),
        ..Default::default()
    }
}

/// `refresh`.
pub fn refresh(token: &str) -> Command {
    Command {
        refresh: Some(RefreshRequest {
            token: token.to_owned(),
        }),
        ..Default::default()
    }
}

/// A connect request carrying a token.
pub fn connect_token(token: &str) -> ConnectRequest {
    ConnectRequest {
        token: token.to_owned(),
        ..Default::default()
    }
}

/// Compact JSON bytes of a value (valid as a raw `bytes` field in both encodings).
pub fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap())
}

/// Parses a `bytes` field holding JSON (compared as values, so whitespace does not matter).
pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// A channel name unique to this call.
pub fn unique_channel(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// === tokens ===

/// HS256 JWT with `sub` and `exp` = now + `exp_in_secs` (negative for an expired token).
pub fn hs256_token(secret: &str, sub: &str, exp_in_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "sub": sub, "exp": now + exp_in_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

// === JSON WebSocket client over any stream ===

/// A minimal JSON client-protocol client over any stream (used over TLS, where the shared
/// `WsClient` cannot go).
pub struct JsonWs<S> {
    ws: WebSocketStream<S>,
    next_id: u64,
    inbox: VecDeque<Value>,
}

impl<S> JsonWs<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// WebSocket handshake to `url` over `stream`, then `connect`.
    pub async fn connect(url: &str, stream: S) -> JsonWs<S> {
        let (ws, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
                .await
                .expect("WebSocket handshake in time")
                .expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        let mut client = JsonWs {
            ws,
            next_id: 1,
            inbox: VecDeque::new(),
        };
        let reply = client.request(json!({"connect": {}})).await;
        assert!(
            reply["connect"]["client"].is_string(),
            "connect failed: {reply}"
        );
        client
    }

    /// Sends `command` with a fresh id and returns the reply with that id.
    pub async fn request(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        tokio::time::timeout(WAIT, self.ws.send(Message::text(command.to_string())))
            .await
            .expect("send in time")
            .expect("send");
        self.expect(&format!("reply {id}"), |m| m["id"] == id).await
    }

    /// Waits (within [`WAIT`]) for a message matching `matches`; answers pings.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(index) = self.inbox.iter().position(&matches) {
                return self.inbox.remove(index).unwrap();
            }
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!(
                    "ws: no {what} within {WAIT:?}; unconsumed: {:?}",
                    self.inbox
                ),
                Ok(None) => panic!("ws ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("ws error while waiting for {what}: {e}"),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    for line in text.as_str().split('\n') {
                        let value: Value = serde_json::from_str(line).expect("JSON reply");
                        if value == json!({}) {
                            // App-level ping: answer with a pong.
                            self.ws.send(Message::text("{}")).await.expect("pong");
                            continue;
                        }
                        self.inbox.push_back(value);
                    }
                }
                Message::Close(frame) => panic!("ws closed ({frame:?}) while waiting for {what}"),
                _ => {}
            }
        }
    }

    /// The underlying stream (e.g. to inspect the TLS session).
    pub fn stream(&self) -> &S {
        self.ws.get_ref()
    }
}
