//! RFC 6455 framing for the server side: parsing client frame headers (masked, no extensions)
//! and encoding server frames (unmasked), plus the close-frame payload rules.
//!
//! Guarantees: a header is judged from its first bytes (reserved bits, opcode, mask bit,
//! control-frame rules, then the length against the caller's limit) before any payload is
//! buffered, so an oversized or malformed frame costs no memory; nothing here panics on any
//! input.

use bytes::{BufMut, BytesMut};

/// Largest server frame header: 2 bytes + 8-byte extended length (servers do not mask).
pub const MAX_SERVER_HEADER: usize = 10;

/// Largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close code: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message that is not UTF-8 (or a close reason that is not).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// First (or only) frame of a UTF-8 text message.
    Text,
    /// First (or only) frame of a binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment of its message.
    pub fin: bool,
    /// Opcode.
    pub opcode: Opcode,
    /// Masking key.
    pub mask: [u8; 4],
    /// Payload length, bytes (at most the limit given to [`parse_header`]).
    pub len: usize,
    /// Header length, bytes (2 to 14).
    pub header_len: usize,
}

/// Why a client frame (or message) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1-3 set: no extension was negotiated.
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Clients must mask every frame.
    #[error("unmasked client frame")]
    Unmasked,
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("fragmented or oversized control frame")]
    BadControl,
    /// A 64-bit length with the most significant bit set.
    #[error("invalid payload length")]
    BadLength,
    /// A frame or message over the size limit; `len` is the frame's payload length.
    #[error("frame or message over the size limit")]
    TooBig {
        /// Payload length of the offending frame (to skip it).
        len: u64,
    },
    /// A continuation with no message started, or a new message before the last one ended.
    #[error("bad fragmentation")]
    Fragmentation,
    /// A text message or close reason that is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// A close frame with a 1-byte payload or a code that may not be sent.
    #[error("invalid close frame")]
    BadClose,
}

impl FrameError {
    /// The close code that answers this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig { .. } => CLOSE_TOO_BIG,
            FrameError::Utf8 => CLOSE_INVALID_PAYLOAD,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// Parses the client frame header at the start of `buf`: `Ok(None)` while more bytes are
/// needed, an error as soon as the bytes present prove the frame invalid or its payload longer
/// than `limit`.
pub fn parse_header(buf: &[u8], limit: usize) -> Result<Option<Header>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::UnknownOpcode(first & 0x0F))?;
    if opcode.is_control() && !fin {
        return Err(FrameError::BadControl);
    }
    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = second & 0x7F;
    let (len, len_bytes) = match short {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(FrameError::BadControl);
    }
    if len > limit as u64 {
        return Err(FrameError::TooBig { len });
    }
    let mask_at = 2 + len_bytes;
    let Some(m) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        // len <= limit, a usize.
        len: usize::try_from(len).map_err(|_| FrameError::TooBig { len })?,
        header_len: mask_at + 4,
    }))
}

/// Unmasks (or masks) `data` in place with `mask`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// Length of the header of a server frame with a `len`-byte payload.
pub fn server_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends a final, unmasked server frame header for a `len`-byte payload to `out`.
pub fn put_server_header(out: &mut BytesMut, opcode: Opcode, len: usize) {
    out.put_u8(0x80 | opcode.bits());
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// A final, unmasked server frame header for a `len`-byte payload, on the stack: the bytes
/// and how many of them are used.
pub fn server_header(opcode: Opcode, len: usize) -> ([u8; MAX_SERVER_HEADER], usize) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    header[0] = 0x80 | opcode.bits();
    let used = match len {
        0..=125 => {
            header[1] = len as u8;
            2
        }
        126..=65535 => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, used)
}

/// Payload length of a frame made of `parts` joined by `separator`.
pub fn joined_len(parts: &[impl AsRef<[u8]>], separator: &[u8]) -> usize {
    parts.iter().map(|p| p.as_ref().len()).sum::<usize>()
        + separator.len() * parts.len().saturating_sub(1)
}

/// A whole server frame: header then the `parts` joined by `separator`, in one buffer.
pub fn server_frame(opcode: Opcode, parts: &[impl AsRef<[u8]>], separator: &[u8]) -> BytesMut {
    let len = joined_len(parts, separator);
    let mut out = BytesMut::with_capacity(server_header_len(len) + len);
    put_server_header(&mut out, opcode, len);
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(part.as_ref());
    }
    out
}

/// A server close frame with `code` and `reason` (cut to fit 125 bytes at a char boundary).
pub fn close_frame(code: u16, reason: &str) -> BytesMut {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let code = code.to_be_bytes();
    server_frame(Opcode::Close, &[&code[..], &reason.as_bytes()[..cut]], b"")
}

/// Validates a client close payload: `Ok(None)` for no status code, `Ok(Some(code))` for a
/// code a peer may send with a UTF-8 reason.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::BadClose),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(FrameError::BadClose);
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut masked = payload.to_vec();
        apply_mask(&mut masked, mask);
        out.extend_from_slice(&masked);
        out
    }

    #[test]
    fn stack_header_matches_the_buffered_one() {
        for len in [0, 1, 125, 126, 65535, 65536, 1 << 20] {
            let mut buffered = BytesMut::new();
            put_server_header(&mut buffered, Opcode::Text, len);
            let (header, used) = server_header(Opcode::Text, len);
            assert_eq!(&header[..used], &buffered[..], "len {len}");
            assert_eq!(used, server_header_len(len));
        }
    }

    #[test]
    fn every_prefix_of_a_valid_header_asks_for_more() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let frame = client_frame(true, 0x2, &vec![7; len], [1, 2, 3, 4]);
            let header_len = frame.len() - len;
            for cut in 0..header_len {
                assert_eq!(
                    parse_header(&frame[..cut], 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
            let header = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(header.len, len);
            assert_eq!(header.header_len, header_len);
            assert_eq!(header.mask, [1, 2, 3, 4]);
            assert!(header.fin);
            assert_eq!(header.opcode, Opcode::Binary);
        }
    }

    #[test]
    fn refusals() {
        // Reserved bits.
        for rsv in [0x40u8, 0x20, 0x10] {
            assert_eq!(
                parse_header(&[0x80 | rsv | 1], 10),
                Err(FrameError::Reserved)
            );
        }
        // Undefined opcodes.
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                parse_header(&[0x80 | op], 10),
                Err(FrameError::UnknownOpcode(op))
            );
        }
        // Unmasked.
        assert_eq!(parse_header(&[0x81, 0x05], 10), Err(FrameError::Unmasked));
        // Fragmented control frames and long ones.
        assert_eq!(parse_header(&[0x09], 10), Err(FrameError::BadControl));
        assert_eq!(
            parse_header(&[0x89, 0x80 | 126, 0, 126], 1000),
            Err(FrameError::BadControl)
        );
        // 64-bit length with the top bit set.
        assert_eq!(
            parse_header(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], usize::MAX),
            Err(FrameError::BadLength)
        );
        // Over the limit, known from the length bytes alone (no mask needed yet).
        assert_eq!(
            parse_header(&[0x82, 0x80 | 11], 10),
            Err(FrameError::TooBig { len: 11 })
        );
        assert_eq!(
            parse_header(&[0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0], 1 << 20),
            Err(FrameError::TooBig { len: 1 << 32 })
        );
        // At the limit is fine.
        assert!(
            parse_header(&client_frame(true, 1, &[b'a'; 10], [0; 4]), 10)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn mask_round_trips_at_every_length_and_offset() {
        let data: Vec<u8> = (0..64u8).collect();
        for start in 0..4 {
            for end in start..data.len() {
                let mut copy = data[start..end].to_vec();
                apply_mask(&mut copy, [0xAA, 0x55, 0x0F, 0xF0]);
                for (i, byte) in copy.iter().enumerate() {
                    assert_eq!(*byte, data[start + i] ^ [0xAA, 0x55, 0x0F, 0xF0][i % 4]);
                }
                apply_mask(&mut copy, [0xAA, 0x55, 0x0F, 0xF0]);
                assert_eq!(copy, &data[start..end]);
            }
        }
    }

    #[test]
    fn server_frames() {
        assert_eq!(
            &server_frame(Opcode::Text, &[b"hi"], b"")[..],
            b"\x81\x02hi"
        );
        assert_eq!(
            &server_frame(Opcode::Text, &[&b"a"[..], b"b", b"c"], b"\n")[..],
            b"\x81\x05a\nb\nc"
        );
        let long = server_frame(Opcode::Binary, &[vec![0u8; 200]], b"");
        assert_eq!(&long[..4], &[0x82, 126, 0, 200]);
        assert_eq!(long.len(), 204);
        let huge = server_frame(Opcode::Binary, &[vec![0u8; 70000]], b"");
        assert_eq!(&huge[..2], &[0x82, 127]);
        assert_eq!(&huge[2..10], &70000u64.to_be_bytes());
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut out = BytesMut::new();
            put_server_header(&mut out, Opcode::Binary, len);
            assert_eq!(out.len(), server_header_len(len));
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            &close_frame(3501, "bad request")[..4],
            &[0x88, 13, 0x0D, 0xAD]
        );
        // A long multi-byte reason is cut at a character boundary within 125 bytes.
        let frame = close_frame(4000, &"é".repeat(100));
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(b"\x03"), Err(FrameError::BadClose));
        assert_eq!(parse_close(b"\x03\xe8bye"), Ok(Some(1000)));
        assert_eq!(parse_close(b"\x0f\xa0"), Ok(Some(4000)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(
                parse_close(&bad.to_be_bytes()),
                Err(FrameError::BadClose),
                "{bad}"
            );
        }
        assert_eq!(parse_close(b"\x03\xe8\xff"), Err(FrameError::Utf8));
    }
}
