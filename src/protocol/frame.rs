//! Batch framing: many messages in one transport frame. JSON messages are joined by `\n`;
//! Protobuf messages each carry a varint length prefix. Decoding is bounded by a size limit
//! and never panics on malformed input.

use bytes::{Buf, Bytes};
use prost::Message;
use serde::Serialize;
use thiserror::Error;

use super::Encoding;
use super::client::{Command, Reply};

/// Why a client frame could not be decoded (the session answers with 3501 bad request).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame held no command at all.
    #[error("empty frame")]
    Empty,
    /// A JSON line was not a valid command.
    #[error("malformed JSON command: {0}")]
    Json(String),
    /// A Protobuf message or its length prefix was malformed or truncated.
    #[error("malformed Protobuf command: {0}")]
    Protobuf(String),
    /// One message is larger than the limit.
    #[error("command of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared or actual size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// Why a reply could not be encoded for a client.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A payload is not JSON but the client speaks JSON (maps to 3506).
    #[error("binary payload for a JSON client")]
    NotJson,
}

/// Decodes every command of one transport frame (a WebSocket message, a POST body).
pub fn decode_commands(
    encoding: Encoding,
    frame: &[u8],
    limit: usize,
) -> Result<Vec<Command>, DecodeError> {
    let mut commands = Vec::new();
    match encoding {
        Encoding::Json => {
            let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
            if frame.is_empty() {
                return Err(DecodeError::Empty);
            }
            for line in frame.split(|b| *b == b'\n') {
                if line.len() > limit {
                    return Err(DecodeError::TooLarge {
                        size: line.len(),
                        limit,
                    });
                }
                let command: Command =
                    serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
                commands.push(command);
            }
        }
        Encoding::Protobuf => {
            let mut rest = frame;
            if rest.is_empty() {
                return Err(DecodeError::Empty);
            }
            while !rest.is_empty() {
                let size = prost::encoding::decode_varint(&mut rest)
                    .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > limit {
                    return Err(DecodeError::TooLarge { size, limit });
                }
                if size > rest.len() {
                    return Err(DecodeError::Protobuf("truncated message".into()));
                }
                let command = Command::decode(&rest[..size])
                    .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
                rest.advance(size);
                commands.push(command);
            }
        }
    }
    Ok(commands)
}

/// Encodes one reply for a client: JSON without a trailing newline, Protobuf with its varint
/// length prefix. Transports add their own separators when they batch.
pub fn encode_reply(encoding: Encoding, reply: &Reply) -> Result<Bytes, EncodeError> {
    encode_message(encoding, reply)
}

/// Encodes any client-protocol message the way [`encode_reply`] does.
pub fn encode_message<M: Message + Serialize>(
    encoding: Encoding,
    message: &M,
) -> Result<Bytes, EncodeError> {
    match encoding {
        Encoding::Json => serde_json::to_vec(message)
            .map(Bytes::from)
            .map_err(|_| EncodeError::NotJson),
        Encoding::Protobuf => Ok(Bytes::from(message.encode_length_delimited_to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::client::{ConnectRequest, RpcRequest, SubscribeRequest};
    use proptest::prelude::*;

    fn sample_commands() -> Vec<Command> {
        vec![
            Command {
                id: 1,
                connect: Some(ConnectRequest {
                    token: "t".into(),
                    data: Bytes::from_static(br#"{"a":1}"#),
                    name: "js".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Command {
                id: 2,
                subscribe: Some(SubscribeRequest {
                    channel: "chat".into(),
                    flag: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Command::default(),
        ]
    }

    fn encode_batch(encoding: Encoding, commands: &[Command]) -> Vec<u8> {
        let parts: Vec<Bytes> = commands
            .iter()
            .map(|c| encode_message(encoding, c).unwrap())
            .collect();
        match encoding {
            Encoding::Json => parts.join(&b'\n'),
            Encoding::Protobuf => parts.concat(),
        }
    }

    #[test]
    fn batches_round_trip_in_both_encodings() {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let frame = encode_batch(encoding, &sample_commands());
            assert_eq!(
                decode_commands(encoding, &frame, 65536).unwrap(),
                sample_commands()
            );
        }
    }

    #[test]
    fn json_batch_from_the_js_sdk() {
        let frame = br#"{"connect":{"name":"js"},"id":1}
{"subscribe":{"channel":"pre","flag":1},"id":2}"#;
        let commands = decode_commands(Encoding::Json, frame, 65536).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[1].subscribe.as_ref().unwrap().channel, "pre");
    }

    #[test]
    fn protobuf_subscribe_from_the_python_sdk() {
        let frame = hex("0c08022a080a04636861747001");
        let commands = decode_commands(Encoding::Protobuf, &frame, 65536).unwrap();
        assert_eq!(commands[0].id, 2);
        assert_eq!(commands[0].subscribe.as_ref().unwrap().channel, "chat");
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            decode_commands(Encoding::Json, b"", 10),
            Err(DecodeError::Empty)
        );
        assert!(matches!(
            decode_commands(Encoding::Json, b"{}\n\n{}", 100),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_commands(Encoding::Json, b"not json", 100),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_commands(Encoding::Protobuf, &[0x05, 0x08], 100),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            decode_commands(Encoding::Protobuf, &[0xff; 11], 100),
            Err(DecodeError::Protobuf(_))
        ));
        assert_eq!(
            decode_commands(Encoding::Protobuf, &[0x7f], 10),
            Err(DecodeError::TooLarge {
                size: 127,
                limit: 10
            })
        );
    }

    #[test]
    fn ping_encodings() {
        assert_eq!(
            &encode_reply(Encoding::Json, &Reply::default()).unwrap()[..],
            b"{}"
        );
        assert_eq!(
            &encode_reply(Encoding::Protobuf, &Reply::default()).unwrap()[..],
            &[0u8]
        );
        let pong = decode_commands(Encoding::Protobuf, &[0], 10).unwrap();
        assert_eq!(pong, vec![Command::default()]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    proptest! {
        #[test]
        fn rpc_commands_round_trip(id in 1u32.., method in "[a-z]{0,12}", text in "[ -~]{0,40}", encoding in prop_oneof![Just(Encoding::Json), Just(Encoding::Protobuf)]) {
            let data = Bytes::from(serde_json::to_vec(&text).unwrap());
            let command = Command { id, rpc: Some(RpcRequest { data, method }), ..Default::default() };
            let frame = encode_batch(encoding, &[command.clone(), command.clone()]);
            prop_assert_eq!(decode_commands(encoding, &frame, 65536).unwrap(), vec![command.clone(), command]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_commands(Encoding::Json, &bytes, 128);
            let _ = decode_commands(Encoding::Protobuf, &bytes, 128);
        }
    }
}
