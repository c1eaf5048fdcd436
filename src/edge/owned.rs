//! Streaming sessions served on an owned HTTP/1.1 connection, outside hyper: the edge reads
//! the request head itself, and a `POST` to `http_stream_path` or a `GET`/`POST` to
//! `sse_path` runs its session loop right in the connection's task, writing the chunked
//! response to the socket. Everything else is handed to hyper with the bytes already read.
//!
//! Why: hyper keeps a read and a write buffer (16 KiB together) for a connection's whole
//! life, and a streaming response needs a second task; an idle session served here holds no
//! buffer at all (bench/STREAMING-MEMORY.md).
//!
//! Guarantees:
//! - Only what this module fully handles is taken: HTTP/1.1, no `Transfer-Encoding`,
//!   `Expect` or `Upgrade`, one valid `Content-Length` within the transport's body limit, an
//!   allowed Origin and the transport's method (and `cf_connect` for an SSE `GET`). Anything
//!   else (preflights, refusals, 405, 413, chunked bodies, HTTP/1.0, WebSocket, passthrough) goes
//!   to hyper, which answers exactly as before.
//! - The head is bounded ([`h1::MAX_HEAD_BYTES`], 431), a malformed one is answered 400, and
//!   the head must arrive by the connection's handshake deadline; the body is bounded by the
//!   same limit and progress deadline as on hyper (`body::read_limited`: 408 when it stalls).
//! - The response is the one hyper writes (same head and chunks) plus `connection: close`;
//!   the connection ends with the session. Bytes that arrive after the request are never
//!   buffered: a client that sends any, closes or resets ends its session at once.
//! - Writes go straight to the socket under the session's `write_timeout` (no body channel);
//!   nothing is buffered while the session is idle.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::body::{is_protobuf, read_limited};
use super::conn::ConnectionTimeouts;
use super::fast_pass::{self, Passed};
use super::h1::{self, HeadRead, Length, SocketBody};
use super::rewind::Rewind;
use super::stream::{self, CLOSE_WRITE_TIMEOUT, Framing, Opened};
use super::{Edge, Settings, cors, sse};
use crate::http::status;
use crate::link::Link;
use crate::protocol::{Disconnect, Encoding};
use crate::session::emulation::{Commands, Registration};
use crate::session::{self, Inbound, SessionParams, Transport};

/// What became of a connection offered to [`serve`].
pub enum Served<S> {
    /// Served here (or answered and closed, or the client left).
    Done,
    /// No whole request head by the handshake deadline: dropped.
    HeadTimeout,
    /// Not for this module: serve it with hyper (the head's bytes are read first).
    Hyper(Rewind<S>),
    /// Passthrough requests were answered by the fast path, then one it does not take: hyper
    /// serves the rest of the connection (the unread bytes first).
    Passed(Rewind<S>),
}

/// Reads the first request head of a plain HTTP/1 connection by `deadline` and serves it here
/// if it opens a streaming session; otherwise returns the connection for hyper.
pub async fn serve<S>(
    edge: &Arc<Edge>,
    mut io: S,
    peer: SocketAddr,
    deadline: Instant,
    timeouts: ConnectionTimeouts,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::new();
    let read = tokio::time::timeout_at(deadline, h1::read_head(&mut io, &mut buf)).await;
    let settings = edge.settings();
    let write_timeout = settings.config.write_timeout;
    let (parts, head_len) = match read {
        Err(_) => return Served::HeadTimeout,
        Ok(HeadRead::Complete(parts, len)) => (parts, len),
        Ok(HeadRead::Closed) => return Served::Done,
        Ok(HeadRead::Malformed) => {
            tracing::debug!(%peer, "malformed request head");
            h1::respond_and_close(&mut io, status(StatusCode::BAD_REQUEST), *write_timeout).await;
            return Served::Done;
        }
        Ok(HeadRead::TooLarge) => {
            tracing::debug!(%peer, "request head too large");
            let response = status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            h1::respond_and_close(&mut io, response, *write_timeout).await;
            return Served::Done;
        }
    };
    let Some(mut route) = route(&settings, &parts) else {
        if fast_pass::available(&settings) {
            drop((parts, settings));
            // Boxed: the fast path's state would otherwise size every streaming session's task.
            let passed = Box::pin(fast_pass::serve(edge, io, buf, peer, timeouts)).await;
            return match passed {
                Passed::Done => Served::Done,
                Passed::Hyper { io, served: false } => Served::Hyper(io),
                Passed::Hyper { io, served: true } => Served::Passed(io),
            };
        }
        return Served::Hyper(Rewind::new(buf.freeze(), io));
    };
    // The head is parsed: only the body bytes that came with it are kept (copied), so the
    // head's buffer is released before the session starts.
    let early = buf.split_off(head_len);
    drop(buf);
    let origin = parts.headers.get(header::ORIGIN).cloned();
    let initial = match route.connect.take() {
        Some(initial) => initial,
        None => {
            let body = SocketBody::new(&mut io, &early, route.body_len);
            let timeout = settings.config.request_body_timeout;
            match read_limited(body, &parts.headers, route.limit, *timeout).await {
                // Copied: one exact allocation for the connect command.
                Ok(body) => Bytes::copy_from_slice(&body),
                Err(code) => {
                    let mut response = edge.body_refused(code);
                    cors::apply(response.headers_mut(), origin.as_ref());
                    h1::respond_and_close(&mut io, response, *write_timeout).await;
                    return Served::Done;
                }
            }
        }
    };
    drop(early);
    // Nothing of the request (head, settings snapshot) is kept while the session runs.
    let started = start_session(edge, settings, route, initial, parts, origin, peer, io).await;
    if let Some((transport, link, params)) = started {
        session::run(transport, link, params, edge.phase.clone()).await;
    }
    Served::Done
}

/// A request this module takes.
#[derive(Debug)]
struct Route {
    framing: Framing,
    encoding: Encoding,
    /// The connect command when it travels in the URL (SSE `GET`).
    connect: Option<Bytes>,
    /// Declared body length.
    body_len: u64,
    /// The transport's body (and command) size limit.
    limit: usize,
}

/// Whether the request opens a streaming session this module serves (see the module doc);
/// `None` leaves it to hyper. Pure: counts nothing, so hyper's answer is counted once.
fn route(settings: &Settings, parts: &Parts) -> Option<Route> {
    let config = &settings.config;
    let headers = &parts.headers;
    if parts.version != Version::HTTP_11
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::EXPECT)
        || headers.contains_key(header::UPGRADE)
    {
        return None;
    }
    let body_len = content_length(headers)?;
    let path = parts.uri.path();
    if config.websocket && path == config.websocket_path {
        return None;
    }
    let (framing, limit) = if config.http_stream && path == config.http_stream_path {
        (
            Framing::HttpStream,
            config.http_stream_max_request_body_size,
        )
    } else if config.sse && path == config.sse_path {
        (Framing::Sse, config.sse_max_request_body_size)
    } else {
        return None;
    };
    if body_len > limit as u64 || !settings.origins.check(headers) {
        return None;
    }
    let (encoding, connect) = match (framing, &parts.method) {
        (Framing::HttpStream, &Method::POST) if is_protobuf(headers) => (Encoding::Protobuf, None),
        (Framing::HttpStream, &Method::POST) => (Encoding::Json, None),
        (Framing::Sse, &Method::POST) => (Encoding::Json, None),
        (Framing::Sse, &Method::GET) if body_len == 0 => {
            (Encoding::Json, Some(sse::connect_param(parts.uri.query())?))
        }
        _ => return None,
    };
    Some(Route {
        framing,
        encoding,
        connect,
        body_len,
        limit,
    })
}

/// The declared body length: 0 without `Content-Length`, `None` (left to hyper) when there
/// are several or it is not a number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Some(0);
    };
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Registers the session and writes the response head: the transport, Link and parameters
/// to run the session loop with (`None` if the head could not be written).
#[allow(clippy::too_many_arguments)]
async fn start_session<S>(
    edge: &Arc<Edge>,
    settings: Arc<Settings>,
    route: Route,
    initial: Bytes,
    parts: Box<Parts>,
    origin: Option<HeaderValue>,
    peer: SocketAddr,
    mut io: S,
) -> Option<(OwnedTransport<S>, Link, SessionParams)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Route {
        framing,
        encoding,
        limit,
        ..
    } = route;
    let Opened {
        registration,
        commands,
        params,
        content_type,
    } = stream::open(edge, &settings, framing, encoding, limit, &parts, peer);
    let link = settings.link.clone();
    drop(settings);
    drop(parts);
    let head = response_head(framing, content_type, origin.as_ref());
    drop(origin);
    let written = tokio::time::timeout(params.settings.write_timeout, async {
        io.write_all(&head).await?;
        io.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!(%peer, "streaming response head not written");
        return None;
    }
    let transport = OwnedTransport {
        io,
        framing,
        encoding,
        initial: Some(initial),
        commands,
        open: true,
        _registration: registration,
    };
    Some((transport, link, params))
}

/// The response head of a streaming session (and the transport's preamble, if any): hyper's
/// head for the same response, plus `connection: close`.
fn response_head(
    framing: Framing,
    content_type: &'static str,
    origin: Option<&HeaderValue>,
) -> BytesMut {
    let mut headers = HeaderMap::new();
    stream::streaming_headers(&mut headers, content_type);
    cors::apply(&mut headers, origin);
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut out = BytesMut::with_capacity(512);
    h1::write_head(&mut out, StatusCode::OK, &headers, Length::Chunked);
    if let Some(preamble) = stream::preamble(framing) {
        h1::write_chunk(&mut out, preamble);
    }
    out
}

/// A streaming session's transport on its own socket: messages go out as chunks, commands
/// come in through the emulation queue, and any readiness of the socket for reading (data,
/// end of stream, error) means the client is gone.
struct OwnedTransport<S> {
    io: S,
    framing: Framing,
    encoding: Encoding,
    initial: Option<Bytes>,
    commands: Commands,
    /// Writes are still possible (cleared once the socket failed or the response ended).
    open: bool,
    _registration: Registration,
}

/// Ready when the client closed, reset or sent bytes after its request (which a streaming
/// connection does not read: they end the session); the bytes are not kept.
fn poll_client_gone<S: AsyncRead + Unpin>(io: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    let mut probe = [0u8; 64];
    let mut buf = ReadBuf::new(&mut probe);
    match std::pin::Pin::new(io).poll_read(cx, &mut buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(_) => Poll::Ready(()),
    }
}

impl<S> Transport for OwnedTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Inbound {
        if let Some(initial) = self.initial.take() {
            return Inbound::Frame(initial);
        }
        if !self.open {
            return Inbound::Gone;
        }
        let io = &mut self.io;
        tokio::select! {
            frame = self.commands.recv() => Inbound::Frame(frame),
            () = poll_fn(|cx| poll_client_gone(io, cx)) => {
                self.open = false;
                Inbound::Gone
            }
        }
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        if !self.open {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let framed = self.framing.frame(self.encoding, &batch);
        drop(batch);
        let mut chunk = BytesMut::with_capacity(framed.len() + 12);
        h1::write_chunk(&mut chunk, &framed);
        drop(framed);
        // Not cancel-safe, like every transport's send: a write cut by `write_timeout` ends
        // the session.
        self.open = false;
        self.io.write_all(&chunk).await?;
        self.io.flush().await?;
        self.open = true;
        Ok(())
    }

    async fn close(&mut self, disconnect: Disconnect) {
        if !self.open {
            return;
        }
        self.open = false;
        let mut out = BytesMut::new();
        if disconnect != Disconnect::CONNECTION_CLOSED
            && let Some(push) = stream::disconnect_push(self.framing, self.encoding, &disconnect)
        {
            h1::write_chunk(&mut out, &push);
        }
        out.extend_from_slice(h1::LAST_CHUNK);
        let io = &mut self.io;
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            io.write_all(&out).await?;
            io.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), Some(0));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&headers), Some(12));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("+12"));
        assert_eq!(content_length(&headers), None);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static(""));
        assert_eq!(content_length(&headers), None);
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_static("99999999999999999999999"),
        );
        assert_eq!(content_length(&headers), None);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        assert_eq!(content_length(&headers), None);
    }
}
