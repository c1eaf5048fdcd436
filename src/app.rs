//! Assembles a running sidewire from a validated config: the Link (to the embedded hub or an
//! external upstream), the client listener and the admin listener; and the standalone hub.

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::edge::{self, Edge};
use crate::hub::{self, Hub};
use crate::link::backoff::Backoff;
use crate::link::{Link, Upstream};

/// Longest wait for sessions to close after a shutdown signal.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Startup failures.
#[derive(Debug, Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address from the config.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind {
            what,
            address,
            source,
        })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// A sidecar with its listeners bound, ready to serve.
pub struct Sidecar {
    client: TcpListener,
    admin: TcpListener,
    edge: Arc<Edge>,
    admin_state: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
}

impl Sidecar {
    /// Starts the Link (and the embedded hub when no upstream is configured) and binds both
    /// listeners.
    pub async fn bind(
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Sidecar, AppError> {
        let client = bind("listen", config.listen).await?;
        let admin = bind("admin_listen", config.admin_listen).await?;
        let node: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let (upstream, backoff, hub) = match &config.upstream {
            Some(upstream) => (
                Upstream::Grpc(upstream.clone()),
                Backoff::new(
                    upstream.reconnect_backoff_min,
                    upstream.reconnect_backoff_max,
                ),
                None,
            ),
            None => {
                let hub = Hub::start(config.hub.clone(), shutdown.clone());
                (
                    Upstream::Embedded(hub.clone()),
                    Backoff::new(
                        std::time::Duration::from_millis(50),
                        std::time::Duration::from_secs(1),
                    ),
                    Some(hub),
                )
            }
        };
        let link = Link::spawn(upstream, node, backoff, shutdown.clone());
        let config = Arc::new(config);
        let admin_state = Arc::new(Admin {
            link: link.clone(),
            hub,
            api_key: config.hub.api_key.clone(),
            shutdown: shutdown.clone(),
        });
        let edge = Arc::new(Edge::new(config, link, shutdown.clone()));
        Ok(Sidecar {
            client,
            admin,
            edge,
            admin_state,
            shutdown,
        })
    }

    /// Bound client and admin addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let config = &self.edge.config;
        (
            local_addr(&self.client, config.listen),
            local_addr(&self.admin, config.admin_listen),
        )
    }

    /// Serves until shutdown, then waits (at most [`DRAIN_TIMEOUT`]) for live sessions to
    /// close with 3001 and tell the upstream.
    pub async fn serve(self) {
        let link = self.edge.link.clone();
        let edge = self.edge;
        let admin = self.admin_state;
        let client = edge::serve(
            self.client,
            move |request, peer| edge.clone().handle(request, peer),
            self.shutdown.clone(),
        );
        let admin = edge::serve(
            self.admin,
            move |request, _peer| admin.clone().handle(request),
            self.shutdown.clone(),
        );
        tokio::join!(client, admin);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while link.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The standalone hub: Link (gRPC) listener and server API listener.
pub struct StandaloneHub {
    link: TcpListener,
    api: TcpListener,
    hub: Hub,
    api_key: Option<String>,
    shutdown: watch::Receiver<bool>,
}

impl StandaloneHub {
    /// Binds `hub.link_listen` and `hub.api_listen`.
    pub async fn bind(
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<StandaloneHub, AppError> {
        let link = bind("hub.link_listen", config.hub.link_listen).await?;
        let api = bind("hub.api_listen", config.hub.api_listen).await?;
        let api_key = config.hub.api_key.clone();
        let hub = Hub::start(config.hub, shutdown.clone());
        Ok(StandaloneHub {
            link,
            api,
            hub,
            api_key,
            shutdown,
        })
    }

    /// Bound Link and API addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        (
            local_addr(&self.link, "0.0.0.0:0".parse().expect("constant")),
            local_addr(&self.api, "0.0.0.0:0".parse().expect("constant")),
        )
    }

    /// Serves until shutdown.
    pub async fn serve(self) {
        let hub = self.hub.clone();
        let api_key = self.api_key.clone();
        let api = edge::serve(
            self.api,
            move |request, _peer| {
                let hub = hub.clone();
                let api_key = api_key.clone();
                async move { crate::admin::api_call(&hub, api_key.as_deref(), request).await }
            },
            self.shutdown.clone(),
        );
        let link = hub::grpc::serve(self.link, self.hub, self.shutdown.clone());
        tokio::join!(api, link);
    }
}
