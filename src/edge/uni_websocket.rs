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
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::uni::{UniMessage, connect_command, disconnect_push, to_uni};
use super::websocket::{accept_handshake, handshake_response, refusal, run_upgraded};
use super::wsconn::{WsConn, WsEvent};
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
    let link = settings.link.clone();
    let phase = edge.phase.clone();
    run_upgraded(edge.tracker(), &mut request, peer, move |io| {
        session::run(
            UniWsTransport::new(WsConn::new(io, limit)),
            link,
            params,
            phase,
        )
    });
    handshake_response(&key, None)
}

/// A uni session's WebSocket. Generic over the byte stream so tests can run it in memory.
pub struct UniWsTransport<S = TokioIo<Upgraded>> {
    ws: WsConn<S>,
    connected: bool,
    refused: Option<Disconnect>,
}

impl<S> UniWsTransport<S> {
    /// Wraps an established server-side WebSocket whose first message is still unread.
    pub fn new(ws: WsConn<S>) -> UniWsTransport<S> {
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
                WsEvent::Message(bytes) => bytes,
                WsEvent::Closed => return Inbound::Gone,
                WsEvent::Refused(error) => return refusal(error),
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
                    std::str::from_utf8(&push).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 JSON")
                    })?;
                    self.ws.feed(true, &push);
                    wrote = true;
                }
                UniMessage::Refused(disconnect) => {
                    self.refused.get_or_insert(disconnect);
                }
                UniMessage::Skip => {}
            }
        }
        if wrote {
            self.ws.flush().await?;
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
        let code = u16::try_from(disconnect.code)
            .unwrap_or(crate::protocol::codes::WS_CLOSE_INTERNAL_ERROR);
        // A client that stopped reading cannot block the close: push and close frame get
        // CLOSE_WRITE_TIMEOUT, then the socket is dropped.
        if let Some(push) = disconnect_push(&disconnect)
            && std::str::from_utf8(&push).is_ok()
        {
            self.ws.feed(true, &push);
        }
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
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        UniWsTransport<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let server = WsConn::new(server, 1 << 16);
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
