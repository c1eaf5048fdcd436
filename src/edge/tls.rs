//! TLS on the client listener (rustls, aws-lc-rs provider): HTTP/2 and HTTP/1.1 via ALPN, and a
//! certificate that can be swapped while running (new handshakes get the new one; live
//! connections keep theirs).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::config::TlsConfig;
pub use crate::server::tls::TlsAcceptor;

/// Why a certificate could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("tls.cert_file {path}: {reason}")]
    Cert {
        /// File.
        path: String,
        /// Problem.
        reason: String,
    },
    /// The key file could not be read, or the key does not match the certificate.
    #[error("tls.key_file {path}: {reason}")]
    Key {
        /// File.
        path: String,
        /// Problem.
        reason: String,
    },
    /// The client CA file (`hub.tls.client_ca_file`) could not be used.
    #[error("hub.tls.client_ca_file {path}: {reason}")]
    ClientCa {
        /// File.
        path: String,
        /// Problem.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate currently served; swap it with [`CertResolver::reload`].
pub struct CertResolver {
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

fn load(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|iter| iter.collect())
        .map_err(|e| TlsError::Cert {
            path: config.cert_file.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: config.cert_file.clone(),
            reason: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| TlsError::Key {
        path: config.key_file.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Key {
        path: config.key_file.clone(),
        reason: e.to_string(),
    })
}

impl CertResolver {
    /// Loads the configured certificate and key.
    pub fn new(config: &TlsConfig) -> Result<Arc<CertResolver>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = load(config, &provider)?;
        Ok(Arc::new(CertResolver {
            provider,
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Reads the files again; on error the current certificate stays.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let key = load(config, &self.provider)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// Builds a certificate from PEM bytes read beforehand (no I/O, nothing swapped); the
    /// paths of `config` only name the files in errors. Used by the reload's `prepare` step.
    pub fn parse(
        &self,
        config: &TlsConfig,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let cert_error = |reason: String| TlsError::Cert {
            path: config.cert_file.clone(),
            reason,
        };
        let key_error = |reason: String| TlsError::Key {
            path: config.key_file.clone(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| cert_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(cert_error("no certificate found".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_error(e.to_string()))?;
        CertifiedKey::from_der(certs, key, &self.provider)
            .map(Arc::new)
            .map_err(|e| key_error(e.to_string()))
    }

    /// The certificate new handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Serves `key` to new handshakes from now on (cannot fail; live connections keep theirs).
    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// A rustls server config using this resolver, with ALPN `h2` and `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        self.config_on(self.provider.clone())
    }

    /// [`CertResolver::server_config`] whose TLS 1.3 suites keep record keys unexpanded
    /// between records (`server::tls_keys`): ~1.1 KiB less per connection, one key expansion
    /// more per record. For the client listener, which holds many mostly idle connections.
    pub fn client_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        self.config_on(crate::server::tls_keys::compact_provider(&self.provider))
    }

    fn config_on(
        self: &Arc<Self>,
        provider: Arc<CryptoProvider>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl CertResolver {
    /// Like [`CertResolver::server_config`], but clients must present a certificate signed by
    /// a CA of `client_ca_file` (PEM): mutual TLS for the hub's Link listener.
    pub fn server_config_with_client_ca(
        self: &Arc<Self>,
        client_ca_file: &str,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let ca_error = |reason: String| TlsError::ClientCa {
            path: client_ca_file.to_owned(),
            reason,
        };
        let roots = crate::server::tls::load_ca_roots(client_ca_file)
            .map_err(|error| ca_error(error.reason))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertResolver {
    /// A TLS acceptor serving this resolver's current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::new(Arc::new(self.server_config()?)))
    }

    /// The client listener's TLS acceptor: [`CertResolver::client_listener_config`].
    pub fn client_acceptor(
        self: &Arc<Self>,
        compact_record_keys: bool,
    ) -> Result<TlsAcceptor, TlsError> {
        let config = self.client_listener_config(compact_record_keys)?;
        Ok(TlsAcceptor::new(Arc::new(config)))
    }

    /// The client listener's config: [`CertResolver::client_server_config`] when
    /// `compact_record_keys` (`tls.compact_record_keys`), else [`CertResolver::server_config`].
    pub fn client_listener_config(
        self: &Arc<Self>,
        compact_record_keys: bool,
    ) -> Result<rustls::ServerConfig, TlsError> {
        if compact_record_keys {
            self.client_server_config()
        } else {
            self.server_config()
        }
    }

    /// A TLS acceptor that also requires a client certificate signed by `client_ca_file`.
    pub fn acceptor_with_client_ca(
        self: &Arc<Self>,
        client_ca_file: &str,
    ) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::new(Arc::new(
            self.server_config_with_client_ca(client_ca_file)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::SupportedCipherSuite;

    /// The TLS 1.3 suites of `config`, each paired with whether it is the stock aws-lc-rs one.
    fn tls13_stock(config: &rustls::ServerConfig) -> Vec<(rustls::CipherSuite, bool)> {
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        config
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter_map(|suite| match suite {
                SupportedCipherSuite::Tls13(mine) => {
                    let is_stock = stock.cipher_suites.iter().any(|theirs| {
                        matches!(theirs, SupportedCipherSuite::Tls13(t) if std::ptr::eq(*t, *mine))
                    });
                    Some((mine.common.suite, is_stock))
                }
                SupportedCipherSuite::Tls12(_) => None,
            })
            .collect()
    }

    #[test]
    fn only_the_client_listener_keeps_record_keys_compact() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = TlsConfig {
            cert_file: dir.path().join("tls.crt").display().to_string(),
            key_file: dir.path().join("tls.key").display().to_string(),
            client_ca_file: None,
            compact_record_keys: None,
        };
        std::fs::write(&config.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&config.key_file, cert.signing_key.serialize_pem()).unwrap();
        let resolver = CertResolver::new(&config).unwrap();
        let client = tls13_stock(&resolver.client_listener_config(true).unwrap());
        let link = tls13_stock(&resolver.server_config().unwrap());
        assert_eq!(client.len(), 3, "{client:?}");
        assert!(client.iter().all(|(_, stock)| !stock), "{client:?}");
        assert_eq!(link.len(), 3, "{link:?}");
        assert!(link.iter().all(|(_, stock)| *stock), "{link:?}");
        // `tls.compact_record_keys: false`: the client listener keeps rustls's own suites.
        let switched_off = tls13_stock(&resolver.client_listener_config(false).unwrap());
        assert_eq!(switched_off, link);
    }
}
