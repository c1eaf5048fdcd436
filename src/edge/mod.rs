//! The client listener: accepts TCP connections, serves HTTP/1.1 and HTTP/2 with upgrades, and
//! routes each request to its transport (WebSocket today) or answers 404.
//!
//! Guarantee: origin and size policy are applied here, before any session exists.

pub mod body;
pub mod cors;
pub mod emulation;
pub mod http_stream;
pub mod origin;
pub mod sse;
pub mod stream;
pub mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{Body, status};
use crate::link::Link;
use crate::protocol::Encoding;
use crate::session::emulation::EmulationRegistry;
use crate::session::{SessionParams, SessionSettings};
use origin::OriginPolicy;

/// Time allowed for a client to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the client-facing handlers need; cheap to share.
pub struct Edge {
    /// Config snapshot.
    pub config: Arc<Config>,
    /// Compiled `allowed_origins`.
    pub origins: OriginPolicy,
    /// The Link new sessions use.
    pub link: Link,
    /// Fires on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Sessions reachable through `/emulation`.
    pub emulation: EmulationRegistry,
}

impl Edge {
    /// Builds the edge for a config and Link.
    pub fn new(config: Arc<Config>, link: Link, shutdown: watch::Receiver<bool>) -> Edge {
        Edge {
            origins: OriginPolicy::new(&config.allowed_origins),
            config,
            link,
            shutdown,
            emulation: EmulationRegistry::default(),
        }
    }

    /// Routes one request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let config = &self.config;
        let path = request.uri().path();
        if config.websocket && path == config.websocket_path {
            return websocket::handle(&self, request, peer);
        }
        if config.http_stream && path == config.http_stream_path {
            return http_stream::handle(self, request, peer).await;
        }
        if config.sse && path == config.sse_path {
            return sse::handle(self, request, peer).await;
        }
        if config.emulation_enabled() && path == config.emulation_path {
            return emulation::handle(self, request).await;
        }
        status(StatusCode::NOT_FOUND)
    }

    /// Session parameters for a new connection from `peer`.
    pub fn session_params(
        &self,
        transport: &'static str,
        encoding: Encoding,
        peer: SocketAddr,
        uri: &Uri,
        headers: &HeaderMap,
        command_size_limit: usize,
    ) -> SessionParams {
        let config = &self.config;
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
            },
        }
    }
}

/// Accepts connections on `listener` and serves each with `handler` until `shutdown` fires.
pub async fn serve<H, F>(listener: TcpListener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut accept_backoff = Duration::from_millis(5);
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
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
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
