//! The Link: one multiplexed stream between this sidecar and the upstream that owns channel
//! logic, carrying every session (open, commands, close up; replies, pushes, membership,
//! disconnects down).
//!
//! Guarantees:
//! - one owner task per Link reads the downstream in order, so per-session order is kept;
//! - that task owns the session registry outright: sessions register and unregister through a
//!   control queue it serves before each downstream frame, so fan-out encodes and delivers
//!   under no lock and opening or closing a session never waits on a fan-out;
//! - a slow client never blocks the Link: the router only pushes into bounded outboxes;
//! - every uplink send has a deadline ([`UPLINK_SEND_TIMEOUT`]): a stalled upstream ends the
//!   sessions that wait on it (3004), it never freezes them;
//! - while the stream is down, readiness is false and new sessions are refused; sessions of a
//!   lost stream end with 3004 (clients reconnect); reconnects use capped, jittered backoff.

pub mod backoff;
pub mod member;
pub mod registry;
pub mod uplink;
pub mod upstream;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::timeout;

use crate::lifecycle::{PhaseWatch, RunPhase};
use crate::linkproto::{
    Hello, LinkError, SessionClose, SessionCommand, SessionCommandTimeout, SessionOpen,
    SidecarFrame, UpstreamFrame, Welcome, sidecar_frame, upstream_frame,
};
use crate::metrics::{Metrics, ReasonLabels};
use crate::protocol::client::Command;
use crate::protocol::{Disconnect, Encoding};
use crate::sync::lock;
use backoff::Backoff;
pub use member::{Connector, Delivery, Member};
use registry::Registry;
use uplink::{UplinkError, UplinkSender};
pub use upstream::{ConnectError, Downstream, Upstream};

/// Frames queued from sessions towards the upstream before senders wait (backpressure).
pub const UPLINK_QUEUE_FRAMES: usize = 4096;
/// Encoded bytes queued from sessions towards the upstream before senders wait: commands can
/// be as large as a client message, so the frame bound alone would allow 4096 × 64 KiB.
pub const UPLINK_QUEUE_BYTES: u32 = 16 * 1024 * 1024;
/// Longest a session waits for room in the uplink queue before it gives up (3004): a stalled
/// upstream must not freeze the sessions that talk to it.
pub const UPLINK_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Link protocol version this sidecar speaks (`Hello.protocol_version`).
pub const LINK_PROTOCOL_VERSION: u32 = 1;
/// Capability: the peer sends / wants `SessionCommandTimeout` frames.
pub const CAP_COMMAND_TIMEOUT: &str = "command_timeout";
/// Capability: the peer sends / wants `LinkError` frames.
pub const CAP_LINK_ERROR: &str = "link_error";
/// Capabilities this sidecar declares in `Hello`.
pub const SIDECAR_CAPABILITIES: &[&str] = &[CAP_COMMAND_TIMEOUT, CAP_LINK_ERROR];
/// `LinkError.code`: an `UpstreamFrame` with no known frame set.
pub const LINK_ERROR_UNKNOWN_FRAME: u32 = 1;

/// Optional frames the upstream asked for in its `Welcome`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCapabilities {
    /// Send `SessionCommandTimeout` when a command times out.
    pub command_timeout: bool,
    /// Answer frames the sidecar cannot understand with `LinkError`.
    pub link_error: bool,
}

impl PeerCapabilities {
    /// Reads the capability list of a `Welcome`; unknown names are ignored.
    pub fn from_welcome(welcome: &Welcome) -> PeerCapabilities {
        let has = |name: &str| welcome.capabilities.iter().any(|c| c == name);
        PeerCapabilities {
            command_timeout: has(CAP_COMMAND_TIMEOUT),
            link_error: has(CAP_LINK_ERROR),
        }
    }
}

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

/// A registration change, served by the owner task before the next downstream frame.
enum Control {
    /// A session opened on the stream of generation `stream`.
    Insert {
        handle: Arc<dyn Member>,
        stream: u64,
    },
    /// A session ended.
    Remove(u64),
}

/// The live stream's uplink and generation.
#[derive(Clone)]
struct LiveStream {
    generation: u64,
    sender: UplinkSender,
    capabilities: PeerCapabilities,
}

struct Inner {
    node: Arc<str>,
    metrics: Arc<Metrics>,
    /// Set once this Link is replaced by a reload: it ends when its last session does.
    retired: watch::Sender<bool>,
    /// Whether a stream was ever up (later ones count as reconnects).
    was_up_once: AtomicBool,
    /// Registrations for the owner task. Unbounded on purpose: each session sends at most one
    /// insert and one remove, so its length is bounded by the number of sessions.
    control: mpsc::UnboundedSender<Control>,
    /// Uplink of the live stream; `None` while down. Held only to clone or swap it.
    uplink: Mutex<Option<LiveStream>>,
    /// Generation of the live stream; 0 while down.
    generation: AtomicU64,
    /// Sessions registered and not yet dropped (retirement waits for 0).
    live_sessions: AtomicUsize,
    /// Signalled when `live_sessions` drops to 0.
    emptied: Notify,
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

impl Link {
    /// A Link to an upstream that is never reachable, for tests that build one only to
    /// measure or drive what sits in front of it.
    #[cfg(test)]
    pub(crate) fn unreachable(phase: PhaseWatch, metrics: Arc<Metrics>) -> Link {
        Link::spawn(
            Upstream::Embedded(Arc::new(member::Unreachable)),
            Arc::from("node"),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
            phase,
            metrics,
        )
    }

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
        let (control, control_rx) = mpsc::unbounded_channel();
        let link = Link {
            inner: Arc::new(Inner {
                node,
                metrics,
                retired,
                was_up_once: AtomicBool::new(false),
                control,
                uplink: Mutex::new(None),
                generation: AtomicU64::new(0),
                live_sessions: AtomicUsize::new(0),
                emptied: Notify::new(),
                state,
                next_session: AtomicU64::new(1),
            }),
        };
        let router = Router {
            registry: Registry::default(),
            control: control_rx,
            generation: 0,
            next_generation: 1,
            welcome_version: String::new(),
            uplink: None,
            capabilities: PeerCapabilities::default(),
        };
        tokio::spawn(link.clone().run(upstream, backoff, phase, router));
        link
    }

    /// Marks this Link as replaced (config reload): it accepts no new session and stops once
    /// its last session has ended.
    pub fn retire(&self) {
        self.inner.retired.send_replace(true);
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                let emptied = link.inner.emptied.notified();
                tokio::pin!(emptied);
                emptied.as_mut().enable();
                if link.session_count() == 0 {
                    break;
                }
                emptied.await;
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
        self.inner.live_sessions.load(Ordering::Acquire)
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers the session and sends `SessionOpen` with its connect command.
    pub async fn open(
        &self,
        handle: Arc<dyn Member>,
        request: OpenRequest,
        connect: Command,
    ) -> Result<LinkSession, Unavailable> {
        if *self.inner.retired.borrow() {
            return Err(Unavailable);
        }
        let live = lock(&self.inner.uplink).clone().ok_or(Unavailable)?;
        self.inner.live_sessions.fetch_add(1, Ordering::AcqRel);
        // Queued before the open frame is sent, so the owner task knows the session before
        // any reply to it can arrive.
        let _ = self.inner.control.send(Control::Insert {
            handle: handle.clone(),
            stream: live.generation,
        });
        let session = LinkSession {
            link: self.clone(),
            id: handle.id(),
            stream: live.generation,
            uplink: live.sender,
            capabilities: live.capabilities,
        };
        handle.mark_connecting(connect.id);
        let open = SessionOpen {
            session: handle.id(),
            client: handle.client_id().to_owned(),
            transport: request.transport.to_owned(),
            encoding: match handle.encoding() {
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
    async fn run(
        self,
        upstream: Upstream,
        mut backoff: Backoff,
        mut phase: PhaseWatch,
        mut router: Router,
    ) {
        loop {
            if let Err(error) = self
                .connect_and_route(&upstream, &mut backoff, &mut router)
                .await
            {
                let error = crate::error::Chain(&error);
                tracing::warn!(upstream = ?upstream, %error, "link: cannot connect");
            }
            self.went_down(&mut router);
            if self.stopping(&phase) {
                break;
            }
            router.wait(backoff.next_delay(), &mut phase).await;
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
        router: &mut Router,
    ) -> Result<(), ConnectError> {
        let (uplink, uplink_rx) = uplink::channel(UPLINK_QUEUE_FRAMES, UPLINK_QUEUE_BYTES);
        let hello = SidecarFrame {
            frame: Some(sidecar_frame::Frame::Hello(Hello {
                node: self.inner.node.to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol_version: LINK_PROTOCOL_VERSION,
                capabilities: SIDECAR_CAPABILITIES
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
            })),
        };
        if uplink.try_send(hello).is_err() {
            return Err(tonic::Status::internal("a new uplink has no room for hello").into());
        }
        let connect_timeout = upstream.connect_timeout();
        let mut downstream = timeout(connect_timeout, upstream.open(uplink_rx))
            .await
            .map_err(|_| ConnectError::Timeout(connect_timeout))??;
        let welcome = match timeout(connect_timeout, downstream.next()).await {
            Ok(Some(Ok(UpstreamFrame {
                frame: Some(upstream_frame::Frame::Welcome(welcome)),
            }))) => welcome,
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
        };
        let capabilities = PeerCapabilities::from_welcome(&welcome);
        tracing::info!(
            protocol_version = welcome.protocol_version,
            capabilities = ?welcome.capabilities,
            "link: welcomed"
        );
        let generation = router.stream_up(welcome.version, uplink.clone(), capabilities);
        self.inner.generation.store(generation, Ordering::Release);
        *lock(&self.inner.uplink) = Some(LiveStream {
            generation,
            sender: uplink,
            capabilities,
        });
        self.inner.state.send_replace(LinkState::Up);
        self.inner.metrics.link_up.set(1);
        if self.inner.was_up_once.swap(true, Ordering::Relaxed) {
            self.inner.metrics.link_reconnects.inc();
        }
        backoff.reset();
        tracing::info!(upstream = ?upstream, "link: up");
        let mut retired = self.inner.retired.subscribe();
        loop {
            tokio::select! {
                biased;
                // Registrations first: a session is known before any reply to it is routed.
                Some(control) = router.control.recv() => router.apply(control),
                frame = downstream.next() => match frame {
                    Some(Ok(frame)) => router.route(frame, &self.inner.metrics),
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

    /// Marks the Link down and ends every session of the lost stream.
    fn went_down(&self, router: &mut Router) {
        let was_up = lock(&self.inner.uplink).take().is_some();
        self.inner.generation.store(0, Ordering::Release);
        if was_up && !*self.inner.retired.borrow() {
            self.inner.metrics.link_up.set(0);
        }
        let ended = router.stream_down();
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

/// What the owner task keeps: the registry and the live stream's facts. Owned by that task
/// alone, so nothing here is locked.
struct Router {
    registry: Registry,
    control: mpsc::UnboundedReceiver<Control>,
    /// Generation of the live stream; 0 while down.
    generation: u64,
    next_generation: u64,
    /// `Welcome.version` of the live stream: the connect result's version when the upstream
    /// leaves it empty.
    welcome_version: String,
    /// Uplink of the live stream, for `LinkError` answers; `None` while down.
    uplink: Option<UplinkSender>,
    /// What the live stream's upstream declared.
    capabilities: PeerCapabilities,
}

impl Router {
    /// A stream was welcomed; returns its generation.
    fn stream_up(
        &mut self,
        welcome_version: String,
        uplink: UplinkSender,
        capabilities: PeerCapabilities,
    ) -> u64 {
        self.generation = self.next_generation;
        self.next_generation += 1;
        self.welcome_version = welcome_version;
        self.uplink = Some(uplink);
        self.capabilities = capabilities;
        self.generation
    }

    /// The stream was lost: ends its sessions (3004); returns how many.
    fn stream_down(&mut self) -> usize {
        self.generation = 0;
        self.uplink = None;
        self.registry.end_all(&Disconnect::UPSTREAM_UNAVAILABLE)
    }

    /// Waits out a reconnect delay (or a change of run phase), still serving registrations:
    /// sessions of the lost stream unregister meanwhile.
    async fn wait(&mut self, delay: Duration, phase: &mut PhaseWatch) {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                // A dropped sender disables this branch instead of spinning.
                Ok(()) = phase.changed() => return,
                Some(control) = self.control.recv() => self.apply(control),
            }
        }
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Insert { handle, stream } => {
                if stream == self.generation && stream != 0 {
                    self.registry.insert(handle);
                } else {
                    // Opened on a stream that has since been lost: it is gone upstream too.
                    handle.end(Disconnect::UPSTREAM_UNAVAILABLE);
                }
            }
            Control::Remove(session) => self.registry.remove(session),
        }
    }

    /// Applies one downstream frame.
    fn route(&mut self, frame: UpstreamFrame, metrics: &Metrics) {
        let dropped = |reason: &'static str| {
            metrics
                .link_frames_dropped
                .get_or_create(&ReasonLabels { reason })
                .inc();
        };
        let Some(frame) = frame.frame else {
            // No frame this sidecar knows: a newer upstream, or a broken one. Answered, never
            // silently ignored; the stream goes on.
            tracing::warn!("link: upstream frame of an unknown kind");
            dropped("unknown_frame");
            if self.capabilities.link_error
                && let Some(uplink) = &self.uplink
            {
                let error = SidecarFrame {
                    frame: Some(sidecar_frame::Frame::Error(LinkError {
                        code: LINK_ERROR_UNKNOWN_FRAME,
                        message: "unknown upstream frame".to_owned(),
                    })),
                };
                // Never waits: with the uplink full the answer is dropped (already counted).
                let _ = uplink.try_send(error);
            }
            return;
        };
        match frame {
            upstream_frame::Frame::Reply(reply) => {
                let (Some(handle), Some(mut inner)) =
                    (self.registry.get(reply.session), reply.reply)
                else {
                    return dropped("unknown_session");
                };
                if let Some(connect) = inner.connect.as_mut()
                    && connect.version.is_empty()
                {
                    connect.version.clone_from(&self.welcome_version);
                }
                if !handle.deliver_reply(inner) {
                    tracing::debug!(
                        session = reply.session,
                        "link: reply to no pending command dropped"
                    );
                    dropped("unsolicited_reply");
                }
            }
            upstream_frame::Frame::Disconnect(disconnect) => {
                match self.registry.get(disconnect.session) {
                    Some(handle) => {
                        handle.end(Disconnect::new(disconnect.code, disconnect.reason));
                    }
                    None => dropped("unknown_session"),
                }
            }
            upstream_frame::Frame::Membership(membership) => {
                if !self.registry.set_membership(
                    membership.session,
                    &membership.channel,
                    membership.subscribed,
                    membership.join_leave,
                ) {
                    dropped("unknown_session");
                }
            }
            upstream_frame::Frame::Push(push) => {
                if let Some(mut inner) = push.push {
                    if inner.channel.is_empty() {
                        // Clients route pushes by their own channel field.
                        inner.channel.clone_from(&push.channel);
                    } else if inner.channel != push.channel {
                        tracing::warn!(outer = %push.channel, inner = %inner.channel, "link: push channel mismatch, dropped");
                        return dropped("channel_mismatch");
                    }
                    let counts = self.registry.fan_out(&push.channel, inner);
                    if counts.skipped_not_json > 0 {
                        metrics
                            .link_frames_dropped
                            .get_or_create(&ReasonLabels { reason: "not_json" })
                            .inc_by(counts.skipped_not_json as u64);
                    }
                }
            }
            upstream_frame::Frame::Welcome(_) => dropped("unexpected_welcome"),
        }
    }
}

/// A session's registration on the Link; dropping it unregisters the session.
#[derive(Debug)]
pub struct LinkSession {
    link: Link,
    id: u64,
    /// Generation of the stream the session was opened on.
    stream: u64,
    uplink: UplinkSender,
    capabilities: PeerCapabilities,
}

impl LinkSession {
    /// Tells the upstream that command `id` timed out (only if it asked to know).
    pub async fn command_timed_out(&self, id: u32) -> Result<(), Unavailable> {
        if !self.capabilities.command_timeout {
            return Ok(());
        }
        self.send(sidecar_frame::Frame::CommandTimeout(
            SessionCommandTimeout {
                session: self.id,
                id,
            },
        ))
        .await
    }

    /// Sends one frame up: at once when the queue has room (no timer), else waits at most
    /// [`UPLINK_SEND_TIMEOUT`].
    async fn send(&self, frame: sidecar_frame::Frame) -> Result<(), Unavailable> {
        let frame = SidecarFrame { frame: Some(frame) };
        match self.uplink.send(frame, UPLINK_SEND_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(UplinkError::Closed) => Err(Unavailable),
            Err(UplinkError::Timeout) => {
                self.link.inner.metrics.uplink_send_timeouts.inc();
                tracing::warn!(session = self.id, "link: uplink full past its deadline");
                Err(Unavailable)
            }
        }
    }

    /// Forwards a command of the session.
    pub async fn command(&self, command: Command) -> Result<(), Unavailable> {
        self.send(sidecar_frame::Frame::Command(SessionCommand {
            session: self.id,
            command: Some(command),
        }))
        .await
    }

    /// Tells the upstream the session ended (if its stream is still the live one); dropping
    /// the `LinkSession` then unregisters it.
    pub async fn close(self, disconnect: &Disconnect) {
        let still_live = self.link.inner.generation.load(Ordering::Acquire) == self.stream;
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
        let _ = self.link.inner.control.send(Control::Remove(self.id));
        if self.link.inner.live_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.link.inner.emptied.notify_waiters();
        }
    }
}
