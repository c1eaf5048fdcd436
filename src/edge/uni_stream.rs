//! Unidirectional HTTP-streaming (`uni_http_stream`: POST, newline-delimited JSON pushes) and
//! SSE (`uni_sse`: GET `?cf_connect=` or POST, one `data:` event per push), as in Centrifugo.
//!
//! Guarantees: the connect request is checked before any session exists (413 over the body
//! limit, 400 when it is not a JSON `ConnectRequest`); the session runs through the one
//! session loop, and the response only ever carries bare pushes (see [`super::uni`]); a
//! client that goes away ends the session at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::body::read_limited;
use super::sse::connect_param;
use super::stream::{BODY_QUEUE_FRAMES, streaming_response};
use super::uni::{UniMessage, connect_command, disconnect_push, to_uni};
use super::{Edge, Settings};
use crate::http::{Body, status};
use crate::protocol::{Disconnect, Encoding};
use crate::session::{self, Inbound, Transport};

/// Time allowed to write the final disconnect push.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The connect request of a uni SSE GET without `cf_connect` (Centrifugo: an empty one).
const EMPTY_CONNECT_REQUEST: &[u8] = b"{}";

/// How pushes are framed on a uni response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniFraming {
    /// `uni_http_stream`: each JSON push ends with `\n`.
    HttpStream,
    /// `uni_sse`: one `data: <json>\n\n` event per push.
    Sse,
}

impl UniFraming {
    fn transport_name(self) -> &'static str {
        match self {
            UniFraming::HttpStream => "uni_http_stream",
            UniFraming::Sse => "uni_sse",
        }
    }

    fn append(self, out: &mut BytesMut, message: &[u8]) {
        match self {
            UniFraming::HttpStream => {
                out.extend_from_slice(message);
                out.extend_from_slice(b"\n");
            }
            UniFraming::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(message);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

type BodySender = mpsc::Sender<Bytes>;

/// A uni streaming session's transport: yields the connect command once, then only waits for
/// the client to go away (or for a refused connect to end the session).
pub struct UniStreamTransport {
    framing: UniFraming,
    initial: Option<Bytes>,
    refused: Option<Disconnect>,
    body: Option<BodySender>,
}

impl Transport for UniStreamTransport {
    async fn recv(&mut self) -> Inbound {
        if let Some(initial) = self.initial.take() {
            return Inbound::Frame(initial);
        }
        if let Some(disconnect) = self.refused.take() {
            return Inbound::Violation(disconnect);
        }
        match &self.body {
            Some(body) => {
                body.closed().await;
                Inbound::Gone
            }
            None => Inbound::Gone,
        }
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        let body = self
            .body
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let size: usize = batch.iter().map(|m| m.len() + 8).sum();
        let mut out = BytesMut::with_capacity(size);
        for message in batch {
            match to_uni(message) {
                UniMessage::Write(push) => self.framing.append(&mut out, &push),
                UniMessage::Refused(disconnect) => {
                    self.refused.get_or_insert(disconnect);
                }
                UniMessage::Skip => {}
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        body.send(out.freeze())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self, disconnect: Disconnect) {
        // A refused connect ends the session (3000 on two-way transports); uni clients get
        // the disconnect Centrifugo maps the refusal to instead.
        let disconnect = self.refused.take().unwrap_or(disconnect);
        let Some(body) = self.body.take() else { return };
        if disconnect == Disconnect::CONNECTION_CLOSED {
            return;
        }
        if let Some(push) = disconnect_push(&disconnect) {
            let mut out = BytesMut::with_capacity(push.len() + 8);
            self.framing.append(&mut out, &push);
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, body.send(out.freeze())).await;
        }
        // Dropping the sender ends the response.
    }
}

/// Answers a request to `uni_http_stream_path`: POST with a JSON `ConnectRequest` body.
pub async fn handle_http_stream(
    edge: &Arc<Edge>,
    settings: &Settings,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let limit = settings.config.uni_http_stream_max_request_body_size;
    let timeout = settings.config.request_body_timeout;
    let (parts, body) = request.into_parts();
    let request = match read_limited(body, &parts.headers, limit, *timeout).await {
        Ok(request) => request,
        Err(code) => return edge.body_refused(code),
    };
    start(
        edge,
        settings,
        UniFraming::HttpStream,
        &request,
        limit,
        &parts,
        peer,
    )
}

/// Answers a request to `uni_sse_path`: GET with the `ConnectRequest` URL-encoded in
/// `cf_connect` (absent: an empty request), or POST with it as body.
pub async fn handle_sse(
    edge: &Arc<Edge>,
    settings: &Settings,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let limit = settings.config.uni_sse_max_request_body_size;
    let (parts, body) = request.into_parts();
    let request = match parts.method {
        Method::GET => connect_param(parts.uri.query())
            .unwrap_or_else(|| Bytes::from_static(EMPTY_CONNECT_REQUEST)),
        Method::POST => {
            let timeout = settings.config.request_body_timeout;
            match read_limited(body, &parts.headers, limit, *timeout).await {
                Ok(request) => request,
                Err(code) => return edge.body_refused(code),
            }
        }
        _ => return status(StatusCode::METHOD_NOT_ALLOWED),
    };
    if request.len() > limit {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    }
    start(
        edge,
        settings,
        UniFraming::Sse,
        &request,
        limit,
        &parts,
        peer,
    )
}

/// Validates the connect request, starts the session and returns the streaming response.
fn start(
    edge: &Arc<Edge>,
    settings: &Settings,
    framing: UniFraming,
    request: &[u8],
    limit: usize,
    parts: &http::request::Parts,
    peer: SocketAddr,
) -> Response<Body> {
    let initial = match connect_command(request) {
        Ok(initial) => initial,
        Err(error) => {
            tracing::debug!(%peer, %error, transport = framing.transport_name(), "refused");
            return status(StatusCode::BAD_REQUEST);
        }
    };
    let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE_FRAMES);
    if framing == UniFraming::Sse {
        // A blank line first: dispatches no event but lets EventSource fire `open` at once.
        let _ = body_tx.try_send(Bytes::from_static(b"\r\n"));
    }
    let mut params = edge.session_params(
        settings,
        framing.transport_name(),
        Encoding::Json,
        peer,
        &parts.uri,
        &parts.headers,
        // The connect command is the request plus its small wrapper.
        limit.saturating_mul(2),
    );
    // Uni clients cannot answer pings: advertise `pong: false` and expect none.
    params.settings.pong_timeout = Duration::ZERO;
    if framing == UniFraming::Sse {
        // Connect tokens travel in the SSE query string: never pass or log it.
        params.url = parts.uri.path().to_owned();
    }
    let transport = UniStreamTransport {
        framing,
        initial: Some(initial),
        refused: None,
        body: Some(body_tx),
    };
    edge.tracker().spawn(session::run(
        transport,
        settings.link.clone(),
        params,
        edge.phase.clone(),
    ));

    let content_type = match framing {
        UniFraming::Sse => "text/event-stream; charset=utf-8",
        UniFraming::HttpStream => "text/plain; charset=utf-8",
    };
    streaming_response(body_rx, content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings() {
        let mut out = BytesMut::new();
        UniFraming::HttpStream.append(&mut out, b"{}");
        UniFraming::HttpStream.append(&mut out, b"{\"a\":1}");
        assert_eq!(&out[..], b"{}\n{\"a\":1}\n");
        let mut out = BytesMut::new();
        UniFraming::Sse.append(&mut out, b"{}");
        assert_eq!(&out[..], b"data: {}\n\n");
    }

    #[tokio::test]
    async fn refused_connect_ends_the_session_without_writing_it() {
        let (body_tx, mut body_rx) = mpsc::channel(4);
        let mut transport = UniStreamTransport {
            framing: UniFraming::HttpStream,
            initial: Some(Bytes::from_static(b"{}")),
            refused: None,
            body: Some(body_tx),
        };
        assert!(matches!(transport.recv().await, Inbound::Frame(_)));
        let error = Bytes::from_static(br#"{"id":1,"error":{"code":101,"message":"x"}}"#);
        transport.send(vec![error]).await.unwrap();
        assert!(body_rx.try_recv().is_err(), "nothing written");
        match transport.recv().await {
            Inbound::Violation(disconnect) => assert_eq!(disconnect, Disconnect::INVALID_TOKEN),
            other => panic!("{other:?}"),
        }
        transport.close(Disconnect::INVALID_TOKEN).await;
        let frame = body_rx.recv().await.unwrap();
        assert_eq!(
            &frame[..],
            b"{\"disconnect\":{\"code\":3500,\"reason\":\"invalid token\"}}\n"
        );
    }
}
