//! The hub behind a gRPC server: `sidewire hub` serves `sidewire.v1.Link` so sidecars in
//! other processes reach the same hub logic through the wire contract.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt, future, stream};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Hub;
use super::drain::{self, LinkSessions};
use super::link_auth::LinkAuth;
use crate::config::HubConfig;
use crate::lifecycle::{self, PhaseWatch};
use crate::linkproto::link_server::{Link, LinkServer};
use crate::linkproto::{SidecarFrame, UpstreamFrame, sidecar_frame, upstream_frame};
use crate::server::{self, Acceptor, HandshakeError};

/// Time a new Link connection has for its TLS handshake (the same 10 s the edge gives clients
/// by default).
const LINK_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames of the drain (3001 disconnects) queued per Link beside the hub's own queue.
const DRAIN_QUEUE_FRAMES: usize = 1024;

/// HTTP/2 keepalive of the Link server: a sidecar that stops answering PINGs (dead host,
/// blackholed network) has its connection closed, so its Link ends and the hub forgets its
/// sessions and presence instead of keeping ghosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkKeepalive {
    /// PING period (`None`: off).
    pub interval: Option<Duration>,
    /// Time allowed for the acknowledgement.
    pub timeout: Duration,
}

impl LinkKeepalive {
    /// From `hub.link_keepalive_interval` / `hub.link_keepalive_timeout`.
    pub fn from_config(config: &HubConfig) -> LinkKeepalive {
        LinkKeepalive {
            interval: (!config.link_keepalive_interval.is_zero())
                .then_some(*config.link_keepalive_interval),
            timeout: *config.link_keepalive_timeout,
        }
    }
}

/// The tonic service: each `Multiplex` call attaches one Link to the hub.
#[derive(Clone)]
pub struct LinkService {
    hub: Hub,
    phase: PhaseWatch,
    auth: LinkAuth,
}

impl LinkService {
    /// Serves `hub`; every stream must pass `auth` before it is attached (welcomed); when
    /// `phase` reaches `Closing`, each Link's sessions are drained ([`drain::drain_link`]).
    pub fn new(hub: Hub, phase: PhaseWatch, auth: LinkAuth) -> LinkService {
        LinkService { hub, phase, auth }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<UpstreamFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Link for LinkService {
    type MultiplexStream = FrameStream;

    async fn multiplex(
        &self,
        request: Request<Streaming<SidecarFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        self.auth.check(request.metadata())?;
        let sessions = Arc::new(LinkSessions::default());
        let seen_up = sessions.clone();
        let inbound = stream::unfold(request.into_inner(), move |mut frames| {
            let seen_up = seen_up.clone();
            async move {
                match frames.message().await {
                    Ok(Some(frame)) => {
                        match &frame.frame {
                            Some(sidecar_frame::Frame::Open(open)) => seen_up.opened(open.session),
                            Some(sidecar_frame::Frame::Close(close)) => {
                                seen_up.closed(close.session)
                            }
                            _ => {}
                        }
                        Some((frame, frames))
                    }
                    Ok(None) => None,
                    Err(status) => {
                        tracing::warn!(%status, "hub: link stream failed");
                        None
                    }
                }
            }
        });
        let downstream = self.hub.attach(Box::pin(inbound));
        let (drain_tx, drain_rx) = tokio::sync::mpsc::channel(DRAIN_QUEUE_FRAMES);
        tokio::spawn(drain::drain_link(
            sessions.clone(),
            drain_tx,
            self.phase.clone(),
        ));
        let hub_frames = ReceiverStream::new(downstream)
            .map(move |frame| {
                if let Some(upstream_frame::Frame::Disconnect(disconnect)) = &frame.frame {
                    sessions.closed(disconnect.session);
                }
                Some(frame)
            })
            // `None` marks the end of the hub's side: the Link ends there, drain or not.
            .chain(stream::once(future::ready(None)));
        let drain_frames = ReceiverStream::new(drain_rx).map(Some);
        let merged = stream::select(hub_frames, drain_frames)
            .take_while(|frame| future::ready(frame.is_some()))
            .filter_map(|frame| future::ready(frame.map(Ok)));
        Ok(Response::new(merged.boxed()))
    }
}

/// Accepts HTTP/2 connections (through `acceptor`: plain or TLS) on `listener` and serves the
/// Link service until closing.
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    acceptor: A,
    hub: Hub,
    keepalive: LinkKeepalive,
    auth: LinkAuth,
    mut phase: PhaseWatch,
) {
    let service = LinkServer::new(LinkService::new(hub, phase.clone(), auth))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let closing = async move {
        lifecycle::closing(&mut phase).await;
    };
    let on_connection = |stream, peer: SocketAddr| {
        let service = TowerToHyperService::new(service.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LINK_HANDSHAKE_TIMEOUT;
            let stream = match server::handshake(&acceptor, stream, deadline).await {
                Ok(stream) => stream,
                Err(HandshakeError::Failed(error)) => {
                    tracing::debug!(%peer, %error, "hub: handshake failed");
                    return;
                }
                Err(HandshakeError::TimedOut) => {
                    tracing::debug!(%peer, "hub: handshake timed out");
                    return;
                }
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout);
            if let Err(error) = builder
                .http2_only()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "hub: link connection ended");
            }
        });
    };
    server::accept_loop("hub.link_listen", &listener, closing, on_connection, || {}).await;
}

/// Binds the Link listener; returns it with its bound address.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
