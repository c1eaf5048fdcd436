//! The client listener: accepts TCP (or TLS) connections, serves HTTP/1.1 and HTTP/2 with
//! upgrades, and routes each request to its transport or to the passthrough proxy.
//!
//! Guarantees: origin and size policy are applied here, before any session exists; every
//! request sees one consistent settings snapshot ([`Settings`]), replaced whole on reload.

pub mod body;
pub mod conn;
pub mod cors;
pub mod emulation;
pub mod fast_pass;
pub mod h1;
pub mod http_stream;
pub mod origin;
pub mod owned;
pub mod rewind;
pub mod sse;
pub mod stream;
pub mod tls;
pub mod uni;
pub mod uni_stream;
pub mod uni_websocket;
pub mod websocket;
pub mod wsconn;
pub mod wsframe;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::config::Config;
use crate::http::{Body, status};
use crate::lifecycle::{self, PhaseWatch};
use crate::link::Link;
use crate::metrics::{Metrics, ReasonLabels};
use crate::passthrough::Backend;
use crate::protocol::Encoding;
use crate::server::HandshakeError;
use crate::server::TaskTracker;
pub use crate::server::{Acceptor, PlainAcceptor};
use crate::session::emulation::EmulationRegistry;
use crate::session::{SessionParams, SessionSettings};
use conn::{Activity, ConnectionGate, ConnectionPermit, ConnectionTimeouts, PermittedIo};
use origin::OriginPolicy;

/// Time an idle connection gets to finish its graceful close (GOAWAY) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Everything one config generation decides for the client listener.
pub struct Settings {
    /// The validated config.
    pub config: Arc<Config>,
    /// Compiled `allowed_origins`.
    pub origins: OriginPolicy,
    /// The Link new sessions use (old sessions keep the one they opened on).
    pub link: Link,
    /// The passthrough backend, if configured.
    pub backend: Option<Backend>,
}

/// A sidewire endpoint on the client listener; any other path is passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `websocket_path`.
    WebSocket,
    /// `http_stream_path`.
    HttpStream,
    /// `sse_path`.
    Sse,
    /// `uni_websocket_path`.
    UniWebSocket,
    /// `uni_http_stream_path`.
    UniHttpStream,
    /// `uni_sse_path`.
    UniSse,
    /// `emulation_path`.
    Emulation,
}

impl Endpoint {
    /// The endpoint `path` names under `config` (`None`: passthrough). The one routing
    /// decision of the client listener: [`Edge::handle`] and the owned fast path both use it.
    pub fn of(config: &Config, path: &str) -> Option<Endpoint> {
        let routes = [
            (
                config.websocket,
                &config.websocket_path,
                Endpoint::WebSocket,
            ),
            (
                config.http_stream,
                &config.http_stream_path,
                Endpoint::HttpStream,
            ),
            (config.sse, &config.sse_path, Endpoint::Sse),
            (
                config.uni_websocket,
                &config.uni_websocket_path,
                Endpoint::UniWebSocket,
            ),
            (
                config.uni_http_stream,
                &config.uni_http_stream_path,
                Endpoint::UniHttpStream,
            ),
            (config.uni_sse, &config.uni_sse_path, Endpoint::UniSse),
            (
                config.emulation_enabled(),
                &config.emulation_path,
                Endpoint::Emulation,
            ),
        ];
        routes
            .into_iter()
            .find(|(on, route, _)| *on && path == route.as_str())
            .map(|(_, _, endpoint)| endpoint)
    }
}

/// State shared by all client-facing handlers.
pub struct Edge {
    settings: ArcSwap<Settings>,
    /// This process' node id (emulation routing, connect replies).
    pub node: Arc<str>,
    /// Sessions reachable through `/emulation`.
    pub emulation: EmulationRegistry,
    /// Process run phase.
    pub phase: PhaseWatch,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Scheme clients reached us with (`http` or `https`), for forwarding headers.
    pub scheme: &'static str,
    /// Emulation routing between replicas (set once at start with `engine.type: redis`).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// What drain waits for: every client connection, request in flight, session and
    /// upgraded tunnel holds a token of it from the moment it is accepted or spawned.
    tracker: TaskTracker,
}

impl Edge {
    /// Builds the edge from its first settings.
    pub fn new(
        settings: Settings,
        node: Arc<str>,
        phase: PhaseWatch,
        metrics: Arc<Metrics>,
        scheme: &'static str,
    ) -> Edge {
        Edge {
            settings: ArcSwap::from_pointee(settings),
            node,
            emulation: EmulationRegistry::default(),
            phase,
            metrics,
            scheme,
            cluster: std::sync::OnceLock::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// The tracker of everything drain waits for (client connections, requests in flight,
    /// sessions, upgraded tunnels). Spawn such tasks on it; drain closes it and awaits
    /// [`TaskTracker::wait`] up to its deadline.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Turns on emulation routing between replicas (once; a second call is ignored).
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Emulation routing between replicas, when the engine is Redis.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// The current settings snapshot (hold it for the whole request).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings atomically (config reload).
    pub fn replace_settings(&self, settings: Settings) -> Arc<Settings> {
        self.settings.swap(Arc::new(settings))
    }

    /// Whether shutdown was requested (readiness false).
    pub fn is_draining(&self) -> bool {
        self.phase.borrow().is_shutting_down()
    }

    /// Routes one request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let settings = self.settings();
        let endpoint = Endpoint::of(&settings.config, request.uri().path());
        match endpoint {
            Some(Endpoint::WebSocket) => return websocket::handle(&self, &settings, request, peer),
            // The session transports' futures are boxed: they are large, and this future is
            // boxed (and moved) whole for every request, passthrough included.
            Some(Endpoint::HttpStream) => {
                return Box::pin(
                    self.with_cors(&settings, request, "POST, OPTIONS", |request| {
                        http_stream::handle(&self, &settings, request, peer)
                    }),
                )
                .await;
            }
            Some(Endpoint::Sse) => {
                return Box::pin(self.with_cors(
                    &settings,
                    request,
                    "GET, POST, OPTIONS",
                    |request| sse::handle(&self, &settings, request, peer),
                ))
                .await;
            }
            Some(Endpoint::UniWebSocket) => {
                return uni_websocket::handle(&self, &settings, request, peer);
            }
            Some(Endpoint::UniHttpStream) => {
                return Box::pin(
                    self.with_cors(&settings, request, "POST, OPTIONS", |request| {
                        uni_stream::handle_http_stream(&self, &settings, request, peer)
                    }),
                )
                .await;
            }
            Some(Endpoint::UniSse) => {
                return Box::pin(self.with_cors(
                    &settings,
                    request,
                    "GET, POST, OPTIONS",
                    |request| uni_stream::handle_sse(&self, &settings, request, peer),
                ))
                .await;
            }
            Some(Endpoint::Emulation) => {
                return Box::pin(
                    self.with_cors(&settings, request, "POST, OPTIONS", |request| {
                        emulation::handle(&self, &settings, request)
                    }),
                )
                .await;
            }
            None => {}
        }
        // CONNECT and `OPTIONS *` are answered here, never forwarded.
        if let Some(response) = crate::passthrough::local::answer(request.method(), request.uri()) {
            return response;
        }
        match &settings.backend {
            Some(backend) => {
                let response = backend
                    .forward(
                        request,
                        peer,
                        self.scheme,
                        *settings.config.request_body_timeout,
                        &self.tracker,
                    )
                    .await;
                self.metrics.count_passthrough(response.status().as_u16());
                response
            }
            None => status(StatusCode::NOT_FOUND),
        }
    }

    /// Applies the CORS policy around an HTTP transport handler: a disallowed Origin gets 403,
    /// a preflight is answered here, and every other response (errors included) carries the
    /// CORS headers of an allowed Origin.
    async fn with_cors<F, Fut>(
        &self,
        settings: &Settings,
        request: Request<Incoming>,
        methods: &'static str,
        handler: F,
    ) -> Response<Body>
    where
        F: FnOnce(Request<Incoming>) -> Fut,
        Fut: Future<Output = Response<Body>>,
    {
        let origin = match cors::check(
            self,
            &settings.origins,
            request.method(),
            request.headers(),
            methods,
        ) {
            cors::Cors::Respond(response) => return response,
            cors::Cors::Allowed(origin) => origin,
        };
        let mut response = handler(request).await;
        cors::apply(response.headers_mut(), origin.as_ref());
        response
    }

    /// Answers a request whose body could not be read (`code` from
    /// [`body::read_limited`]); counts 408s.
    pub fn body_refused(&self, code: StatusCode) -> Response<Body> {
        if code == StatusCode::REQUEST_TIMEOUT {
            self.metrics.request_body_timeouts.inc();
        }
        status(code)
    }

    /// Counts and answers a request refused for its Origin.
    pub fn origin_rejected(&self) -> Response<Body> {
        self.metrics.origin_rejections.inc();
        status(StatusCode::FORBIDDEN)
    }

    /// Session parameters for a new connection from `peer`.
    #[allow(clippy::too_many_arguments)]
    pub fn session_params(
        &self,
        settings: &Settings,
        transport: &'static str,
        encoding: Encoding,
        peer: SocketAddr,
        uri: &Uri,
        headers: &HeaderMap,
        command_size_limit: usize,
    ) -> SessionParams {
        let config = &settings.config;
        let headers = headers
            .iter()
            .filter(|(name, _)| {
                config
                    .forward_headers
                    .iter()
                    .any(|h| name.as_str().eq_ignore_ascii_case(h))
            })
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        SessionParams {
            encoding,
            transport,
            remote_addr: peer.to_string(),
            url: uri
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_default(),
            headers,
            emulation: None,
            settings: SessionSettings {
                ping_interval: *config.ping_interval,
                pong_timeout: *config.pong_timeout,
                stale_close_delay: *config.stale_close_delay,
                queue_max_size: config.queue_max_size,
                command_size_limit,
                write_timeout: *config.write_timeout,
                command_timeout: config.command_timeout(),
            },
            metrics: self.metrics.clone(),
        }
    }
}

/// How a listener treats its connections: the cap and the timeouts (read at each accept, so
/// a reload applies the new timeouts to new connections).
#[derive(Clone)]
pub struct ConnectionPolicy {
    /// The cap on open connections.
    pub gate: Arc<ConnectionGate>,
    /// The timeouts for the next connection.
    pub timeouts: Arc<dyn Fn() -> ConnectionTimeouts + Send + Sync>,
    /// Counters (client listener only).
    pub metrics: Option<Arc<Metrics>>,
    /// Tracks each connection's task and each request in flight (drain awaits it).
    pub tracker: TaskTracker,
    /// The edge whose streaming sessions plain HTTP/1 connections may open outside hyper
    /// (client listener only; see [`owned`]).
    pub streams: Option<Arc<Edge>>,
}

impl ConnectionPolicy {
    /// The policy of the client listener: `max_connections`, `max_connections_per_ip` from
    /// `config`, timeouts from the edge's current settings.
    pub fn client(edge: &Arc<Edge>, config: &Config) -> ConnectionPolicy {
        let settings_edge = edge.clone();
        ConnectionPolicy {
            gate: Arc::new(ConnectionGate::new(
                config.max_connections,
                config.max_connections_per_ip,
                Some(edge.metrics.clone()),
            )),
            timeouts: Arc::new(move || {
                ConnectionTimeouts::from_config(&settings_edge.settings().config)
            }),
            metrics: Some(edge.metrics.clone()),
            tracker: edge.tracker.clone(),
            streams: Some(edge.clone()),
        }
    }

    /// The policy of an internal listener (admin, hub API): default timeouts and
    /// [`conn::INTERNAL_MAX_CONNECTIONS`].
    pub fn internal() -> ConnectionPolicy {
        ConnectionPolicy {
            gate: Arc::new(ConnectionGate::new(conn::INTERNAL_MAX_CONNECTIONS, 0, None)),
            timeouts: Arc::new(ConnectionTimeouts::defaults),
            metrics: None,
            tracker: TaskTracker::new(),
            streams: None,
        }
    }
}

/// Accepts connections on `listener` and serves each with `handler` until the process phase
/// reaches `Closing`. Live connections are not cut here: at `Closing` each one is shut down
/// gracefully (requests in flight complete, idle keep-alive connections close, HTTP/2 gets
/// GOAWAY) and its task, tracked by `policy.tracker`, ends with its last request.
///
/// A connection over the cap is closed at once after accept, before any byte is read: it
/// costs no TLS handshake or parsing, and clients see a reset they retry with backoff (a 503
/// would need the request read first, which is what a flood wants us to spend). Accept
/// failures (EMFILE, ENFILE, ENOBUFS...) back off from 10 ms doubling to 1 s and are logged
/// once per burst; connections already open are not affected.
pub async fn serve<A, H, F>(
    listener: TcpListener,
    acceptor: A,
    handler: H,
    mut phase: PhaseWatch,
    policy: ConnectionPolicy,
) where
    A: Acceptor,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut refusing = false;
    let connection_phase = phase.clone();
    let closing = async move {
        lifecycle::closing(&mut phase).await;
    };
    let on_connection = |stream: TcpStream, peer: SocketAddr| {
        let permit = match policy.gate.admit(peer.ip()) {
            Ok(permit) => {
                refusing = false;
                permit
            }
            Err(refusal) => {
                if !refusing {
                    tracing::warn!(
                        %peer,
                        cap = refusal.label(),
                        "connection cap reached: closing new connections at once"
                    );
                    refusing = true;
                }
                drop(stream);
                return;
            }
        };
        let timeouts = (policy.timeouts)();
        policy.tracker.spawn(serve_connection(
            stream,
            permit,
            peer,
            acceptor.clone(),
            handler.clone(),
            timeouts,
            policy.metrics.clone(),
            Drain {
                phase: connection_phase.clone(),
                tracker: policy.tracker.clone(),
            },
            policy.streams.clone(),
        ));
    };
    let on_accept_error = || {
        if let Some(metrics) = &policy.metrics {
            metrics.accept_errors.inc();
        }
    };
    crate::server::accept_loop("client", &listener, closing, on_connection, on_accept_error).await;
}

/// The future answering one request, boxed so that hyper's per-connection slot for it stays a
/// pointer wide (see [`serve_connection`]).
type RequestFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// What a connection needs to take part in drain: the phase (shut down gracefully at
/// `Closing`) and the tracker each request in flight takes a token of.
struct Drain {
    phase: PhaseWatch,
    tracker: TaskTracker,
}

/// Serves one admitted connection: TLS (if any) and the first request head within
/// `timeouts.handshake`, HTTP/2 keepalive, closing once idle for `timeouts.idle`, and a
/// graceful shutdown once the phase reaches `Closing`.
///
/// This is where each accepted connection is handed to the per-connection handler (after the
/// cap, before the handshake). A plain HTTP/1 connection (or TLS with ALPN `http/1.1`) whose
/// first request opens a streaming session is served by [`owned`], outside hyper.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<A, H, F>(
    stream: TcpStream,
    permit: ConnectionPermit,
    peer: SocketAddr,
    acceptor: A,
    handler: H,
    timeouts: ConnectionTimeouts,
    metrics: Option<Arc<Metrics>>,
    drain: Drain,
    streams: Option<Arc<Edge>>,
) where
    A: Acceptor,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let count_timeout = |reason: &'static str| {
        if let Some(metrics) = &metrics {
            metrics
                .connection_timeouts
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    };
    let mut first_deadline = Instant::now() + timeouts.handshake;
    let http1 = acceptor.is_plain()
        && tokio::time::timeout_at(first_deadline, starts_as_http1(&stream))
            .await
            .unwrap_or(false);
    let stream = match crate::server::handshake(&acceptor, stream, first_deadline).await {
        Ok(stream) => stream,
        Err(HandshakeError::Failed(error)) => {
            tracing::debug!(%peer, %error, "handshake failed");
            return;
        }
        Err(HandshakeError::TimedOut) => {
            count_timeout("handshake");
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let owned_http1 = http1 || acceptor.negotiated_http1(&stream);
    let io = PermittedIo::new(stream, permit);
    // The one hook of the owned HTTP/1 path: a plain HTTP/1 connection whose first request
    // opens a streaming session is served there, outside hyper; any other gets the bytes read
    // so far replayed to hyper.
    let io = match streams.as_ref().filter(|_| owned_http1) {
        Some(edge) => match owned::serve(edge, io, peer, first_deadline, timeouts).await {
            owned::Served::Done => return,
            owned::Served::HeadTimeout => {
                count_timeout("handshake");
                tracing::debug!(%peer, "no request head in time");
                return;
            }
            owned::Served::Hyper(io) => io,
            owned::Served::Passed(io) => {
                // A whole head is buffered: hyper gets a fresh head deadline for it.
                first_deadline = Instant::now() + timeouts.handshake;
                io
            }
        },
        None => rewind::Rewind::new(bytes::Bytes::new(), io),
    };
    let activity = Arc::new(Activity::default());
    let service_activity = activity.clone();
    let Drain { phase, tracker } = drain;
    let service = service_fn(move |request| {
        let in_flight = (service_activity.begin(), tracker.token());
        let handler = handler.clone();
        // Boxed: hyper keeps one allocation the size of this future for the connection's whole
        // life (`in_flight`), which for a streaming session is long after the future is done.
        let responding: RequestFuture = Box::pin(async move {
            let response = handler(request, peer).await;
            Ok::<_, Infallible>(response.map(|body| conn::track(body, in_flight)))
        });
        responding
    });
    if http1 {
        // Served by hyper's HTTP/1 connection directly: the auto builder's version sniffing
        // hands hyper the first 24 bytes on their own, which makes its read buffer grow to
        // 16 KiB for the connection's whole life (bench/STREAMING-MEMORY.md).
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.handshake);
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let shut_down = |connection: std::pin::Pin<&mut _>| {
            hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(connection)
        };
        // Boxed: an owned streaming session (above) lives in this task for hours, and hyper's
        // connection state would otherwise size its task; hyper's HTTP/1 connections pay one
        // allocation instead.
        Box::pin(drive(
            connection,
            shut_down,
            &activity,
            &timeouts,
            first_deadline,
            peer,
            count_timeout,
            phase,
        ))
        .await;
        return;
    }
    // Boxed: HTTP/2 (TLS or prior knowledge) and undecided connections are rare, and their
    // much larger connection state would otherwise size every HTTP/1 connection's task.
    Box::pin(async move {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.handshake);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(timeouts.keepalive_interval)
            .keep_alive_timeout(timeouts.keepalive_timeout);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let shut_down = |connection: std::pin::Pin<&mut _>| {
            hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(connection)
        };
        drive(
            connection,
            shut_down,
            &activity,
            &timeouts,
            first_deadline,
            peer,
            count_timeout,
            phase,
        )
        .await;
    })
    .await;
}

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for the client's first bytes and tells whether they rule out the HTTP/2 preface
/// (`false` when they do not yet, or the peek fails: the auto-detecting server decides then).
async fn starts_as_http1(stream: &TcpStream) -> bool {
    let mut first = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(read) if read > 0 => !H2_PREFACE.starts_with(&first[..read]),
        _ => false,
    }
}

/// Runs `connection` until it ends, or closes it once idle for `timeouts.idle` (or without a
/// first request by `first_deadline`); once `phase` reaches `Closing`, shuts it down
/// gracefully and keeps driving it until its requests in flight are done.
#[allow(clippy::too_many_arguments)]
async fn drive<C, E>(
    connection: C,
    shut_down: impl Fn(std::pin::Pin<&mut C>),
    activity: &Activity,
    timeouts: &ConnectionTimeouts,
    first_deadline: Instant,
    peer: SocketAddr,
    count_timeout: impl Fn(&'static str),
    mut phase: PhaseWatch,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    let mut shutting_down = false;
    // One timer for the connection's whole life, re-armed only when it fires early or must
    // fire sooner: a keep-alive request starting and ending does not touch the timer wheel.
    let timer = tokio::time::sleep_until(first_deadline);
    tokio::pin!(timer);
    // When the connection was last seen idle after some activity (`None`: not since the last
    // change of the in-flight count).
    let mut idle_since: Option<Instant> = None;
    let reason = loop {
        let deadline = if !activity.is_idle() {
            None
        } else if activity.served() {
            Some(*idle_since.get_or_insert_with(Instant::now) + timeouts.idle)
        } else {
            Some(first_deadline)
        };
        if let Some(deadline) = deadline
            && deadline < timer.deadline()
        {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with error");
                }
                return;
            }
            _ = activity.changed() => {
                idle_since = None;
                continue;
            }
            _ = &mut closing, if !shutting_down => {
                // Drain: no new request on this connection; the ones in flight complete.
                shut_down(connection.as_mut());
                shutting_down = true;
                continue;
            }
            _ = timer.as_mut(), if deadline.is_some() => {
                // Armed for an earlier deadline than the one now due: wait for the rest.
                if let Some(deadline) = deadline.filter(|d| Instant::now() < *d) {
                    timer.as_mut().reset(deadline);
                    continue;
                }
                break if activity.served() { "idle" } else { "handshake" };
            }
        }
    };
    if shutting_down {
        // Already closing gracefully and now idle: nothing left to wait for.
        return;
    }
    count_timeout(reason);
    tracing::debug!(%peer, reason, "closing connection: no request in time");
    if reason == "handshake" {
        // Nothing was ever served: drop it without ceremony.
        return;
    }
    shut_down(connection.as_mut());
    let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// The server side of a loopback connection on which the client wrote `first`.
    async fn served_after(first: &[u8]) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(first).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Keep the client open for the peek.
        std::mem::forget(client);
        server
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, A, B, C, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Bytes of the future answering one request (debug build), which serve_connection boxes
    /// (a copy of this size) for every request: the session transports' branches are boxed so
    /// that it is about the passthrough's own. Measured 2026-12-01: 9 328 before they were,
    /// 2 568 after (with the passthrough's cold paths boxed too).
    const MAX_REQUEST_FUTURE_BYTES: usize = 3072;

    #[test]
    fn request_future_stays_small() {
        let size = future_size(&Edge::handle);
        eprintln!("Edge::handle future: {size} bytes");
        assert!(
            size <= MAX_REQUEST_FUTURE_BYTES,
            "Edge::handle future is {size} bytes"
        );
    }

    /// Bytes of one plain HTTP/1 connection's task state (debug build), which holds a whole
    /// owned streaming session (`owned`): hyper's HTTP/1 branch, the owned head and body
    /// reads and the session loop share it. Measured 2026-12-01: see the assertion message.
    const MAX_CONNECTION_FUTURE_BYTES: usize = 4096;

    #[tokio::test]
    async fn connection_task_state_stays_small() {
        use crate::link::Link;
        let (_phase_tx, phase) = lifecycle::channel();
        let metrics = Arc::new(Metrics::default());
        let link = Link::unreachable(phase.clone(), metrics.clone());
        let settings = Settings {
            config: Arc::new(Config::default()),
            origins: OriginPolicy::new(&[]),
            link,
            backend: None,
        };
        let edge = Arc::new(Edge::new(
            settings,
            Arc::from("node"),
            phase,
            metrics,
            "http",
        ));
        let stream = served_after(b"GET / HTTP/1.1\r\n\r\n").await;
        let peer = stream.peer_addr().unwrap();
        let gate = ConnectionGate::new(10, 0, None);
        let permit = gate.admit(peer.ip()).unwrap();
        let handler = |_request: Request<Incoming>, _peer: SocketAddr| async {
            status(StatusCode::NOT_FOUND)
        };
        let owned = owned::serve(
            &edge,
            stream,
            peer,
            Instant::now(),
            ConnectionTimeouts::defaults(),
        );
        let owned_size = std::mem::size_of_val(&owned);
        drop(owned);
        let stream = served_after(b"GET / HTTP/1.1\r\n\r\n").await;
        let future = serve_connection(
            stream,
            permit,
            peer,
            PlainAcceptor,
            handler,
            ConnectionTimeouts::defaults(),
            None,
            Drain {
                phase: edge.phase.clone(),
                tracker: TaskTracker::new(),
            },
            Some(edge),
        );
        let size = std::mem::size_of_val(&future);
        eprintln!("connection future: {size} bytes, owned::serve: {owned_size} bytes");
        assert!(
            size <= MAX_CONNECTION_FUTURE_BYTES,
            "connection future is {size} bytes (owned::serve {owned_size})"
        );
    }

    #[tokio::test]
    async fn http1_is_told_from_the_first_bytes_and_the_h2_preface_is_not() {
        let http1 = served_after(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(starts_as_http1(&http1).await);
        let h2 = served_after(H2_PREFACE).await;
        assert!(!starts_as_http1(&h2).await);
        // Too short to tell: left to the auto-detecting server.
        let partial = served_after(b"PRI * HT").await;
        assert!(!starts_as_http1(&partial).await);
        // Peeking consumes nothing.
        let mut first = [0u8; 3];
        http1.peek(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");
    }
}
