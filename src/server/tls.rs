//! The TLS acceptor (rustls through tokio-rustls) of any listener. What it serves — the
//! certificate resolver, ALPN, client authentication — is decided by the caller's
//! `rustls::ServerConfig` (the client listener's swappable certificate lives in `edge::tls`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Acceptor;

/// Longest a TLS handshake may take, whatever deadline the caller gives.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes under one server config (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl TlsAcceptor {
    /// An acceptor for `config`; a resolver in it keeps serving whatever it currently holds
    /// (certificate swaps reach new handshakes).
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl Acceptor for TlsAcceptor {
    type Stream = TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Stream> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.accept(stream))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    fn negotiated_http1(&self, stream: &Self::Stream) -> bool {
        stream.get_ref().1.alpn_protocol() == Some(b"http/1.1")
    }
}
