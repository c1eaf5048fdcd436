//! Tokens of the reference hub, Centrifugo v6 style.
//!
//! Connection tokens are JWTs whose `sub` is the user id; `exp` (optional) bounds the
//! connection and `nbf` is honoured with no leeway. `info` (JSON) or `b64info` (base64) become
//! the client's `conn_info`; `channels` and the keys of `subs` are server-side subscriptions;
//! `meta` is kept and never sent to clients; `aud` / `iss` are checked when
//! `hub.client.token.audience` / `.issuer` are set. Subscription tokens (for `$` channels)
//! carry `sub` (the user) and `channel`; they are verified with `hub.client.token` unless
//! `hub.client.subscription_token.enabled` gives them their own keys (Centrifugo v6's rule).
//!
//! Algorithms: HS256/384/512 with `hmac_secret_key`, RS256 with `rsa_public_key`, ES256 with
//! `ecdsa_public_key` (PEM). A token signed with an algorithm whose key is not configured is
//! invalid.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use std::sync::Arc;

use crate::config::client::{ClientConfig, TokenConfig};
use crate::config::pem;
use crate::hub::jwks::Jwks;

/// The verified claims of a connection token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionClaims {
    /// `sub` claim: the user id (empty: anonymous).
    pub user: String,
    /// `exp` claim, unix seconds.
    pub expires_at: Option<u64>,
    /// `info` (JSON) or `b64info` (decoded), attached to the client as `conn_info`.
    pub info: Bytes,
    /// Server-side subscriptions: `channels` then the keys of `subs`, without duplicates.
    pub channels: Vec<String>,
    /// `meta` claim: kept by the hub, never sent to clients.
    pub meta: Option<serde_json::Value>,
}

/// Outcome of checking a connection token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenCheck {
    /// Valid: the claims.
    Valid(ConnectionClaims),
    /// Signature and claims are fine but `exp` has passed (error 109: the SDK refreshes).
    Expired,
    /// Anything else (disconnect 3500).
    Invalid,
    /// No token, and anonymous connections are not allowed (disconnect 3501, as Centrifugo's
    /// connect without credentials).
    Missing,
}

impl TokenCheck {
    /// A valid check of an anonymous, non-expiring connection (no token configured).
    pub fn anonymous() -> TokenCheck {
        TokenCheck::Valid(ConnectionClaims::default())
    }
}

/// Outcome of checking a subscription token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubTokenCheck {
    /// Signature and time claims are fine; the caller matches `user` and `channel`.
    Valid {
        /// `sub` claim.
        user: String,
        /// `channel` claim.
        channel: String,
        /// `exp` claim, unix seconds.
        expires_at: Option<u64>,
        /// `info` (JSON) or `b64info` (decoded): the subscriber's `chan_info` in presence and
        /// join/leave (empty: none).
        info: Bytes,
    },
    /// `exp` has passed (error 109).
    Expired,
    /// Missing, badly signed or malformed (error 103).
    Invalid,
}

/// A configured public key is not a usable PEM key (the check lives with the config).
pub use crate::config::pem::KeyError as TokenKeyError;

/// The keys and expectations tokens are verified against; built once per config.
#[derive(Clone, Default)]
pub struct TokenKeys {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
    /// Keys fetched from `jwks_public_endpoint`, looked up by the token's `kid`.
    jwks: Option<Arc<Jwks>>,
}

/// A verification key: configured, or fetched (shared with the JWKS cache).
enum Key<'a> {
    Configured(&'a DecodingKey),
    Fetched(Arc<DecodingKey>),
}

impl std::ops::Deref for Key<'_> {
    type Target = DecodingKey;
    fn deref(&self) -> &DecodingKey {
        match self {
            Key::Configured(key) => key,
            Key::Fetched(key) => key,
        }
    }
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl TokenKeys {
    /// Connection-token keys of `hub.client.token`; an unparsable public key is an error
    /// naming its field.
    pub fn from_config(config: &ClientConfig) -> Result<TokenKeys, TokenKeyError> {
        TokenKeys::from_token(&config.token, "hub.client.token")
    }

    /// Subscription-token keys: `hub.client.subscription_token` when enabled, else
    /// `hub.client.token`.
    pub fn for_subscriptions(config: &ClientConfig) -> Result<TokenKeys, TokenKeyError> {
        let (token, field) = config.subscription_keys();
        TokenKeys::from_token(&token, field)
    }

    /// Keys of one token section named `field`.
    pub fn from_token(
        config: &TokenConfig,
        field: &'static str,
    ) -> Result<TokenKeys, TokenKeyError> {
        let rsa = config
            .rsa_public_key
            .as_deref()
            .map(|pem| pem::rsa_der(pem, field).map(|der| DecodingKey::from_rsa_der(&der)))
            .transpose()?;
        let ecdsa = config
            .ecdsa_public_key
            .as_deref()
            .map(|pem| pem::ec_point(pem, field).map(|point| DecodingKey::from_ec_der(&point)))
            .transpose()?;
        Ok(TokenKeys {
            hmac: config
                .hmac_secret_key
                .as_deref()
                .map(|secret| DecodingKey::from_secret(secret.as_bytes())),
            rsa,
            ecdsa,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            jwks: config
                .jwks_public_endpoint
                .as_deref()
                .map(|url| Arc::new(Jwks::new(url))),
        })
    }

    /// Starts fetching the JWKS, if one is configured (on the current tokio runtime).
    pub fn start(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.start();
        }
    }

    /// The key and validation for the token's header algorithm, if that algorithm is allowed:
    /// a token with a `kid` takes the JWKS key of that id (when a JWKS is configured, and its
    /// algorithm must be the key's), else the configured key of its algorithm.
    fn validation(&self, token: &str) -> Option<(Key<'_>, Validation)> {
        let header = decode_header(token).ok()?;
        let key = match (&self.jwks, &header.kid) {
            (Some(jwks), Some(kid)) => {
                let (algorithm, key) = jwks.key(kid)?;
                if algorithm != header.alg {
                    return None;
                }
                Key::Fetched(key)
            }
            _ => Key::Configured(match header.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref()?,
                Algorithm::RS256 => self.rsa.as_ref()?,
                Algorithm::ES256 => self.ecdsa.as_ref()?,
                _ => return None,
            }),
        };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Some((key, validation))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, bool> {
        if token.is_empty() {
            return Err(false);
        }
        let (key, validation) = self.validation(token).ok_or(false)?;
        decode::<T>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|error| matches!(error.kind(), ErrorKind::ExpiredSignature))
    }

    /// Verifies a connection token.
    pub fn check_connection(&self, token: &str) -> TokenCheck {
        match self.decode::<Claims>(token) {
            Ok(claims) => claims.into_check(),
            Err(true) => TokenCheck::Expired,
            Err(false) => TokenCheck::Invalid,
        }
    }

    /// Verifies a subscription token's signature and time claims (`sub` and `channel` are
    /// matched by the caller). A token without a `channel` claim is invalid.
    pub fn check_subscription(&self, token: &str) -> SubTokenCheck {
        match self.decode::<SubClaims>(token) {
            Ok(claims) if !claims.channel.is_empty() => {
                match info_bytes(claims.info.as_deref(), claims.b64info.as_deref()) {
                    Some(info) => SubTokenCheck::Valid {
                        user: claims.sub,
                        channel: claims.channel,
                        expires_at: claims.exp,
                        info,
                    },
                    None => SubTokenCheck::Invalid,
                }
            }
            Err(true) => SubTokenCheck::Expired,
            _ => SubTokenCheck::Invalid,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

/// The `info` claim's JSON, else the decoded `b64info`, else empty; `None` when `b64info` is
/// not base64 (the token is then invalid).
fn info_bytes(info: Option<&serde_json::value::RawValue>, b64info: Option<&str>) -> Option<Bytes> {
    match (info, b64info) {
        (Some(raw), _) if raw.get() != "null" => Some(Bytes::from(raw.get().to_owned())),
        (_, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(Bytes::from),
        _ => Some(Bytes::new()),
    }
}

impl Claims {
    fn into_check(self) -> TokenCheck {
        let Some(info) = info_bytes(self.info.as_deref(), self.b64info.as_deref()) else {
            return TokenCheck::Invalid;
        };
        let mut channels: Vec<String> = Vec::new();
        for channel in self.channels.into_iter().chain(self.subs.into_keys()) {
            if !channel.is_empty() && !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        TokenCheck::Valid(ConnectionClaims {
            user: self.sub,
            expires_at: self.exp,
            info,
            channels,
            meta: self.meta,
        })
    }
}

#[derive(Debug, Deserialize)]
struct SubClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
}

/// Verifies an HS256/384/512 connection token with `secret` (no audience or issuer check).
#[cfg(test)]
pub fn check_token(token: &str, secret: &str) -> TokenCheck {
    let config = TokenConfig {
        hmac_secret_key: Some(secret.to_owned()),
        ..TokenConfig::default()
    };
    TokenKeys::from_token(&config, "hub.client.token")
        .map(|keys| keys.check_connection(token))
        .unwrap_or(TokenCheck::Invalid)
}

#[cfg(test)]
mod tests;
