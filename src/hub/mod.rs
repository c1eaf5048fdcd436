//! The reference upstream: implements the upstream side of the Link with real channels,
//! presence, history with recovery, RPC echo and a Centrifugo-compatible server API.
//!
//! It runs in-process (the embedded default, attached through [`Hub::attach`] with the same
//! frames a gRPC Link carries) or standalone behind the gRPC service in [`grpc`].

pub mod api;
pub mod auth;
pub mod grpc;
pub mod link_auth;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::config::HubConfig;
use crate::lifecycle::{self, PhaseWatch};
use crate::linkproto::{SidecarFrame, UpstreamFrame, Welcome, sidecar_frame, upstream_frame};
use crate::session::handle::SERVER_VERSION;
use state::HubState;

/// Frames queued towards one sidecar before that Link counts as overloaded and is dropped.
pub const LINK_QUEUE_FRAMES: usize = 65_536;
/// Period of the hub's upkeep (token expiry, empty channels).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Inner {
    state: Mutex<HubState>,
    next_link: AtomicU64,
}

/// Cheap handle to the hub; clones share it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub with its upkeep task, which stops when the process is closing.
    pub fn start(config: HubConfig, mut phase: PhaseWatch) -> Hub {
        let hub = Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(HubState::new(config)),
                next_link: AtomicU64::new(1),
            }),
        };
        let upkeep = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            let closing = lifecycle::closing(&mut phase);
            tokio::pin!(closing);
            loop {
                tokio::select! {
                    _ = tick.tick() => upkeep.with_state(HubState::sweep),
                    _ = &mut closing => break,
                }
            }
        });
        hub
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new hub config (token secret, API key, history limits) to later operations.
    pub fn set_config(&self, config: HubConfig) {
        self.with_state(|state| state.set_config(config));
    }

    /// Runs `operation` on the state, then drops Links that overflowed meanwhile.
    pub fn with_state<R>(&self, operation: impl FnOnce(&mut HubState) -> R) -> R {
        let mut state = self.lock();
        let result = operation(&mut state);
        for link in state.take_overloaded() {
            tracing::warn!(link, "hub: link queue full, dropping the link");
            state.remove_link(link);
        }
        result
    }

    /// Attaches one Link stream: frames from `inbound` are applied in order; the returned
    /// receiver yields the frames for that sidecar, starting with `welcome`. The Link ends
    /// when `inbound` ends (its sessions are forgotten) or when its queue overflows.
    pub fn attach<S>(&self, inbound: S) -> mpsc::Receiver<UpstreamFrame>
    where
        S: Stream<Item = SidecarFrame> + Send + Unpin + 'static,
    {
        let (sender, receiver) = mpsc::channel(LINK_QUEUE_FRAMES);
        let link = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let welcome = UpstreamFrame {
            frame: Some(upstream_frame::Frame::Welcome(Welcome {
                version: SERVER_VERSION.to_owned(),
                protocol_version: crate::link::LINK_PROTOCOL_VERSION,
                capabilities: Vec::new(),
            })),
        };
        sender.try_send(welcome).expect("a new channel has room");
        self.with_state(|state| state.add_link(link, sender));
        let hub = self.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            while let Some(frame) = inbound.next().await {
                hub.apply(link, frame);
            }
            hub.with_state(|state| state.remove_link(link));
            tracing::info!(link, "hub: link closed");
        });
        receiver
    }

    fn apply(&self, link: u64, frame: SidecarFrame) {
        let Some(frame) = frame.frame else { return };
        self.with_state(|state| match frame {
            sidecar_frame::Frame::Hello(hello) => {
                tracing::info!(link, node = %hello.node, version = %hello.version, "hub: sidecar linked");
            }
            sidecar_frame::Frame::Open(open) => state.open(link, open),
            sidecar_frame::Frame::Command(command) => {
                if let Some(inner) = command.command {
                    state.command((link, command.session), inner);
                }
            }
            sidecar_frame::Frame::Close(close) => state.close((link, close.session)),
            // Only sent to upstreams that declared the capability; the hub declares none.
            sidecar_frame::Frame::CommandTimeout(_) | sidecar_frame::Frame::Error(_) => {}
        });
    }
}
