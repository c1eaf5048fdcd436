//! Tokens of the reference hub, Centrifugo v6 style.
//!
//! Connection tokens are JWTs whose `sub` is the user id; `exp` (optional) bounds the
//! connection and `nbf` is honoured with no leeway. `info` (JSON) or `b64info` (base64) become
//! the client's `conn_info`; `channels` and the keys of `subs` are server-side subscriptions;
//! `meta` is kept and never sent to clients; `aud` / `iss` are checked when
//! `hub.client.token.audience` / `.issuer` (or `audience_regex` / `issuer_regex`) are set;
//! `user_id_claim` names another claim (a dotted path) for the user id; an HS token that fails
//! with `hmac_secret_key` is tried with `hmac_previous_secret_key` until its `_valid_until`. Subscription tokens (for `$` channels)
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
use regex::Regex;
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
    /// `hmac_previous_secret_key` and the unix time it stops being accepted (0: never).
    previous_hmac: Option<(DecodingKey, i64)>,
    audience_regex: Option<Regex>,
    issuer_regex: Option<Regex>,
    /// Dotted path of the claim holding the user id instead of `sub`.
    user_id_claim: Option<Vec<String>>,
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
            .field("previous_hmac", &self.previous_hmac.is_some())
            .field("audience_regex", &self.audience_regex)
            .field("issuer_regex", &self.issuer_regex)
            .field("user_id_claim", &self.user_id_claim)
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
            previous_hmac: config.hmac_previous_secret_key.as_deref().map(|secret| {
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    config.hmac_previous_secret_key_valid_until,
                )
            }),
            // Checked by `TokenConfig::problems` before any config is applied; an invalid
            // one here (never reached) would refuse every token rather than accept them.
            audience_regex: config.audience_regex.as_deref().map(compile_or_never),
            issuer_regex: config.issuer_regex.as_deref().map(compile_or_never),
            user_id_claim: config
                .user_id_claim
                .as_deref()
                .map(|path| path.split('.').map(str::to_owned).collect()),
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

    fn decode<T: serde::de::DeserializeOwned + Registered>(&self, token: &str) -> Result<T, bool> {
        if token.is_empty() {
            return Err(false);
        }
        let (key, validation) = self.validation(token).ok_or(false)?;
        let claims = match decode::<T>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => {
                self.decode_with_previous(token, &validation)?
            }
            Err(error) => return Err(matches!(error.kind(), ErrorKind::ExpiredSignature)),
        };
        if !self.registered_claims_match(&claims) {
            return Err(false);
        }
        Ok(claims)
    }

    /// An HS token that failed with the current secret, tried with the previous one while it
    /// is still accepted (a key rotation).
    fn decode_with_previous<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<T, bool> {
        let (previous, valid_until) = self.previous_hmac.as_ref().ok_or(false)?;
        let hmac = matches!(
            validation.algorithms.first(),
            Some(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        );
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        if !hmac || (*valid_until > 0 && now > *valid_until) {
            return Err(false);
        }
        decode::<T>(token, previous, validation)
            .map(|data| data.claims)
            .map_err(|error| matches!(error.kind(), ErrorKind::ExpiredSignature))
    }

    /// `audience_regex` and `issuer_regex`, when set: one `aud` value must match, and `iss`.
    fn registered_claims_match(&self, claims: &impl Registered) -> bool {
        let issuer_ok = self
            .issuer_regex
            .as_ref()
            .is_none_or(|re| claims.issuer().is_some_and(|iss| re.is_match(iss)));
        let audience_ok = self
            .audience_regex
            .as_ref()
            .is_none_or(|re| claims.audiences().iter().any(|aud| re.is_match(aud)));
        issuer_ok && audience_ok
    }

    /// The user id of a verified token: `user_id_claim` when set (a string or a number at
    /// that path, else empty), else `sub`.
    fn user_of(&self, token: &str, sub: String) -> String {
        let Some(path) = &self.user_id_claim else {
            return sub;
        };
        let payload = token.split('.').nth(1).unwrap_or_default();
        let value: Option<serde_json::Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let found = path
            .iter()
            .try_fold(value.as_ref(), |value, part| Some(value?.get(part)))
            .flatten();
        match found {
            Some(serde_json::Value::String(user)) => user.clone(),
            Some(serde_json::Value::Number(number)) => number.to_string(),
            _ => String::new(),
        }
    }

    /// Verifies a connection token.
    pub fn check_connection(&self, token: &str) -> TokenCheck {
        match self.decode::<Claims>(token) {
            Ok(mut claims) => {
                claims.sub = self.user_of(token, std::mem::take(&mut claims.sub));
                claims.into_check()
            }
            Err(true) => TokenCheck::Expired,
            Err(false) => TokenCheck::Invalid,
        }
    }

    /// Verifies a subscription token's signature and time claims (`sub` and `channel` are
    /// matched by the caller). A token without a `channel` claim is invalid.
    pub fn check_subscription(&self, token: &str) -> SubTokenCheck {
        match self.decode::<SubClaims>(token) {
            Ok(mut claims) if !claims.channel.is_empty() => {
                claims.sub = self.user_of(token, std::mem::take(&mut claims.sub));
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

/// The registered claims `aud` (one string or a list) and `iss` of a token.
trait Registered {
    fn issuer(&self) -> Option<&str>;
    fn audiences(&self) -> Vec<&str>;
}

/// `aud`: one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn audiences(aud: Option<&Audience>) -> Vec<&str> {
    match aud {
        Some(Audience::One(one)) => vec![one.as_str()],
        Some(Audience::Many(many)) => many.iter().map(String::as_str).collect(),
        None => Vec::new(),
    }
}

fn compile_or_never(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|_| {
        // `[^\s\S]` matches nothing: a pattern that failed the config check refuses all.
        Regex::new("[^\\s\\S]").unwrap_or_else(|_| unreachable!("a fixed, valid pattern"))
    })
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
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

impl Registered for Claims {
    fn issuer(&self) -> Option<&str> {
        self.iss.as_deref()
    }
    fn audiences(&self) -> Vec<&str> {
        audiences(self.aud.as_ref())
    }
}

impl Registered for SubClaims {
    fn issuer(&self) -> Option<&str> {
        self.iss.as_deref()
    }
    fn audiences(&self) -> Vec<&str> {
        audiences(self.aud.as_ref())
    }
}

#[derive(Debug, Deserialize)]
struct SubClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
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
