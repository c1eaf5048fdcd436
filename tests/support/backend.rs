//! A scriptable HTTP/WebSocket backend for the passthrough tests (hyper 1 on `127.0.0.1:0`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::WAIT;

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
        backend_yaml(self.addr, extra)
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

/// A `backend:` config section pointing at `http://addr`, plus extra `key: value` lines.
pub fn backend_yaml(addr: SocketAddr, extra: &[&str]) -> String {
    let mut yaml = format!("backend:\n  url: \"http://{addr}\"\n");
    for line in extra {
        yaml.push_str("  ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml
}
