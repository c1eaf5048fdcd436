//! `wss://` for the load generator: a client stream that is plain TCP or TLS over TCP, and
//! the rustls client config trusting the PEM certificate(s) given with `--ca-file` (a test
//! certificate for 127.0.0.1; loopback only, like every target).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A client connection: plain TCP or TLS over TCP.
pub enum BenchStream {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://` (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

/// The TLS side of a `wss://` target.
#[derive(Clone)]
pub struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.name)
    }
}

impl TlsTarget {
    /// Trusts the certificates in `ca_file` for server name `host` (an IP literal here).
    pub fn new(ca_file: &Path, host: &str) -> Result<TlsTarget> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?
        {
            roots.add(cert.context("bad PEM certificate")?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned()).map_err(|e| anyhow!("{host}: {e}"))?;
        Ok(TlsTarget {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// TLS handshake over `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> Result<BenchStream> {
        let tls = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .context("tls handshake")?;
        Ok(BenchStream::Tls(Box::new(tls)))
    }
}

impl AsyncRead for BenchStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BenchStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
