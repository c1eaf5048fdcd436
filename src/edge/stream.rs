//! The streaming side of bidirectional emulation, shared by HTTP-stream and SSE: a long-lived
//! response body the session writes to, and the emulation queue it reads commands from.
//!
//! Guarantee: only the framing differs between the two transports; a disconnect is a
//! `push.disconnect` followed by the end of the response; a client that goes away ends the
//! session at once (the upstream is told through the session loop).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header, request::Parts};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{Edge, Settings};
use crate::http::{Body, BoxError};
use crate::protocol::client::Reply;
use crate::protocol::frame::encode_message;
use crate::protocol::{Disconnect, Encoding};
use crate::session::emulation::{Commands, Registration};
use crate::session::{self, Inbound, SessionParams, Transport};

/// Frames buffered between the session and the HTTP connection; beyond it writes wait (and
/// time out after `write_timeout` with 3009). The channel holds plain `Bytes` (32 bytes a slot)
/// rather than `Result<Frame, _>` (over 100), because tokio allocates its slots 32 at a time
/// whatever the capacity.
pub(crate) const BODY_QUEUE_FRAMES: usize = 4;
/// Time allowed to write the final disconnect push.
pub(crate) const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How messages are framed on the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP-stream: JSON messages each end with `\n`; Protobuf messages are varint-delimited.
    HttpStream,
    /// SSE: one `data: <json>\n\n` event per message.
    Sse,
}

impl Framing {
    pub(crate) fn transport_name(self) -> &'static str {
        match self {
            Framing::HttpStream => "http_stream",
            Framing::Sse => "sse",
        }
    }

    pub(crate) fn frame(self, encoding: Encoding, batch: &[Bytes]) -> Bytes {
        let size: usize = batch.iter().map(|m| m.len() + 8).sum();
        let mut out = BytesMut::with_capacity(size);
        for message in batch {
            match (self, encoding) {
                (Framing::Sse, _) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(message);
                    out.extend_from_slice(b"\n\n");
                }
                (Framing::HttpStream, Encoding::Json) => {
                    out.extend_from_slice(message);
                    out.extend_from_slice(b"\n");
                }
                (Framing::HttpStream, Encoding::Protobuf) => out.extend_from_slice(message),
            }
        }
        out.freeze()
    }
}

type BodySender = mpsc::Sender<Bytes>;

/// The streaming response body: the framed chunks the session queued, in order; it ends when
/// the session drops its sender.
struct OutboxBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for OutboxBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A streaming session's transport.
pub struct StreamTransport {
    framing: Framing,
    encoding: Encoding,
    initial: Option<Bytes>,
    commands: Commands,
    body: Option<BodySender>,
    _registration: Registration,
}

impl Transport for StreamTransport {
    async fn recv(&mut self) -> Inbound {
        if let Some(initial) = self.initial.take() {
            return Inbound::Frame(initial);
        }
        let Some(body) = &self.body else {
            return Inbound::Gone;
        };
        tokio::select! {
            frame = self.commands.recv() => Inbound::Frame(frame),
            _ = body.closed() => Inbound::Gone,
        }
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        let body = self
            .body
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let bytes = self.framing.frame(self.encoding, &batch);
        body.send(bytes)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self, disconnect: Disconnect) {
        let Some(body) = self.body.take() else { return };
        if disconnect == Disconnect::CONNECTION_CLOSED {
            return;
        }
        if let Some(bytes) = disconnect_push(self.framing, self.encoding, &disconnect) {
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, body.send(bytes)).await;
        }
        // Dropping the sender ends the response.
    }
}

/// The framed `push.disconnect` a streaming session ends with (`None` if it cannot be
/// encoded).
pub(crate) fn disconnect_push(
    framing: Framing,
    encoding: Encoding,
    disconnect: &Disconnect,
) -> Option<Bytes> {
    let reply = Reply {
        push: Some(disconnect.to_push()),
        ..Default::default()
    };
    let message = encode_message(encoding, &reply).ok()?;
    Some(framing.frame(encoding, &[message]))
}

/// What a streaming transport hands over to start a session.
#[derive(Debug)]
pub struct StreamStart {
    /// HTTP-stream or SSE.
    pub framing: Framing,
    /// Session encoding.
    pub encoding: Encoding,
    /// The connect command frame (request body or `cf_connect`).
    pub initial: Bytes,
    /// Largest single command, bytes.
    pub command_size_limit: usize,
}

/// What a new streaming session needs besides its socket or body: registered for emulation
/// under a fresh session id, with its session parameters and response content type.
pub(crate) struct Opened {
    /// Keeps the emulation session id registered.
    pub registration: Registration,
    /// The emulation queue the session reads commands from.
    pub commands: Commands,
    /// Session parameters (emulation id set; SSE's query string never kept).
    pub params: SessionParams,
    /// The response's Content-Type.
    pub content_type: &'static str,
}

/// Registers a new streaming session and builds its parameters (shared by the hyper path
/// below and the owned HTTP/1 path in `edge::owned`).
pub(crate) fn open(
    edge: &Arc<Edge>,
    settings: &Settings,
    framing: Framing,
    encoding: Encoding,
    command_size_limit: usize,
    parts: &Parts,
    peer: SocketAddr,
) -> Opened {
    let session_id: Box<str> = uuid::Uuid::new_v4().to_string().into_boxed_str();
    let (registration, commands) = edge.emulation.register(session_id.clone());
    let mut params = edge.session_params(
        settings,
        framing.transport_name(),
        encoding,
        peer,
        &parts.uri,
        &parts.headers,
        command_size_limit,
    );
    if framing == Framing::Sse {
        // Connect tokens travel in the SSE query string: never pass or log it.
        params.url = parts.uri.path().to_owned();
    }
    params.emulation = Some((session_id, edge.node.clone()));
    let content_type = match (framing, encoding) {
        (Framing::Sse, _) => "text/event-stream; charset=utf-8",
        (Framing::HttpStream, Encoding::Json) => "text/plain; charset=utf-8",
        (Framing::HttpStream, Encoding::Protobuf) => "application/octet-stream",
    };
    Opened {
        registration,
        commands,
        params,
        content_type,
    }
}

/// The first body bytes of a streaming response, written before any message: SSE starts
/// with a blank line, which dispatches no event but lets EventSource fire `open` at once.
pub(crate) fn preamble(framing: Framing) -> Option<&'static [u8]> {
    (framing == Framing::Sse).then_some(b"\r\n")
}

/// Starts a streaming session whose first frame is the connect command and returns the
/// streaming response.
pub fn start(
    edge: &Arc<Edge>,
    settings: &Settings,
    start: StreamStart,
    parts: &Parts,
    peer: SocketAddr,
) -> Response<Body> {
    let StreamStart {
        framing,
        encoding,
        initial,
        command_size_limit,
    } = start;
    let Opened {
        registration,
        commands,
        params,
        content_type,
    } = open(
        edge,
        settings,
        framing,
        encoding,
        command_size_limit,
        parts,
        peer,
    );
    let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE_FRAMES);
    if let Some(preamble) = preamble(framing) {
        let _ = body_tx.try_send(Bytes::from_static(preamble));
    }
    let transport = StreamTransport {
        framing,
        encoding,
        initial: Some(initial),
        commands,
        body: Some(body_tx),
        _registration: registration,
    };
    edge.tracker().spawn(session::run(
        transport,
        settings.link.clone(),
        params,
        edge.phase.clone(),
    ));
    streaming_response(body_rx, content_type)
}

/// The 200 response of a streaming session (two-way or uni): its body yields the chunks the
/// session queues on `chunks`, in order, and ends when the session drops its sender; headers
/// tell every cache and proxy not to buffer it.
pub(crate) fn streaming_response(
    chunks: mpsc::Receiver<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(OutboxBody { chunks }.boxed());
    *response.status_mut() = StatusCode::OK;
    streaming_headers(response.headers_mut(), content_type);
    response
}

/// The headers of every streaming response, in the order they are written.
pub(crate) fn streaming_headers(headers: &mut HeaderMap, content_type: &'static str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert("expire", HeaderValue::from_static("0"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings() {
        let batch = [Bytes::from_static(b"{}"), Bytes::from_static(b"{\"id\":1}")];
        assert_eq!(
            &Framing::HttpStream.frame(Encoding::Json, &batch)[..],
            b"{}\n{\"id\":1}\n"
        );
        assert_eq!(
            &Framing::Sse.frame(Encoding::Json, &batch)[..],
            b"data: {}\n\ndata: {\"id\":1}\n\n"
        );
        let protobuf = [Bytes::from_static(&[0]), Bytes::from_static(&[1, 8])];
        assert_eq!(
            &Framing::HttpStream.frame(Encoding::Protobuf, &protobuf)[..],
            &[0, 1, 8]
        );
    }
}
