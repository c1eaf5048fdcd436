//! The transport-independent session loop: connect-first, pong checks, ping and stale timers,
//! forwarding commands to the Link and writing the outbox to the client.
//!
//! Guarantees: every transport runs this one loop; a transport only frames bytes
//! ([`Transport`]). Bad input from the client ends only this session, with a protocol close
//! code. Each turn the unbiased `select!` polls its four events (run phase, outbox, client
//! input, timer) in order from a random start and takes the first ready one: a ready event is
//! taken with odds of at least 1/4 per turn, so a busy outbox cannot starve the client's reads
//! or the timers, though the odds are not equal (an event right after an idle one is taken
//! more often) and nothing rotates strictly. One handler runs at a time, so a write (bounded
//! by `write_timeout`) or a command forwarded up the Link (bounded by the uplink's send
//! deadline) delays the other events by at most that bound. A session has at
//! most [`MAX_IN_FLIGHT`] commands awaiting replies (plus one frame's worth): past that it stops
//! reading from its client until replies come back, so one client cannot flood the upstream.
//! A command the upstream does not answer within `command_timeout` gets an error reply (100,
//! temporary) and the upstream is told; the check rides the loop's one timer.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::time::{Instant, Sleep, sleep_until};

use super::handle::{ConnectFields, Phase, SessionHandle};
use super::outbox::Drain;
use crate::lifecycle::{PhaseWatch, RunPhase};
use crate::link::{Link, LinkSession, OpenRequest};
use crate::metrics::{CommandLabels, Metrics, TransportLabels};
use crate::protocol::client::{Command, Reply};
use crate::protocol::{Disconnect, Encoding, command_kind, decode_commands, encode_reply};

/// Most outbox batches written per wake-up before the loop reads from the client again.
const MAX_BATCHES_PER_FLUSH: usize = 4;
/// Commands of one session awaiting their replies before the loop stops reading from the
/// client (the frame being handled is always finished, so the true bound is this plus one
/// frame's commands, itself bounded by the message size limit).
pub const MAX_IN_FLIGHT: usize = 128;

/// What a transport read produced.
#[derive(Debug)]
pub enum Inbound {
    /// One frame of commands (a WebSocket message, an emulation POST body).
    Frame(Bytes),
    /// The client went away.
    Gone,
    /// The transport itself refused the input (e.g. 1009 message too big): close with it.
    Violation(Disconnect),
}

/// A client transport: turns bytes into frames and frames into bytes. Both futures must be
/// cancel-safe for `recv`; `send` and `close` are awaited to completion.
pub trait Transport: Send {
    /// Waits for the next inbound frame.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Writes encoded messages (each one reply, in the session encoding) as one frame.
    fn send(&mut self, batch: Vec<Bytes>) -> impl Future<Output = io::Result<()>> + Send;
    /// Tells the client the session ended and releases the transport.
    fn close(&mut self, disconnect: Disconnect) -> impl Future<Output = ()> + Send;
}

/// Per-session settings, taken from the config snapshot when the connection opened.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Ping period; zero turns pings off.
    pub ping_interval: Duration,
    /// Pong deadline after each ping; zero means pongs are not expected.
    pub pong_timeout: Duration,
    /// Deadline for the connect command.
    pub stale_close_delay: Duration,
    /// Outbox bound, bytes.
    pub queue_max_size: usize,
    /// Largest single command accepted, bytes.
    pub command_size_limit: usize,
    /// Deadline of one client write.
    pub write_timeout: Duration,
    /// Time the upstream has to answer one command (then error 100 for that command).
    pub command_timeout: Duration,
}

/// Everything known about a client connection when it opens.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Client encoding.
    pub encoding: Encoding,
    /// Transport name on the Link (`websocket`, `http_stream`, `sse`).
    pub transport: &'static str,
    /// Remote address, `ip:port`.
    pub remote_addr: String,
    /// Path and query (redacted where it carries secrets).
    pub url: String,
    /// Allow-listed request headers.
    pub headers: Vec<(String, String)>,
    /// Emulation session id and node id (streaming transports).
    pub emulation: Option<(Box<str>, Arc<str>)>,
    /// Timers and limits.
    pub settings: SessionSettings,
    /// Where counters go.
    pub metrics: Arc<Metrics>,
}

/// Timer state of the loop; only the earliest armed deadline matters.
#[derive(Debug, Default)]
struct Timers {
    stale_at: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// When a draining process disconnects this session (3001).
    close_at: Option<Instant>,
    /// When to look for unanswered commands past their deadline: the oldest pending
    /// command's deadline when it was armed (a reply in between only makes the check early).
    commands_due: Option<Instant>,
}

impl Timers {
    fn next(&self) -> Option<Instant> {
        [
            self.stale_at,
            self.next_ping,
            self.pong_deadline,
            self.close_at,
            self.commands_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The settings a running session reads, kept compact because every idle session holds them:
/// durations in milliseconds (rounded up, saturating at about 49 days).
#[derive(Debug, Clone, Copy)]
struct Limits {
    ping_ms: u32,
    pong_ms: u32,
    write_ms: u32,
    command_size_limit: u32,
}

impl Limits {
    fn new(settings: &SessionSettings) -> Limits {
        Limits {
            ping_ms: millis(settings.ping_interval),
            pong_ms: millis(settings.pong_timeout),
            write_ms: millis(settings.write_timeout),
            command_size_limit: u32::try_from(settings.command_size_limit).unwrap_or(u32::MAX),
        }
    }

    fn ping_interval(self) -> Duration {
        Duration::from_millis(u64::from(self.ping_ms))
    }

    fn pong_timeout(self) -> Duration {
        Duration::from_millis(u64::from(self.pong_ms))
    }

    fn write_timeout(self) -> Duration {
        Duration::from_millis(u64::from(self.write_ms))
    }
}

/// `duration` in whole milliseconds, rounded up (a non-zero duration stays non-zero).
fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

/// Runs one client session to its end over `transport`. The session is set up (and counted)
/// when this is called; the returned future runs it. Built this way, the future holds each
/// piece of session state once (arguments of an `async fn` stay in its state next to whatever
/// they are moved into), which keeps every idle session's task small. What only the upstream's
/// open needs (remote address, URL, headers) is boxed and released once `connect` went up.
pub fn run<T: Transport>(
    transport: T,
    link: Link,
    params: SessionParams,
    mut phase: PhaseWatch,
) -> impl Future<Output = ()> + Send {
    let SessionParams {
        encoding,
        transport: transport_name,
        remote_addr,
        url,
        headers,
        emulation,
        settings,
        metrics,
    } = params;
    let handle = Arc::new(
        SessionHandle::new(
            link.next_session_id(),
            encoding,
            settings.queue_max_size,
            ConnectFields {
                client: uuid::Uuid::new_v4().to_string().into_boxed_str(),
                ping: settings.ping_interval.as_secs().min(u64::from(u32::MAX)) as u32,
                pong: !settings.ping_interval.is_zero() && !settings.pong_timeout.is_zero(),
                emulation,
            },
        )
        .with_command_timeout(settings.command_timeout),
    );
    let stale_at = Instant::now() + settings.stale_close_delay;
    let session = Session {
        handle,
        link,
        open: Some(Box::new(OpenRequest {
            transport: transport_name,
            remote_addr,
            url,
            headers,
        })),
        transport: transport_name,
        limits: Limits::new(&settings),
        metrics,
        link_session: None,
        connected_seen: false,
        timers: Timers {
            stale_at: Some(stale_at),
            ..Timers::default()
        },
    };
    let labels = session.labels();
    let metrics = &session.metrics;
    metrics.connections.get_or_create(&labels).inc();
    metrics.sessions_live.inc();
    metrics.sessions_opened.get_or_create(&labels).inc();
    phase.mark_changed();
    drive(transport, session, phase)
}

/// The session loop proper (see [`run`]). A plain function returning an `async move` block,
/// not an `async fn`: an `async fn` moves its arguments into locals, and its future then keeps
/// both (the transport and the session twice); the block uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn drive<T: Transport>(
    mut transport: T,
    mut session: Session,
    mut phase: PhaseWatch,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut watching_phase = true;
        // The session's one timer: its own deadlines between writes, a write's deadline during it.
        let mut timer = pin!(sleep_until(far_future()));
        // What `timer` is set to (`None`: nothing that matters, or it has fired).
        let mut armed: Option<Instant> = None;

        let end = loop {
            // Re-armed only when the earliest deadline moves: a delivery must not cost a timer
            // registration.
            let deadline = session.timers.next();
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(deadline.unwrap_or_else(far_future));
            }
            let handle = &*session.handle;
            // Reading stops once the session is ending (the outbox branch finishes it) and while
            // too many commands await replies; a reply wakes the outbox branch, and the condition
            // is checked again on the next turn.
            let reading = handle.in_flight() < MAX_IN_FLIGHT && !handle.outbox.is_ended();
            // Unbiased on purpose: a ready outbox must not starve reads and timers.
            tokio::select! {
                changed = phase.changed(), if watching_phase => {
                    let current = *phase.borrow_and_update();
                    if let (true, RunPhase::Closing { window }) = (changed.is_ok(), current) {
                        // Spread the disconnects of a draining process over the window.
                        let delay = rand::rng().random_range(Duration::ZERO..=window);
                        session.timers.close_at = Some(Instant::now() + delay);
                    }
                    // Nothing more to learn once closing (or once the sender is gone).
                    watching_phase = changed.is_ok() && !matches!(current, RunPhase::Closing { .. });
                }
                _ = handle.outbox.changed() => {
                    session.on_outbox_activity();
                    let handle = &*session.handle;
                    let write = Write {
                        timer: timer.as_mut(),
                        armed: &mut armed,
                        limit: session.limits.write_timeout(),
                    };
                    match flush(&mut transport, handle, write, &session.metrics).await {
                        Flushed::More => handle.outbox.wake(),
                        Flushed::Idle => {}
                        Flushed::Closed(end) => break end,
                    }
                }
                inbound = transport.recv(), if reading => match inbound {
                    Inbound::Frame(frame) => {
                        session.metrics.bytes_in.inc_by(frame.len() as u64);
                        // Boxed: decoding and forwarding hold whole Commands, which would otherwise
                        // sit in every idle session's task (see MAX_SESSION_FUTURE_BYTES).
                        if let Err(disconnect) = Box::pin(session.on_frame(&frame)).await {
                            session.handle.outbox.end(disconnect);
                        }
                    }
                    Inbound::Gone => break Disconnect::CONNECTION_CLOSED,
                    Inbound::Violation(disconnect) => {
                        handle.outbox.end(disconnect);
                    }
                },
                _ = &mut timer, if deadline.is_some() => {
                    armed = None;
                    if let Err(disconnect) = session.on_timer() {
                        session.handle.outbox.end(disconnect);
                    }
                    if session.timers.commands_due.is_some_and(|at| at <= Instant::now()) {
                        Box::pin(session.expire_commands()).await;
                    }
                }
            }
        };
        session.handle.outbox.end(end.clone());
        // The upstream learns first (presence, subscriptions), whatever the client does next.
        if let Some(link_session) = session.link_session.take() {
            Box::pin(link_session.close(&end)).await;
        }
        Box::pin(transport.close(end.clone())).await;
        let metrics = &session.metrics;
        metrics.connections.get_or_create(&session.labels()).dec();
        metrics.sessions_live.dec();
        metrics.session_closed(end.code, end.code == Disconnect::SLOW.code);
        tracing::debug!(session = session.handle.id, code = end.code, reason = %end.reason, "session ended");
    }
}

/// The write deadline, on the session's one timer (no second timer per session).
struct Write<'a> {
    timer: Pin<&'a mut Sleep>,
    /// The loop's record of what the timer is set to, updated when a write arms it.
    armed: &'a mut Option<Instant>,
    limit: Duration,
}

impl Write<'_> {
    /// Runs one client write within the deadline, arming the timer only if the write does not
    /// complete at once (most writes to a healthy client do). False when it failed or timed
    /// out.
    fn run<F: Future<Output = io::Result<()>>>(
        &mut self,
        mut write: Pin<&mut F>,
    ) -> impl Future<Output = bool> {
        let mut armed = false;
        poll_fn(move |cx| {
            if let Poll::Ready(result) = write.as_mut().poll(cx) {
                return Poll::Ready(result.is_ok());
            }
            if !armed {
                armed = true;
                let deadline = Instant::now() + self.limit;
                *self.armed = Some(deadline);
                self.timer.as_mut().reset(deadline);
            }
            self.timer.as_mut().poll(cx).map(|()| false)
        })
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

enum Flushed {
    Idle,
    More,
    Closed(Disconnect),
}

/// Writes queued batches; reports the end once the outbox has ended and is empty (the caller
/// tells the upstream first, then closes the transport).
/// (An `async` block for the same reason as [`drive`]: its arguments are held once.)
#[allow(clippy::manual_async_fn)]
fn flush<T: Transport>(
    transport: &mut T,
    handle: &SessionHandle,
    mut write: Write<'_>,
    metrics: &Metrics,
) -> impl Future<Output = Flushed> {
    async move {
        for _ in 0..MAX_BATCHES_PER_FLUSH {
            match handle.outbox.drain() {
                Drain::Idle => return Flushed::Idle,
                Drain::Messages(batch) => {
                    metrics
                        .bytes_out
                        .inc_by(batch.iter().map(|m| m.len() as u64).sum());
                    // Pinned here, in place: an argument moved into the deadline's future would
                    // be stored twice in this future's state.
                    let send = pin!(transport.send(batch));
                    if !write.run(send).await {
                        handle.outbox.end(Disconnect::WRITE_ERROR);
                        return Flushed::Closed(Disconnect::WRITE_ERROR);
                    }
                }
                Drain::End(disconnect) => return Flushed::Closed(disconnect),
            }
        }
        Flushed::More
    }
}

/// The session's protocol state (everything but the transport).
struct Session {
    handle: Arc<SessionHandle>,
    link: Link,
    /// What the upstream's open needs; taken by `connect`.
    open: Option<Box<OpenRequest>>,
    /// Transport name on the Link and in metrics.
    transport: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
    link_session: Option<LinkSession>,
    timers: Timers,
    /// Whether the connected phase has been seen (ping timer armed, stale timer off).
    connected_seen: bool,
}

impl Session {
    fn labels(&self) -> TransportLabels {
        TransportLabels {
            transport: self.transport,
            encoding: self.handle.encoding.as_str(),
        }
    }

    /// Arms the ping timer once the connect reply has gone through.
    fn on_outbox_activity(&mut self) {
        let limits = self.limits;
        if !self.connected_seen && self.handle.phase() == Phase::Connected {
            self.connected_seen = true;
            self.timers.stale_at = None;
            if limits.ping_ms != 0 {
                // First ping at a random point of the second half of the interval, so that
                // sessions opened together do not ping together.
                let half = limits.ping_interval() / 2;
                let jitter = rand::rng().random_range(Duration::ZERO..=half);
                self.timers.next_ping = Some(Instant::now() + half + jitter);
            }
        }
    }

    /// Arms the command check if it is off and a command is pending.
    fn watch_commands(&mut self) {
        if self.timers.commands_due.is_none() {
            self.timers.commands_due = self.handle.next_deadline();
        }
    }

    /// Answers overdue commands with the timeout error, tells the upstream, re-arms the check.
    async fn expire_commands(&mut self) {
        let expired = self.handle.expire(Instant::now());
        self.timers.commands_due = self.handle.next_deadline();
        if expired.is_empty() {
            return;
        }
        self.metrics
            .link_command_timeouts
            .inc_by(expired.len() as u64);
        tracing::debug!(session = self.handle.id, ids = ?expired, "commands timed out");
        if let Some(link_session) = &self.link_session {
            for id in expired {
                if link_session.command_timed_out(id).await.is_err() {
                    self.handle.outbox.end(Disconnect::UPSTREAM_UNAVAILABLE);
                    return;
                }
            }
        }
    }

    fn on_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.timers.close_at.is_some_and(|at| at <= now) {
            return Err(Disconnect::SHUTDOWN);
        }
        if self.timers.stale_at.is_some_and(|at| at <= now) {
            if self.handle.phase() != Phase::Connected {
                return Err(Disconnect::STALE);
            }
            self.on_outbox_activity();
        }
        if self.timers.pong_deadline.is_some_and(|at| at <= now) {
            return Err(Disconnect::NO_PONG);
        }
        if self.timers.next_ping.is_some_and(|at| at <= now) {
            let limits = self.limits;
            let ping = encode_reply(self.handle.encoding, &Reply::default())
                .expect("an empty reply always encodes");
            self.handle.deliver_encoded(ping);
            self.timers.next_ping = Some(now + limits.ping_interval());
            if limits.pong_ms != 0 && self.timers.pong_deadline.is_none() {
                self.timers.pong_deadline = Some(now + limits.pong_timeout());
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        let limit = self.limits.command_size_limit as usize;
        let commands = decode_commands(self.handle.encoding, frame, limit).map_err(|error| {
            tracing::debug!(session = self.handle.id, %error, "bad frame");
            Disconnect::BAD_REQUEST
        })?;
        for command in commands {
            self.on_command(command).await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, command: Command) -> Result<(), Disconnect> {
        self.metrics
            .commands
            .get_or_create(&CommandLabels {
                command: command_kind(&command),
            })
            .inc();
        if command.id == 0 && command.send.is_none() {
            // An empty command is a pong; one nobody asked for is a protocol violation.
            return match self.timers.pong_deadline.take() {
                Some(_) => Ok(()),
                None => Err(Disconnect::BAD_REQUEST),
            };
        }
        if command.ping.is_some() {
            return Err(Disconnect::BAD_REQUEST);
        }
        match self.handle.phase() {
            Phase::AwaitingConnect => {
                if command.connect.is_none() {
                    return Err(Disconnect::BAD_REQUEST);
                }
                // Only the upstream needs these, once: their memory goes with the open.
                let request = match self.open.take() {
                    Some(open) => *open,
                    None => return Err(Disconnect::INTERNAL),
                };
                let link_session = self
                    .link
                    .open(self.handle.clone(), request, command)
                    .await
                    .map_err(|_| Disconnect::UPSTREAM_UNAVAILABLE)?;
                self.link_session = Some(link_session);
                // The client was in time; from here the upstream's answer is bounded by the
                // command timeout (error 100, temporary: SDKs retry), not by the stale timer
                // (3502, terminal).
                self.timers.stale_at = None;
                self.watch_commands();
                Ok(())
            }
            Phase::Connecting | Phase::Connected => {
                if command.connect.is_some() {
                    return Err(Disconnect::BAD_REQUEST);
                }
                let Some(link_session) = &self.link_session else {
                    return Err(Disconnect::INTERNAL);
                };
                self.handle.command_sent(command.id);
                let sent = link_session
                    .command(command)
                    .await
                    .map_err(|_| Disconnect::UPSTREAM_UNAVAILABLE);
                self.watch_commands();
                sent
            }
            Phase::Rejected => Err(Disconnect::BAD_REQUEST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A write that the socket takes at once leaves the session's timer alone.
    #[tokio::test(start_paused = true)]
    async fn a_write_done_at_once_does_not_touch_the_timer() {
        let session_deadline = Instant::now() + Duration::from_secs(60);
        let mut timer = pin!(sleep_until(session_deadline));
        let mut armed = Some(session_deadline);
        let mut write = Write {
            timer: timer.as_mut(),
            armed: &mut armed,
            limit: LIMIT,
        };
        let send = pin!(async { Ok(()) });
        assert!(write.run(send).await);
        assert_eq!(armed, Some(session_deadline));
        assert_eq!(timer.deadline(), session_deadline);
    }

    /// A write the client never takes fails at the deadline, on the session's timer.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_write_fails_at_the_write_deadline() {
        let started = Instant::now();
        let mut timer = pin!(sleep_until(far_future()));
        let mut armed = None;
        let mut write = Write {
            timer: timer.as_mut(),
            armed: &mut armed,
            limit: LIMIT,
        };
        let send = pin!(std::future::pending::<io::Result<()>>());
        assert!(!write.run(send).await);
        assert_eq!(Instant::now() - started, LIMIT);
        assert_eq!(armed, Some(started + LIMIT));
    }

    /// A slow write within the deadline succeeds, and the loop learns that the timer now
    /// holds the write's deadline (so it re-arms the session's own deadline next turn).
    #[tokio::test(start_paused = true)]
    async fn a_slow_write_in_time_succeeds_and_reports_the_moved_timer() {
        let started = Instant::now();
        let session_deadline = started + Duration::from_secs(60);
        let mut timer = pin!(sleep_until(session_deadline));
        let mut armed = Some(session_deadline);
        let mut write = Write {
            timer: timer.as_mut(),
            armed: &mut armed,
            limit: LIMIT,
        };
        let send = pin!(async {
            tokio::time::sleep(LIMIT / 2).await;
            Ok(())
        });
        assert!(write.run(send).await);
        assert_eq!(Instant::now() - started, LIMIT / 2);
        assert_eq!(armed, Some(started + LIMIT));
        assert_eq!(timer.deadline(), started + LIMIT);
    }

    /// A write that fails is reported as failed at once.
    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_reported() {
        let mut timer = pin!(sleep_until(far_future()));
        let mut armed = None;
        let mut write = Write {
            timer: timer.as_mut(),
            armed: &mut armed,
            limit: LIMIT,
        };
        let send = pin!(async { Err(io::ErrorKind::BrokenPipe.into()) });
        assert!(!write.run(send).await);
        assert_eq!(armed, None);
    }

    #[test]
    fn limits_round_up_and_saturate() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
