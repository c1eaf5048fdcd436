//! A strict validator for a chunked message body (RFC 9112 §7.1) as it streams through the
//! proxy: the bytes are forwarded as they are, and this parser says where the body ends and
//! whether every byte so far is well-formed.
//!
//! Guarantees: chunk sizes are hex without overflow (at most [`MAX_SIZE_DIGITS`] digits);
//! every line ends in CRLF (a bare CR or LF is an error); a chunk extension is at most
//! [`MAX_EXT_BYTES`] and the trailer section at most [`MAX_TRAILER_BYTES`], both without
//! control bytes; nothing past the end of the body is consumed. No input panics, and the
//! state is a few words (no buffering).

use thiserror::Error;

/// Most hex digits in a chunk size, leading zeros included (the value must fit 64 bits too).
pub const MAX_SIZE_DIGITS: usize = 32;
/// Longest chunk extension (after the size, up to its CRLF).
pub const MAX_EXT_BYTES: usize = 1024;
/// Longest trailer section (all trailer lines together).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkError {
    /// A chunk size that is not hex, is empty or overflows.
    #[error("invalid chunk size")]
    Size,
    /// A line not ended by CRLF, or a data chunk not followed by CRLF.
    #[error("invalid chunk line ending")]
    LineEnding,
    /// A chunk extension too long or with a control byte.
    #[error("invalid chunk extension")]
    Extension,
    /// A trailer section too long or with a control byte.
    #[error("invalid trailer section")]
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the size's hex digits.
    Size { digits: usize },
    /// Whitespace after the size (before `;` or CR).
    SizeSpace,
    /// In a chunk extension.
    Ext { len: usize },
    /// CR of the size line seen.
    SizeLf,
    /// Data bytes still to come.
    Data,
    /// After the data: CR expected.
    DataCr,
    /// After the data's CR: LF expected.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// CR of a trailer line seen.
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    /// The body is complete.
    Done,
}

/// The validator of one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkParser {
    state: State,
    /// Size of the chunk being read (while in `Size`), then data bytes left (in `Data`).
    size: u64,
    trailer_bytes: usize,
}

impl Default for ChunkParser {
    fn default() -> Self {
        ChunkParser::new()
    }
}

impl ChunkParser {
    /// A parser at the start of a body.
    pub fn new() -> ChunkParser {
        ChunkParser {
            state: State::Size { digits: 0 },
            size: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validates `input`, the next bytes of the body: how many of them belong to the body
    /// (all of them unless it ended inside `input`).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut index = 0;
        while index < input.len() {
            if self.state == State::Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - index);
                index += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.step(input[index])?;
            index += 1;
        }
        Ok(index)
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, byte) {
            (State::Size { digits }, _) if byte.is_ascii_hexdigit() => {
                if digits >= MAX_SIZE_DIGITS {
                    return Err(ChunkError::Size);
                }
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(u64::from(hex_value(byte))))
                    .ok_or(ChunkError::Size)?;
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(ChunkError::Size),
            (State::Size { .. } | State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::Size { .. } | State::SizeSpace, b';') => State::Ext { len: 1 },
            (State::Size { .. } | State::SizeSpace, b'\r') => State::SizeLf,
            (State::Size { .. } | State::SizeSpace, b'\n') => return Err(ChunkError::LineEnding),
            (State::Size { .. } | State::SizeSpace, _) => return Err(ChunkError::Size),
            (State::Ext { .. }, b'\r') => State::SizeLf,
            (State::Ext { len }, _) => {
                if len >= MAX_EXT_BYTES || !is_field_byte(byte) {
                    return Err(ChunkError::Extension);
                }
                State::Ext { len: len + 1 }
            }
            (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data,
            (State::SizeLf, _) => return Err(ChunkError::LineEnding),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.size = 0;
                State::Size { digits: 0 }
            }
            (State::DataCr | State::DataLf, _) => return Err(ChunkError::LineEnding),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::EndLf, _) => return Err(ChunkError::LineEnding),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::TrailerLf, _) => return Err(ChunkError::LineEnding),
            (State::TrailerStart | State::Trailer, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES || !is_field_byte(byte) {
                    return Err(ChunkError::Trailer);
                }
                State::Trailer
            }
            // Handled in `feed`.
            (State::Data | State::Done, _) => self.state,
        };
        Ok(())
    }
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

/// A byte allowed inside a field line or an extension: visible, space, tab or obs-text.
fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= 0x20 && byte != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, ChunkError> {
        let mut parser = ChunkParser::new();
        let used = parser.feed(body)?;
        assert!(parser.is_done(), "not done after {body:?}");
        Ok(used)
    }

    #[test]
    fn valid_bodies_end_exactly_where_they_end() {
        let body = b"5\r\nhello\r\n1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok(body.len() - 4));
        let trailers = b"3\r\nabc\r\n0\r\nx-checksum: 1\r\nother: two\r\n\r\n";
        assert_eq!(whole(trailers), Ok(trailers.len()));
        assert_eq!(whole(b"0\r\n\r\n"), Ok(5));
        let zeros: &[u8] = b"00000000000000000000003\r\nabc\r\n0\r\n\r\n";
        assert_eq!(whole(zeros), Ok(zeros.len()));
        let too_wide = [[b'0'; MAX_SIZE_DIGITS].as_slice(), b"1\r\n"].concat();
        assert_eq!(ChunkParser::new().feed(&too_wide), Err(ChunkError::Size));
        assert_eq!(whole(b"3 \t;ext\r\nabc\r\n0\r\n\r\n"), Ok(19));
    }

    #[test]
    fn byte_by_byte_is_the_same_as_at_once() {
        let body = b"5\r\nhello\r\n3;x\r\nabc\r\n0\r\nt: v\r\n\r\n";
        let mut parser = ChunkParser::new();
        for (i, byte) in body.iter().enumerate() {
            assert!(!parser.is_done(), "done early at {i}");
            assert_eq!(parser.feed(std::slice::from_ref(byte)), Ok(1));
        }
        assert!(parser.is_done());
        assert_eq!(parser.feed(b"more"), Ok(0));
    }

    #[test]
    fn bad_frames_are_refused() {
        let bad: &[(&[u8], ChunkError)] = &[
            (b"g\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b"-1\r\n", ChunkError::Size),
            (b"+1\r\n", ChunkError::Size),
            (b"10000000000000000\r\n", ChunkError::Size),
            (b"fffffffffffffffff\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::LineEnding),
            (b"5\r\nhelloX\r\n", ChunkError::LineEnding),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::LineEnding),
            (b"5\rhello", ChunkError::LineEnding),
            (b"0\r\n\n", ChunkError::Trailer),
            (b"0\r\nt: v\n\r\n", ChunkError::Trailer),
            (b"0\r\nt: v\rX", ChunkError::LineEnding),
            (b"0\r\n\rX", ChunkError::LineEnding),
            (b"1;a\x01\r\n", ChunkError::Extension),
            (b"1 x\r\n", ChunkError::Size),
        ];
        for (body, error) in bad {
            let mut parser = ChunkParser::new();
            assert_eq!(
                parser.feed(body),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_EXT_BYTES], b"\r\n"].concat();
        assert_eq!(
            ChunkParser::new().feed(&long_ext),
            Err(ChunkError::Extension)
        );
        let long_trailer = [b"0\r\nt: ".as_slice(), &[b'a'; MAX_TRAILER_BYTES]].concat();
        assert_eq!(
            ChunkParser::new().feed(&long_trailer),
            Err(ChunkError::Trailer)
        );
        // The largest size that fits is fine (its data just never ends here).
        let mut parser = ChunkParser::new();
        assert_eq!(parser.feed(b"ffffffffffffffff\r\nab"), Ok(20));
        assert!(!parser.is_done());
    }
}
