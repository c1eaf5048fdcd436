//! A server-side TLS byte stream over rustls's unbuffered API that holds no buffer while idle.
//!
//! rustls's buffered `ServerConnection` keeps a 4 KiB deframer buffer per connection once it
//! has read anything; with thousands of idle WebSockets that buffer is most of a connection's
//! cost. This stream instead:
//!
//! - reads what the socket has into one scratch buffer per worker thread and decrypts the
//!   complete records there; only an incomplete record's bytes are kept, in a right-sized
//!   per-connection buffer (at most one record, or one handshake message while handshaking:
//!   [`MAX_PENDING_INCOMING`]) until it completes, then freed;
//! - keeps decrypted bytes the reader has not taken yet (bounded by one read) and frees them
//!   once taken;
//! - encrypts at most [`MAX_WRITE_PLAINTEXT`] bytes per write into an outgoing buffer that is
//!   freed once the socket took it; a write waits until the previous one is on the socket;
//! - sends close_notify on shutdown and reports the peer's close_notify (or a clean TCP end
//!   between records) as end of stream; a TCP end inside a record is an error.
//!
//! The handshake runs in [`accept`] (the caller bounds it in time); ALPN, client certificates
//! and the certificate resolver are whatever the `rustls::ServerConfig` says.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TLS record header: content type, version, length.
const RECORD_HEADER: usize = 5;
/// Largest TLS record on the wire: header, 16 KiB of plaintext and the most expansion TLS 1.2
/// allows (TLS 1.3's is smaller).
pub const MAX_RECORD_BYTES: usize = RECORD_HEADER + 16 * 1024 + 2048;
/// Most ciphertext one connection keeps between reads: a handshake message as large as rustls
/// accepts (64 KiB, joined across records) plus one record. Past it the connection fails.
pub const MAX_PENDING_INCOMING: usize = 0xffff + MAX_RECORD_BYTES;
/// Bytes read from the socket at once, into the worker thread's scratch buffer (two full
/// records).
const READ_CHUNK: usize = 2 * MAX_RECORD_BYTES;
/// Most plaintext one write encrypts (one full record).
pub const MAX_WRITE_PLAINTEXT: usize = 16 * 1024;
/// Per-record ciphertext expansion assumed when sizing the outgoing buffer (a larger need is
/// retried with rustls's exact figure).
const RECORD_OVERHEAD_GUESS: usize = 32;

thread_local! {
    /// The worker thread's read buffer: nothing read stays here past one `poll_read`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// A TLS server connection over `IO` (a `TcpStream` in production) after its handshake.
pub struct TlsStream<IO> {
    io: IO,
    /// An incomplete record (or handshake message) waiting for its remaining bytes.
    pending: Pending,
    tls: Tls,
}

/// Ciphertext kept between reads: `buf[..filled]`, allocated to the size the record it holds
/// needs (zeroed once), empty and unallocated otherwise.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    filled: usize,
}

/// The connection state besides the socket and the pending ciphertext (split so that both
/// can be borrowed at once).
struct Tls {
    conn: UnbufferedServerConnection,
    /// Decrypted bytes not yet taken by the reader: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet on the socket: `outgoing[out_pos..]`.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify or ended the TCP stream: reads return end of stream.
    read_closed: bool,
    /// close_notify was queued: writes fail.
    write_closed: bool,
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Performs the server handshake on `io` under `config` and returns the stream. Handshake
/// buffers are dropped before it returns; the caller bounds how long it may take.
pub async fn accept<IO>(config: Arc<rustls::ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        pending: Pending::default(),
        tls: Tls {
            conn,
            plain: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            read_closed: false,
            write_closed: false,
        },
    };
    loop {
        if stream.tls.out_pos < stream.tls.outgoing.len() {
            poll_fn(|cx| stream.poll_send_outgoing(cx)).await?;
        }
        if !stream.tls.conn.is_handshaking() {
            break;
        }
        if stream.tls.read_closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let read = poll_fn(|cx| stream.poll_fill(cx, None)).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    stream.pending.shrink();
    Ok(stream)
}

impl<IO> TlsStream<IO> {
    /// The ALPN protocol the handshake settled on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.conn.alpn_protocol()
    }

    /// Bytes held for this connection beyond the rustls state (pending ciphertext, untaken
    /// plaintext, unsent ciphertext), by allocated capacity: what an idle connection costs.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.pending.buf.capacity() + self.tls.plain.capacity() + self.tls.outgoing.capacity()
    }
}

impl Pending {
    /// Bytes still missing before the last record in `buf[..filled]` is complete (a header
    /// counts as 5 missing bytes when nothing follows complete records), or an error for a
    /// record longer than TLS allows.
    fn missing(&self) -> io::Result<usize> {
        let bytes = &self.buf[..self.filled];
        let mut at = 0;
        loop {
            let rest = bytes.len() - at;
            if rest < RECORD_HEADER {
                return Ok(RECORD_HEADER - rest);
            }
            let length = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
            let record = RECORD_HEADER + length;
            if record > MAX_RECORD_BYTES {
                return Err(invalid("TLS record too large"));
            }
            if rest < record {
                return Ok(record - rest);
            }
            at += record;
        }
    }

    /// Keeps `bytes` (the unprocessed tail of a read) in a buffer of exactly their size.
    fn keep(&mut self, bytes: &[u8]) {
        self.buf = bytes.to_vec();
        self.filled = bytes.len();
    }

    /// Removes `count` processed bytes from the front; frees the buffer once nothing is left.
    fn discard(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.buf.copy_within(count..self.filled, 0);
        self.filled -= count;
        if self.filled == 0 {
            *self = Pending::default();
        }
    }

    /// Makes room for `extra` more bytes (reallocating to the exact size when needed).
    fn reserve(&mut self, extra: usize) -> io::Result<()> {
        let needed = self.filled + extra;
        if needed > MAX_PENDING_INCOMING {
            return Err(invalid("TLS handshake message too large"));
        }
        if needed > self.buf.len() {
            let mut grown = vec![0; needed];
            grown[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = grown;
        }
        Ok(())
    }

    /// Drops spare capacity (after the handshake).
    fn shrink(&mut self) {
        if self.filled == 0 {
            *self = Pending::default();
        } else {
            self.buf.truncate(self.filled);
            self.buf.shrink_to_fit();
        }
    }
}

/// Where decrypted bytes go: the reader's buffer first, the rest into `Tls::plain`.
struct Sink<'a, 'b> {
    out: Option<&'a mut ReadBuf<'b>>,
}

impl Tls {
    /// Processes the TLS records of `incoming`: handshake messages advance the connection,
    /// handshake output is queued in `outgoing`, application data goes to `sink`. Returns how
    /// many bytes of `incoming` are done with (the rest is an incomplete record).
    fn process(&mut self, incoming: &mut [u8], sink: &mut Sink<'_, '_>) -> io::Result<usize> {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[consumed..]);
            let mut done = false;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        let payload = record.payload;
                        let direct = match sink.out.as_mut() {
                            Some(out) => {
                                let n = payload.len().min(out.remaining());
                                out.put_slice(&payload[..n]);
                                n
                            }
                            None => 0,
                        };
                        if direct < payload.len() {
                            if self.plain_pos == self.plain.len() {
                                self.plain.clear();
                                self.plain_pos = 0;
                            }
                            self.plain.extend_from_slice(&payload[direct..]);
                        }
                    }
                }
                ConnectionState::EncodeTlsData(encode) => {
                    append_handshake(&mut self.outgoing, encode)?
                }
                // The bytes are in `outgoing`, which is sent before anything else.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.read_closed = true,
                ConnectionState::Closed => {
                    self.read_closed = true;
                    done = true;
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => done = true,
                // Early data is never enabled (`max_early_data_size` stays 0).
                _ => return Err(invalid("unexpected TLS state")),
            }
            consumed += discard;
            if done {
                return Ok(consumed);
            }
        }
    }

    /// Encrypts `data` (or close_notify when `data` is `None`) into `outgoing`, the rest of
    /// `incoming` (an incomplete record) left as it is but for `discard`s it reports.
    fn encrypt(&mut self, incoming: &mut Pending, data: Option<&[u8]>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut incoming.buf[..incoming.filled]);
            let mut done = false;
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let records = data.map_or(1, |d| d.len() / (16 * 1024) + 1);
                    let guess = data.map_or(0, <[u8]>::len) + records * RECORD_OVERHEAD_GUESS;
                    append(&mut self.outgoing, guess, |buf| {
                        let result = match data {
                            Some(data) => traffic.encrypt(data, buf),
                            None => traffic.queue_close_notify(buf),
                        };
                        match result {
                            Ok(n) => Ok(Ok(n)),
                            Err(EncryptError::InsufficientSize(size)) => Err(size.required_size),
                            Err(error) => Ok(Err(io::Error::other(error))),
                        }
                    })?;
                    done = true;
                }
                ConnectionState::EncodeTlsData(encode) => {
                    append_handshake(&mut self.outgoing, encode)?
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::ReadTraffic(mut traffic) => {
                    // Not reached (complete records never wait in `incoming`), kept correct.
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        self.plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::PeerClosed => self.read_closed = true,
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                ConnectionState::BlockedHandshake => {
                    return Err(io::ErrorKind::NotConnected.into());
                }
                _ => return Err(invalid("unexpected TLS state")),
            }
            incoming.discard(discard);
            if done {
                return Ok(());
            }
        }
    }
}

/// Appends a handshake message rustls has ready to `out`.
fn append_handshake(
    out: &mut Vec<u8>,
    mut encode: EncodeTlsData<'_, ServerConnectionData>,
) -> io::Result<()> {
    append(out, 0, |buf| match encode.encode(buf) {
        Ok(n) => Ok(Ok(n)),
        Err(EncodeError::InsufficientSize(size)) => Err(size.required_size),
        Err(EncodeError::AlreadyEncoded) => Ok(Err(invalid("TLS encode"))),
    })
}

/// Appends what `fill` writes to `out`: `fill` gets a zeroed region of `guess` bytes (or the
/// size it asks for with `Err(required)`), and returns how many it wrote.
fn append(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<io::Result<usize>, usize>,
) -> io::Result<()> {
    let start = out.len();
    let mut size = guess;
    loop {
        out.resize(start + size, 0);
        match fill(&mut out[start..]) {
            Ok(Ok(written)) => {
                out.truncate(start + written);
                return Ok(());
            }
            Ok(Err(error)) => {
                out.truncate(start);
                return Err(error);
            }
            Err(required) if required > size => size = required,
            Err(_) => {
                out.truncate(start);
                return Err(invalid("TLS output size"));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Reads what the socket has and processes it. Returns the socket bytes read (0: the TCP
    /// stream ended).
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        out: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<usize>> {
        let mut sink = Sink { out };
        if self.pending.filled == 0 {
            let (io, pending, tls) = (&mut self.io, &mut self.pending, &mut self.tls);
            return SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => fill_from_scratch(io, cx, &mut scratch, pending, tls, &mut sink),
                Err(_) => {
                    fill_from_scratch(io, cx, &mut vec![0; READ_CHUNK], pending, tls, &mut sink)
                }
            });
        }
        // Complete the pending record in place: read no more than it misses.
        let missing = self.pending.missing()?;
        self.pending.reserve(missing)?;
        let start = self.pending.filled;
        let mut buf = ReadBuf::new(&mut self.pending.buf[start..start + missing]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        if read == 0 {
            return Poll::Ready(Ok(0));
        }
        self.pending.filled += read;
        let filled = self.pending.filled;
        let consumed = self
            .tls
            .process(&mut self.pending.buf[..filled], &mut sink)?;
        self.pending.discard(consumed);
        if self.tls.read_closed {
            self.pending = Pending::default();
        }
        Poll::Ready(Ok(read))
    }

    /// Writes `outgoing` to the socket; frees it once all of it is there.
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.out_pos < self.tls.outgoing.len() {
            let written = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.tls.outgoing[self.tls.out_pos..])
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.out_pos += written;
        }
        self.tls.outgoing = Vec::new();
        self.tls.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends what the read side queued (key updates, alerts) if the socket takes it now.
    fn send_queued(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.tls.out_pos < self.tls.outgoing.len()
            && let Poll::Ready(Err(error)) = self.poll_send_outgoing(cx)
        {
            return Err(error);
        }
        Ok(())
    }
}

fn fill_from_scratch<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    pending: &mut Pending,
    tls: &mut Tls,
    sink: &mut Sink<'_, '_>,
) -> Poll<io::Result<usize>> {
    let mut buf = ReadBuf::new(scratch);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    let read = buf.filled().len();
    if read == 0 {
        return Poll::Ready(Ok(0));
    }
    let consumed = tls.process(&mut scratch[..read], sink)?;
    if consumed < read && !tls.read_closed {
        pending.keep(&scratch[consumed..read]);
    }
    Poll::Ready(Ok(read))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let tls = &mut this.tls;
            if tls.plain_pos < tls.plain.len() {
                let n = (tls.plain.len() - tls.plain_pos).min(buf.remaining());
                buf.put_slice(&tls.plain[tls.plain_pos..tls.plain_pos + n]);
                tls.plain_pos += n;
                if tls.plain_pos == tls.plain.len() {
                    tls.plain = Vec::new();
                    tls.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if tls.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let read = ready!(this.poll_fill(cx, Some(buf)))?;
            this.send_queued(cx)?;
            if read == 0 {
                if this.pending.filled > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TCP stream ended inside a TLS record",
                    )));
                }
                this.tls.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.tls.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE_PLAINTEXT)];
        this.tls.encrypt(&mut this.pending, Some(data))?;
        // The bytes are ours now; what the socket does not take yet goes before the next write.
        if let Poll::Ready(Err(error)) = this.poll_send_outgoing(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.write_closed {
            ready!(this.poll_send_outgoing(cx))?;
            this.tls.write_closed = true;
            // A connection rustls already closed has nothing more to say.
            if let Err(error) = this.tls.encrypt(&mut this.pending, None) {
                tracing::trace!(%error, "no close_notify");
            }
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use futures_util::FutureExt;
    use rustls::RootCertStore;
    use rustls_pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A rustls client driven by hand, so a test decides how its records reach the server.
    struct Client {
        io: DuplexStream,
        conn: rustls::ClientConnection,
    }

    impl Client {
        /// `data` encrypted, as the bytes the server will see (records of at most 16 KiB).
        fn seal(&mut self, data: &[u8]) -> Vec<u8> {
            self.conn.writer().write_all(data).unwrap();
            self.drain()
        }

        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out).unwrap();
            }
            out
        }

        /// Reads and decrypts until `len` bytes of plaintext arrived.
        async fn open(&mut self, len: usize) -> Vec<u8> {
            let mut plain = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            while plain.len() < len {
                let n = self.io.read(&mut buf).await.unwrap();
                assert!(n > 0, "server closed after {} bytes", plain.len());
                // `read_tls` takes at most what its buffer holds: feed the rest in turns.
                let mut wire = &buf[..n];
                while !wire.is_empty() {
                    self.conn.read_tls(&mut wire).unwrap();
                    self.conn.process_new_packets().unwrap();
                    let mut chunk = vec![0; 64 * 1024];
                    while let Ok(got) = self.conn.reader().read(&mut chunk) {
                        if got == 0 {
                            break;
                        }
                        plain.extend_from_slice(&chunk[..got]);
                    }
                }
            }
            plain
        }
    }

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        configs_for(rustls::DEFAULT_VERSIONS)
    }

    /// A server config and a client config trusting it, the client offering `versions`.
    fn configs_for(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), Arc::new(client))
    }

    async fn pair() -> (TlsStream<DuplexStream>, Client) {
        let (server_io, client_io) = tokio::io::duplex(256 * 1024);
        let (server_config, client_config) = configs();
        let server = tokio::spawn(accept(server_config, server_io));
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), client_io)
            .await
            .unwrap();
        let (io, conn) = client.into_inner();
        let server = server.await.unwrap().unwrap();
        (server, Client { io, conn })
    }

    #[tokio::test]
    async fn tls12_clients_are_served_both_ways() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (server_config, client_config) = configs_for(&[&rustls::version::TLS12]);
        let server = tokio::spawn(accept(server_config, server_io));
        let mut client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), client_io)
            .await
            .unwrap();
        let mut server = server.await.unwrap().unwrap();
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        client.write_all(b"ping over 1.2").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping over 1.2");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert_eq!(server.buffered_capacity(), 0);
    }

    /// What a connection holds besides rustls's state and the socket: the pending ciphertext,
    /// untaken plaintext and unsent ciphertext handles, their positions and two flags.
    #[test]
    fn the_stream_adds_little_to_rustls_and_the_socket() {
        let total = std::mem::size_of::<TlsStream<tokio::net::TcpStream>>();
        let rustls = std::mem::size_of::<UnbufferedServerConnection>();
        let socket = std::mem::size_of::<tokio::net::TcpStream>();
        assert!(
            total - rustls - socket <= 112,
            "TlsStream {total} B, rustls {rustls} B, socket {socket} B"
        );
    }

    #[tokio::test]
    async fn handshake_settles_alpn_and_keeps_no_buffer() {
        let (server, _client) = pair().await;
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn a_record_split_across_reads_costs_at_most_its_own_size() {
        let (mut server, mut client) = pair().await;
        let wire = client.seal(b"hello, split world");
        let mut buf = [0u8; 64];
        for (i, byte) in wire[..wire.len() - 1].iter().enumerate() {
            client.io.write_all(&[*byte]).await.unwrap();
            assert!(server.read(&mut buf).now_or_never().is_none(), "byte {i}");
            assert_eq!(server.pending.filled, i + 1);
            assert!(server.buffered_capacity() <= wire.len(), "byte {i}");
        }
        client.io.write_all(&wire[wire.len() - 1..]).await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello, split world");
        assert_eq!(server.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn several_records_in_one_read() {
        let (mut server, mut client) = pair().await;
        let mut wire = Vec::new();
        for part in [&b"one "[..], b"two ", b"three"] {
            wire.extend(client.seal(part));
        }
        client.io.write_all(&wire).await.unwrap();
        let mut got = vec![0; b"one two three".len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
        assert_eq!(server.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn full_size_records_reach_a_small_reader_intact() {
        let (mut server, mut client) = pair().await;
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let wire = client.seal(&data);
        // The first record is a full 16 KiB one, sent in two pieces.
        client.io.write_all(&wire[..100]).await.unwrap();
        let mut small = [0u8; 1000];
        assert!(server.read(&mut small).now_or_never().is_none());
        client.io.write_all(&wire[100..]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            let n = server.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(server.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn writes_arrive_and_leave_no_buffer() {
        let (mut server, mut client) = pair().await;
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        server.write_all(&data).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(server.buffered_capacity(), 0);
        assert_eq!(client.open(data.len()).await, data);
    }

    #[tokio::test]
    async fn garbage_is_a_clean_error() {
        let (mut server, mut client) = pair().await;
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0xAB; 32]);
        client.io.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[tokio::test]
    async fn an_oversized_record_header_is_refused_before_its_body() {
        let (mut server, mut client) = pair().await;
        client.io.write_all(&[0x17, 0x03]).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).now_or_never().is_none());
        client.io.write_all(&[0x03, 0xFF, 0xFF]).await.unwrap();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[tokio::test]
    async fn plain_http_instead_of_a_handshake_fails() {
        let (server_io, mut client_io) = tokio::io::duplex(4096);
        let (server_config, _) = configs();
        let server = tokio::spawn(accept(server_config, server_io));
        client_io
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn close_notify_both_ways() {
        let (mut server, mut client) = pair().await;
        // The client's close_notify is the end of the stream.
        client.conn.send_close_notify();
        let wire = client.drain();
        client.io.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        // The server's shutdown sends close_notify.
        server.shutdown().await.unwrap();
        let mut raw = Vec::new();
        client.io.read_to_end(&mut raw).await.unwrap();
        client.conn.read_tls(&mut &raw[..]).unwrap();
        let state = client.conn.process_new_packets().unwrap();
        assert!(state.peer_has_closed());
    }

    #[tokio::test]
    async fn tcp_end_inside_a_record_is_an_error_and_between_records_is_eof() {
        let (mut server, mut client) = pair().await;
        let wire = client.seal(b"cut short");
        client.io.write_all(&wire[..wire.len() - 3]).await.unwrap();
        drop(client);
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);

        let (mut server, client) = pair().await;
        drop(client);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
