//! `sidewire gentoken`: connection and subscription tokens signed with the hub's
//! `token_hmac_secret`, as `centrifugo gentoken` / `gensubtoken` make them (HS256 JWTs).
//!
//! Connection token claims: `sub` (user), `iat`, `exp`, optional `info`. Subscription token
//! claims: the same plus `channel`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use thiserror::Error;

/// What to put in a token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    /// User id (`sub`); may be empty for an anonymous user.
    pub user: String,
    /// Lifetime: `exp = iat + ttl`.
    pub ttl: Duration,
    /// Channel of a subscription token; `None` makes a connection token.
    pub channel: Option<String>,
    /// Connection info attached to the client (`info` claim), a JSON value.
    pub info: Option<serde_json::Value>,
}

/// Why no token was made.
#[derive(Debug, Error)]
pub enum GentokenError {
    /// The config has no secret to sign with.
    #[error(
        "hub.token_hmac_secret is not set (in the config, hub.token_hmac_secret_file, or SIDEWIRE_HUB_TOKEN_HMAC_SECRET)"
    )]
    NoSecret,
    /// `--info` is not JSON.
    #[error("--info: not valid JSON: {0}")]
    BadInfo(String),
    /// The TTL does not fit a timestamp.
    #[error("--ttl: too large")]
    TtlTooLarge,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
}

/// Parses `--info`.
pub fn parse_info(text: &str) -> Result<serde_json::Value, GentokenError> {
    serde_json::from_str(text).map_err(|e| GentokenError::BadInfo(e.to_string()))
}

/// Signs `request` with `secret` (HS256), issued at `now` (unix seconds).
pub fn generate(
    secret: Option<&str>,
    request: &TokenRequest,
    now: u64,
) -> Result<String, GentokenError> {
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(GentokenError::NoSecret)?;
    let exp = now
        .checked_add(request.ttl.as_secs())
        .ok_or(GentokenError::TtlTooLarge)?;
    let claims = Claims {
        sub: &request.user,
        iat: now,
        exp,
        channel: request.channel.as_deref(),
        info: request.info.as_ref(),
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    fn request(channel: Option<&str>) -> TokenRequest {
        TokenRequest {
            user: "42".to_owned(),
            ttl: Duration::from_secs(3600),
            channel: channel.map(str::to_owned),
            info: Some(parse_info(r#"{"name":"Ann"}"#).unwrap()),
        }
    }

    fn claims(token: &str, secret: &str) -> Option<serde_json::Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .ok()
        .map(|data| data.claims)
    }

    #[test]
    fn connection_token_is_hs256_with_sub_iat_exp() {
        let token = generate(Some("s"), &request(None), 1000).unwrap();
        let claims = claims(&token, "s").expect("valid HS256 signature");
        assert_eq!(claims["sub"], "42");
        assert_eq!(claims["iat"], 1000);
        assert_eq!(claims["exp"], 4600);
        assert_eq!(claims["info"]["name"], "Ann");
        assert!(claims.get("channel").is_none());
        assert!(
            self::claims(&token, "other").is_none(),
            "signed with the secret"
        );
    }

    #[test]
    fn subscription_token_carries_the_channel() {
        let token = generate(Some("s"), &request(Some("news")), 1000).unwrap();
        let claims = claims(&token, "s").unwrap();
        assert_eq!(claims["channel"], "news");
        assert_eq!(claims["sub"], "42");
        assert_eq!(claims["exp"], 4600);
    }

    #[test]
    fn errors_are_clear() {
        let error = generate(None, &request(None), 0).unwrap_err().to_string();
        assert!(error.contains("hub.token_hmac_secret"), "{error}");
        assert!(matches!(
            generate(Some(""), &request(None), 0),
            Err(GentokenError::NoSecret)
        ));
        assert!(matches!(parse_info("{"), Err(GentokenError::BadInfo(_))));
        let mut long = request(None);
        long.ttl = Duration::MAX;
        assert!(matches!(
            generate(Some("s"), &long, 1),
            Err(GentokenError::TtlTooLarge)
        ));
    }
}
