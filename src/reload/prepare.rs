//! The pure half of a reload: [`prepare`] compares a candidate config (and the bytes read
//! for it beforehand) with the config in force and builds every new part, or rejects it.
//! It does no I/O and swaps nothing, so a rejection leaves everything as it was; the
//! runtime's `commit` then swaps the prepared parts and cannot fail.
//!
//! Which keys need a restart is derived in one place, [`RESTART_ONLY`], compared against the
//! config the process started with (what its listeners and engine were built from); a unit
//! test checks that every key of the schema is classified.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use thiserror::Error;
use tracing_subscriber::EnvFilter;

use crate::config::{BackendConfig, Config, ConfigError, HubConfig};
use crate::edge::origin::OriginPolicy;
use crate::edge::tls::{CertResolver, TlsError};
use crate::passthrough::{Backend, BackendError};

/// Why a candidate config was not applied (the config in force stays, untouched).
#[derive(Debug, Error)]
pub enum Rejection {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The config did not parse or validate (the message names the dotted fields).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate or key could not be read or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The passthrough backend could not be built (the message names the field).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The load step did not provide a part this config needs (it was read for another
    /// config in force); the next attempt reads it.
    #[error("{0}: not loaded for this config")]
    NotLoaded(&'static str),
}

/// A parsed, validated config and what was read from disk for it (by the blocking load step).
pub struct Candidate {
    /// The new config (from `Config::from_yaml`, so validated; secret files already read).
    /// Crate-private, like the other fields: only the load step makes candidates.
    pub(crate) config: Config,
    /// PEM bytes of `tls.cert_file` and `tls.key_file`, when `tls` is set.
    pub(crate) tls_pem: Option<TlsPem>,
    /// The backend client built for `backend`, with the section it was built from; only
    /// present when that section differs from the one in force at load time (building one
    /// reads CA files).
    pub(crate) backend: Option<(BackendConfig, Backend)>,
}

/// Certificate chain and private key, PEM, as read from the files `tls` names. Its `Debug`
/// shows sizes only (the key is a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// `tls.cert_file` content.
    pub cert: Vec<u8>,
    /// `tls.key_file` content.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .finish()
    }
}

/// The state a candidate is compared with.
pub struct Current<'a> {
    /// The config the process started with: listeners, TLS on/off, engine, log format.
    pub started: &'a Config,
    /// The config in force.
    pub config: &'a Config,
    /// The client listener's certificate resolver, when TLS is on.
    pub tls: Option<&'a CertResolver>,
}

/// What happens to the passthrough backend on commit.
pub enum BackendPlan {
    /// Keep the backend in force (its section did not change).
    Keep,
    /// Replace it (`None`: the section was removed).
    Replace(Option<Backend>),
}

/// The new settings of a changed config, ready to swap in.
pub struct SettingsPlan {
    /// The config to put in force.
    pub config: Arc<Config>,
    /// Its compiled `allowed_origins`.
    pub origins: OriginPolicy,
    /// The passthrough backend.
    pub backend: BackendPlan,
    /// `upstream` changed: new sessions get a new Link, the old one is retired.
    pub relink: bool,
    /// Dotted keys that changed but only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Everything a commit swaps in; built completely before anything changes.
pub struct Prepared {
    /// A certificate to serve (the files may have rotated even when the config did not).
    pub certificate: Option<Arc<CertifiedKey>>,
    /// A new log filter, when `log.level` changed.
    pub log_filter: Option<EnvFilter>,
    /// New hub settings, when `hub` changed.
    pub hub: Option<HubConfig>,
    /// New edge settings; `None` when the config equals the one in force.
    pub settings: Option<SettingsPlan>,
}

/// Tells whether a restart-only key differs between the started config and a candidate.
type Differs = fn(&Config, &Config) -> bool;

/// Keys that only take effect at start, each with its comparison: the listeners are bound,
/// the TLS acceptor made (its certificate files do reload), the log format installed, the
/// connection caps given to the accept loop and the engine opened, once.
pub const RESTART_ONLY: &[(&str, Differs)] = &[
    ("listen", |a, b| a.listen != b.listen),
    ("admin_listen", |a, b| a.admin_listen != b.admin_listen),
    ("tls", |a, b| a.tls.is_some() != b.tls.is_some()),
    ("log.format", |a, b| a.log.format != b.log.format),
    ("max_connections", |a, b| {
        a.max_connections != b.max_connections
    }),
    ("max_connections_per_ip", |a, b| {
        a.max_connections_per_ip != b.max_connections_per_ip
    }),
    ("engine", |a, b| a.engine != b.engine),
];

/// Keys (or whole sections) a reload applies to new work at once; with [`RESTART_ONLY`]
/// they cover every key of the schema (unit-tested), so a new key must be classified.
pub const LIVE: &[&str] = &[
    "allowed_origins",
    "websocket",
    "websocket_path",
    "http_stream",
    "http_stream_path",
    "http_stream_max_request_body_size",
    "sse",
    "sse_path",
    "sse_max_request_body_size",
    "emulation_path",
    "emulation_max_request_body_size",
    "message_size_limit",
    "websocket_read_buffer_size",
    "ping_interval",
    "pong_timeout",
    "stale_close_delay",
    "queue_max_size",
    "write_timeout",
    "forward_headers",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
    "shutdown",
    "backend",
    "upstream",
    "hub",
    "log.level",
    "client_handshake_timeout",
    "client_idle_timeout",
    "request_body_timeout",
    "http2_keepalive_interval",
    "http2_keepalive_timeout",
    "uni_websocket",
    "uni_websocket_path",
    "uni_websocket_message_size_limit",
    "uni_http_stream",
    "uni_http_stream_path",
    "uni_http_stream_max_request_body_size",
    "uni_sse",
    "uni_sse_path",
    "uni_sse_max_request_body_size",
];

/// The restart-only keys whose value in `candidate` differs from the started config.
pub fn restart_required(started: &Config, candidate: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|(_, differs)| differs(started, candidate))
        .map(|(key, _)| *key)
        .collect()
}

/// Builds every part `candidate` changes, or rejects it. Pure: no I/O, nothing swapped.
pub fn prepare(current: &Current<'_>, candidate: Candidate) -> Result<Prepared, Rejection> {
    let Candidate {
        config,
        tls_pem,
        backend,
    } = candidate;
    // The certificate is rebuilt on every attempt: its files may rotate under an unchanged
    // config. Without a resolver (TLS off at start) there is nothing to serve it with.
    let certificate = match (current.tls, &config.tls) {
        (Some(resolver), Some(tls)) => {
            let pem = tls_pem.ok_or(Rejection::NotLoaded("tls.cert_file"))?;
            Some(resolver.parse(tls, &pem.cert, &pem.key)?)
        }
        _ => None,
    };
    if config == *current.config {
        return Ok(Prepared {
            certificate,
            log_filter: None,
            hub: None,
            settings: None,
        });
    }
    let backend = if config.backend == current.config.backend {
        BackendPlan::Keep
    } else {
        match (&config.backend, backend) {
            (None, _) => BackendPlan::Replace(None),
            (Some(wanted), Some((built_for, built))) if *wanted == built_for => {
                BackendPlan::Replace(Some(built))
            }
            (Some(_), _) => return Err(Rejection::NotLoaded("backend")),
        }
    };
    let log_filter =
        (config.log.level != current.config.log.level).then(|| config.log.level.filter());
    let hub = (config.hub != current.config.hub).then(|| config.hub.clone());
    let settings = SettingsPlan {
        origins: OriginPolicy::new(&config.allowed_origins),
        backend,
        relink: config.upstream != current.config.upstream,
        restart_required: restart_required(current.started, &config),
        config: Arc::new(config),
    };
    Ok(Prepared {
        certificate,
        log_filter,
        hub,
        settings: Some(settings),
    })
}

#[cfg(test)]
mod tests;
