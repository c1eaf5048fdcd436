//! The hub behind a gRPC server: `sidewire hub` serves `sidewire.v1.Link` so sidecars in
//! other processes reach the same hub logic through the wire contract.

use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::{Stream, StreamExt, stream};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Hub;
use super::link_auth::LinkAuth;
use crate::edge::Acceptor;
use crate::lifecycle::{self, PhaseWatch};
use crate::linkproto::link_server::{Link, LinkServer};
use crate::linkproto::{SidecarFrame, UpstreamFrame};

/// The tonic service: each `Multiplex` call attaches one Link to the hub.
#[derive(Clone)]
pub struct LinkService {
    hub: Hub,
    auth: LinkAuth,
}

impl LinkService {
    /// Serves `hub`; every stream must pass `auth` before it is attached (welcomed).
    pub fn new(hub: Hub, auth: LinkAuth) -> LinkService {
        LinkService { hub, auth }
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
        let inbound = stream::unfold(request.into_inner(), |mut frames| async move {
            match frames.message().await {
                Ok(Some(frame)) => Some((frame, frames)),
                Ok(None) => None,
                Err(status) => {
                    tracing::warn!(%status, "hub: link stream failed");
                    None
                }
            }
        });
        let downstream = self.hub.attach(Box::pin(inbound));
        Ok(Response::new(
            ReceiverStream::new(downstream).map(Ok).boxed(),
        ))
    }
}

/// Accepts HTTP/2 connections (through `acceptor`: plain or TLS) on `listener` and serves the
/// Link service until closing.
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    acceptor: A,
    hub: Hub,
    auth: LinkAuth,
    mut phase: PhaseWatch,
) {
    let service = LinkServer::new(LinkService::new(hub, auth))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "hub: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut closing => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "hub: handshake failed");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .http2_only()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "hub: link connection ended");
            }
        });
    }
}

/// Binds the Link listener; returns it with its bound address.
pub async fn bind(address: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
