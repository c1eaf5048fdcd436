//! Unidirectional transports (`uni_websocket`, `uni_http_stream`, `uni_sse`) with raw
//! clients: what a curl user or a plain `EventSource` sees. Publications reach uni sessions
//! through server-side subscriptions; a small scripted Link upstream (written here) makes
//! them, as any upstream would: it answers connect with `subs` and a `Membership`, and pushes
//! publications when the test asks.
//!
//! Every wait is bounded; nothing sleeps to let something happen.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use sidewire::linkproto::link_server::Link;
use sidewire::linkproto::{
    ChannelPush, Membership, SessionOpen, SessionReply, SidecarFrame, UpstreamFrame, Welcome,
    sidecar_frame, upstream_frame,
};
use sidewire::protocol::client::{
    ConnectResult, Error as ProtocolError, Publication, Push, Reply, SubscribeResult,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tonic::{Request, Response, Status, Streaming};

use support::*;

/// The Origin the test servers allow.
const ALLOWED_ORIGIN: &str = "http://ok.example";
/// An Origin the test servers refuse.
const EVIL_ORIGIN: &str = "http://evil.example";
/// All three uni transports on, one allowed Origin.
const UNI_ON: &str = "uni_websocket: true\nuni_http_stream: true\nuni_sse: true\nallowed_origins: [\"http://ok.example\"]\n";
/// The channel the scripted upstream subscribes every session to.
const CHANNEL: &str = "news";
/// A connect token the scripted upstream refuses with error 101 (unauthorized).
const REFUSED_TOKEN: &str = "refuse-me";

// === scripted upstream ===

/// What the scripted upstream saw and can do, shared with the test.
#[derive(Default)]
struct Script {
    /// Every `SessionOpen` received.
    opens: Mutex<Vec<SessionOpen>>,
    /// Downstream senders, one per Link stream.
    streams: Mutex<Vec<mpsc::Sender<Result<UpstreamFrame, Status>>>>,
}

impl Script {
    /// Publishes `data` at `offset` on [`CHANNEL`] to every Link stream.
    async fn publish(&self, data: &Value, offset: u64) {
        let streams: Vec<_> = self.streams.lock().unwrap().clone();
        for stream in streams {
            let push = frame(upstream_frame::Frame::Push(ChannelPush {
                channel: CHANNEL.to_owned(),
                push: Some(Push {
                    channel: CHANNEL.to_owned(),
                    r#pub: Some(Publication {
                        data: Bytes::from(data.to_string()),
                        offset,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }));
            let _ = stream.send(push).await;
        }
    }

    fn opens(&self) -> Vec<SessionOpen> {
        self.opens.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct ScriptedUpstream {
    script: Arc<Script>,
}

fn frame(frame: upstream_frame::Frame) -> Result<UpstreamFrame, Status> {
    Ok(UpstreamFrame { frame: Some(frame) })
}

fn reply(session: u64, reply: Reply) -> Result<UpstreamFrame, Status> {
    frame(upstream_frame::Frame::Reply(SessionReply {
        session,
        reply: Some(reply),
    }))
}

/// The upstream's answer to a `SessionOpen`: connect with a server-side subscription to
/// [`CHANNEL`], or error 101 for [`REFUSED_TOKEN`].
fn answer_open(open: &SessionOpen) -> Vec<Result<UpstreamFrame, Status>> {
    let connect = open.connect.clone().unwrap_or_default();
    let request = connect.connect.unwrap_or_default();
    if request.token == REFUSED_TOKEN {
        return vec![reply(
            open.session,
            Reply {
                id: connect.id,
                error: Some(ProtocolError {
                    code: 101,
                    message: "unauthorized".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )];
    }
    vec![
        frame(upstream_frame::Frame::Membership(Membership {
            session: open.session,
            channel: CHANNEL.to_owned(),
            subscribed: true,
            join_leave: false,
        })),
        reply(
            open.session,
            Reply {
                id: connect.id,
                connect: Some(ConnectResult {
                    subs: HashMap::from([(CHANNEL.to_owned(), SubscribeResult::default())]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ]
}

type Frames = Pin<Box<dyn Stream<Item = Result<UpstreamFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Link for ScriptedUpstream {
    type MultiplexStream = Frames;

    async fn multiplex(
        &self,
        request: Request<Streaming<SidecarFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let (tx, rx) = mpsc::channel(1024);
        self.script.streams.lock().unwrap().push(tx.clone());
        tx.send(frame(upstream_frame::Frame::Welcome(Welcome {
            version: "scripted 1.0".into(),
            ..Default::default()
        })))
        .await
        .ok();
        let script = self.script.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(sidecar_frame::Frame::Open(open)) = message.frame {
                    script.opens.lock().unwrap().push(open.clone());
                    for out in answer_open(&open) {
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}

/// Serves the scripted upstream on an ephemeral loopback port.
async fn scripted_upstream() -> (SocketAddr, Arc<Script>) {
    let script = Arc::new(Script::default());
    let addr = scripted_upstream::serve(ScriptedUpstream {
        script: script.clone(),
    })
    .await;
    (addr, script)
}

/// A sidecar with the uni transports on, linked to a scripted upstream; ready.
async fn scripted_sidecar(extra: &str) -> (Server, Arc<Script>) {
    let (upstream, script) = scripted_upstream().await;
    let server = Server::start(&format!(
        "{UNI_ON}upstream:\n  endpoint: \"http://{upstream}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"200ms\"\n{extra}"
    ))
    .await;
    server.wait_ready(WAIT).await;
    (server, script)
}

/// A sidecar with the uni transports on and the embedded hub; ready.
async fn hub_sidecar(extra: &str) -> Server {
    let server = Server::start(&format!("{UNI_ON}{extra}")).await;
    server.wait_ready(WAIT).await;
    server
}

// === raw uni stream reader ===

/// How a uni response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Newline-delimited JSON.
    Lines,
    /// `\r\n` once, then `data: <json>\n\n` events.
    Events,
}

/// A uni HTTP response read incrementally; every message is checked to be one JSON object
/// in the transport's exact framing.
struct UniStream {
    framing: Framing,
    status: u16,
    headers: http::HeaderMap,
    body: Incoming,
    pending: Vec<u8>,
    preamble_seen: bool,
    ended: bool,
    _conn: Conn,
}

impl UniStream {
    async fn open(
        addr: SocketAddr,
        framing: Framing,
        request: http::Request<ReqBody>,
    ) -> UniStream {
        let mut conn = Conn::open(addr).await;
        let response = conn.send(request).await;
        let (parts, body) = response.into_parts();
        UniStream {
            framing,
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            pending: Vec::new(),
            preamble_seen: false,
            ended: false,
            _conn: conn,
        }
    }

    /// Takes one complete message out of `pending`, if there is one.
    fn take_message(&mut self) -> Option<Value> {
        let text = match self.framing {
            Framing::Lines => {
                let end = self.pending.iter().position(|b| *b == b'\n')?;
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                line[..line.len() - 1].to_vec()
            }
            Framing::Events => {
                if !self.preamble_seen {
                    if self.pending.len() < 2 {
                        return None;
                    }
                    assert_eq!(&self.pending[..2], b"\r\n", "SSE preamble");
                    self.pending.drain(..2);
                    self.preamble_seen = true;
                }
                let end = self.pending.windows(2).position(|w| w == b"\n\n")?;
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let event = &event[..event.len() - 2];
                event
                    .strip_prefix(b"data: ")
                    .unwrap_or_else(|| {
                        panic!("not a data event: {:?}", String::from_utf8_lossy(event))
                    })
                    .to_vec()
            }
        };
        let value: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&text)));
        assert!(value.is_object(), "not a JSON object: {value}");
        Some(value)
    }

    /// The next message, within [`WAIT`]; `None` once the response ended.
    async fn next(&mut self, what: &str) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(value) = self.take_message() {
                return Some(value);
            }
            if self.ended {
                assert!(
                    self.pending.is_empty() || self.pending == b"\r\n",
                    "response ended inside a message: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!("{what}: nothing within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next message that is not a ping (`{}`).
    async fn next_push(&mut self, what: &str) -> Value {
        loop {
            match self.next(what).await {
                Some(value) if value == json!({}) => continue,
                Some(value) => return value,
                None => panic!("{what}: the response ended"),
            }
        }
    }
}

fn sse_query(connect: &Value) -> String {
    let encoded: String = form_urlencoded::byte_serialize(connect.to_string().as_bytes()).collect();
    format!("/connection/uni_sse?cf_connect={encoded}")
}

async fn uni_sse_get(addr: SocketAddr, connect: &Value, origin: Option<&str>) -> UniStream {
    let mut headers = vec![];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    let request = request(addr, "GET", &sse_query(connect), &headers, Payload::Empty);
    UniStream::open(addr, Framing::Events, request).await
}

async fn uni_http_stream_post(addr: SocketAddr, body: &str) -> UniStream {
    let request = request(
        addr,
        "POST",
        "/connection/uni_http_stream",
        &[("content-type", "application/json")],
        Payload::Sized(Bytes::from(body.to_owned())),
    );
    UniStream::open(addr, Framing::Lines, request).await
}

/// Checks the first message is a bare connect push carrying the server-side subscription.
fn assert_connect_push(message: &Value) {
    let object = message.as_object().unwrap();
    assert_eq!(
        object.len(),
        1,
        "connect push has only `connect`: {message}"
    );
    let connect = &message["connect"];
    assert!(
        connect["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{message}"
    );
    assert!(connect["subs"].get(CHANNEL).is_some(), "{message}");
    assert!(
        connect.get("pong").is_none(),
        "uni clients are not asked for pongs: {message}"
    );
}

/// The next text message of a uni WebSocket that is not a ping, as JSON.
async fn next_ws_push(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("one JSON object per message");
            if value != json!({}) {
                return value;
            }
        }
    }
}

// === tests ===

#[tokio::test]
async fn uni_sse_get_gets_connect_push_then_publications_as_data_events() {
    let (server, script) = scripted_sidecar("").await;
    let mut stream = uni_sse_get(
        server.client_addr,
        &json!({"token": "t0k3n"}),
        Some(ALLOWED_ORIGIN),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers.get("content-type").unwrap(),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(
        stream.headers.get("access-control-allow-origin").unwrap(),
        ALLOWED_ORIGIN
    );
    let first = stream.next("connect push").await.unwrap();
    assert_connect_push(&first);
    script.publish(&json!({"n": 1}), 1).await;
    let publication = stream.next_push("publication").await;
    assert_eq!(
        publication,
        json!({"channel": CHANNEL, "pub": {"data": {"n": 1}, "offset": 1}})
    );
    let opens = script.opens();
    assert_eq!(opens.len(), 1);
    assert_eq!(opens[0].transport, "uni_sse");
    assert_eq!(
        opens[0].url, "/connection/uni_sse",
        "the token in the query is not passed on"
    );
    let connect = opens[0].connect.clone().unwrap();
    assert_eq!(connect.connect.unwrap().token, "t0k3n");
}

#[tokio::test]
async fn uni_sse_post_and_bare_get_connect_too() {
    let (server, _script) = scripted_sidecar("").await;
    let post = request(
        server.client_addr,
        "POST",
        "/connection/uni_sse",
        &[],
        Payload::Sized(Bytes::from_static(b"{}")),
    );
    let mut stream = UniStream::open(server.client_addr, Framing::Events, post).await;
    assert_eq!(stream.status, 200);
    assert_connect_push(&stream.next("connect push (POST)").await.unwrap());
    // No cf_connect at all: an empty connect request, as in Centrifugo.
    let get = request(
        server.client_addr,
        "GET",
        "/connection/uni_sse",
        &[],
        Payload::Empty,
    );
    let mut stream = UniStream::open(server.client_addr, Framing::Events, get).await;
    assert_eq!(stream.status, 200);
    assert_connect_push(&stream.next("connect push (bare GET)").await.unwrap());
}

#[tokio::test]
async fn uni_http_stream_post_gets_newline_delimited_pushes() {
    let (server, script) = scripted_sidecar("").await;
    let mut stream = uni_http_stream_post(server.client_addr, r#"{"name":"curl"}"#).await;
    assert_eq!(stream.status, 200);
    assert_connect_push(&stream.next("connect push").await.unwrap());
    for n in 1..=3 {
        script.publish(&json!({"n": n}), n).await;
    }
    for n in 1..=3 {
        let publication = stream.next_push("publication").await;
        assert_eq!(publication["channel"], CHANNEL);
        assert_eq!(publication["pub"]["data"], json!({"n": n}));
        assert!(publication.get("push").is_none() && publication.get("id").is_none());
    }
    let opens = script.opens();
    assert_eq!(opens[0].transport, "uni_http_stream");
    assert_eq!(
        opens[0].connect.clone().unwrap().connect.unwrap().name,
        "curl"
    );
}

#[tokio::test]
async fn uni_websocket_first_message_connects_and_each_push_is_one_message() {
    let (server, script) = scripted_sidecar("").await;
    let mut request = format!("ws://{}/connection/uni_websocket", server.client_addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static(ALLOWED_ORIGIN));
    let tcp = tokio::net::TcpStream::connect(server.client_addr)
        .await
        .unwrap();
    let (mut ws, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
            .await
            .unwrap()
            .unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    ws.send(Message::text(r#"{"token":"ws"}"#)).await.unwrap();
    assert_connect_push(&next_ws_push(&mut ws).await);
    script.publish(&json!({"n": 7}), 7).await;
    assert_eq!(
        next_ws_push(&mut ws).await,
        json!({"channel": CHANNEL, "pub": {"data": {"n": 7}, "offset": 7}})
    );
    assert_eq!(script.opens()[0].transport, "uni_websocket");
}

#[tokio::test]
async fn uni_refused_connect_ends_with_a_disconnect_push() {
    let (server, _script) = scripted_sidecar("").await;
    let body = json!({"token": REFUSED_TOKEN}).to_string();
    let mut stream = uni_http_stream_post(server.client_addr, &body).await;
    assert_eq!(stream.status, 200);
    let message = stream.next("disconnect push").await.unwrap();
    assert_eq!(message["disconnect"]["code"], 3500, "{message}");
    assert!(stream.next("end of response").await.is_none());
}

#[tokio::test]
async fn uni_transports_are_off_by_default() {
    let server = Server::start("").await;
    server.wait_ready(WAIT).await;
    for (method, path) in [
        ("GET", "/connection/uni_websocket"),
        ("POST", "/connection/uni_http_stream"),
        ("GET", "/connection/uni_sse?cf_connect=%7B%7D"),
        ("POST", "/connection/uni_sse"),
    ] {
        let fetched = fetch(
            server.client_addr,
            request(
                server.client_addr,
                method,
                path,
                &[],
                Payload::Sized(Bytes::from_static(b"{}")),
            ),
        )
        .await;
        assert_eq!(fetched.status, 404, "{method} {path}");
    }
}

/// Method, path and query, headers, body, expected status.
type RefusalCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Payload, u16);

#[tokio::test]
async fn uni_requests_are_refused_before_a_session_exists() {
    let server = hub_sidecar(
        "uni_http_stream_max_request_body_size: 256\nuni_sse_max_request_body_size: 256\n",
    )
    .await;
    let addr = server.client_addr;
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(400));
    let cases: Vec<RefusalCase> = vec![
        // Disallowed Origin: 403, as on the bidirectional transports.
        (
            "POST",
            "/connection/uni_http_stream".into(),
            vec![("origin", EVIL_ORIGIN)],
            Payload::Sized(Bytes::from_static(b"{}")),
            403,
        ),
        (
            "GET",
            sse_query(&json!({})),
            vec![("origin", EVIL_ORIGIN)],
            Payload::Empty,
            403,
        ),
        // Over the body limit: 413.
        (
            "POST",
            "/connection/uni_http_stream".into(),
            vec![],
            Payload::Sized(Bytes::from(big.clone())),
            413,
        ),
        (
            "POST",
            "/connection/uni_sse".into(),
            vec![],
            Payload::Sized(Bytes::from(big.clone())),
            413,
        ),
        (
            "GET",
            sse_query(&serde_json::from_str(&big).unwrap()),
            vec![],
            Payload::Empty,
            413,
        ),
        // Not a JSON ConnectRequest: 400.
        (
            "POST",
            "/connection/uni_http_stream".into(),
            vec![],
            Payload::Sized(Bytes::from_static(b"nope")),
            400,
        ),
        (
            "POST",
            "/connection/uni_http_stream".into(),
            vec![],
            Payload::Sized(Bytes::from_static(b"[]")),
            400,
        ),
        (
            "GET",
            "/connection/uni_sse?cf_connect=%7Bnope".into(),
            vec![],
            Payload::Empty,
            400,
        ),
        // Wrong method.
        (
            "GET",
            "/connection/uni_http_stream".into(),
            vec![],
            Payload::Empty,
            405,
        ),
    ];
    for (method, path, headers, payload, expected) in cases {
        let fetched = fetch(addr, request(addr, method, &path, &headers, payload)).await;
        assert_eq!(
            fetched.status,
            expected,
            "{method} {path} {headers:?}: {}",
            fetched.text()
        );
    }
    // Preflight from an allowed Origin is answered with the uni methods.
    let fetched = fetch(
        addr,
        request(
            addr,
            "OPTIONS",
            "/connection/uni_sse",
            &[
                ("origin", ALLOWED_ORIGIN),
                ("access-control-request-method", "GET"),
            ],
            Payload::Empty,
        ),
    )
    .await;
    assert_eq!(fetched.status, 204);
    let options = WsOptions {
        path: "/connection/uni_websocket".into(),
        ..WsOptions::json()
    }
    .origin(EVIL_ORIGIN);
    match WsClient::try_connect(addr, options).await {
        Err(HandshakeFailure::Status(status)) => assert_eq!(status, 403),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("uni_websocket from a disallowed Origin was accepted"),
    }
}

#[tokio::test]
async fn uni_websocket_bad_first_message_closes_with_bad_request() {
    let server = hub_sidecar("").await;
    let options = WsOptions {
        path: "/connection/uni_websocket".into(),
        ..WsOptions::json()
    };
    let mut client = WsClient::try_connect(server.client_addr, options)
        .await
        .unwrap();
    client.send_text("not json").await;
    let (code, _) = client.expect_close(WAIT).await;
    assert_eq!(code, 3501);
}

#[tokio::test]
async fn uni_sessions_get_pings_and_are_never_asked_for_pongs() {
    // pong_timeout would disconnect a bidirectional client that does not answer (3012).
    let server = hub_sidecar("ping_interval: \"1s\"\npong_timeout: \"500ms\"\n").await;
    let mut stream = uni_http_stream_post(server.client_addr, "{}").await;
    let connect = stream.next("connect push").await.unwrap();
    assert_eq!(connect["connect"]["ping"], 1, "{connect}");
    assert!(connect["connect"].get("pong").is_none(), "{connect}");
    // Three pings span more than two pong timeouts: no 3012.
    for n in 0..3 {
        let message = stream
            .next("ping")
            .await
            .unwrap_or_else(|| panic!("ended before ping {n}"));
        assert_eq!(message, json!({}), "ping {n}");
    }
}

#[tokio::test]
async fn uni_expired_token_on_the_hub_ends_with_disconnect_3005() {
    let server = hub_sidecar(&hub_section("client: {token: {hmac_secret_key: \"s\"}}")).await;
    let expired = hs256_token("s", "u1", -60);
    let mut stream = uni_sse_get(server.client_addr, &json!({"token": expired}), None).await;
    assert_eq!(stream.status, 200);
    let message = stream.next("disconnect push").await.unwrap();
    assert_eq!(message["disconnect"]["code"], 3005, "{message}");
    assert!(stream.next("end").await.is_none());
    let valid = hs256_token("s", "u1", 3600);
    let mut stream = uni_sse_get(server.client_addr, &json!({"token": valid}), None).await;
    let message = stream.next("connect push").await.unwrap();
    assert!(message["connect"]["client"].is_string(), "{message}");
}

/// The reference hub's way: the server API subscribes a uni session, then publications flow.
#[tokio::test]
async fn uni_sse_on_the_hub_receives_after_api_subscribe() {
    let server = hub_sidecar("").await;
    let mut stream = uni_sse_get(server.client_addr, &json!({}), None).await;
    let connect = stream.next("connect push").await.unwrap();
    let client = connect["connect"]["client"].as_str().unwrap().to_owned();
    api_ok(
        server.admin_addr,
        "subscribe",
        &json!({"client": client, "channel": CHANNEL}),
        None,
    )
    .await;
    let subscribed = stream.next_push("subscribe push").await;
    assert_eq!(subscribed["channel"], CHANNEL, "{subscribed}");
    assert!(subscribed.get("subscribe").is_some(), "{subscribed}");
    api_publish(server.admin_addr, CHANNEL, &json!({"n": 1})).await;
    let publication = stream.next_push("publication").await;
    assert_eq!(publication["channel"], CHANNEL, "{publication}");
    assert_eq!(publication["pub"]["data"], json!({"n": 1}));
}
