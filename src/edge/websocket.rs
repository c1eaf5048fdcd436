//! The WebSocket transport at `websocket_path`: handshake (origin, subprotocol, encoding),
//! then framing only — the session loop lives in `session`.
//!
//! Guarantees: JSON unless the client offers `centrifuge-protobuf` (echoed back) or asks with
//! `?cf_protocol=protobuf`; a subprotocol is never sent unless offered; messages over
//! `message_size_limit` close with 1009; per-connection buffers stay small
//! (`websocket_read_buffer_size`, allocated eagerly by tungstenite, is the largest).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

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
    let subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| match offered {
            PROTOBUF_SUBPROTOCOL => Some(PROTOBUF_SUBPROTOCOL),
            JSON_SUBPROTOCOL => Some(JSON_SUBPROTOCOL),
            _ => None,
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

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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
    let ws_config = session_config(settings, settings.config.message_size_limit);
    let link = settings.link.clone();
    let phase = edge.phase.clone();
    let encoding = negotiated.encoding;
    run_upgraded(&mut request, ws_config, peer, move |ws| {
        session::run(WsTransport { ws, encoding }, link, params, phase)
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

/// A session's WebSocket settings: the configured read buffer, writes unbuffered and bounded
/// at twice `queue_max_size`, messages and frames up to `message_limit`.
pub(crate) fn session_config(settings: &Settings, message_limit: usize) -> WebSocketConfig {
    let read_buffer = settings.config.websocket_read_buffer_size;
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(
            settings
                .config
                .queue_max_size
                .saturating_mul(2)
                .max(read_buffer),
        )
        .max_message_size(Some(message_limit))
        .max_frame_size(Some(message_limit))
}

/// Runs `session` on the WebSocket once `request`'s connection is upgraded (after the 101 is
/// sent); an upgrade that fails is logged and dropped.
pub(crate) fn run_upgraded<F, S>(
    request: &mut Request<Incoming>,
    ws_config: WebSocketConfig,
    peer: SocketAddr,
    session: F,
) where
    F: FnOnce(WebSocketStream<TokioIo<Upgraded>>) -> S + Send + 'static,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                session(ws).await;
            }
            Err(error) => tracing::debug!(%peer, %error, "websocket upgrade failed"),
        }
    });
}

/// Checks the upgrade headers of a WebSocket handshake; returns the client key, or `None`
/// for an invalid handshake (answer it with [`bad_handshake`]).
pub fn validate_handshake(headers: &HeaderMap) -> Option<HeaderValue> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let valid = header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade")
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
    ws: WebSocketStream<S>,
    encoding: Encoding,
}

impl<S> WsTransport<S> {
    /// Wraps an established server-side WebSocket.
    pub fn new(ws: WebSocketStream<S>, encoding: Encoding) -> WsTransport<S> {
        WsTransport { ws, encoding }
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Inbound {
        loop {
            return match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => Inbound::Gone,
                Some(Ok(Message::Text(text))) => Inbound::Frame(Bytes::from(text)),
                Some(Ok(Message::Binary(bytes))) => Inbound::Frame(bytes),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(WsError::Capacity(_))) => Inbound::Violation(Disconnect::MESSAGE_TOO_BIG),
                Some(Err(error)) => {
                    tracing::debug!(%error, "websocket read failed");
                    Inbound::Gone
                }
            };
        }
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        let payload = if batch.len() == 1 {
            batch.into_iter().next().unwrap_or_default()
        } else {
            let separator: &[u8] = match self.encoding {
                Encoding::Json => b"\n",
                Encoding::Protobuf => b"",
            };
            let size = batch.iter().map(Bytes::len).sum::<usize>() + batch.len();
            let mut joined = BytesMut::with_capacity(size);
            for (index, message) in batch.iter().enumerate() {
                if index > 0 {
                    joined.extend_from_slice(separator);
                }
                joined.extend_from_slice(message);
            }
            joined.freeze()
        };
        let message = match self.encoding {
            Encoding::Json => Message::Text(
                Utf8Bytes::try_from(payload)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 JSON"))?,
            ),
            Encoding::Protobuf => Message::Binary(payload),
        };
        self.ws.send(message).await.map_err(io::Error::other)
    }

    async fn close(&mut self, disconnect: Disconnect) {
        if disconnect == Disconnect::CONNECTION_CLOSED {
            return;
        }
        let code = u16::try_from(disconnect.code).unwrap_or(1011);
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(disconnect.reason.to_string()),
        };
        // A client that stopped reading cannot block the close: the frame gets
        // CLOSE_WRITE_TIMEOUT, then the socket is dropped.
        match tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.ws.close(Some(frame))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        // Wait for the client's close reply so that our close frame is not lost to a reset
        // caused by unread input.
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while let Some(Ok(_)) | Some(Err(WsError::Capacity(_))) = self.ws.next().await {}
        })
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
    use crate::admin::metrics::Metrics;
    use crate::config::HubConfig;
    use crate::hub::Hub;
    use crate::lifecycle;
    use crate::link::backoff::Backoff;
    use crate::link::{Link, Upstream};
    use crate::session::{SessionParams, SessionSettings};

    /// Bytes of state one idle WebSocket session keeps in its task (debug build), beyond the
    /// heap buffers. Measured 2026-11-28: 2040 bytes (9240 before the frame handling and the
    /// goodbye were boxed: they hold whole Commands).
    const MAX_SESSION_FUTURE_BYTES: usize = 2560;

    #[tokio::test]
    async fn session_task_state_stays_small() {
        let (server, _client) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(
            server,
            Role::Server,
            Some(
                WebSocketConfig::default()
                    .read_buffer_size(crate::config::DEFAULT_WEBSOCKET_READ_BUFFER_SIZE),
            ),
        )
        .await;
        let (_phase_tx, phase) = lifecycle::channel();
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::start(HubConfig::default(), phase.clone());
        let link = Link::spawn(
            Upstream::Embedded(hub),
            Arc::from("node"),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
            phase.clone(),
            metrics.clone(),
        );
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
