//! The TLS acceptor (rustls's unbuffered API, through [`super::tls_stream`]) of any listener. What it serves — the
//! certificate resolver, ALPN, client authentication — is decided by the caller's
//! `rustls::ServerConfig` (the client listener's swappable certificate lives in `edge::tls`).

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;
use tokio::net::TcpStream;

use super::tls_stream::{self, TlsStream};

use super::Acceptor;

/// Longest a TLS handshake may take, whatever deadline the caller gives.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a CA file gave no trust roots (the caller names the config field).
#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct CaError {
    /// The file.
    pub path: String,
    /// What was wrong with it.
    pub reason: String,
}

/// The one CA loader: every PEM certificate of `path` as trust roots (client certificates of
/// the hub's Link listener, `https` backends, the Link's upstream). A file that cannot be read,
/// holds a malformed PEM block or a certificate rustls refuses, or holds no certificate at all,
/// is an error.
pub fn load_ca_roots(path: &str) -> Result<rustls::RootCertStore, CaError> {
    let error = |reason: String| CaError {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(e.to_string()))?;
        roots.add(cert).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate".to_owned()));
    }
    Ok(roots)
}

/// TLS handshakes under one server config (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<rustls::ServerConfig>,
}

impl TlsAcceptor {
    /// An acceptor for `config`; a resolver in it keeps serving whatever it currently holds
    /// (certificate swaps reach new handshakes).
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
        TlsAcceptor { config }
    }
}

impl Acceptor for TlsAcceptor {
    type Stream = TlsStream<TcpStream>;

    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Stream> {
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tls_stream::accept(self.config.clone(), stream),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    fn negotiated_http1(&self, stream: &Self::Stream) -> bool {
        stream.alpn_protocol() == Some(b"http/1.1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_without_a_usable_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = load_ca_roots(missing.to_str().unwrap()).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = load_ca_roots(empty.to_str().unwrap()).unwrap_err();
        assert_eq!(error.reason, "no certificate");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(load_ca_roots(good.to_str().unwrap()).unwrap().len(), 1);
    }
}
