//! Opening one Link stream: over gRPC to an external upstream, or in-process to the embedded
//! hub. Both carry the same `SidecarFrame` / `UpstreamFrame` messages, so sessions take one
//! path whatever the upstream is.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use thiserror::Error;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::member::Connector;
use super::uplink::UplinkFrames;
use crate::config::{UpstreamConfig, valid_token};
use crate::linkproto::UpstreamFrame;
use crate::linkproto::link_client::LinkClient;

/// Frames from the upstream; an error or the end of the stream ends the Link stream.
pub type Downstream = Pin<Box<dyn Stream<Item = Result<UpstreamFrame, tonic::Status>> + Send>>;

/// Why a Link stream could not be opened.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint URL is invalid.
    #[error("invalid upstream endpoint: {0}")]
    Endpoint(String),
    /// TCP or HTTP/2 connection failed.
    #[error("cannot reach upstream: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The upstream refused the stream.
    #[error("upstream refused the stream: {0}")]
    Status(#[from] tonic::Status),
    /// The upstream did not answer in time.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The Link token could not be read or is not usable as a bearer token.
    #[error("upstream token: {0}")]
    Token(String),
}

/// Time an in-process upstream has to open a stream and send its welcome.
pub const EMBEDDED_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Link goes.
#[derive(Clone)]
pub enum Upstream {
    /// An upstream in this process (the embedded hub, wired by `app`).
    Embedded(Arc<dyn Connector>),
    /// An external upstream speaking `sidewire.v1.Link` over gRPC.
    Grpc(Box<UpstreamConfig>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Embedded(_) => f.write_str("embedded"),
            Upstream::Grpc(config) => write!(f, "{}", config.endpoint),
        }
    }
}

impl Upstream {
    /// Time allowed to open a stream and receive the welcome.
    pub fn connect_timeout(&self) -> Duration {
        match self {
            Upstream::Embedded(_) => EMBEDDED_CONNECT_TIMEOUT,
            Upstream::Grpc(config) => *config.connect_timeout,
        }
    }

    /// Opens one stream whose request side is fed by `uplink`.
    pub async fn open(&self, uplink: UplinkFrames) -> Result<Downstream, ConnectError> {
        match self {
            Upstream::Embedded(connector) => connector.open(uplink),
            Upstream::Grpc(config) => {
                let mut endpoint = Endpoint::from_shared(config.endpoint.as_str().to_owned())
                    .map_err(|e| ConnectError::Endpoint(e.to_string()))?;
                if config.endpoint.is_https() {
                    endpoint = endpoint.tls_config(tls_config(config)?)?;
                }
                let mut endpoint = endpoint
                    .connect_timeout(*config.connect_timeout)
                    .tcp_nodelay(true);
                if !config.keepalive_interval.is_zero() {
                    endpoint = endpoint
                        .http2_keep_alive_interval(*config.keepalive_interval)
                        .keep_alive_timeout(*config.keepalive_timeout)
                        .keep_alive_while_idle(true);
                }
                let channel = endpoint.connect().await?;
                let mut client = LinkClient::new(channel)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024);
                let mut request = tonic::Request::new(uplink);
                if let Some(token) = bearer_token(config)? {
                    let value = MetadataValue::try_from(format!("Bearer {token}"))
                        .map_err(|_| ConnectError::Token("not valid in a header".to_owned()))?;
                    request.metadata_mut().insert("authorization", value);
                }
                let response = client.multiplex(request).await?;
                Ok(response.into_inner().boxed())
            }
        }
    }
}

/// TLS for an `https://` upstream: `tls_ca_file` or the system roots, `tls_domain` if set.
fn tls_config(config: &UpstreamConfig) -> Result<ClientTlsConfig, ConnectError> {
    let mut tls = ClientTlsConfig::new();
    match &config.tls_ca_file {
        Some(path) => {
            // tonic takes the PEM itself; the shared loader checks it first, so a file without
            // a usable certificate fails here, by name, not at the first handshake.
            crate::server::tls::load_ca_roots(path)
                .map_err(|error| ConnectError::Endpoint(format!("upstream.tls_ca_file {error}")))?;
            let pem = std::fs::read(path)
                .map_err(|e| ConnectError::Endpoint(format!("upstream.tls_ca_file {path}: {e}")))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => tls = tls.with_native_roots(),
    }
    if let Some(domain) = &config.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        let read = |field: &str, path: &str| {
            std::fs::read(path)
                .map_err(|e| ConnectError::Endpoint(format!("upstream.{field} {path}: {e}")))
        };
        let identity = Identity::from_pem(read("tls_cert_file", cert)?, read("tls_key_file", key)?);
        tls = tls.identity(identity);
    }
    Ok(tls)
}

/// The Link bearer token (`upstream.token`, which the config loader may have read from
/// `upstream.token_file` or `SIDEWIRE_UPSTREAM_TOKEN`); `None` when none is set.
pub fn bearer_token(config: &UpstreamConfig) -> Result<Option<String>, ConnectError> {
    let Some(token) = config.token.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if !valid_token(token) {
        return Err(ConnectError::Token(
            "must be non-empty printable ASCII without spaces".to_owned(),
        ));
    }
    Ok(Some(token.to_owned()))
}
