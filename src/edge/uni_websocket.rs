//! Unidirectional WebSocket (`uni_websocket`), as in Centrifugo: the first message is a JSON
//! `ConnectRequest`; after it the server only pushes, one JSON `Push` per WebSocket message.
//!
//! Guarantees: same handshake checks and origin policy as the bidirectional WebSocket; JSON
//! only; messages over `uni_websocket_message_size_limit` close with 1009; a first message
//! that is not a `ConnectRequest` ends the session with 3501; later client messages are read
//! and ignored (only a close or an error matters).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::uni::{UniMessage, connect_command, disconnect_push, to_uni};
use super::websocket::{accept_handshake, handshake_response, run_upgraded, session_config};
use super::{Edge, Settings};
use crate::http::Body;
use crate::protocol::{Disconnect, Encoding};
use crate::session::{self, Inbound, Transport};

/// Time allowed to write the disconnect push and the close frame.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the client's close reply after sending a close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Answers a handshake request to `uni_websocket_path`; on success the session runs on the
/// upgraded connection.
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
    let limit = settings.config.uni_websocket_message_size_limit;
    let mut params = edge.session_params(
        settings,
        "uni_websocket",
        Encoding::Json,
        peer,
        request.uri(),
        request.headers(),
        // The connect command is the request plus its small wrapper.
        limit.saturating_mul(2),
    );
    // Uni clients cannot answer pings: advertise `pong: false` and expect none.
    params.settings.pong_timeout = Duration::ZERO;
    let ws_config = session_config(settings, limit);
    let link = settings.link.clone();
    let phase = edge.phase.clone();
    run_upgraded(&mut request, ws_config, peer, move |ws| {
        session::run(UniWsTransport::new(ws), link, params, phase)
    });
    handshake_response(&key, None)
}

/// A uni session's WebSocket. Generic over the byte stream so tests can run it in memory.
pub struct UniWsTransport<S = TokioIo<Upgraded>> {
    ws: WebSocketStream<S>,
    connected: bool,
    refused: Option<Disconnect>,
}

impl<S> UniWsTransport<S> {
    /// Wraps an established server-side WebSocket whose first message is still unread.
    pub fn new(ws: WebSocketStream<S>) -> UniWsTransport<S> {
        UniWsTransport {
            ws,
            connected: false,
            refused: None,
        }
    }
}

impl<S> Transport for UniWsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Inbound {
        if let Some(disconnect) = self.refused.take() {
            return Inbound::Violation(disconnect);
        }
        loop {
            let data = match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Inbound::Gone,
                Some(Ok(Message::Text(text))) => Bytes::from(text),
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(WsError::Capacity(_))) => {
                    return Inbound::Violation(Disconnect::MESSAGE_TOO_BIG);
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "uni websocket read failed");
                    return Inbound::Gone;
                }
            };
            if self.connected {
                // A uni client has nothing more to say; Centrifugo ignores it too.
                continue;
            }
            self.connected = true;
            return match connect_command(&data) {
                Ok(frame) => Inbound::Frame(frame),
                Err(error) => {
                    tracing::debug!(%error, "uni websocket connect refused");
                    Inbound::Violation(Disconnect::BAD_REQUEST)
                }
            };
        }
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> io::Result<()> {
        let mut wrote = false;
        for message in batch {
            match to_uni(message) {
                UniMessage::Write(push) => {
                    let text = Utf8Bytes::try_from(push).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 JSON")
                    })?;
                    self.ws
                        .feed(Message::Text(text))
                        .await
                        .map_err(io::Error::other)?;
                    wrote = true;
                }
                UniMessage::Refused(disconnect) => {
                    self.refused.get_or_insert(disconnect);
                }
                UniMessage::Skip => {}
            }
        }
        if wrote {
            self.ws.flush().await.map_err(io::Error::other)?;
        }
        Ok(())
    }

    async fn close(&mut self, disconnect: Disconnect) {
        // A refused connect ends the session (3000 on two-way transports); uni clients get
        // the disconnect Centrifugo maps the refusal to instead.
        let disconnect = self.refused.take().unwrap_or(disconnect);
        if disconnect == Disconnect::CONNECTION_CLOSED {
            return;
        }
        let code = u16::try_from(disconnect.code).unwrap_or(1011);
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(disconnect.reason.to_string()),
        };
        let push = disconnect_push(&disconnect);
        // A client that stopped reading cannot block the close: push and close frame get
        // CLOSE_WRITE_TIMEOUT, then the socket is dropped.
        let written = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            if let Some(push) = push.and_then(|push| Utf8Bytes::try_from(push).ok()) {
                self.ws.feed(Message::Text(push)).await?;
            }
            self.ws.close(Some(frame)).await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while let Some(Ok(_)) | Some(Err(WsError::Capacity(_))) = self.ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        UniWsTransport<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (UniWsTransport::new(server), client)
    }

    #[tokio::test]
    async fn first_message_is_the_connect_request_and_later_ones_are_ignored() {
        let (mut transport, mut client) = pair().await;
        client
            .send(Message::text(r#"{"token":"t"}"#))
            .await
            .unwrap();
        client.send(Message::text("anything")).await.unwrap();
        client.close(None).await.unwrap();
        match transport.recv().await {
            Inbound::Frame(frame) => {
                let commands =
                    crate::protocol::decode_commands(Encoding::Json, &frame, 1024).unwrap();
                assert_eq!(commands[0].connect.as_ref().unwrap().token, "t");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(transport.recv().await, Inbound::Gone));
    }

    #[tokio::test]
    async fn bad_connect_request_is_a_bad_request() {
        let (mut transport, mut client) = pair().await;
        client.send(Message::text("not json")).await.unwrap();
        match transport.recv().await {
            Inbound::Violation(disconnect) => assert_eq!(disconnect, Disconnect::BAD_REQUEST),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn each_push_is_its_own_message() {
        let (mut transport, mut client) = pair().await;
        transport
            .send(vec![
                Bytes::from_static(br#"{"push":{"channel":"a","pub":{"data":1}}}"#),
                Bytes::from_static(b"{}"),
            ])
            .await
            .unwrap();
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(
            first.into_text().unwrap(),
            r#"{"channel":"a","pub":{"data":1}}"#
        );
        let second = client.next().await.unwrap().unwrap();
        assert_eq!(second.into_text().unwrap(), "{}");
    }
}
