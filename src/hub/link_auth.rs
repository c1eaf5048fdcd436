//! Authentication of Link streams on `sidewire hub`: a bearer token in gRPC metadata
//! (`authorization: Bearer <token>`), compared in constant time before `welcome`. Mutual TLS
//! is checked earlier, by the TLS acceptor (`hub.tls.client_ca_file`).

use std::sync::Arc;

use thiserror::Error;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::config::{HubConfig, valid_token};

/// The Link token could not be loaded.
#[derive(Debug, Error)]
pub enum LinkAuthError {
    /// `hub.link_token` is not a usable token.
    #[error("hub.link_token: must be non-empty printable ASCII without spaces")]
    InvalidToken,
}

/// What a Link stream must present; `None` accepts every stream.
#[derive(Clone, Default)]
pub struct LinkAuth {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for LinkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl LinkAuth {
    /// Takes `hub.link_token` (which the config loader may have read from
    /// `hub.link_token_file`); whitespace around it is ignored.
    pub fn from_config(config: &HubConfig) -> Result<LinkAuth, LinkAuthError> {
        let token = match config.link_token.as_deref().map(str::trim) {
            Some(token) if !valid_token(token) => {
                return Err(LinkAuthError::InvalidToken);
            }
            token => token.map(str::to_owned),
        };
        Ok(LinkAuth {
            token: token.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
        })
    }

    /// Accepts the stream, or refuses it with UNAUTHENTICATED (no detail about why).
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), expected) {
            Ok(())
        } else {
            tracing::warn!("hub: link stream refused: missing or wrong token");
            Err(Status::unauthenticated("invalid link token"))
        }
    }
}

/// Compares without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    #[test]
    fn token_is_required_when_configured() {
        let auth = LinkAuth::from_config(&HubConfig {
            link_token: Some("s3cret".into()),
            ..HubConfig::default()
        })
        .unwrap();
        assert!(auth.check(&metadata("Bearer s3cret")).is_ok());
        assert_eq!(
            auth.check(&metadata("Bearer s3creT")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(auth.check(&metadata("s3cret")).is_err());
        assert!(auth.check(&MetadataMap::new()).is_err());
    }

    #[test]
    fn no_token_configured_accepts_all() {
        let auth = LinkAuth::from_config(&HubConfig::default()).unwrap();
        assert!(auth.check(&MetadataMap::new()).is_ok());
    }
}
