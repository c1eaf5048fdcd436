//! The control messages replicas exchange over Redis pub/sub, in a small binary form:
//! one tag byte, then fixed fields (big-endian `u64`, `u16`-length-prefixed UTF-8 strings) and,
//! for an emulation request, the command bytes as the rest of the message.
//!
//! Guarantee: `decode` never panics and rejects anything malformed (a stray publisher on the
//! channel is ignored, not trusted).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Longest node or session id carried (ids are UUIDs; anything longer is refused).
pub const MAX_ID_LEN: usize = 128;

const TAG_ANNOUNCE: u8 = 1;
const TAG_EMULATE: u8 = 2;
const TAG_ANSWER: u8 = 3;

/// What the owning replica did with a routed emulation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The commands are in the session's queue.
    Delivered,
    /// No such session on that replica (answered 204, as Centrifugo).
    UnknownSession,
    /// The session did not take the commands in time.
    Busy,
}

impl Outcome {
    fn to_byte(self) -> u8 {
        match self {
            Outcome::Delivered => 0,
            Outcome::UnknownSession => 1,
            Outcome::Busy => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Outcome> {
        match byte {
            0 => Some(Outcome::Delivered),
            1 => Some(Outcome::UnknownSession),
            2 => Some(Outcome::Busy),
            _ => None,
        }
    }
}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A node is alive; `hello` asks every other node to announce itself at once (sent when
    /// a node starts or its Redis connection comes back).
    Announce {
        /// The announcing node.
        node: Box<str>,
        /// Whether the sender wants the others' announcements now.
        hello: bool,
    },
    /// An emulation POST that reached `from` for a session held by the receiver.
    Emulate {
        /// Request id, unique at `from`.
        id: u64,
        /// Node that waits for the answer.
        from: Box<str>,
        /// Emulation session id.
        session: Box<str>,
        /// The POST's inner data (commands in the session's encoding).
        data: Bytes,
    },
    /// The owning node's answer to `Emulate` `id`.
    Answer {
        /// The request id.
        id: u64,
        /// What happened.
        outcome: Outcome,
    },
}

/// Why a control message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its fields say.
    #[error("truncated control message")]
    Truncated,
    /// Unknown tag or outcome byte.
    #[error("unknown control message kind")]
    UnknownKind,
    /// An id is not UTF-8, empty, or longer than `MAX_ID_LEN`.
    #[error("bad id in control message")]
    BadId,
    /// Bytes left after a message that has no trailing payload.
    #[error("trailing bytes in control message")]
    Trailing,
}

fn put_str(out: &mut BytesMut, text: &str) {
    let len = text.len().min(MAX_ID_LEN);
    // Ids longer than MAX_ID_LEN never get here (checked by callers); truncation on a char
    // boundary keeps the encoding valid regardless.
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&text.as_bytes()[..end]);
}

/// Encodes a message.
pub fn encode(message: &Control) -> Bytes {
    let mut out = BytesMut::new();
    match message {
        Control::Announce { node, hello } => {
            out.put_u8(TAG_ANNOUNCE);
            out.put_u8(u8::from(*hello));
            put_str(&mut out, node);
        }
        Control::Emulate {
            id,
            from,
            session,
            data,
        } => {
            out.reserve(1 + 8 + 4 + from.len() + session.len() + data.len());
            out.put_u8(TAG_EMULATE);
            out.put_u64(*id);
            put_str(&mut out, from);
            put_str(&mut out, session);
            out.put_slice(data);
        }
        Control::Answer { id, outcome } => {
            out.put_u8(TAG_ANSWER);
            out.put_u64(*id);
            out.put_u8(outcome.to_byte());
        }
    }
    out.freeze()
}

struct Reader {
    bytes: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated);
        }
        Ok(self.bytes.split_to(n))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let raw = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(&raw);
        Ok(u64::from_be_bytes(array))
    }

    fn id(&mut self) -> Result<Box<str>, WireError> {
        let raw = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([raw[0], raw[1]]));
        if len == 0 || len > MAX_ID_LEN {
            return Err(WireError::BadId);
        }
        let raw = self.take(len)?;
        std::str::from_utf8(&raw)
            .map(Box::from)
            .map_err(|_| WireError::BadId)
    }

    fn end(self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

/// Decodes a message (never panics).
pub fn decode(bytes: Bytes) -> Result<Control, WireError> {
    let mut reader = Reader { bytes };
    match reader.u8()? {
        TAG_ANNOUNCE => {
            let hello = reader.u8()? != 0;
            let node = reader.id()?;
            reader.end()?;
            Ok(Control::Announce { node, hello })
        }
        TAG_EMULATE => {
            let id = reader.u64()?;
            let from = reader.id()?;
            let session = reader.id()?;
            Ok(Control::Emulate {
                id,
                from,
                session,
                data: reader.bytes,
            })
        }
        TAG_ANSWER => {
            let id = reader.u64()?;
            let outcome = Outcome::from_byte(reader.u8()?).ok_or(WireError::UnknownKind)?;
            reader.end()?;
            Ok(Control::Answer { id, outcome })
        }
        _ => Err(WireError::UnknownKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Control::Announce {
                node: "n-1".into(),
                hello: true,
            },
            Control::Announce {
                node: "n-2".into(),
                hello: false,
            },
            Control::Emulate {
                id: u64::MAX - 3,
                from: "origin".into(),
                session: "sess".into(),
                data: Bytes::from_static(b"{\"id\":1}\n{}"),
            },
            Control::Emulate {
                id: 0,
                from: "o".into(),
                session: "s".into(),
                data: Bytes::new(),
            },
            Control::Answer {
                id: 7,
                outcome: Outcome::Busy,
            },
            Control::Answer {
                id: 8,
                outcome: Outcome::UnknownSession,
            },
            Control::Answer {
                id: 9,
                outcome: Outcome::Delivered,
            },
        ];
        for message in messages {
            assert_eq!(decode(encode(&message)), Ok(message));
        }
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        assert_eq!(decode(Bytes::new()), Err(WireError::Truncated));
        assert_eq!(
            decode(Bytes::from_static(&[9])),
            Err(WireError::UnknownKind)
        );
        assert_eq!(
            decode(Bytes::from_static(&[TAG_ANNOUNCE, 0, 0, 0])),
            Err(WireError::BadId)
        );
        assert_eq!(
            decode(Bytes::from_static(&[TAG_ANNOUNCE, 0, 0, 5, b'a'])),
            Err(WireError::Truncated)
        );
        assert_eq!(
            decode(Bytes::from_static(&[TAG_ANNOUNCE, 0, 0, 1, 0xff])),
            Err(WireError::BadId)
        );
        assert_eq!(
            decode(Bytes::from_static(&[TAG_ANNOUNCE, 0, 0, 1, b'a', b'x'])),
            Err(WireError::Trailing)
        );
        assert_eq!(
            decode(Bytes::from_static(&[TAG_ANSWER, 0, 0, 0, 0, 0, 0, 0, 1, 9])),
            Err(WireError::UnknownKind)
        );
        let too_long = u16::try_from(MAX_ID_LEN + 1).unwrap().to_be_bytes();
        let mut raw = vec![TAG_ANNOUNCE, 0, too_long[0], too_long[1]];
        raw.extend(std::iter::repeat_n(b'a', MAX_ID_LEN + 1));
        assert_eq!(decode(Bytes::from(raw)), Err(WireError::BadId));
        // Every prefix of a valid message is refused, never a panic.
        let full = encode(&Control::Emulate {
            id: 1,
            from: "from".into(),
            session: "session".into(),
            data: Bytes::new(),
        });
        for cut in 0..full.len() {
            assert!(decode(full.slice(..cut)).is_err(), "prefix {cut}");
        }
    }
}
