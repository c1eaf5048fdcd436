//! What the unidirectional transports (`uni_websocket`, `uni_http_stream`, `uni_sse`) share:
//! turning Centrifugo's `ConnectRequest` into the connect command the session loop expects,
//! and turning the session's encoded replies into the bare `Push` objects uni clients read.
//!
//! Guarantees: uni transports are JSON only (as in Centrifugo); a client never sees a
//! `Reply` wrapper: the connect result arrives as `{"connect":{...}}`, pushes as
//! `{"channel":"c","pub":{...}}`, pings as `{}`, and the end as `{"disconnect":{...}}`. A
//! refused connect is not written: the session ends with the disconnect Centrifugo maps the
//! error to. The bidirectional path is untouched: conversion happens in the uni transports'
//! `send`, and costs nothing for pushes (a zero-copy slice of the encoded reply).

use bytes::Bytes;
use thiserror::Error;

use crate::protocol::client::{Command, ConnectRequest, Push, Reply};
use crate::protocol::frame::encode_message;
use crate::protocol::{Disconnect, Encoding, ErrorCode};

/// Id given to the connect command built from a uni connect request.
const CONNECT_COMMAND_ID: u32 = 1;
/// How every push reply starts in JSON: `Reply.push` is the first non-default field.
const PUSH_REPLY_PREFIX: &[u8] = b"{\"push\":";

/// Why a uni connect request was refused (answered 400, or close 3501 on uni_websocket).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConnectRequestError {
    /// The request is not a JSON `ConnectRequest` object.
    #[error("malformed connect request: {0}")]
    Json(String),
}

/// Parses a JSON `ConnectRequest` (the uni connect message, body or `cf_connect`) and returns
/// the equivalent connect command, JSON-encoded, as the session loop's first frame.
pub fn connect_command(request: &[u8]) -> Result<Bytes, ConnectRequestError> {
    // serde would also read a struct from an array; Centrifugo wants an object.
    if request.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConnectRequestError::Json("not a JSON object".to_owned()));
    }
    let connect: ConnectRequest = serde_json::from_slice(request)
        .map_err(|error| ConnectRequestError::Json(error.to_string()))?;
    let command = Command {
        id: CONNECT_COMMAND_ID,
        connect: Some(connect),
        ..Default::default()
    };
    serde_json::to_vec(&command)
        .map(Bytes::from)
        .map_err(|error| ConnectRequestError::Json(error.to_string()))
}

/// What a uni transport does with one encoded reply of the session.
#[derive(Debug, PartialEq, Eq)]
pub enum UniMessage {
    /// Write these bytes (one JSON `Push`, or `{}` for a ping) as one message.
    Write(Bytes),
    /// The connect was refused: write nothing and end the session with this disconnect.
    Refused(Disconnect),
    /// Nothing for a uni client (a reply to a command it cannot have sent).
    Skip,
}

/// Converts one JSON-encoded reply into what a uni client receives.
pub fn to_uni(reply: Bytes) -> UniMessage {
    if reply.starts_with(PUSH_REPLY_PREFIX) && reply.ends_with(b"}") {
        // `{"push":P}` → `P`, without copying.
        return UniMessage::Write(reply.slice(PUSH_REPLY_PREFIX.len()..reply.len() - 1));
    }
    if &reply[..] == b"{}" {
        return UniMessage::Write(reply);
    }
    // The connect reply (once per session) or an error: decode and re-encode.
    let reply: Reply = match serde_json::from_slice(&reply) {
        Ok(reply) => reply,
        Err(error) => {
            tracing::debug!(%error, "undecodable reply on a uni transport");
            return UniMessage::Skip;
        }
    };
    if let Some(result) = reply.connect {
        let push = Push {
            connect: Some(crate::protocol::client::Connect {
                client: result.client,
                version: result.version,
                data: result.data,
                subs: result.subs,
                expires: result.expires,
                ttl: result.ttl,
                ping: result.ping,
                pong: result.pong,
                session: result.session,
                node: result.node,
                time: result.time,
            }),
            ..Default::default()
        };
        return match encode_message(Encoding::Json, &push) {
            Ok(bytes) => UniMessage::Write(bytes),
            Err(_) => UniMessage::Refused(Disconnect::INAPPROPRIATE_PROTOCOL),
        };
    }
    if let Some(error) = reply.error {
        return UniMessage::Refused(refusal_disconnect(error.code));
    }
    if let Some(push) = reply.push {
        return match encode_message(Encoding::Json, &push) {
            Ok(bytes) => UniMessage::Write(bytes),
            Err(_) => UniMessage::Skip,
        };
    }
    UniMessage::Skip
}

/// The disconnect a uni session ends with when its connect fails with error `code`
/// (Centrifugo's default mapping; anything else is 3004 internal server error).
pub fn refusal_disconnect(code: u32) -> Disconnect {
    if code == ErrorCode::Expired.code() || code == ErrorCode::TokenExpired.code() {
        Disconnect::EXPIRED
    } else if code == ErrorCode::TooManyRequests.code() {
        Disconnect::TOO_MANY_REQUESTS
    } else if code == ErrorCode::PermissionDenied.code() {
        Disconnect::PERMISSION_DENIED
    } else if code == ErrorCode::Unauthorized.code() {
        Disconnect::INVALID_TOKEN
    } else {
        Disconnect::INTERNAL
    }
}

/// The disconnect push a uni client gets last (Centrifugo sends it on uni transports).
pub fn disconnect_push(disconnect: &Disconnect) -> Option<Bytes> {
    encode_message(Encoding::Json, &disconnect.to_push()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::client::{ConnectResult, Error, Publication};
    use crate::protocol::encode_reply;

    fn encoded(reply: &Reply) -> Bytes {
        encode_reply(Encoding::Json, reply).unwrap()
    }

    #[test]
    fn connect_request_becomes_connect_command() {
        let frame =
            connect_command(br#"{"token":"t","data":{"a":1},"subs":{"news":{"recover":true}}}"#)
                .unwrap();
        let commands = crate::protocol::decode_commands(Encoding::Json, &frame, 65536).unwrap();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].id, CONNECT_COMMAND_ID);
        let connect = commands[0].connect.as_ref().unwrap();
        assert_eq!(connect.token, "t");
        assert_eq!(&connect.data[..], br#"{"a":1}"#);
        assert!(connect.subs["news"].recover);
        assert!(connect_command(b"{}").is_ok());
        for bad in [&b""[..], b"null", b"[1]", b"[]", b"{", b"{\"token\":1}"] {
            assert!(
                connect_command(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pushes_lose_their_reply_wrapper() {
        let reply = Reply {
            push: Some(Push {
                channel: "news".into(),
                r#pub: Some(Publication {
                    data: Bytes::from_static(b"{\"x\":1}"),
                    offset: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            to_uni(encoded(&reply)),
            UniMessage::Write(Bytes::from_static(
                br#"{"channel":"news","pub":{"data":{"x":1},"offset":3}}"#
            ))
        );
        assert_eq!(
            to_uni(encoded(&Reply::default())),
            UniMessage::Write(Bytes::from_static(b"{}"))
        );
    }

    #[test]
    fn connect_reply_becomes_connect_push() {
        let reply = Reply {
            id: 1,
            connect: Some(ConnectResult {
                client: "c1".into(),
                version: "v".into(),
                ping: 25,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            to_uni(encoded(&reply)),
            UniMessage::Write(Bytes::from_static(
                br#"{"connect":{"client":"c1","version":"v","ping":25}}"#
            ))
        );
    }

    #[test]
    fn refused_connect_maps_to_disconnect() {
        let reply = Reply {
            id: 1,
            error: Some(Error {
                code: ErrorCode::Unauthorized.code(),
                message: "unauthorized".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            to_uni(encoded(&reply)),
            UniMessage::Refused(Disconnect::INVALID_TOKEN)
        );
        assert_eq!(refusal_disconnect(109).code, 3005);
        assert_eq!(refusal_disconnect(100).code, 3004);
    }

    #[test]
    fn disconnect_push_is_bare() {
        assert_eq!(
            &disconnect_push(&Disconnect::SHUTDOWN).unwrap()[..],
            br#"{"disconnect":{"code":3001,"reason":"shutdown"}}"#
        );
    }
}
