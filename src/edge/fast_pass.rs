//! The owned HTTP/1.1 passthrough loop: on a connection whose requests are passthrough in the
//! safe common subset, the edge proxies them itself, in the connection's own task, without
//! hyper's two HTTP/1 state machines (server and client), header maps or body channels.
//!
//! Entry: [`super::owned::serve`] hands over a connection whose first head is read and is not a
//! streaming session. Each head is parsed with `httparse` from the connection's buffer
//! (pipelined bytes stay buffered and are parsed next). The first request outside the subset
//! goes to hyper through [`Rewind`] with every byte not yet consumed, and hyper serves the rest
//! of the connection exactly as before.
//!
//! The subset (anything else goes to hyper, which answers as it always did): HTTP/1.1,
//! origin-form target of plain characters, not `CONNECT`, not a sidewire endpoint
//! ([`Endpoint::of`]), exactly one valid `Host`, no `Transfer-Encoding`, `Expect` or `Upgrade`,
//! at most one `Content-Length` (digits) within `max_request_body_size` and
//! [`MAX_FAST_BODY_BYTES`], no bare LF in the
//! head, a path that normalises ([`path::normalize`]), and a plain-`http` HTTP/1.1 backend.
//!
//! Guarantees:
//! - The backend head is the hyper path's: rewritten target (prefix, normalised path, query),
//!   hop-by-hop headers and names listed in `Connection` dropped, the forwarding headers of
//!   [`headers::forwarding`]; the other lines byte for byte, in order. The body follows,
//!   streamed (never collected), each read under `request_body_timeout` (408 when it stalls).
//! - One backend connection is pinned to the client connection (opened lazily, reused while
//!   its responses are read to their end, not past `pool_idle_timeout` idle, never when
//!   the client connections holding one already use `pool_max_idle_per_host`; an idempotent
//!   request without a streamed body is sent once more on a new connection when the kept one
//!   was closed by the backend before answering). A connection not read to the end of its
//!   response is closed.
//! - No response head by `response_timeout`: 504; connect failure, a malformed, oversized
//!   (> [`MAX_HEAD_BYTES`]) or unasked `101` response head, or an unsupported framing: 502.
//!   These answers close the client connection.
//! - The response head keeps the backend's lines byte for byte, in order, minus hop-by-hop
//!   ones; informational (1xx) heads are dropped, as hyper's client does. The body is forwarded
//!   by its framing: `Content-Length`, chunked (validated by [`ChunkParser`] as it passes; a bad
//!   frame closes both connections), close-delimited (`connection: close` added, the client
//!   connection ends with it); none for `HEAD`, 204 and 304. Reads from the backend are bounded
//!   by `response_timeout` each, writes to the client by `write_timeout` each.
//! - Between requests the connection waits `client_idle_timeout`; a started head must complete
//!   within `client_handshake_timeout`; at `Closing` an idle connection closes and the response
//!   in flight ends with `connection: close`. Every response is counted per status.
//! - Idle, the connection keeps at most [`KEEP_IDLE_BYTES`] in each of its three buffers.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::conn::ConnectionTimeouts;
use super::h1::{self, MAX_HEAD_BYTES, MAX_HEADERS};
use super::rewind::Rewind;
use super::wsconn::poll_read_scratch;
use super::{Edge, Endpoint, Settings};
use crate::http::status;
use crate::lifecycle::{self, PhaseWatch, RunPhase};
use crate::metrics::ReasonLabels;
use crate::passthrough::chunked::ChunkParser;
use crate::passthrough::headers::{self, ForwardedHost, Hop};
use crate::passthrough::pool::PinSlot;
use crate::passthrough::{FastBackend, host, path};

/// Each buffer keeps at most this much capacity while the connection is idle.
pub const KEEP_IDLE_BYTES: usize = 4 * 1024;
/// Largest request body the fast path takes; larger ones go to hyper. The fast path sends the
/// whole body before it reads the response, so a backend that answers early (a 401 or 413 to an
/// upload) without reading the body would stall a large one until `response_timeout`; a body
/// this small fits in the sockets' buffers, and hyper's client, which reads the response while
/// it sends, serves the rest.
pub const MAX_FAST_BODY_BYTES: u64 = 16 * 1024;
/// Informational (1xx) heads skipped before a final response; more is a 502.
const MAX_INFORMATIONAL: usize = 8;
/// Further than any deadline the connection sets (the timers' initial value).
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// What became of a connection given to [`serve`].
pub enum Passed<S> {
    /// Served to its end (closed, failed, timed out or drained).
    Done,
    /// A request outside the subset: hyper serves the rest (bytes not yet consumed first).
    /// `served` says whether this loop answered requests before.
    Hyper {
        /// The connection with its unread bytes.
        io: Rewind<S>,
        /// Whether requests were answered here first.
        served: bool,
    },
}

/// Whether the fast path can serve passthrough under `settings` (a plain-`http` HTTP/1.1
/// backend is configured).
pub fn available(settings: &Settings) -> bool {
    settings
        .backend
        .as_ref()
        .is_some_and(|backend| backend.fast().is_some())
}

/// A deadline re-armed lazily: waiting for a later target than the armed one touches the
/// timer wheel only when the armed one fires (once per period), not per request.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + FAR)),
        }
    }

    /// Resolves at `target`.
    async fn reached(&mut self, target: Instant) {
        loop {
            if self.sleep.deadline() > target {
                self.sleep.as_mut().reset(target);
            }
            self.sleep.as_mut().await;
            if Instant::now() >= target {
                return;
            }
            self.sleep.as_mut().reset(target);
        }
    }
}

/// The backend connection pinned to this client connection.
struct Pinned {
    stream: TcpStream,
    /// The pool it was opened through ([`crate::passthrough::pool::Http1Pool::id`]).
    pool: usize,
    /// When its last response ended.
    since: Instant,
}

impl Pinned {
    /// Whether it may carry the next request: same backend, not idle too long, and not closed
    /// or written to by the backend while idle.
    fn usable(&self, pool: usize, idle_timeout: Duration) -> bool {
        let mut probe = [0u8; 1];
        self.pool == pool
            && self.since.elapsed() < idle_timeout
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A request of the subset, its backend head already written.
#[derive(Debug, Clone, Copy)]
struct Forward {
    head_len: usize,
    body_len: u64,
    /// The client asked to close after this request.
    close: bool,
    /// A `HEAD` request (its response has no body).
    head_method: bool,
    /// An idempotent method (RFC 9110 §9.2.2): may be sent again on a new connection when a
    /// kept one was closed by the backend before it answered.
    idempotent: bool,
}

/// What the buffered bytes hold.
#[derive(Debug)]
enum Prepared {
    /// Not a whole head yet.
    Partial,
    /// Outside the subset (or malformed): hyper's.
    Hyper,
    /// Ours.
    Forward(Forward),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Eof,
}

/// A final response head, rewritten into the output buffer.
#[derive(Debug, Clone, Copy)]
struct Head {
    status: u16,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    keep_alive: bool,
    len: usize,
}

/// What the backend's buffered bytes hold.
#[derive(Debug)]
enum ResponseParsed {
    Partial,
    /// An informational head of this length, to skip.
    Informational(usize),
    /// Malformed, unasked switch, or unsupported framing.
    Bad(&'static str),
    Final(Head),
}

/// Why relaying a response body stopped early.
#[derive(Debug)]
struct BodyFailure {
    why: &'static str,
    /// Whether the response head had reached the client.
    head_sent: bool,
}

/// Why an exchange ended before a response head.
#[derive(Debug)]
enum Failure {
    Connect(crate::passthrough::pool::PoolError),
    Backend(&'static str),
    Timeout,
    BodyStalled,
    ClientGone,
}

/// Serves passthrough requests on `io` (whose buffered bytes `buf` start with a whole head)
/// until the connection ends or a request is not in the subset.
pub async fn serve<S>(
    edge: &Arc<Edge>,
    mut io: S,
    mut buf: BytesMut,
    peer: SocketAddr,
    timeouts: ConnectionTimeouts,
) -> Passed<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut phase = edge.phase.clone();
    let mut conn = Conn {
        pinned: None,
        slot: None,
        out: BytesMut::new(),
        rbuf: BytesMut::new(),
        write_deadline: Deadline::new(),
        backend_deadline: Deadline::new(),
    };
    let mut idle_deadline = Deadline::new();
    let mut served = false;
    let mut idle_since = Instant::now();
    let mut head_started: Option<Instant> = None;
    loop {
        let settings = edge.settings();
        match prepare(&settings, &buf, peer, edge.scheme, &mut conn.out) {
            Prepared::Hyper => {
                return Passed::Hyper {
                    io: Rewind::new(buf.freeze(), io),
                    served,
                };
            }
            Prepared::Forward(request) => {
                head_started = None;
                let Some(backend) = settings.backend.as_ref().and_then(|b| b.fast()) else {
                    return Passed::Hyper {
                        io: Rewind::new(buf.freeze(), io),
                        served,
                    };
                };
                served = true;
                let keep = conn
                    .forward(
                        edge, &settings, &backend, request, &mut io, &mut buf, peer, &phase,
                    )
                    .await;
                if !keep {
                    let _ =
                        tokio::time::timeout(*settings.config.write_timeout, io.shutdown()).await;
                    return Passed::Done;
                }
                idle_since = Instant::now();
                continue;
            }
            Prepared::Partial => {}
        }
        drop(settings);
        if buf.len() >= MAX_HEAD_BYTES {
            return Passed::Hyper {
                io: Rewind::new(buf.freeze(), io),
                served,
            };
        }
        let (deadline, reason) = if buf.is_empty() {
            conn.shrink();
            shrink(&mut buf);
            (idle_since + timeouts.idle, "idle")
        } else {
            let started = *head_started.get_or_insert_with(Instant::now);
            (started + timeouts.handshake, "handshake")
        };
        let idle = buf.is_empty();
        tokio::select! {
            read = poll_fn(|cx| poll_read_scratch(&mut io, cx, &mut buf, usize::MAX)) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Passed::Done;
                }
            }
            () = idle_deadline.reached(deadline) => {
                edge.metrics.connection_timeouts.get_or_create(&ReasonLabels { reason }).inc();
                tracing::debug!(%peer, reason, "closing connection: no request in time");
                return Passed::Done;
            }
            _ = lifecycle::closing(&mut phase), if idle => return Passed::Done,
        }
    }
}

/// Releases `buf`'s allocation if it grew past [`KEEP_IDLE_BYTES`] (it must be empty).
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > KEEP_IDLE_BYTES {
        *buf = BytesMut::new();
    }
}

/// The per-connection state of the exchanges.
struct Conn {
    pinned: Option<Pinned>,
    /// The pinned connection's place under `pool_max_idle_per_host`, with its pool's id.
    slot: Option<(usize, PinSlot)>,
    /// The backend request head (and early body bytes), then the response head.
    out: BytesMut,
    /// Bytes read from the backend.
    rbuf: BytesMut,
    write_deadline: Deadline,
    backend_deadline: Deadline,
}

impl Conn {
    fn shrink(&mut self) {
        self.out.clear();
        shrink(&mut self.out);
        self.rbuf.clear();
        shrink(&mut self.rbuf);
    }

    /// Proxies one request (its backend head in `out`, its head at the start of `buf`);
    /// whether the client connection stays open for the next one.
    #[allow(clippy::too_many_arguments)]
    async fn forward<S>(
        &mut self,
        edge: &Edge,
        settings: &Settings,
        backend: &FastBackend<'_>,
        request: Forward,
        io: &mut S,
        buf: &mut BytesMut,
        peer: SocketAddr,
        phase: &PhaseWatch,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let write_timeout = *settings.config.write_timeout;
        // The body bytes that came with the head travel with the backend head.
        let early = usize::try_from(request.body_len)
            .unwrap_or(usize::MAX)
            .min(buf.len() - request.head_len);
        self.out
            .extend_from_slice(&buf[request.head_len..request.head_len + early]);
        buf.advance(request.head_len + early);
        let body_left = request.body_len - early as u64;
        let timeout = backend.response_timeout;
        let target = Instant::now() + timeout;
        let body_timeout = *settings.config.request_body_timeout;
        let exchanged = {
            let Conn {
                pinned,
                out,
                rbuf,
                backend_deadline,
                ..
            } = self;
            tokio::select! {
                result = exchange(pinned, backend, out, rbuf, io, buf, body_left, body_timeout, request) => result,
                () = backend_deadline.reached(target) => Err(Failure::Timeout),
            }
        };
        let (head, mut stream) = match exchanged {
            Ok(exchanged) => exchanged,
            Err(failure) => {
                let code = match failure {
                    Failure::Timeout => {
                        tracing::warn!(%peer, ?timeout, "passthrough: backend timed out");
                        StatusCode::GATEWAY_TIMEOUT
                    }
                    Failure::Connect(error) => {
                        tracing::warn!(error = %crate::error::Chain(&error), "passthrough: backend failed");
                        StatusCode::BAD_GATEWAY
                    }
                    Failure::Backend(why) => {
                        tracing::warn!(why, "passthrough: backend failed");
                        StatusCode::BAD_GATEWAY
                    }
                    Failure::BodyStalled => {
                        tracing::debug!(%peer, "passthrough: client request body stalled");
                        StatusCode::REQUEST_TIMEOUT
                    }
                    Failure::ClientGone => {
                        tracing::debug!(%peer, "passthrough: client request body failed");
                        StatusCode::BAD_REQUEST
                    }
                };
                edge.metrics.count_passthrough(code.as_u16());
                h1::respond_and_close(io, status(code), write_timeout).await;
                return false;
            }
        };
        let close = request.close || head.framing == Framing::Eof || closing_now(phase);
        // The head was written into `out` without knowing about the client or drain: add the
        // close here (close-delimited heads already say it).
        if close && head.framing != Framing::Eof {
            // `out` ends with the blank line: insert before it.
            let end = self.out.len().saturating_sub(2);
            self.out.truncate(end);
            self.out.extend_from_slice(b"connection: close\r\n\r\n");
        }
        self.rbuf.advance(head.len);
        let body = self
            .relay_body(head, &mut stream, io, backend, write_timeout)
            .await;
        let reusable = match body {
            Ok(reusable) => {
                edge.metrics.count_passthrough(head.status);
                reusable
            }
            Err(BodyFailure { why, head_sent }) => {
                if head_sent {
                    edge.metrics.count_passthrough(head.status);
                    tracing::debug!(%peer, why, "passthrough: response body ended early");
                } else {
                    // Refused before anything reached the client: answered as a backend failure.
                    tracing::warn!(why, "passthrough: backend failed");
                    edge.metrics
                        .count_passthrough(StatusCode::BAD_GATEWAY.as_u16());
                    h1::respond_and_close(io, status(StatusCode::BAD_GATEWAY), write_timeout).await;
                }
                return false;
            }
        };
        let (idle_timeout, _) = backend.pool.limits();
        let pool = backend.pool.id();
        if reusable && head.keep_alive && !idle_timeout.is_zero() {
            // The slot is kept across requests: one count per client connection.
            if !matches!(&self.slot, Some((id, _)) if *id == pool) {
                self.slot = backend.pool.try_pin().map(|slot| (pool, slot));
            }
            if self.slot.is_some() {
                self.pinned = Some(Pinned {
                    stream,
                    pool,
                    since: Instant::now(),
                });
            }
        } else {
            self.slot = None;
        }
        !close
    }

    /// Writes the response head (in `out`) and relays the body by its framing; whether the
    /// backend connection ended its response cleanly with nothing extra (reusable).
    async fn relay_body<S>(
        &mut self,
        head: Head,
        stream: &mut TcpStream,
        io: &mut S,
        backend: &FastBackend<'_>,
        write_timeout: Duration,
    ) -> Result<bool, BodyFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let failed = |why| BodyFailure {
            why,
            head_sent: true,
        };
        let mut left = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = ChunkParser::new();
        // What of the bytes read belongs to the body, and whether the body is complete.
        let mut take = |rbuf: &BytesMut, left: &mut u64| -> Result<(usize, bool), &'static str> {
            match head.framing {
                Framing::None => Ok((0, true)),
                Framing::Length(_) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rbuf.len());
                    *left -= n as u64;
                    Ok((n, *left == 0))
                }
                Framing::Chunked => {
                    let n = chunks
                        .feed(rbuf)
                        .map_err(|_| "bad chunk from the backend")?;
                    Ok((n, chunks.is_done()))
                }
                Framing::Eof => Ok((rbuf.len(), false)),
            }
        };
        let (used, mut done) = take(&self.rbuf, &mut left).map_err(|why| BodyFailure {
            why,
            head_sent: false,
        })?;
        self.out.extend_from_slice(&self.rbuf[..used]);
        self.rbuf.advance(used);
        write_client(io, &self.out, &mut self.write_deadline, write_timeout)
            .await
            .map_err(failed)?;
        let mut clean = true;
        while !done {
            if !self.rbuf.is_empty() {
                // Bytes past the end of the body: the connection is not reused.
                clean = false;
                break;
            }
            self.rbuf.clear();
            let target = Instant::now() + backend.response_timeout;
            let read = tokio::select! {
                read = poll_fn(|cx| poll_read_scratch(stream, cx, &mut self.rbuf, usize::MAX)) => read,
                () = self.backend_deadline.reached(target) => return Err(failed("backend body timed out")),
            };
            match read {
                Ok(0) if head.framing == Framing::Eof => {
                    done = true;
                    clean = false;
                }
                Ok(0) => return Err(failed("backend closed mid-body")),
                Ok(_) => {
                    let (used, end) = take(&self.rbuf, &mut left).map_err(failed)?;
                    write_client(
                        io,
                        &self.rbuf[..used],
                        &mut self.write_deadline,
                        write_timeout,
                    )
                    .await
                    .map_err(failed)?;
                    self.rbuf.advance(used);
                    done = end;
                }
                Err(_) => return Err(failed("backend read failed")),
            }
        }
        let flushed = tokio::select! {
            flushed = io.flush() => flushed.is_ok(),
            () = self.write_deadline.reached(Instant::now() + write_timeout) => false,
        };
        if !flushed {
            return Err(failed("client write timed out"));
        }
        Ok(clean && self.rbuf.is_empty())
    }
}

/// Writes `bytes` to the client within `timeout`.
async fn write_client<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    deadline: &mut Deadline,
    timeout: Duration,
) -> Result<(), &'static str> {
    let target = Instant::now() + timeout;
    tokio::select! {
        written = io.write_all(bytes) => written.map_err(|_| "client write failed"),
        () = deadline.reached(target) => Err("client write timed out"),
    }
}

/// Whether the process is closing (responses end with `connection: close`).
fn closing_now(phase: &PhaseWatch) -> bool {
    matches!(*phase.borrow(), RunPhase::Closing { .. })
}

/// Sends the request (head in `out`, `body_left` more body bytes from the client) on the
/// pinned connection or a new one and reads the final response head (rewritten into `out`,
/// the bytes after it left in `rbuf`).
#[allow(clippy::too_many_arguments)]
async fn exchange<S>(
    pinned: &mut Option<Pinned>,
    backend: &FastBackend<'_>,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
    io: &mut S,
    buf: &mut BytesMut,
    body_left: u64,
    body_timeout: Duration,
    request: Forward,
) -> Result<(Head, TcpStream), Failure>
where
    S: AsyncRead + Unpin,
{
    let pool = backend.pool.id();
    let (idle_timeout, _) = backend.pool.limits();
    let mut reused = pinned.take().filter(|p| p.usable(pool, idle_timeout));
    loop {
        let retry_allowed = reused.is_some() && body_left == 0 && request.idempotent;
        let mut stream = match reused.take() {
            Some(pinned) => pinned.stream,
            None => Box::pin(backend.pool.connect_tcp())
                .await
                .map_err(Failure::Connect)?,
        };
        rbuf.clear();
        if stream.write_all(out).await.is_err() {
            if retry_allowed {
                continue;
            }
            return Err(Failure::Backend("write failed"));
        }
        if body_left > 0 {
            send_body(&mut stream, io, buf, body_left, body_timeout).await?;
        }
        match read_head(&mut stream, rbuf, out, request.head_method).await {
            Ok(head) => return Ok((head, stream)),
            // The backend closed a connection it had kept idle: once more on a new one.
            Err(Failure::Backend("closed before responding")) if retry_allowed => continue,
            Err(failure) => return Err(failure),
        }
    }
}

/// Streams `left` body bytes from the client (buffered ones first) to the backend.
async fn send_body<S: AsyncRead + Unpin>(
    stream: &mut TcpStream,
    io: &mut S,
    buf: &mut BytesMut,
    mut left: u64,
    body_timeout: Duration,
) -> Result<(), Failure> {
    while left > 0 {
        if buf.is_empty() {
            let read = tokio::time::timeout(
                body_timeout,
                poll_fn(|cx| poll_read_scratch(io, cx, buf, usize::MAX)),
            )
            .await;
            match read {
                Err(_) => return Err(Failure::BodyStalled),
                Ok(Ok(0) | Err(_)) => return Err(Failure::ClientGone),
                Ok(Ok(_)) => {}
            }
        }
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if stream.write_all(&buf[..take]).await.is_err() {
            return Err(Failure::Backend("body write failed"));
        }
        buf.advance(take);
        left -= take as u64;
    }
    Ok(())
}

/// Reads the final response head from the backend (1xx heads skipped), rewritten into `out`.
async fn read_head(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    head_method: bool,
) -> Result<Head, Failure> {
    let mut informational = 0;
    let mut received = false;
    loop {
        if !rbuf.is_empty() {
            match parse_response(rbuf, head_method, out) {
                ResponseParsed::Final(head) => return Ok(head),
                ResponseParsed::Informational(len) => {
                    informational += 1;
                    if informational > MAX_INFORMATIONAL {
                        return Err(Failure::Backend("too many informational responses"));
                    }
                    rbuf.advance(len);
                    continue;
                }
                ResponseParsed::Bad(why) => return Err(Failure::Backend(why)),
                ResponseParsed::Partial if rbuf.len() >= MAX_HEAD_BYTES => {
                    return Err(Failure::Backend("response head too large"));
                }
                ResponseParsed::Partial => {}
            }
        }
        match poll_fn(|cx| poll_read_scratch(stream, cx, rbuf, usize::MAX)).await {
            Ok(0) | Err(_) if !received => {
                return Err(Failure::Backend("closed before responding"));
            }
            Ok(0) | Err(_) => return Err(Failure::Backend("closed mid-head")),
            Ok(_) => received = true,
        }
    }
}

/// Whether `name` is named in one of the `Connection` values.
fn named_in_connection(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|value| {
        value
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// The `Connection` values among `headers` (at most [`MAX_HEADERS`]).
fn connection_values<'h>(headers: &[httparse::Header<'h>]) -> ([&'h [u8]; 4], usize, bool) {
    let mut values: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    let mut too_many = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("connection") {
            if count == values.len() {
                too_many = true;
                break;
            }
            values[count] = header.value;
            count += 1;
        }
    }
    (values, count, too_many)
}

/// Parses the head at the start of `input` and, when it is in the subset, writes the backend
/// head into `out`.
fn prepare(
    settings: &Settings,
    input: &[u8],
    peer: SocketAddr,
    proto: &'static str,
    out: &mut BytesMut,
) -> Prepared {
    if input.is_empty() {
        return Prepared::Partial;
    }
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let head_len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Prepared::Partial,
        Err(_) => return Prepared::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Prepared::Hyper;
    };
    if method == "CONNECT"
        || !target.starts_with('/')
        || !target.bytes().all(is_plain_target_byte)
        || has_bare_lf(&input[..head_len])
    {
        return Prepared::Hyper;
    }
    let (path_part, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if Endpoint::of(&settings.config, path_part).is_some() {
        return Prepared::Hyper;
    }
    let Some(backend) = settings.backend.as_ref().and_then(|b| b.fast()) else {
        return Prepared::Hyper;
    };
    let headers: &[httparse::Header<'_>] = request.headers;
    let mut host = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Prepared::Hyper;
            }
            match content_length(header.value) {
                Some(n) => length = Some(n),
                None => return Prepared::Hyper,
            }
        } else if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Prepared::Hyper;
            }
            host = Some(header.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Prepared::Hyper;
        } else if name.eq_ignore_ascii_case("connection")
            && header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            close = true;
        }
    }
    let Some(host) = host
        .and_then(|value| std::str::from_utf8(value).ok())
        .filter(|text| host::is_valid_host(text))
    else {
        return Prepared::Hyper;
    };
    let body_len = length.unwrap_or(0);
    let over_limit =
        backend.max_request_body_size > 0 && body_len > backend.max_request_body_size as u64;
    if over_limit || body_len > MAX_FAST_BODY_BYTES {
        return Prepared::Hyper;
    }
    let Ok(path) = path::normalize(path_part) else {
        return Prepared::Hyper;
    };
    let (connection, connection_count, too_many) = connection_values(headers);
    if too_many {
        return Prepared::Hyper;
    }
    let connection = &connection[..connection_count];

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(backend.prefix.as_bytes());
    out.extend_from_slice(path.as_bytes());
    if let Some(query) = query {
        out.extend_from_slice(b"?");
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = Hop {
        peer: peer.ip(),
        proto,
        host: Some(host),
        trusted: backend.trusts(peer.ip()),
    };
    let forwarding = headers::forwarding(
        || headers.iter().map(|header| (header.name, header.value)),
        &hop,
    );
    for header in headers {
        let name = header.name;
        let replaced = name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("forwarded")
            || (forwarding.proto.is_some() && name.eq_ignore_ascii_case("x-forwarded-proto"))
            || (forwarding.host != ForwardedHost::Keep
                && name.eq_ignore_ascii_case("x-forwarded-host"));
        if replaced || headers::is_hop_by_hop(name) || named_in_connection(connection, name) {
            continue;
        }
        put_line(out, name.as_bytes(), header.value);
    }
    put_line(out, b"x-forwarded-for", forwarding.xff.as_bytes());
    if let Some(proto) = forwarding.proto {
        put_line(out, b"x-forwarded-proto", proto.as_bytes());
    }
    if let ForwardedHost::Set(host) = forwarding.host {
        put_line(out, b"x-forwarded-host", host.as_bytes());
    }
    put_line(out, b"forwarded", forwarding.forwarded.as_bytes());
    out.extend_from_slice(b"\r\n");
    Prepared::Forward(Forward {
        head_len,
        body_len,
        close,
        head_method: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    })
}

fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only (at most 19: no overflow).
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A byte of an origin-form target that every parser reads the same way (unreserved,
/// sub-delims, `:`, `@`, `/`, `?`, `%`); anything else goes to hyper.
fn is_plain_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&byte)
}

/// Whether a line of `head` ends in a bare LF.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Parses the response head at the start of `input`; a final one is rewritten into `out`
/// (status line as HTTP/1.1, hop-by-hop lines dropped, framing and close stated).
fn parse_response(input: &[u8], head_method: bool, out: &mut BytesMut) -> ResponseParsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let len = match response.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ResponseParsed::Partial,
        Err(_) => return ResponseParsed::Bad("malformed response head"),
    };
    let (Some(code), Some(version)) = (response.code, response.version) else {
        return ResponseParsed::Bad("malformed response head");
    };
    if code == 101 {
        return ResponseParsed::Bad("backend switched protocols unasked");
    }
    if (100..200).contains(&code) {
        return ResponseParsed::Informational(len);
    }
    let headers: &[httparse::Header<'_>] = response.headers;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut close = version == 0;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encodings += 1;
            chunked = header.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = content_length(header.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    let framing = if head_method || code == 204 || code == 304 {
        Framing::None
    } else if transfer_encodings > 0 {
        if transfer_encodings > 1 || !chunked || lengths > 0 {
            return ResponseParsed::Bad("unsupported response framing");
        }
        Framing::Chunked
    } else if lengths > 0 {
        match length {
            Some(n) if lengths == 1 => Framing::Length(n),
            _ => return ResponseParsed::Bad("invalid response content-length"),
        }
    } else {
        Framing::Eof
    };
    let (connection, connection_count, too_many) = connection_values(headers);
    if too_many {
        return ResponseParsed::Bad("too many connection headers");
    }
    let connection = &connection[..connection_count];
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // `code` is three digits (httparse).
    out.extend_from_slice(itoa3(code).as_slice());
    out.extend_from_slice(b" ");
    match response.reason {
        Some(reason) if !reason.is_empty() => out.extend_from_slice(reason.as_bytes()),
        _ => out.extend_from_slice(
            StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    for header in headers {
        if headers::is_hop_by_hop(header.name) || named_in_connection(connection, header.name) {
            continue;
        }
        put_line(out, header.name.as_bytes(), header.value);
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Eof => out.extend_from_slice(b"connection: close\r\n"),
        Framing::None | Framing::Length(_) => {}
    }
    out.extend_from_slice(b"\r\n");
    ResponseParsed::Final(Head {
        status: code,
        framing,
        keep_alive: !close && framing != Framing::Eof,
        len,
    })
}

/// A status code (100..=999) as its three digits.
fn itoa3(code: u16) -> [u8; 3] {
    let code = code.min(999);
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::url::HttpUrl;
    use crate::config::{BackendConfig, Config};
    use crate::edge::origin::OriginPolicy;
    use crate::link::Link;
    use crate::metrics::Metrics;
    use crate::passthrough::Backend;

    fn settings(prefix: &str) -> Settings {
        let (_phase_tx, phase) = lifecycle::channel();
        let metrics = Arc::new(Metrics::default());
        let backend = BackendConfig {
            url: HttpUrl::new(&format!("http://127.0.0.1:9{prefix}")),
            ..BackendConfig::default()
        };
        Settings {
            config: Arc::new(Config::default()),
            origins: OriginPolicy::new(&[]),
            link: Link::unreachable(phase, metrics),
            backend: Some(Backend::new(&backend).unwrap()),
        }
    }

    fn peer() -> SocketAddr {
        "10.0.0.7:5000".parse().unwrap()
    }

    fn prepared(settings: &Settings, head: &str) -> (Prepared, String) {
        let mut out = BytesMut::new();
        let prepared = prepare(settings, head.as_bytes(), peer(), "http", &mut out);
        (prepared, String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn the_subset_is_taken_and_everything_else_left_to_hyper() {
        let settings = settings("/base");
        let (taken, out) = prepared(
            &settings,
            "POST /a/./b/../c?x=1 HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n\
             Connection: x-hop\r\nX-Hop: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc",
        );
        let Prepared::Forward(forward) = taken else {
            panic!("{taken:?}")
        };
        assert_eq!(forward.body_len, 3);
        assert!(!forward.close && !forward.head_method);
        assert_eq!(
            out,
            "POST /base/a/c?x=1 HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: h.example\r\nforwarded: for=10.0.0.7;proto=http;host=\"h.example\"\r\n\r\n"
        );
        let (partial, _) = prepared(&settings, "GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(matches!(partial, Prepared::Partial));
        let (closing, _) = prepared(
            &settings,
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n",
        );
        assert!(matches!(
            closing,
            Prepared::Forward(Forward { close: true, .. })
        ));

        for head in [
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            "GET /%2e%2e%2f HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /connection/websocket HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /connection/websocket?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            "\x01garbage\r\n\r\n",
        ] {
            let (left, _) = prepared(&settings, head);
            assert!(matches!(left, Prepared::Hyper), "{head:?}: {left:?}");
        }
        let over = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            BackendConfig::default().max_request_body_size + 1
        );
        assert!(matches!(prepared(&settings, &over).0, Prepared::Hyper));
        let upload = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            MAX_FAST_BODY_BYTES + 1
        );
        assert!(matches!(prepared(&settings, &upload).0, Prepared::Hyper));
    }

    fn response(head: &str, head_method: bool) -> (ResponseParsed, String) {
        let mut out = BytesMut::new();
        let parsed = parse_response(head.as_bytes(), head_method, &mut out);
        (parsed, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn response_heads_are_framed_and_rewritten() {
        let (parsed, out) = response(
            "HTTP/1.1 200 Fine\r\nA: 1\r\nConnection: X-Gone\r\nX-Gone: 1\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        let ResponseParsed::Final(head) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nA: 1\r\nContent-Length: 2\r\n\r\n"
        );
        let framing = |head: &str, head_method| match response(head, head_method).0 {
            ResponseParsed::Final(head) => Some((head.framing, head.keep_alive)),
            _ => None,
        };
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Some((Framing::Eof, false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Some((Framing::Length(1), false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Some((Framing::Length(1), false))
        );
        assert!(matches!(
            response("HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n", false).0,
            ResponseParsed::Informational(39)
        ));
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\nA: 1\r\n", false).0,
            ResponseParsed::Partial
        ));
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\n b\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(response(bad, false).0, ResponseParsed::Bad(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn small_helpers() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"1 2"), None);
        assert_eq!(content_length(b"99999999999999999999"), None);
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: h\r\n\r\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert_eq!(itoa3(204), *b"204");
        assert!(named_in_connection(&[b"keep-alive, X-A"], "x-a"));
        assert!(!named_in_connection(&[b"keep-alive"], "x-a"));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_at_their_target_and_rearm_lazily() {
        let mut deadline = Deadline::new();
        let start = Instant::now();
        deadline.reached(start + Duration::from_secs(2)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        // A later target after an earlier one fired: waits for the rest only.
        deadline.reached(start + Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        // An earlier target than the armed one re-arms it.
        let armed = Instant::now() + Duration::from_secs(100);
        deadline.sleep.as_mut().reset(armed);
        deadline.reached(start + Duration::from_secs(6)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(6));
    }
}
