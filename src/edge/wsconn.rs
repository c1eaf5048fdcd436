//! A server-side WebSocket connection on any byte stream, with RFC 6455 framing owned here
//! (see `wsframe`) instead of a general-purpose library, so that an idle connection holds no
//! buffer at all.
//!
//! Guarantees:
//! - Reads go through one scratch buffer per worker thread; the connection keeps bytes only
//!   while a frame or fragmented message is incomplete (bounded by the message size limit),
//!   and releases the allocation as soon as nothing is pending. Writes keep bytes only until
//!   they reach the socket; a data frame the socket takes at once is written straight from
//!   the caller's buffers (one vectored write, nothing copied or allocated).
//! - Frames and messages over the limit are refused with 1009 before their payload is
//!   buffered (the payload is skipped, so the client's close reply can still be read);
//!   malformed frames (reserved bits, unknown opcodes, unmasked, bad control frames, bad
//!   fragmentation) give 1002 and invalid UTF-8 text gives 1007, after which nothing more is
//!   read.
//! - Pings are answered with pongs; a close is answered with a close echoing its code. While
//!   such a reply cannot be written, nothing more is read, so a client that sends but never
//!   reads cannot make the connection queue replies.
//! - [`WsConn::next`] is cancel-safe: all progress lives in the connection.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wsframe::{self, FrameError, Opcode};

/// Bytes read from the socket at once, into the worker thread's scratch buffer.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Most parts of a frame written straight from the caller's buffers (one vectored write of
/// header, parts and separators); bigger batches are copied into one buffer first.
const MAX_DIRECT_PARTS: usize = 16;

thread_local! {
    /// The worker thread's read buffer, shared by all its connections (reads are synchronous
    /// within one poll, so no connection holds it across an await).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// What [`WsConn::next`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole text (UTF-8 checked) or binary message.
    Message(Bytes),
    /// The client closed (close frame, end of stream, or a read error); nothing more comes.
    Closed,
    /// The client broke the protocol or a limit: close with [`FrameError::close_code`].
    Refused(FrameError),
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// One complete client frame.
struct Frame {
    fin: bool,
    opcode: Opcode,
    payload: BytesMut,
}

/// A server-side WebSocket over `S` (the HTTP handshake already done).
pub struct WsConn<S> {
    io: S,
    /// Largest frame and message payload accepted, bytes.
    limit: usize,
    /// Received bytes not yet parsed into a frame (no allocation while empty).
    partial: BytesMut,
    /// Payload bytes of a refused frame still to be discarded.
    skip: u64,
    /// A fragmented message in progress.
    fragments: Option<Box<Fragments>>,
    /// Bytes queued for the socket (no allocation while empty).
    out: BytesMut,
    /// `out` was written but not yet flushed.
    unflushed: bool,
    /// Continuation frames are discarded until the end of a refused message.
    discarding: bool,
    close_sent: bool,
    close_received: bool,
    /// A protocol error was seen: nothing more is read.
    failed: bool,
    /// The socket failed: nothing more is read or written.
    broken: bool,
}

impl<S> WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps `io` right after the `101` response; messages and frames up to `limit` bytes.
    pub fn new(io: S, limit: usize) -> WsConn<S> {
        WsConn {
            io,
            limit,
            partial: BytesMut::new(),
            skip: 0,
            fragments: None,
            out: BytesMut::new(),
            unflushed: false,
            discarding: false,
            close_sent: false,
            close_received: false,
            failed: false,
            broken: false,
        }
    }

    /// Waits for the next message. Cancel-safe.
    pub async fn next(&mut self) -> WsEvent {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Writes one data frame (text or binary) made of `parts` joined by `separator`. When
    /// nothing else is queued, the frame goes to the socket straight from `parts` in one
    /// vectored write (no copy, no buffer); only what the socket does not take at once is
    /// copied into the connection's buffer and written like any queued frame.
    ///
    /// A `poll_fn`, not an `async fn`: the future holds its arguments once (it sits in every
    /// session's task while a write is pending).
    pub fn send<'a, P: AsRef<[u8]>>(
        &'a mut self,
        text: bool,
        parts: &'a [P],
        separator: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + 'a {
        let opcode = if text { Opcode::Text } else { Opcode::Binary };
        let mut direct_tried = false;
        poll_fn(move |cx| {
            if !direct_tried {
                direct_tried = true;
                if let Some(written) = self.write_direct(cx, opcode, parts, separator)? {
                    let mut frame = wsframe::server_frame(opcode, parts, separator);
                    frame.advance(written.min(frame.len()));
                    self.queue(frame);
                }
            }
            self.poll_write_out(cx)
        })
    }

    /// One attempt to write a whole data frame straight from `parts`: `Ok(None)` when all of
    /// it reached the socket, `Ok(Some(n))` when only its first `n` bytes did (0 when the
    /// socket is not ready, something else is queued, or the stream has no vectored writes).
    fn write_direct(
        &mut self,
        cx: &mut Context<'_>,
        opcode: Opcode,
        parts: &[impl AsRef<[u8]>],
        separator: &[u8],
    ) -> io::Result<Option<usize>> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !self.out.is_empty() || parts.len() > MAX_DIRECT_PARTS || !self.io.is_write_vectored() {
            return Ok(Some(0));
        }
        let len = wsframe::joined_len(parts, separator);
        let (header, header_len) = wsframe::server_header(opcode, len);
        let mut slices = [IoSlice::new(&[]); 2 * MAX_DIRECT_PARTS];
        slices[0] = IoSlice::new(&header[..header_len]);
        let mut used = 1;
        for (index, part) in parts.iter().enumerate() {
            if index > 0 && !separator.is_empty() {
                slices[used] = IoSlice::new(separator);
                used += 1;
            }
            slices[used] = IoSlice::new(part.as_ref());
            used += 1;
        }
        let total = header_len + len;
        match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..used]) {
            Poll::Ready(Ok(0)) => Err(self.broke(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                self.unflushed = true;
                Ok((n < total).then_some(n))
            }
            Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Poll::Ready(Err(error)) => Err(self.broke(error)),
            Poll::Pending => Ok(Some(0)),
        }
    }

    /// Queues a data frame without writing it (see [`WsConn::flush`]).
    pub fn feed(&mut self, text: bool, payload: &[u8]) {
        let opcode = if text { Opcode::Text } else { Opcode::Binary };
        self.queue(wsframe::server_frame(opcode, &[payload], b""));
    }

    /// Writes everything queued and flushes the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Starts the close handshake with `code` and `reason` after anything queued: the frames
    /// get `write_timeout`, then the client's close reply is awaited (reading and discarding
    /// messages) for up to `reply_wait`. Does nothing once a close was sent or the socket
    /// failed.
    pub async fn close(
        &mut self,
        code: u16,
        reason: &str,
        write_timeout: Duration,
        reply_wait: Duration,
    ) {
        if self.close_sent || self.broken {
            return;
        }
        self.queue(wsframe::close_frame(code, reason));
        self.close_sent = true;
        match tokio::time::timeout(write_timeout, self.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let _ = tokio::time::timeout(reply_wait, async {
            while self.next().await != WsEvent::Closed {}
        })
        .await;
    }

    fn queue(&mut self, frame: BytesMut) {
        if self.out.is_empty() {
            self.out = frame;
        } else {
            self.out.extend_from_slice(&frame);
        }
    }

    /// Writes and flushes `out`; releases its allocation once written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        while !self.out.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out)) {
                Ok(0) => return Poll::Ready(Err(self.broke(io::ErrorKind::WriteZero.into()))),
                Ok(n) => {
                    self.out.advance(n);
                    self.unflushed = true;
                }
                Err(error) => return Poll::Ready(Err(self.broke(error))),
            }
        }
        if self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        if self.unflushed {
            if let Err(error) = ready!(Pin::new(&mut self.io).poll_flush(cx)) {
                return Poll::Ready(Err(self.broke(error)));
            }
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn broke(&mut self, error: io::Error) -> io::Error {
        self.broken = true;
        self.out = BytesMut::new();
        error
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<WsEvent> {
        loop {
            // Replies to pings and closes go out before anything more is read.
            if ready!(self.poll_write_out(cx)).is_err() {
                return Poll::Ready(WsEvent::Closed);
            }
            if self.close_received || self.failed {
                return Poll::Ready(WsEvent::Closed);
            }
            let frame = match ready!(self.poll_frame(cx)) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Poll::Ready(WsEvent::Closed),
                Err(error) => return Poll::Ready(self.refuse(error)),
            };
            match self.on_frame(frame) {
                Ok(Some(message)) => return Poll::Ready(WsEvent::Message(message)),
                Ok(None) => {}
                Err(error) => return Poll::Ready(self.refuse(error)),
            }
        }
    }

    fn refuse(&mut self, error: FrameError) -> WsEvent {
        if !matches!(error, FrameError::TooBig { .. }) {
            self.failed = true;
            self.partial = BytesMut::new();
        }
        self.fragments = None;
        WsEvent::Refused(error)
    }

    /// Handles one frame: a finished message, `None` for control frames and fragments.
    fn on_frame(&mut self, frame: Frame) -> Result<Option<Bytes>, FrameError> {
        match frame.opcode {
            Opcode::Ping => {
                if !self.close_sent {
                    self.queue(wsframe::server_frame(Opcode::Pong, &[&frame.payload], b""));
                }
                Ok(None)
            }
            Opcode::Pong => Ok(None),
            Opcode::Close => {
                let code = wsframe::parse_close(&frame.payload)?;
                self.close_received = true;
                if !self.close_sent {
                    self.close_sent = true;
                    let reply = match code {
                        Some(code) => wsframe::close_frame(code, ""),
                        None => wsframe::server_frame(Opcode::Close, &[b""], b""),
                    };
                    self.queue(reply);
                }
                Ok(None)
            }
            Opcode::Text | Opcode::Binary => {
                if self.fragments.is_some() || self.discarding {
                    return Err(FrameError::Fragmentation);
                }
                let text = frame.opcode == Opcode::Text;
                if frame.fin {
                    return finish(text, frame.payload).map(Some);
                }
                self.fragments = Some(Box::new(Fragments {
                    text,
                    data: frame.payload,
                }));
                Ok(None)
            }
            Opcode::Continuation => {
                if self.discarding {
                    self.discarding = !frame.fin;
                    return Ok(None);
                }
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(FrameError::Fragmentation);
                };
                let total = fragments.data.len() + frame.payload.len();
                if total > self.limit {
                    self.discarding = !frame.fin;
                    return Err(FrameError::TooBig {
                        len: frame.payload.len() as u64,
                    });
                }
                fragments.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                match self.fragments.take() {
                    Some(done) => finish(done.text, done.data).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// Reads until one whole frame is buffered: `Ok(None)` at the end of the stream.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, FrameError>> {
        loop {
            self.discard_skipped();
            if self.skip == 0 {
                match self.parse_buffered() {
                    Ok(Some(frame)) => return Poll::Ready(Ok(Some(frame))),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            match ready!(self.poll_read_more(cx)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket read failed");
                    self.broken = true;
                    return Poll::Ready(Ok(None));
                }
            }
        }
    }

    /// Drops buffered bytes of a refused frame; releases `partial` once empty.
    fn discard_skipped(&mut self) {
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(self.partial.len());
            self.partial.advance(n);
            self.skip -= n as u64;
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = BytesMut::new();
        }
    }

    /// Takes one whole frame off `partial` (unmasked in place, no copy), if there is one.
    fn parse_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match wsframe::parse_header(&self.partial, self.limit) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(FrameError::TooBig { len }) => {
                // Skip the whole frame (the header is complete up to its mask).
                let first = self.partial.first().copied().unwrap_or(0);
                let second = self.partial.get(1).copied().unwrap_or(0);
                let header_len = match second & 0x7F {
                    126 => 8,
                    127 => 14,
                    _ => 6,
                } as u64;
                self.skip = header_len.saturating_add(len);
                let continuation = first & 0x0F == 0;
                let fin = first & 0x80 != 0;
                // The rest of the refused message goes too.
                self.discarding = !fin && (continuation || self.fragments.is_none());
                self.discard_skipped();
                return Err(FrameError::TooBig { len });
            }
            Err(error) => return Err(error),
        };
        let total = header.header_len + header.len;
        if self.partial.len() < total {
            // No reservation for the announced length: a client that sends only a header
            // must not make the connection hold `limit` bytes; the buffer grows with what
            // actually arrives.
            return Ok(None);
        }
        self.partial.advance(header.header_len);
        let mut payload = self.partial.split_to(header.len);
        self.discard_skipped();
        wsframe::apply_mask(&mut payload, header.mask);
        Ok(Some(Frame {
            fin: header.fin,
            opcode: header.opcode,
            payload,
        }))
    }

    /// Reads what the socket has into the thread's scratch buffer and appends it to
    /// `partial`: the number of bytes read (0 at the end of the stream).
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let io = &mut self.io;
        let partial = &mut self.partial;
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => read_into(io, cx, &mut scratch, partial),
            // Not reachable (reads do not nest); a private buffer keeps it panic-free.
            Err(_) => read_into(io, cx, &mut vec![0; SCRATCH_BYTES], partial),
        })
    }
}

/// Reads what `io` has (at most [`SCRATCH_BYTES`]) through the worker thread's scratch buffer
/// and appends the first `max` of those bytes to `out`, dropping the rest: the number of bytes
/// read (0 at the end of the stream). Nothing is held between calls. Shared with the owned
/// HTTP/1 path (`edge::h1`), which keeps no read buffer of its own either.
pub(crate) fn poll_read_scratch<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    max: usize,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => read_capped(io, cx, &mut scratch, out, max),
        Err(_) => read_capped(io, cx, &mut vec![0; SCRATCH_BYTES], out, max),
    })
}

fn read_capped<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    out: &mut BytesMut,
    max: usize,
) -> Poll<io::Result<usize>> {
    let mut buf = ReadBuf::new(scratch);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    out.extend_from_slice(&filled[..filled.len().min(max)]);
    Poll::Ready(Ok(filled.len()))
}

fn read_into<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    partial: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut buf = ReadBuf::new(scratch);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    partial.extend_from_slice(filled);
    Poll::Ready(Ok(filled.len()))
}

/// A finished message: text must be UTF-8.
fn finish(text: bool, data: BytesMut) -> Result<Bytes, FrameError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(FrameError::Utf8);
    }
    Ok(data.freeze())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
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
        wsframe::apply_mask(&mut masked, mask);
        out.extend_from_slice(&masked);
        out
    }

    fn pair(limit: usize) -> (WsConn<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1 << 20);
        (WsConn::new(server, limit), client)
    }

    /// Everything the server wrote so far (waits briefly for it).
    async fn written(client: &mut DuplexStream) -> Vec<u8> {
        let mut out = vec![0; 4096];
        match tokio::time::timeout(Duration::from_millis(200), client.read(&mut out)).await {
            Ok(Ok(n)) => out.truncate(n),
            _ => out.clear(),
        }
        out
    }

    /// A stream of frames, fed to the connection split at every byte position, gives the
    /// same events as fed whole.
    #[tokio::test]
    async fn split_at_every_byte() {
        let mut stream = Vec::new();
        stream.extend(client_frame(true, 1, b"hello"));
        stream.extend(client_frame(false, 2, b"ab"));
        stream.extend(client_frame(true, 9, b"ping!"));
        stream.extend(client_frame(false, 0, b"cd"));
        stream.extend(client_frame(true, 0, b"e"));
        stream.extend(client_frame(true, 1, &[b'x'; 300]));
        stream.extend(client_frame(true, 2, b""));
        for cut in 0..=stream.len() {
            let (mut conn, mut client) = pair(1024);
            client.write_all(&stream[..cut]).await.unwrap();
            let mut events = Vec::new();
            let mut fed_rest = false;
            while events.len() < 4 {
                match tokio::time::timeout(Duration::from_millis(50), conn.next()).await {
                    Ok(event) => events.push(event),
                    Err(_) if !fed_rest => {
                        client.write_all(&stream[cut..]).await.unwrap();
                        fed_rest = true;
                    }
                    Err(_) => panic!("cut {cut}: stuck after {events:?}"),
                }
            }
            assert_eq!(
                events,
                vec![
                    WsEvent::Message(Bytes::from_static(b"hello")),
                    WsEvent::Message(Bytes::from_static(b"abcde")),
                    WsEvent::Message(Bytes::from(vec![b'x'; 300])),
                    WsEvent::Message(Bytes::new()),
                ],
                "cut {cut}"
            );
            // The ping was answered, unmasked.
            assert_eq!(written(&mut client).await, b"\x8a\x05ping!", "cut {cut}");
            // Idle again: nothing buffered.
            assert_eq!(conn.partial.capacity(), 0, "cut {cut}");
            assert_eq!(conn.out.capacity(), 0, "cut {cut}");
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_buffering_then_close_is_read() {
        let (mut conn, mut client) = pair(10);
        // Only the header of an 11-byte frame: refused before the payload exists.
        let frame = client_frame(true, 2, &[1; 11]);
        client.write_all(&frame[..2]).await.unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Refused(FrameError::TooBig { len: 11 })
        );
        // The payload is skipped; the client's close is still seen and answered.
        client.write_all(&frame[2..]).await.unwrap();
        client
            .write_all(&client_frame(true, 8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(conn.next().await, WsEvent::Closed);
        assert_eq!(written(&mut client).await, b"\x88\x02\x03\xe8");
        // A 2^62-byte frame is refused from its header alone.
        let (mut conn, mut client) = pair(1 << 16);
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        client.write_all(&header).await.unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Refused(FrameError::TooBig { len: 1 << 62 })
        );
        assert_eq!(conn.partial.capacity(), 0);
    }

    #[tokio::test]
    async fn fragmented_message_over_the_limit_is_refused_and_discarded() {
        let (mut conn, mut client) = pair(10);
        let mut stream = client_frame(false, 1, b"123456");
        stream.extend(client_frame(false, 0, b"789012"));
        stream.extend(client_frame(true, 0, b"345"));
        stream.extend(client_frame(true, 1, b"next"));
        client.write_all(&stream).await.unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Refused(FrameError::TooBig { len: 6 })
        );
        // The rest of the refused message is dropped; the next message arrives.
        assert_eq!(
            conn.next().await,
            WsEvent::Message(Bytes::from_static(b"next"))
        );
    }

    #[tokio::test]
    async fn protocol_errors_are_final() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0xC1, 0x80, 0, 0, 0, 0], FrameError::Reserved),
            (vec![0x83, 0x80, 0, 0, 0, 0], FrameError::UnknownOpcode(3)),
            (vec![0x81, 0x01, b'a'], FrameError::Unmasked),
            (client_frame(false, 9, b""), FrameError::BadControl),
            (client_frame(true, 0, b"orphan"), FrameError::Fragmentation),
            (
                [client_frame(false, 1, b"a"), client_frame(true, 2, b"b")].concat(),
                FrameError::Fragmentation,
            ),
            (client_frame(true, 1, b"\xff\xfe"), FrameError::Utf8),
            (
                [
                    client_frame(false, 1, b"\xe2\x82"),
                    client_frame(true, 0, b""),
                ]
                .concat(),
                FrameError::Utf8,
            ),
            (client_frame(true, 8, b"\x03"), FrameError::BadClose),
            (
                client_frame(true, 8, &1005u16.to_be_bytes()),
                FrameError::BadClose,
            ),
        ];
        for (bytes, expected) in cases {
            let (mut conn, mut client) = pair(1024);
            client.write_all(&bytes).await.unwrap();
            client
                .write_all(&client_frame(true, 1, b"more"))
                .await
                .unwrap();
            assert_eq!(conn.next().await, WsEvent::Refused(expected), "{bytes:?}");
            assert_eq!(conn.next().await, WsEvent::Closed, "{bytes:?}");
        }
        // A fragmented text message split inside a multi-byte character is fine.
        let (mut conn, mut client) = pair(1024);
        let mut stream = client_frame(false, 1, b"\xe2\x82");
        stream.extend(client_frame(true, 0, b"\xac"));
        client.write_all(&stream).await.unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Message(Bytes::from_static("€".as_bytes()))
        );
    }

    #[tokio::test]
    async fn server_close_handshake() {
        let (mut conn, mut client) = pair(1024);
        let closing = tokio::spawn(async move {
            conn.close(
                3501,
                "bad request",
                Duration::from_secs(1),
                Duration::from_secs(5),
            )
            .await;
            conn
        });
        let mut frame = [0u8; 15];
        client.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[..4], &[0x88, 13, 0x0D, 0xAD]);
        assert_eq!(&frame[4..], b"bad request");
        // Messages before the close reply are read and dropped; the reply ends the wait at
        // once and gets no second close.
        client
            .write_all(&client_frame(true, 1, b"late"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(true, 8, &3501u16.to_be_bytes()))
            .await
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .expect("close returns on the reply")
            .unwrap();
        drop(conn);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn sends_frames_and_releases_the_write_buffer() {
        let (mut conn, mut client) = pair(1024);
        conn.send(true, &[&b"{}"[..], b"{\"id\":1}"], b"\n")
            .await
            .unwrap();
        assert_eq!(conn.out.capacity(), 0);
        conn.feed(false, b"\x01\x02");
        conn.flush().await.unwrap();
        assert_eq!(
            written(&mut client).await,
            b"\x81\x0b{}\n{\"id\":1}\x82\x02\x01\x02"
        );
    }

    /// A vectored writer that takes at most `per_write` bytes per call and counts the calls.
    struct Trickle {
        per_write: usize,
        written: Vec<u8>,
        vectored_calls: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_write);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored_calls += 1;
            let mut left = self.per_write;
            for buf in bufs {
                let n = buf.len().min(left);
                self.written.extend_from_slice(&buf[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.per_write - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_go_out_straight_from_the_parts_and_partial_writes_keep_the_rest() {
        let parts = [&b"{}"[..], b"{\"id\":1}", b"[]"];
        let expected = b"\x81\x0e{}\n{\"id\":1}\n[]";
        // The socket takes everything at once: one vectored write, nothing buffered.
        let mut whole = WsConn::new(
            Trickle {
                per_write: 1 << 16,
                written: Vec::new(),
                vectored_calls: 0,
            },
            1024,
        );
        whole.send(true, &parts, b"\n").await.unwrap();
        assert_eq!(whole.io.vectored_calls, 1);
        assert_eq!(whole.io.written, expected);
        assert_eq!(whole.out.capacity(), 0);
        // Three bytes per write: the rest of the frame is copied and written in order,
        // and a control frame queued behind it follows it whole.
        let mut trickle = WsConn::new(
            Trickle {
                per_write: 3,
                written: Vec::new(),
                vectored_calls: 0,
            },
            1024,
        );
        trickle.send(true, &parts, b"\n").await.unwrap();
        assert_eq!(trickle.io.vectored_calls, 1);
        assert_eq!(trickle.io.written, expected);
        assert_eq!(trickle.out.capacity(), 0);
        trickle.send(false, &[b"\x01"], b"").await.unwrap();
        assert_eq!(trickle.io.written.len(), expected.len() + 3);
        assert_eq!(&trickle.io.written[expected.len()..], b"\x82\x01\x01");
    }

    #[tokio::test]
    async fn end_of_stream_and_pong_are_quiet() {
        let (mut conn, mut client) = pair(1024);
        client
            .write_all(&client_frame(true, 10, b"pong"))
            .await
            .unwrap();
        client
            .write_all(&client_frame(true, 2, b"x"))
            .await
            .unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Message(Bytes::from_static(b"x"))
        );
        drop(client);
        assert_eq!(conn.next().await, WsEvent::Closed);
    }

    /// A stock client (tokio-tungstenite): pings are answered, a large fragmented-by-the-
    /// client message arrives whole, and the client's close gets its close reply.
    #[tokio::test]
    async fn interoperates_with_tungstenite() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

        let (server, client) = duplex(1 << 16);
        let mut conn = WsConn::new(server, 1 << 20);
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let big = "z".repeat(100_000);
        let sending = tokio::spawn(async move {
            client
                .send(Message::Frame(WsFrame::message(
                    "€".as_bytes()[..1].to_vec(),
                    OpCode::Data(Data::Text),
                    false,
                )))
                .await
                .unwrap();
            client
                .send(Message::Ping(Bytes::from_static(b"p")))
                .await
                .unwrap();
            client
                .send(Message::Frame(WsFrame::message(
                    "€".as_bytes()[1..].to_vec(),
                    OpCode::Data(Data::Continue),
                    true,
                )))
                .await
                .unwrap();
            client
                .send(Message::text("z".repeat(100_000)))
                .await
                .unwrap();
            client
        });
        assert_eq!(conn.next().await, WsEvent::Message(Bytes::from("€")));
        assert_eq!(conn.next().await, WsEvent::Message(Bytes::from(big)));
        let mut client = sending.await.unwrap();
        conn.send(false, &[b"bin"], b"").await.unwrap();
        // The pong went out before the binary message.
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p"))
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"bin"))
        );
        client.close(None).await.unwrap();
        assert_eq!(conn.next().await, WsEvent::Closed);
        // The client sees our close reply and the end of the stream.
        assert!(matches!(
            client.next().await,
            Some(Ok(Message::Close(_))) | None
        ));
    }

    /// A client that floods pings and never reads cannot make the connection queue pongs:
    /// reading stops while a reply cannot be written.
    #[tokio::test]
    async fn ping_flood_without_reading_is_bounded() {
        let (server, mut client) = duplex(512);
        let mut conn = WsConn::new(server, 1024);
        let flood = tokio::spawn(async move {
            let ping = client_frame(true, 9, &[b'p'; 125]);
            for _ in 0..10_000 {
                if client.write_all(&ping).await.is_err() {
                    break;
                }
            }
            client
        });
        let waited = tokio::time::timeout(Duration::from_millis(300), conn.next()).await;
        assert!(waited.is_err(), "no message was sent: {waited:?}");
        assert!(conn.out.len() <= 2 * 127, "{} bytes queued", conn.out.len());
        assert!(
            !flood.is_finished(),
            "the flood should be stuck on a full pipe"
        );
        flood.abort();
    }

    /// A header announcing a large frame costs only the bytes that actually arrived.
    #[tokio::test]
    async fn announced_length_is_not_reserved() {
        let (mut conn, mut client) = pair(1 << 20);
        let frame = client_frame(true, 2, &vec![9; 1 << 19]);
        client.write_all(&frame[..100]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), conn.next()).await;
        assert!(waited.is_err());
        assert!(
            conn.partial.capacity() < 4096,
            "{}",
            conn.partial.capacity()
        );
        client.write_all(&frame[100..]).await.unwrap();
        assert_eq!(
            conn.next().await,
            WsEvent::Message(Bytes::from(vec![9; 1 << 19]))
        );
    }
}
