//! The reference upstream: implements the upstream side of the Link with real channels,
//! presence, history with recovery, RPC echo and a Centrifugo-compatible server API.
//!
//! It runs in-process (the embedded default, attached through [`Hub::attach`] with the same
//! frames a gRPC Link carries) or standalone behind the gRPC service in [`grpc`].

pub mod api;
pub mod auth;
pub mod channel;
pub mod control;
pub mod counters;
pub mod drain;
pub mod grpc;
pub mod idempotency;
pub mod jwks;
pub mod link_auth;
pub mod link_queue;
pub mod namespace;
pub mod policy;
pub mod proxy;
mod shared;
pub mod state;
pub mod survey;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::HubConfig;
use crate::lifecycle::{self, PhaseWatch};
use crate::link::uplink::UplinkFrames;
use crate::link::{ConnectError, Connector, Downstream};
use crate::linkproto::{SidecarFrame, UpstreamFrame, Welcome, sidecar_frame, upstream_frame};
use crate::protocol::SERVER_VERSION;
use crate::protocol::client::Command;
use counters::HubCounters;
use link_queue::LinkQueue;
use state::{HubState, Verified};

/// Frames handed from a Link's byte-bounded queue to its transport at once (the queue itself
/// holds the rest, bounded by `hub.link_queue_max_bytes`): a Link holds at most
/// `link_queue_max_bytes + LINK_FORWARD_FRAMES × max_frame_bytes`, in practice a few small
/// frames over the queue's bound.
pub const LINK_FORWARD_FRAMES: usize = 8;
/// Period of the hub's upkeep (token expiry, history TTL).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Channels of a removed Link dropped per lock hold.
const LINK_REMOVAL_BATCH: usize = 64;

struct Inner {
    state: HubState,
    counters: Arc<HubCounters>,
    next_link: AtomicU64,
    /// The proxy hooks of the config in force.
    proxies: ArcSwap<proxy::Proxies>,
    /// Server API surveys waiting for the other nodes' answers.
    surveys: survey::Surveys,
}

/// Cheap handle to the hub; clones share it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub with its upkeep task, which stops when the process is closing.
    pub fn start(config: HubConfig, phase: PhaseWatch) -> Hub {
        Hub::start_with_engine(config, phase, None)
    }

    /// A hub over `engine` (Redis) when given, else the memory engine; with an engine, its
    /// listener, presence and pub/sub upkeep tasks run too.
    pub fn start_with_engine(
        config: HubConfig,
        mut phase: PhaseWatch,
        engine: Option<Arc<crate::engine::redis::RedisEngine>>,
    ) -> Hub {
        let counters = Arc::new(HubCounters::default());
        let proxies = proxy::Proxies::build(&config, &counters);
        let (state, events) = match engine.clone() {
            Some(engine) => {
                let (state, events) = HubState::new_shared(config, counters.clone(), engine);
                (state, Some(events))
            }
            None => (HubState::new(config, counters.clone()), None),
        };
        let hub = Hub {
            inner: Arc::new(Inner {
                state,
                counters,
                next_link: AtomicU64::new(1),
                proxies: ArcSwap::from_pointee(proxies),
                surveys: survey::Surveys::default(),
            }),
        };
        if let (Some(engine), Some(events)) = (engine, events) {
            hub.start_shared(engine, events, phase.clone());
        }
        let upkeep = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            let closing = lifecycle::closing(&mut phase);
            tokio::pin!(closing);
            loop {
                tokio::select! {
                    _ = tick.tick() => upkeep.sweep(),
                    _ = &mut closing => break,
                }
            }
        });
        hub
    }

    /// The hub settings in force.
    pub(crate) fn config(&self) -> HubConfig {
        self.inner.state.config()
    }

    /// Counters and gauges of the hub (Link overflows, repairs, history bytes, evictions).
    pub fn counters(&self) -> Arc<HubCounters> {
        self.inner.counters.clone()
    }

    /// Applies a new hub config (token secret, API key, limits) to later operations.
    pub fn set_config(&self, config: HubConfig) {
        let proxies = proxy::Proxies::build(&config, &self.inner.counters);
        self.inner.proxies.store(Arc::new(proxies));
        self.inner.state.set_config(config);
    }

    /// The proxy hooks in force.
    fn proxies(&self) -> Arc<proxy::Proxies> {
        self.inner.proxies.load_full()
    }

    /// Runs `operation` on the state (which locks only what each operation needs).
    pub fn with_state<R>(&self, operation: impl FnOnce(&HubState) -> R) -> R {
        operation(&self.inner.state)
    }

    /// Attaches one Link stream: frames from `inbound` are applied in order; the returned
    /// receiver yields the frames for that sidecar, starting with `welcome`. The Link ends
    /// when `inbound` ends or the receiver is dropped (its sessions are forgotten, its queue
    /// closed, and later inbound frames are not applied). A full queue never ends it.
    pub fn attach<S>(&self, inbound: S) -> mpsc::Receiver<UpstreamFrame>
    where
        S: Stream<Item = SidecarFrame> + Send + Unpin + 'static,
    {
        let (sender, receiver) = mpsc::channel(LINK_FORWARD_FRAMES);
        let link = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(LinkQueue::new(self.config().link_queue_max_bytes));
        queue.push_control(UpstreamFrame {
            frame: Some(upstream_frame::Frame::Welcome(Welcome {
                version: SERVER_VERSION.to_owned(),
                protocol_version: crate::link::LINK_PROTOCOL_VERSION,
                capabilities: Vec::new(),
            })),
        });
        self.with_state(|state| state.add_link(link, queue.clone()));
        let forwarder = self.clone();
        let outbound = queue.clone();
        tokio::spawn(async move {
            while let Some(frame) = outbound.pop().await {
                if sender.send(frame).await.is_err() {
                    break;
                }
                let repairs = outbound.take_repairs();
                if !repairs.channels.is_empty() || !repairs.sessions.is_empty() {
                    tracing::info!(
                        link,
                        channels = repairs.channels.len(),
                        sessions = repairs.sessions.len(),
                        "hub: link queue drained, repairing lagging subscriptions"
                    );
                    forwarder.with_state(|state| state.repair(link, repairs));
                }
            }
            forwarder.remove_link(link);
        });
        let hub = self.clone();
        let engine = self.engine();
        tokio::spawn(async move {
            let mut inbound = inbound;
            let mut lanes = engine.map(|engine| shared::Lanes::start(&hub, engine, link));
            loop {
                let frame = tokio::select! {
                    frame = inbound.next() => frame,
                    () = queue.closed() => None,
                };
                let Some(frame) = frame else { break };
                if queue.is_dead() {
                    break;
                }
                match &mut lanes {
                    None => hub.apply(link, frame),
                    Some(lanes) => lanes.send(frame).await,
                }
            }
            if let Some(lanes) = lanes {
                lanes.finish().await;
            }
            hub.remove_link(link);
            tracing::info!(link, "hub: link closed");
        });
        receiver
    }

    /// Forgets a Link: its sessions at once, its subscriptions channel by channel in small
    /// batches so no lock hold grows with the Link's size. Idempotent.
    fn remove_link(&self, link: u64) {
        let leftovers = self.with_state(|state| state.take_link(link));
        let mut channels = leftovers.channels;
        while !channels.is_empty() {
            let rest = channels.split_off(channels.len().min(LINK_REMOVAL_BATCH));
            self.with_state(|state| state.drop_link_subscriptions(link, channels));
            channels = rest;
        }
    }

    fn apply(&self, link: u64, frame: SidecarFrame) {
        let Some(frame) = frame.frame else { return };
        match frame {
            sidecar_frame::Frame::Hello(hello) => {
                tracing::info!(link, node = %hello.node, version = %hello.version, "hub: sidecar linked");
            }
            sidecar_frame::Frame::Open(open) => {
                let token = open
                    .connect
                    .as_ref()
                    .and_then(|c| c.connect.as_ref())
                    .map(|c| c.token.as_str())
                    .unwrap_or_default();
                let proxies = self.proxies();
                if token.is_empty() && proxies.connect_enabled() {
                    return self.open_through_hook(link, open, proxies);
                }
                let check = self.with_state(|state| state.verify_connection(token));
                let headers = proxies.keep_headers(&open.headers);
                self.with_state(|state| state.open(link, open, check, headers));
            }
            sidecar_frame::Frame::Command(command) => {
                if let Some(inner) = command.command {
                    let Some(inner) = self.command_through_hook((link, command.session), inner)
                    else {
                        return;
                    };
                    self.with_state(|state| {
                        let token = verify_command_token(state, &inner);
                        state.command((link, command.session), inner, token);
                    });
                }
            }
            sidecar_frame::Frame::Close(close) => {
                self.with_state(|state| state.close((link, close.session)));
            }
            // Only sent to upstreams that declared the capability; the hub declares none.
            sidecar_frame::Frame::CommandTimeout(_) | sidecar_frame::Frame::Error(_) => {}
        }
    }
}

/// Verifies the token a command carries (refresh: connection token; subscribe with a token
/// and sub_refresh: subscription token), before any state lock is taken.
fn verify_command_token(state: &HubState, command: &Command) -> Option<Verified> {
    if let Some(refresh) = &command.refresh {
        return Some(Verified::Connection(state.verify_refresh(&refresh.token)));
    }
    if let Some(request) = &command.sub_refresh {
        return Some(Verified::Subscription(
            state.verify_subscription(&request.token),
        ));
    }
    match &command.subscribe {
        Some(request) if !request.token.is_empty() => Some(Verified::Subscription(
            state.verify_subscription(&request.token),
        )),
        _ => None,
    }
}
/// The embedded hub as the sidecar's in-process upstream (`app` wires it into the Link).
impl Connector for Hub {
    fn open(&self, uplink: UplinkFrames) -> Result<Downstream, ConnectError> {
        Ok(ReceiverStream::new(self.attach(uplink)).map(Ok).boxed())
    }
}
