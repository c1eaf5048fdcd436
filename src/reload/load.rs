//! The blocking half of a reload: reads the config file, the secret files it names and the
//! TLS certificate and key, parses the config and builds a changed backend (which reads its
//! CA file). Runs on a blocking thread (`spawn_blocking`), never on an async worker.
//!
//! Guarantee: the fingerprint covers every file read, and each file is read for the
//! fingerprint no later than it is read for the config, so a file that changes during the
//! attempt changes the next fingerprint and is read again.

use std::path::{Path, PathBuf};

use super::prepare::{Candidate, Rejection, TlsPem};
use crate::config::{Config, sources};
use crate::edge::tls::TlsError;
use crate::passthrough::Backend;

/// One read of the reload inputs.
pub struct Attempt {
    /// The bytes of every input file (config, secrets, certificate, key), each length-prefixed:
    /// equal fingerprints mean equal inputs.
    pub fingerprint: Vec<u8>,
    /// The files to watch for this config (their directories are watched).
    pub files: Vec<PathBuf>,
    /// The parsed candidate, or why there is none.
    pub candidate: Result<Candidate, Rejection>,
}

/// Appends `bytes` (or a marker for an unreadable file) to `fingerprint`.
fn fold(fingerprint: &mut Vec<u8>, read: &std::io::Result<Vec<u8>>) {
    match read {
        Ok(bytes) => {
            fingerprint.push(1);
            fingerprint.extend((bytes.len() as u64).to_le_bytes());
            fingerprint.extend(bytes);
        }
        Err(_) => fingerprint.push(0),
    }
}

/// Reads the inputs of the config at `path`; `base` is the config in force (a backend is only
/// built when its section differs).
pub fn read(path: &Path, base: &Config) -> Attempt {
    let mut fingerprint = Vec::new();
    let mut files = vec![path.to_path_buf()];
    let bytes = std::fs::read(path);
    fold(&mut fingerprint, &bytes);
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(source) => {
            return Attempt {
                fingerprint,
                files,
                candidate: Err(Rejection::Read {
                    path: path.display().to_string(),
                    source,
                }),
            };
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    // Secret files are read for the fingerprint before the parse reads them for the config.
    for file in sources::secret_files(&text) {
        fold(&mut fingerprint, &std::fs::read(&file));
        files.push(file);
    }
    let candidate = candidate(&text, base, &mut fingerprint, &mut files);
    Attempt {
        fingerprint,
        files,
        candidate,
    }
}

fn candidate(
    text: &str,
    base: &Config,
    fingerprint: &mut Vec<u8>,
    files: &mut Vec<PathBuf>,
) -> Result<Candidate, Rejection> {
    let config = Config::from_yaml(text)?;
    let tls_pem = match &config.tls {
        Some(tls) => {
            let cert = std::fs::read(&tls.cert_file);
            let key = std::fs::read(&tls.key_file);
            fold(fingerprint, &cert);
            fold(fingerprint, &key);
            files.push(PathBuf::from(&tls.cert_file));
            files.push(PathBuf::from(&tls.key_file));
            let cert = cert.map_err(|e| TlsError::Cert {
                path: tls.cert_file.clone(),
                reason: e.to_string(),
            })?;
            let key = key.map_err(|e| TlsError::Key {
                path: tls.key_file.clone(),
                reason: e.to_string(),
            })?;
            Some(TlsPem { cert, key })
        }
        None => None,
    };
    let backend = match &config.backend {
        Some(section) if config.backend != base.backend => {
            Some((section.clone(), Backend::new(section)?))
        }
        _ => None,
    };
    Ok(Candidate {
        config,
        tls_pem,
        backend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate named by the config but not there yet: the attempt is rejected, watches
    /// the certificate's path, and its fingerprint changes once the file appears (so the
    /// loop tries again).
    #[test]
    fn a_missing_certificate_rejects_and_its_arrival_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let config = dir.path().join("sidewire.yaml");
        std::fs::write(
            &config,
            format!(
                "tls:\n  cert_file: {:?}\n  key_file: {:?}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let base = Config::default();
        let first = read(&config, &base);
        assert!(
            matches!(first.candidate, Err(Rejection::Tls(TlsError::Cert { .. }))),
            "missing certificate"
        );
        assert_eq!(first.files, [config.clone(), cert.clone(), key.clone()]);
        assert_eq!(
            read(&config, &base).fingerprint,
            first.fingerprint,
            "stable"
        );

        let pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let certificate = params.self_signed(&pair).unwrap();
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key, pair.serialize_pem()).unwrap();
        let second = read(&config, &base);
        assert_ne!(second.fingerprint, first.fingerprint);
        let candidate = second
            .candidate
            .unwrap_or_else(|e| panic!("certificate read: {e}"));
        let pem = candidate.tls_pem.expect("PEM bytes");
        assert_eq!(pem.cert, certificate.pem().into_bytes());
    }

    #[test]
    fn secret_files_are_part_of_the_fingerprint_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("api-key");
        let config = dir.path().join("sidewire.yaml");
        std::fs::write(&secret, "one\n").unwrap();
        std::fs::write(
            &config,
            format!("hub:\n  http_api:\n    key_file: {:?}\n", secret.display()),
        )
        .unwrap();
        let base = Config::default();
        let first = read(&config, &base);
        assert!(first.files.contains(&secret), "{:?}", first.files);
        let loaded = first
            .candidate
            .unwrap_or_else(|e| panic!("valid config: {e}"));
        assert_eq!(loaded.config.hub.http_api.key.as_deref(), Some("one"));
        std::fs::write(&secret, "two\n").unwrap();
        assert_ne!(read(&config, &base).fingerprint, first.fingerprint);
    }

    #[test]
    fn an_unreadable_config_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.yaml");
        let attempt = read(&path, &Config::default());
        let error = attempt.candidate.err().expect("rejected").to_string();
        assert!(error.contains("absent.yaml"), "{error}");
    }

    /// A backend is built only when its section changes (building one reads its CA file).
    #[tokio::test]
    async fn a_backend_is_built_only_for_a_changed_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidewire.yaml");
        std::fs::write(&path, "backend:\n  url: \"http://127.0.0.1:9\"\n").unwrap();
        let fresh = read(&path, &Config::default()).candidate.ok().unwrap();
        assert!(fresh.backend.is_some());
        let same = read(&path, &fresh.config).candidate.ok().unwrap();
        assert!(same.backend.is_none());
    }
}
