//! Client-side splitting of a server's byte stream (an HTTP-stream response, a WebSocket
//! message) into framed messages: JSON lines or varint-delimited Protobuf. Bounded by a size
//! limit; never panics on malformed input.

use bytes::{Buf, Bytes, BytesMut};
use sidewire::protocol::Encoding;

/// Why the byte stream could not be split.
#[derive(Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A length prefix was not a valid varint.
    BadPrefix(String),
    /// One message is larger than the limit.
    TooLarge {
        /// Declared or buffered size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitError::BadPrefix(e) => write!(f, "malformed Protobuf length prefix: {e}"),
            SplitError::TooLarge { size, limit } => {
                write!(f, "message of {size} bytes exceeds the limit of {limit}")
            }
        }
    }
}

/// Incremental splitter: feed bytes as they arrive, take complete messages out.
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
    pub fn next_message(&mut self) -> Result<Option<Bytes>, SplitError> {
        match self.encoding {
            Encoding::Json => {
                let Some(end) = self.buffer.iter().position(|b| *b == b'\n') else {
                    if self.buffer.len() > self.limit {
                        return Err(SplitError::TooLarge {
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
                    Err(e) => return Err(SplitError::BadPrefix(e.to_string())),
                };
                if size > self.limit {
                    return Err(SplitError::TooLarge {
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
    use proptest::prelude::*;
    use prost::Message as _;
    use sidewire::protocol::client::{Push, Reply};
    use sidewire::protocol::encode_reply;

    fn decode_reply(encoding: Encoding, bytes: &[u8]) -> Reply {
        match encoding {
            Encoding::Json => serde_json::from_slice(bytes).unwrap(),
            Encoding::Protobuf => Reply::decode(bytes).unwrap(),
        }
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

    #[test]
    fn oversized_messages_are_errors() {
        let mut splitter = FrameSplitter::new(Encoding::Protobuf, 10);
        splitter.push(&[0x7f]);
        assert_eq!(
            splitter.next_message(),
            Err(SplitError::TooLarge {
                size: 127,
                limit: 10
            })
        );
        let mut splitter = FrameSplitter::new(Encoding::Json, 4);
        splitter.push(b"{\"a\":1");
        assert!(matches!(
            splitter.next_message(),
            Err(SplitError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut splitter = FrameSplitter::new(Encoding::Protobuf, 128);
            splitter.push(&bytes);
            while let Ok(Some(_)) = splitter.next_message() {}
        }
    }
}
