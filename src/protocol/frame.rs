//! Batch framing: many messages in one transport frame. JSON messages are joined by `\n`;
//! Protobuf messages each carry a varint length prefix. Decoding is bounded by a size limit
//! and never panics on malformed input.

use bytes::{Buf, Bytes, BytesMut};
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

/// Incremental splitter for a byte stream of framed messages (an HTTP-stream response, a
/// WebSocket message): feed bytes as they arrive, take complete messages out. Used by clients
/// of sidewire (tests, the bench tool).
#[derive(Debug)]
pub struct FrameSplitter {
    encoding: Encoding,
    buffer: BytesMut,
    limit: usize,
}

impl FrameSplitter {
    /// A splitter refusing messages larger than `limit` bytes.
    pub fn new(encoding: Encoding, limit: usize) -> FrameSplitter {
        FrameSplitter {
            encoding,
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message (without its separator or prefix), `Ok(None)` if more bytes
    /// are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, DecodeError> {
        match self.encoding {
            Encoding::Json => {
                let Some(end) = self.buffer.iter().position(|b| *b == b'\n') else {
                    if self.buffer.len() > self.limit {
                        return Err(DecodeError::TooLarge {
                            size: self.buffer.len(),
                            limit: self.limit,
                        });
                    }
                    return Ok(None);
                };
                let line = self.buffer.split_to(end + 1).freeze();
                Ok(Some(line.slice(..end)))
            }
            Encoding::Protobuf => {
                let mut peek = &self.buffer[..];
                let before = peek.len();
                let size = match prost::encoding::decode_varint(&mut peek) {
                    Ok(size) => usize::try_from(size).unwrap_or(usize::MAX),
                    // A varint is at most 10 bytes; fewer buffered means it may be incomplete.
                    Err(_) if before < 10 && self.buffer.last().is_none_or(|b| b & 0x80 != 0) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(DecodeError::Protobuf(e.to_string())),
                };
                if size > self.limit {
                    return Err(DecodeError::TooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                let prefix = before - peek.len();
                if peek.len() < size {
                    return Ok(None);
                }
                self.buffer.advance(prefix);
                Ok(Some(self.buffer.split_to(size).freeze()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::client::{ConnectRequest, Push, RpcRequest, SubscribeRequest};
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

    #[test]
    fn splitter_handles_partial_frames() {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let replies: Vec<Reply> = (1..=3)
                .map(|id| Reply {
                    id,
                    push: Some(Push {
                        channel: format!("c{id}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect();
            let mut stream = Vec::new();
            for reply in &replies {
                stream.extend_from_slice(&encode_reply(encoding, reply).unwrap());
                if encoding == Encoding::Json {
                    stream.push(b'\n');
                }
            }
            let mut splitter = FrameSplitter::new(encoding, 1024);
            let mut got = Vec::new();
            for byte in stream {
                splitter.push(&[byte]);
                while let Some(message) = splitter.next_message().unwrap() {
                    got.push(decode_reply(encoding, &message));
                }
            }
            assert_eq!(got, replies);
        }
    }

    fn decode_reply(encoding: Encoding, bytes: &[u8]) -> Reply {
        match encoding {
            Encoding::Json => serde_json::from_slice(bytes).unwrap(),
            Encoding::Protobuf => Reply::decode(bytes).unwrap(),
        }
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
            let mut splitter = FrameSplitter::new(Encoding::Protobuf, 128);
            splitter.push(&bytes);
            while let Ok(Some(_)) = splitter.next_message() {}
        }
    }
}
