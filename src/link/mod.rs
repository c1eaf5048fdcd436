//! The Link: one multiplexed stream between this sidecar and the upstream that owns channel
//! logic, carrying every session (open, commands, close up; replies, pushes, membership,
//! disconnects down).
//!
//! Guarantees:
//! - one owner task per Link reads the downstream in order, so per-session order is kept;
//! - a slow client never blocks the Link: the router only pushes into bounded outboxes;
//! - while the stream is down, readiness is false and new sessions are refused; sessions of a
//!   lost stream end with 3004 (clients reconnect); reconnects use capped, jittered backoff.

pub mod backoff;
pub mod registry;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::admin::metrics::Metrics;
use crate::lifecycle::{PhaseWatch, RunPhase};
use crate::linkproto::{
    Hello, SessionClose, SessionCommand, SessionOpen, SidecarFrame, UpstreamFrame, sidecar_frame,
    upstream_frame,
};
use crate::protocol::client::Command;
use crate::protocol::{Disconnect, Encoding};
use crate::session::SessionHandle;
use backoff::Backoff;
use registry::Registry;
pub use upstream::{ConnectError, Upstream};

/// Frames queued from sessions towards the upstream before senders wait (backpressure).
pub const UPLINK_QUEUE_FRAMES: usize = 4096;

/// State of the Link, published on a watch channel (readiness reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting or waiting to reconnect.
    Down,
    /// The stream is open and welcomed.
    Up,
    /// Stopped for good (shutdown).
    Stopped,
}

/// The Link is down: the session cannot open or send.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("upstream unavailable")]
pub struct Unavailable;

/// Transport-level facts the upstream gets in `SessionOpen`.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// `websocket`, `http_stream` or `sse`.
    pub transport: &'static str,
    /// Client address.
    pub remote_addr: String,
    /// Path and query (redacted where needed).
    pub url: String,
    /// Allow-listed headers.
    pub headers: Vec<(String, String)>,
}

struct Inner {
    node: Arc<str>,
    metrics: Arc<Metrics>,
    /// Set once this Link is replaced by a reload: it ends when its last session does.
    retired: watch::Sender<bool>,
    /// Whether a stream was ever up (later ones count as reconnects).
    was_up_once: std::sync::atomic::AtomicBool,
    registry: Mutex<Registry>,
    /// Uplink of the live stream; `None` while down. Lock order: `uplink`, then `registry`.
    uplink: Mutex<Option<mpsc::Sender<SidecarFrame>>>,
    state: watch::Sender<LinkState>,
    next_session: AtomicU64,
}

/// Cheap handle to a Link; clones share it.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// Starts the owner task of a Link to `upstream`. It stops reconnecting once the process
    /// is closing, and ends for good once retired and empty.
    pub fn spawn(
        upstream: Upstream,
        node: Arc<str>,
        backoff: Backoff,
        phase: PhaseWatch,
        metrics: Arc<Metrics>,
    ) -> Link {
        let (state, _) = watch::channel(LinkState::Down);
        let (retired, _) = watch::channel(false);
        let link = Link {
            inner: Arc::new(Inner {
                node,
                metrics,
                retired,
                was_up_once: std::sync::atomic::AtomicBool::new(false),
                registry: Mutex::new(Registry::default()),
                uplink: Mutex::new(None),
                state,
                next_session: AtomicU64::new(1),
            }),
        };
        tokio::spawn(link.clone().run(upstream, backoff, phase));
        link
    }

    /// Marks this Link as replaced (config reload): it accepts no new session and stops once
    /// its last session has ended.
    pub fn retire(&self) {
        self.inner.retired.send_replace(true);
        let link = self.clone();
        tokio::spawn(async move {
            while link.session_count() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            link.inner.state.send_replace(LinkState::Stopped);
            // Wakes the owner task, which sees the Stopped state and ends.
            link.inner.retired.send_replace(true);
        });
    }

    /// Current state.
    pub fn state(&self) -> LinkState {
        *self.inner.state.borrow()
    }

    /// Watches the state (readiness, tests).
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.inner.state.subscribe()
    }

    /// This sidecar's node id.
    pub fn node(&self) -> &Arc<str> {
        &self.inner.node
    }

    /// Number of sessions live on the Link.
    pub fn session_count(&self) -> usize {
        lock(&self.inner.registry).len()
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers the session and sends `SessionOpen` with its connect command.
    pub async fn open(
        &self,
        handle: Arc<SessionHandle>,
        request: OpenRequest,
        connect: Command,
    ) -> Result<LinkSession, Unavailable> {
        if *self.inner.retired.borrow() {
            return Err(Unavailable);
        }
        let uplink = {
            let uplink = lock(&self.inner.uplink);
            let sender = uplink.as_ref().ok_or(Unavailable)?.clone();
            lock(&self.inner.registry).insert(handle.clone());
            sender
        };
        let session = LinkSession {
            link: self.clone(),
            id: handle.id,
            uplink,
        };
        handle.mark_connecting(connect.id);
        let open = SessionOpen {
            session: handle.id,
            client: handle.client_id().to_owned(),
            transport: request.transport.to_owned(),
            encoding: match handle.encoding {
                Encoding::Json => crate::linkproto::Encoding::Json as i32,
                Encoding::Protobuf => crate::linkproto::Encoding::Protobuf as i32,
            },
            remote_addr: request.remote_addr,
            headers: request.headers.into_iter().collect(),
            url: request.url,
            connect: Some(connect),
        };
        session.send(sidecar_frame::Frame::Open(open)).await?;
        Ok(session)
    }

    /// Owner loop: connect, route until the stream ends, back off, repeat. Shutdown stops
    /// reconnecting but leaves a live stream up, so sessions can still say goodbye upstream
    /// while they drain.
    async fn run(self, upstream: Upstream, mut backoff: Backoff, mut phase: PhaseWatch) {
        loop {
            if let Err(error) = self.connect_and_route(&upstream, &mut backoff).await {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                tracing::warn!(upstream = ?upstream, error = %text, "link: cannot connect");
            }
            self.went_down();
            if self.stopping(&phase) {
                break;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A dropped sender disables this branch instead of spinning.
                Ok(()) = phase.changed() => {}
            }
            if self.stopping(&phase) {
                break;
            }
        }
        self.inner.state.send_replace(LinkState::Stopped);
    }

    fn stopping(&self, phase: &PhaseWatch) -> bool {
        matches!(*phase.borrow(), RunPhase::Closing { .. }) || self.is_stopped()
    }

    fn is_stopped(&self) -> bool {
        *self.inner.retired.borrow() && self.session_count() == 0
    }

    /// Opens one stream and routes its frames until it ends.
    async fn connect_and_route(
        &self,
        upstream: &Upstream,
        backoff: &mut Backoff,
    ) -> Result<(), ConnectError> {
        let (uplink, uplink_rx) = mpsc::channel(UPLINK_QUEUE_FRAMES);
        let hello = SidecarFrame {
            frame: Some(sidecar_frame::Frame::Hello(Hello {
                node: self.inner.node.to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        uplink.try_send(hello).expect("a new channel has room");
        let connect_timeout = upstream.connect_timeout();
        let mut downstream = timeout(connect_timeout, upstream.open(uplink_rx))
            .await
            .map_err(|_| ConnectError::Timeout(connect_timeout))??;
        match timeout(connect_timeout, downstream.next()).await {
            Ok(Some(Ok(UpstreamFrame {
                frame: Some(upstream_frame::Frame::Welcome(_)),
            }))) => {}
            Ok(Some(Ok(_))) => {
                return Err(ConnectError::Status(tonic::Status::failed_precondition(
                    "first frame is not welcome",
                )));
            }
            Ok(Some(Err(status))) => return Err(status.into()),
            Ok(None) => {
                return Err(tonic::Status::unavailable("stream ended before welcome").into());
            }
            Err(_) => return Err(ConnectError::Timeout(connect_timeout)),
        }
        *lock(&self.inner.uplink) = Some(uplink);
        self.inner.state.send_replace(LinkState::Up);
        self.inner.metrics.link_up.set(1);
        if self
            .inner
            .was_up_once
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.inner.metrics.link_reconnects.inc();
        }
        backoff.reset();
        tracing::info!(upstream = ?upstream, "link: up");
        let mut retired = self.inner.retired.subscribe();
        loop {
            tokio::select! {
                frame = downstream.next() => match frame {
                    Some(Ok(frame)) => self.route(frame),
                    Some(Err(status)) => {
                        tracing::warn!(%status, "link: stream failed");
                        return Ok(());
                    }
                    None => {
                        tracing::warn!("link: stream ended by upstream");
                        return Ok(());
                    }
                },
                _ = retired.changed() => {
                    if self.is_stopped() {
                        tracing::info!(upstream = ?upstream, "link: retired");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Applies one downstream frame.
    fn route(&self, frame: UpstreamFrame) {
        let Some(frame) = frame.frame else { return };
        let mut registry = lock(&self.inner.registry);
        match frame {
            upstream_frame::Frame::Reply(reply) => {
                if let (Some(handle), Some(reply)) = (registry.get(reply.session), reply.reply) {
                    handle.deliver_reply(reply);
                }
            }
            upstream_frame::Frame::Disconnect(disconnect) => {
                if let Some(handle) = registry.get(disconnect.session) {
                    handle
                        .outbox
                        .end(Disconnect::new(disconnect.code, disconnect.reason));
                }
            }
            upstream_frame::Frame::Membership(membership) => {
                registry.set_membership(
                    membership.session,
                    &membership.channel,
                    membership.subscribed,
                    membership.join_leave,
                );
            }
            upstream_frame::Frame::Push(push) => {
                if let Some(inner) = push.push {
                    registry.fan_out(&push.channel, inner);
                }
            }
            upstream_frame::Frame::Welcome(_) => {}
        }
    }

    /// Marks the Link down and ends every session of the lost stream.
    fn went_down(&self) {
        let was_up = lock(&self.inner.uplink).take().is_some();
        if was_up && !*self.inner.retired.borrow() {
            self.inner.metrics.link_up.set(0);
        }
        let ended = lock(&self.inner.registry).end_all(&Disconnect::UPSTREAM_UNAVAILABLE);
        if was_up {
            tracing::warn!(sessions = ended, "link: down");
        }
        self.inner.state.send_if_modified(|state| {
            let changed = *state == LinkState::Up;
            if changed {
                *state = LinkState::Down;
            }
            changed
        });
    }
}

/// A session's registration on the Link; dropping it unregisters the session.
#[derive(Debug)]
pub struct LinkSession {
    link: Link,
    id: u64,
    uplink: mpsc::Sender<SidecarFrame>,
}

impl LinkSession {
    async fn send(&self, frame: sidecar_frame::Frame) -> Result<(), Unavailable> {
        self.uplink
            .send(SidecarFrame { frame: Some(frame) })
            .await
            .map_err(|_| Unavailable)
    }

    /// Forwards a command of the session.
    pub async fn command(&self, command: Command) -> Result<(), Unavailable> {
        self.send(sidecar_frame::Frame::Command(SessionCommand {
            session: self.id,
            command: Some(command),
        }))
        .await
    }

    /// Tells the upstream the session ended, then unregisters it.
    pub async fn close(self, disconnect: &Disconnect) {
        let still_live = lock(&self.link.inner.registry).contains(self.id);
        if still_live {
            // Best effort: if the stream is gone, so is the session upstream.
            let _ = self
                .send(sidecar_frame::Frame::Close(SessionClose {
                    session: self.id,
                    code: disconnect.code,
                    reason: disconnect.reason.to_string(),
                }))
                .await;
        }
    }
}

impl Drop for LinkSession {
    fn drop(&mut self) {
        lock(&self.link.inner.registry).remove(self.id);
    }
}
