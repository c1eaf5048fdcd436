//! The client listener: accepts TCP (or TLS) connections, serves HTTP/1.1 and HTTP/2 with
//! upgrades, and routes each request to its transport or to the passthrough proxy.
//!
//! Guarantees: origin and size policy are applied here, before any session exists; every
//! request sees one consistent settings snapshot ([`Settings`]), replaced whole on reload.

pub mod body;
pub mod cors;
pub mod emulation;
pub mod http_stream;
pub mod origin;
pub mod sse;
pub mod stream;
pub mod tls;
pub mod websocket;

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::admin::metrics::{Metrics, StatusLabels};
use crate::config::Config;
use crate::http::{Body, status};
use crate::lifecycle::{self, PhaseWatch};
use crate::link::Link;
use crate::passthrough::Backend;
use crate::protocol::Encoding;
use crate::session::emulation::EmulationRegistry;
use crate::session::{SessionParams, SessionSettings};
use origin::OriginPolicy;

/// Time allowed for a client to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
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
        let config = &settings.config;
        let path = request.uri().path();
        if config.websocket && path == config.websocket_path {
            return websocket::handle(&self, &settings, request, peer);
        }
        if config.http_stream && path == config.http_stream_path {
            return self
                .with_cors(&settings, request, "POST, OPTIONS", |request| {
                    http_stream::handle(&self, &settings, request, peer)
                })
                .await;
        }
        if config.sse && path == config.sse_path {
            return self
                .with_cors(&settings, request, "GET, POST, OPTIONS", |request| {
                    sse::handle(&self, &settings, request, peer)
                })
                .await;
        }
        if config.emulation_enabled() && path == config.emulation_path {
            return self
                .with_cors(&settings, request, "POST, OPTIONS", |request| {
                    emulation::handle(&self, &settings, request)
                })
                .await;
        }
        // CONNECT and `OPTIONS *` are answered here, never forwarded.
        if let Some(response) = crate::passthrough::local::answer(request.method(), request.uri()) {
            return response;
        }
        match &settings.backend {
            Some(backend) => {
                let response = backend.forward(request, peer, self.scheme).await;
                self.metrics
                    .passthrough_requests
                    .get_or_create(&StatusLabels {
                        status: response.status().as_u16(),
                    })
                    .inc();
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
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                stale_close_delay: config.stale_close_delay,
                queue_max_size: config.queue_max_size,
                command_size_limit,
                write_timeout: config.write_timeout,
                command_timeout: config.command_timeout(),
            },
            metrics: self.metrics.clone(),
        }
    }
}

/// Turns an accepted TCP stream into the byte stream HTTP is served on (TLS or not).
pub trait Acceptor: Clone + Send + Sync + 'static {
    /// The stream type after the handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Performs the handshake (if any).
    fn accept(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    type Stream = TcpStream;
    async fn accept(&self, stream: TcpStream) -> std::io::Result<TcpStream> {
        Ok(stream)
    }
}

/// Accepts connections on `listener` and serves each with `handler` until the process phase
/// reaches `Closing`. Live connections are not cut here; their sessions end on their own.
pub async fn serve<A, H, F>(listener: TcpListener, acceptor: A, handler: H, mut phase: PhaseWatch)
where
    A: Acceptor,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut accept_backoff = Duration::from_millis(5);
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_backoff = Duration::from_millis(5);
                    accepted
                }
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut closing => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request, peer).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with error");
            }
        });
    }
}
