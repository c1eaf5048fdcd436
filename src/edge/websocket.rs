//! The WebSocket transport at `websocket_path`: handshake (origin, subprotocol, encoding),
//! then framing only — the session loop lives in `session`.
//!
//! Guarantees: JSON unless the client offers `centrifuge-protobuf` (echoed back) or asks with
//! `?cf_protocol=protobuf`; a subprotocol is never sent unless offered; messages over
//! `message_size_limit` close with 1009; an idle connection holds no read or write buffer
//! (framing in `wsconn`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::wsconn::{WsConn, WsEvent};
use super::wsframe::FrameError;
use super::{Edge, Settings};
use crate::http::{Body, empty, status};
use crate::protocol::{Disconnect, Encoding};
use crate::session::{self, Inbound, Transport};

/// Time allowed to write the close frame.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the client's close reply after sending a close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// Encoding and subprotocol chosen from the handshake request.
#[derive(Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Session encoding.
    pub encoding: Encoding,
    /// Subprotocol to echo, if the client offered one we speak.
    pub subprotocol: Option<&'static str>,
}

/// Picks the encoding: the first offered subprotocol we speak wins; `cf_protocol=protobuf`
/// (or legacy `format=protobuf`) in the query selects Protobuf and cannot be overridden by
/// `centrifuge-json`.
pub fn negotiate(headers: &HeaderMap, query: Option<&str>) -> Negotiated {
    let query_protobuf = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "cf_protocol=protobuf" || pair == "format=protobuf")
    });
    let subprotocol =
        crate::http::header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).find_map(|offered| {
            match offered {
                PROTOBUF_SUBPROTOCOL => Some(PROTOBUF_SUBPROTOCOL),
                JSON_SUBPROTOCOL => Some(JSON_SUBPROTOCOL),
                _ => None,
            }
        });
    let encoding = if query_protobuf || subprotocol == Some(PROTOBUF_SUBPROTOCOL) {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    Negotiated {
        encoding,
        subprotocol,
    }
}

/// Answers a handshake request; on success the session runs on the upgraded connection.
pub fn handle(
    edge: &Edge,
    settings: &Settings,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let key = match accept_handshake(edge, settings, &request) {
        Ok(key) => key,
        Err(refused) => return *refused,
    };
    let headers = request.headers();
    let negotiated = negotiate(headers, request.uri().query());
    let params = edge.session_params(
        settings,
        "websocket",
        negotiated.encoding,
        peer,
        request.uri(),
        request.headers(),
        settings.config.message_size_limit,
    );
    let limit = settings.config.message_size_limit;
    let link = settings.link.clone();
    let phase = edge.phase.clone();
    let encoding = negotiated.encoding;
    run_upgraded(edge.tracker(), &mut request, peer, move |io| {
        session::run(
            WsTransport::new(WsConn::new(io, limit), encoding),
            link,
            params,
            phase,
        )
    });
    handshake_response(&key, negotiated.subprotocol)
}

/// Checks a WebSocket handshake request (GET, upgrade headers, origin); the client key, or the
/// response refusing it (405, 400, 403).
pub(crate) fn accept_handshake(
    edge: &Edge,
    settings: &Settings,
    request: &Request<Incoming>,
) -> Result<HeaderValue, Box<Response<Body>>> {
    if request.method() != Method::GET {
        return Err(Box::new(status(StatusCode::METHOD_NOT_ALLOWED)));
    }
    let Some(key) = validate_handshake(request.headers()) else {
        return Err(Box::new(bad_handshake()));
    };
    if !settings.origins.check(request.headers()) {
        return Err(Box::new(edge.origin_rejected()));
    }
    Ok(key)
}

/// Runs `session` on the WebSocket once `request`'s connection is upgraded (after the 101 is
/// sent); an upgrade that fails is logged and dropped. The session gets a task of its own once
/// the upgrade is done, so that its task holds only the session (not the upgrade future nor the
/// closure's captures beside it).
///
/// Both tasks run on `tracker`, so drain sees the session from the moment the handshake is
/// answered, before it has counted itself anywhere.
pub(crate) fn run_upgraded<F, S>(
    tracker: &crate::server::TaskTracker,
    request: &mut Request<Incoming>,
    peer: SocketAddr,
    session: F,
) where
    F: FnOnce(TokioIo<Upgraded>) -> S + Send + 'static,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(request);
    let session_tracker = tracker.clone();
    tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                session_tracker.spawn(session(TokioIo::new(upgraded)));
            }
            Err(error) => tracing::debug!(%peer, %error, "websocket upgrade failed"),
        }
    });
}

/// Checks the upgrade headers of a WebSocket handshake; returns the client key, or `None`
/// for an invalid handshake (answer it with [`bad_handshake`]).
pub fn validate_handshake(headers: &HeaderMap) -> Option<HeaderValue> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let valid = crate::http::header_has_token(headers, header::UPGRADE, "websocket")
        && crate::http::header_has_token(headers, header::CONNECTION, "upgrade")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            == Some(b"13");
    key.filter(|_| valid)
}

/// The 400 answer to an invalid handshake (with `Sec-WebSocket-Version: 13`).
pub fn bad_handshake() -> Response<Body> {
    let mut response = status(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    response
}

/// The `101 Switching Protocols` answer to a valid handshake with client key `key`, echoing
/// `subprotocol` if one was chosen.
pub fn handshake_response(key: &HeaderValue, subprotocol: Option<&'static str>) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(subprotocol) = subprotocol {
        out.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    response
}

/// A session's WebSocket: JSON batches are `\n`-joined text messages, Protobuf batches are
/// concatenated varint-delimited binary messages. Generic over the byte stream so tests can
/// run it on in-memory pipes.
pub struct WsTransport<S = TokioIo<Upgraded>> {
    ws: WsConn<S>,
    encoding: Encoding,
}

impl<S> WsTransport<S> {
    /// Wraps an established server-side WebSocket.
    pub fn new(ws: WsConn<S>, encoding: Encoding) -> WsTransport<S> {
        WsTransport { ws, encoding }
    }
}

/// The session's answer to a refused client frame or message.
pub(crate) fn refusal(error: FrameError) -> Inbound {
    tracing::debug!(%error, "websocket frame refused");
    match error {
        FrameError::TooBig { .. } => Inbound::Violation(Disconnect::MESSAGE_TOO_BIG),
        other => Inbound::Violation(Disconnect::new(u32::from(other.close_code()), "")),
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Inbound {
        match self.ws.next().await {
            WsEvent::Message(bytes) => Inbound::Frame(bytes),
            WsEvent::Closed => Inbound::Gone,
            WsEvent::Refused(error) => refusal(error),
        }
    }

    // An `async` block rather than an `async fn`, so that the future holds `batch` once.
    #[allow(clippy::manual_async_fn)]
    fn send(&mut self, batch: Vec<Bytes>) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            match self.encoding {
                Encoding::Json => {
                    // Not re-validated per delivery: a JSON session's outbox only holds
                    // `encode_reply` output (serde_json, always UTF-8; payloads that are not
                    // JSON fail to encode and never reach it).
                    debug_assert!(batch.iter().all(|m| std::str::from_utf8(m).is_ok()));
                    self.ws.send(true, &batch, b"\n").await
                }
                Encoding::Protobuf => self.ws.send(false, &batch, b"").await,
            }
        }
    }

    async fn close(&mut self, disconnect: Disconnect) {
        if disconnect == Disconnect::CONNECTION_CLOSED {
            return;
        }
        let code = u16::try_from(disconnect.code)
            .unwrap_or(crate::protocol::codes::WS_CLOSE_INTERNAL_ERROR);
        // A client that stopped reading cannot block the close: the frame gets
        // CLOSE_WRITE_TIMEOUT, then the socket is dropped; the client's close reply is awaited
        // so that our close frame is not lost to a reset caused by unread input.
        self.ws
            .close(
                code,
                &disconnect.reason,
                CLOSE_WRITE_TIMEOUT,
                CLOSE_REPLY_WAIT,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(protocols: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if !protocols.is_empty() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocols.parse().unwrap());
        }
        headers
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            negotiate(&headers(""), None),
            Negotiated {
                encoding: Encoding::Json,
                subprotocol: None
            }
        );
        assert_eq!(
            negotiate(&headers("centrifuge-protobuf"), None),
            Negotiated {
                encoding: Encoding::Protobuf,
                subprotocol: Some("centrifuge-protobuf")
            }
        );
        assert_eq!(
            negotiate(&headers("chat, centrifuge-json, centrifuge-protobuf"), None).subprotocol,
            Some("centrifuge-json")
        );
        assert_eq!(
            negotiate(&headers("centrifuge-json"), Some("cf_protocol=protobuf")).encoding,
            Encoding::Protobuf
        );
        assert_eq!(
            negotiate(&headers("other"), Some("a=1&format=protobuf")),
            Negotiated {
                encoding: Encoding::Protobuf,
                subprotocol: None
            }
        );
    }
}

#[cfg(test)]
mod memory_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::lifecycle;
    use crate::link::Link;
    use crate::metrics::Metrics;
    use crate::session::{SessionParams, SessionSettings};

    /// Bytes of state one idle WebSocket session keeps in its task (debug build), beyond the
    /// heap buffers. Measured 2026-11-28: 2040 bytes (9240 before the frame handling and the
    /// goodbye were boxed: they hold whole Commands); 2026-12-01: 2016 bytes with the owned
    /// framing (`WsConn`, 120 bytes as a transport) and `session::run` no longer keeping its
    /// arguments beside the session built from them; 2026-12-01 (issue 11): 848 bytes (2144
    /// before) with one timer for the session and its writes, the connect-only fields boxed,
    /// compact limits, and the loop, the flush and the writes built so that their futures hold
    /// their arguments once (an `async fn` keeps them twice).
    const MAX_SESSION_FUTURE_BYTES: usize = 960;

    #[tokio::test]
    async fn session_task_state_stays_small() {
        let (server, _client) = tokio::io::duplex(64);
        let ws = WsConn::new(server, 65536);
        let (_phase_tx, phase) = lifecycle::channel();
        let metrics = Arc::new(Metrics::default());
        let link = Link::unreachable(phase.clone(), metrics.clone());
        let params = SessionParams {
            encoding: Encoding::Json,
            transport: "websocket",
            remote_addr: String::new(),
            url: String::new(),
            headers: Vec::new(),
            emulation: None,
            settings: SessionSettings {
                ping_interval: Duration::from_secs(25),
                pong_timeout: Duration::from_secs(8),
                stale_close_delay: Duration::from_secs(10),
                queue_max_size: 1 << 20,
                command_size_limit: 65536,
                write_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(10),
            },
            metrics,
        };
        let transport = WsTransport::new(ws, Encoding::Json);
        let transport_size = std::mem::size_of_val(&transport);
        let future = session::run(transport, link, params, phase);
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= MAX_SESSION_FUTURE_BYTES,
            "session future is {size} bytes (transport {transport_size})"
        );
        eprintln!("session future: {size} bytes, WsTransport: {transport_size} bytes");
    }
}
