//! Helpers shared by the operations tests: a scriptable HTTP/WebSocket backend (hyper 1 on
//! `127.0.0.1:0`), an HTTP-streaming session client, a JSON WebSocket client over any stream
//! (plain or TLS), and an OpenMetrics scraper/parser.
//!
//! Every wait is bounded; nothing sleeps to "let something happen".

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::support::{HTTP_TIMEOUT, WAIT};

/// Bound for "the new config / certificate is in force" (scraped or polled state).
pub const RELOAD_WAIT: Duration = Duration::from_secs(10);

// === the backend ===

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

/// Something the backend reports to the test.
#[derive(Debug)]
pub enum BackendEvent {
    /// A request (reported once its body has been read in full; for `/upload`, after the
    /// last chunk).
    Request(Seen),
    /// One data frame of an `/upload` body, as it arrived.
    Chunk(Bytes),
}

type BackendBody = BoxBody<Bytes, Infallible>;

fn full_body(bytes: impl Into<Bytes>) -> BackendBody {
    Full::new(bytes.into()).boxed()
}

/// The body sent by the backend's default route.
pub const BACKEND_HELLO: &str = "hello from backend";

/// A small HTTP/1.1 backend on `127.0.0.1:0`. Routes:
/// - `/status/<code>`: that status, body `status <code>`, header `x-backend-status`;
/// - `/upload`: reads the body frame by frame (each reported as [`BackendEvent::Chunk`]),
///   then answers 201 with `location` and `x-received-bytes`;
/// - `/stream`: a streamed 200 body, `one\n`, then `two\n` and `three\n`, each only after
///   [`Backend::release`] (so a proxy that buffers the response never delivers `one`);
/// - `/slow`: never answers;
/// - `/backend-ws`: a WebSocket echo (text and binary), upgrade request reported;
/// - anything else: 200 with [`BACKEND_HELLO`], `x-backend: yes`, two `set-cookie`, and a
///   hop-by-hop header named in `Connection` (`x-resp-hop`) that a proxy must drop.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests and upload chunks, in arrival order.
    pub events: mpsc::UnboundedReceiver<BackendEvent>,
    release: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

impl Backend {
    /// Binds and starts serving.
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let shared_release = release.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let events = events_tx.clone();
                let release = shared_release.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let events = events.clone();
                        let release = release.clone();
                        async move { Ok::<_, Infallible>(route(request, events, release).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
                // Reap finished connection tasks so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Backend {
            addr,
            events,
            release,
            task,
        }
    }

    /// `backend:` config section pointing here, plus extra `key: value` lines.
    pub fn yaml(&self, extra: &[&str]) -> String {
        let mut yaml = format!("backend:\n  url: \"http://{}\"\n", self.addr);
        for line in extra {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    }

    /// Lets `/stream` send its next chunk.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// The next event, within [`WAIT`].
    pub async fn next_event(&mut self) -> BackendEvent {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("backend stopped"),
            Err(_) => panic!("the backend saw nothing within {WAIT:?}"),
        }
    }

    /// The next complete request, within [`WAIT`] (chunk events before it are skipped).
    pub async fn next_request(&mut self) -> Seen {
        loop {
            if let BackendEvent::Request(seen) = self.next_event().await {
                return seen;
            }
        }
    }

    /// Waits until upload chunks adding up to exactly `expected` have arrived.
    pub async fn expect_chunks(&mut self, expected: &[u8]) {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            match self.next_event().await {
                BackendEvent::Chunk(bytes) => got.extend_from_slice(&bytes),
                BackendEvent::Request(seen) => {
                    panic!("request completed while waiting for chunk {expected:?}: {seen:?}")
                }
            }
        }
        assert_eq!(got, expected, "upload chunk bytes differ");
    }

    /// Discards the events received so far.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }
}

async fn route(
    request: Request<Incoming>,
    events: mpsc::UnboundedSender<BackendEvent>,
    release: Arc<Notify>,
) -> Response<BackendBody> {
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    if path == "/backend-ws" {
        return websocket_echo(request, &events);
    }
    let (parts, mut body) = request.into_parts();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if path == "/upload" {
                let _ = events.send(BackendEvent::Chunk(data.clone()));
            }
            received.extend_from_slice(&data);
        }
    }
    let _ = events.send(BackendEvent::Request(Seen {
        method,
        path_and_query,
        headers: parts.headers,
        body: Bytes::from(received.clone()),
    }));
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(400);
        let mut response = Response::new(full_body(format!("status {code}")));
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        response
            .headers_mut()
            .insert("x-backend-status", HeaderValue::from(code));
        return response;
    }
    match path.as_str() {
        "/upload" => {
            let length = received.len() as u64;
            let mut response = Response::new(full_body(received));
            *response.status_mut() = StatusCode::CREATED;
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, HeaderValue::from_static("/upload/1"));
            headers.insert("x-received-bytes", HeaderValue::from(length));
            response
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                for (index, chunk) in ["one\n", "two\n", "three\n"].into_iter().enumerate() {
                    if index > 0 {
                        release.notified().await;
                    }
                    if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                        return;
                    }
                }
            });
            let mut response =
                Response::new(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        "/slow" => std::future::pending().await,
        _ => {
            let mut response = Response::new(full_body(BACKEND_HELLO));
            let headers = response.headers_mut();
            headers.insert("x-backend", HeaderValue::from_static("yes"));
            headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
            headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("x-resp-hop"));
            headers.insert("x-resp-hop", HeaderValue::from_static("drop-me"));
            response
        }
    }
}

/// Accepts a WebSocket upgrade and echoes every text and binary message.
fn websocket_echo(
    mut request: Request<Incoming>,
    events: &mpsc::UnboundedSender<BackendEvent>,
) -> Response<BackendBody> {
    let _ = events.send(BackendEvent::Request(Seen {
        method: request.method().to_string(),
        path_and_query: request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        headers: request.headers().clone(),
        body: Bytes::new(),
    }));
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let mut response = Response::new(full_body("not a websocket request"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            let echo = match message {
                Message::Text(text) => Message::Text(text),
                Message::Binary(bytes) => Message::Binary(bytes),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    headers.insert("x-backend-ws", HeaderValue::from_static("echo"));
    response
}

// === raw HTTP exchanges ===

/// A response read in full.
#[derive(Debug)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Fetched {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request with a full body on a fresh HTTP/1.1 connection over `io` and reads the
/// whole response, within [`HTTP_TIMEOUT`].
pub async fn exchange<S>(io: S, request: Request<Full<Bytes>>) -> Fetched
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("{} {}", request.method(), request.uri());
    let run = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("HTTP/1.1 handshake");
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.expect("send request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        driver.abort();
        Fetched {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    };
    match tokio::time::timeout(HTTP_TIMEOUT, run).await {
        Ok(fetched) => fetched,
        Err(_) => panic!("{what}: no complete response within {HTTP_TIMEOUT:?}"),
    }
}

/// `exchange` over a new TCP connection to `addr`.
pub async fn fetch(addr: SocketAddr, request: Request<Full<Bytes>>) -> Fetched {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    exchange(tcp, request).await
}

/// A request builder with `Host` set to `addr`.
pub fn request_to(addr: SocketAddr, method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
}

/// All values of a header, as text.
pub fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .collect()
}

/// The single value of a header (panics when absent).
pub fn header_value(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

// === HTTP-streaming session ===

/// A client of the HTTP-streaming transport: the connect POST's streaming response, read as
/// newline-terminated JSON messages.
pub struct HttpStreamClient {
    body: Incoming,
    buffer: Vec<u8>,
    inbox: VecDeque<Value>,
    driver: JoinHandle<()>,
    /// Emulation session id from the connect reply.
    pub session: String,
    /// Node id from the connect reply.
    pub node: String,
    /// Client id from the connect reply.
    pub client: String,
}

impl Drop for HttpStreamClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpStreamClient {
    /// POSTs `{"id":1,"connect":{}}` to `/connection/http_stream` and reads the connect reply.
    pub async fn connect(addr: SocketAddr, origin: Option<&str>) -> HttpStreamClient {
        let tcp = TcpStream::connect(addr).await.expect("connect http_stream");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = request_to(addr, "POST", "/connection/http_stream")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let request = request
            .body(Full::new(Bytes::from_static(br#"{"id":1,"connect":{}}"#)))
            .unwrap();
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .expect("http_stream response headers in time")
            .expect("http_stream request");
        assert_eq!(response.status(), 200, "http_stream connect: {response:?}");
        let mut client = HttpStreamClient {
            body: response.into_body(),
            buffer: Vec::new(),
            inbox: VecDeque::new(),
            driver,
            session: String::new(),
            node: String::new(),
            client: String::new(),
        };
        let reply = client.expect("connect reply", |m| m["id"] == 1).await;
        let result = &reply["connect"];
        assert!(result.is_object(), "connect failed: {reply}");
        client.session = result["session"].as_str().unwrap_or_default().to_owned();
        client.node = result["node"].as_str().unwrap_or_default().to_owned();
        client.client = result["client"].as_str().unwrap_or_default().to_owned();
        assert!(
            !client.session.is_empty() && !client.node.is_empty(),
            "connect reply without session/node: {reply}"
        );
        client
    }

    /// Waits (within [`WAIT`]) for a message matching `matches`; others stay queued.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(index) = self.inbox.iter().position(&matches) {
                return self.inbox.remove(index).unwrap();
            }
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!(
                    "http_stream: no {what} within {WAIT:?}; unconsumed: {:?}",
                    self.inbox
                ),
                Ok(None) => panic!(
                    "http_stream ended while waiting for {what}; unconsumed: {:?}",
                    self.inbox
                ),
                Ok(Some(Err(e))) => panic!("http_stream body error while waiting for {what}: {e}"),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
                while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    let line = &line[..line.len() - 1];
                    let message: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                        panic!(
                            "http_stream line is not JSON ({e}): {:?}",
                            String::from_utf8_lossy(line)
                        )
                    });
                    self.inbox.push_back(message);
                }
            }
        }
    }

    /// Sends `command` (a JSON command object) through `POST /emulation` and expects 204.
    pub async fn emulate(&self, addr: SocketAddr, origin: Option<&str>, command: &Value) {
        let body = json!({
            "node": self.node,
            "session": self.session,
            "data": command.to_string(),
        });
        let mut request =
            request_to(addr, "POST", "/emulation").header(header::CONTENT_TYPE, "application/json");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let fetched = fetch(
            addr,
            request
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await;
        assert_eq!(
            fetched.status,
            204,
            "emulation POST {body}: {}",
            fetched.text()
        );
    }
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

// === metrics ===

/// One OpenMetrics sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name with suffix (`_total`, ...).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses OpenMetrics text: `# ...` lines are skipped, every other line must be
/// `name{label="value",...} value` or `name value` (panics otherwise, naming the line).
pub fn parse_openmetrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        samples
            .push(parse_sample(line).unwrap_or_else(|e| panic!("bad sample line {line:?}: {e}")));
    }
    samples
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // label name
            let start = match chars.peek() {
                Some((i, '}')) => break *i,
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("label without '='")?;
            let label = inner[start..eq].to_owned();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.insert(label, value);
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected ',' or '}' after a label".into()),
            }
        };
        rest = &inner[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value
        .parse()
        .map_err(|e| format!("bad value {value:?}: {e}"))?;
    // An optional timestamp may follow; nothing else.
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|e| format!("bad timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Raw text (for failure messages).
    pub text: String,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include all of `labels` (0 if none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// `GET /metrics` on the admin listener: checks the content type and the final `# EOF`, and
/// parses every sample.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let fetched = fetch(
        admin,
        request_to(admin, "GET", "/metrics")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(fetched.status, 200, "/metrics: {}", fetched.text());
    let content_type = header_value(&fetched.headers, "content-type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "/metrics content-type {content_type:?}"
    );
    let text = fetched.text();
    assert!(
        text.ends_with("# EOF\n"),
        "/metrics does not end with '# EOF': {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    Scrape {
        samples: parse_openmetrics(&text),
        text,
    }
}

/// Scrapes until `check` holds for the sample sum of `name`/`labels` (bounded polling of a
/// scraped value: the only polling the style guide allows). Returns the last scrape.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    check: impl Fn(f64) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let scraped = scrape(admin).await;
        if check(scraped.value(name, labels)) {
            return scraped;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name}{labels:?} = {} did not reach the expected value within {timeout:?}; scrape:\n{}",
                scraped.value(name, labels),
                scraped.text
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn parser_reads_labels_escapes_and_plain_samples() {
    let samples = parse_openmetrics(
        "# HELP x y\n# TYPE a counter\na_total{k=\"v\",q=\"a\\\"b\"} 3\nb 1.5\nc{} 0\n# EOF\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].name, "a_total");
    assert_eq!(samples[0].labels["q"], "a\"b");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(samples[1].value, 1.5);
    assert!(samples[2].labels.is_empty());
    assert!(parse_sample("a{k=v} 1").is_err());
    assert!(parse_sample("a 1 2 3").is_err());
}
