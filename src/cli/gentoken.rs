//! `sidewire gentoken`: connection and subscription tokens signed with the hub's
//! `hub.client.token.hmac_secret_key` (subscription tokens: `hub.client.subscription_token`'s
//! when enabled), as `centrifugo gentoken` / `gensubtoken` make them (HS256 JWTs).
//!
//! Connection token claims: `sub` (user), `iat`, `exp`, optional `info`. Subscription token
//! claims: the same plus `channel`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use thiserror::Error;

use crate::config::client::ClientConfig;

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
    /// The config has no secret to sign with; names the missing key.
    #[error(
        "{key} is not set (in the config, {key}_file, or the SIDEWIRE_{} variable)",
        key.replace('.', "_").to_ascii_uppercase()
    )]
    NoSecret {
        /// Dotted path of the secret that is missing.
        key: &'static str,
    },
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

/// The secret `request` is signed with and its dotted key: connection tokens use
/// `hub.client.token.hmac_secret_key`; subscription tokens the same unless
/// `hub.client.subscription_token.enabled` (Centrifugo v6's rule).
pub fn secret_for<'c>(
    client: &'c ClientConfig,
    request: &TokenRequest,
) -> (Option<&'c str>, &'static str) {
    if request.channel.is_some() && client.subscription_token.enabled {
        (
            client.subscription_token.hmac_secret_key.as_deref(),
            "hub.client.subscription_token.hmac_secret_key",
        )
    } else {
        (
            client.token.hmac_secret_key.as_deref(),
            "hub.client.token.hmac_secret_key",
        )
    }
}

/// Signs `request` with the secret [`secret_for`] picks (HS256), issued at `now` (unix
/// seconds).
pub fn generate(
    client: &ClientConfig,
    request: &TokenRequest,
    now: u64,
) -> Result<String, GentokenError> {
    let (secret, key) = secret_for(client, request);
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(GentokenError::NoSecret { key })?;
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

    fn secret(key: Option<&str>) -> ClientConfig {
        let mut client = ClientConfig::default();
        client.token.hmac_secret_key = key.map(str::to_owned);
        client
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
        let token = generate(&secret(Some("s")), &request(None), 1000).unwrap();
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
        let token = generate(&secret(Some("s")), &request(Some("news")), 1000).unwrap();
        let claims = claims(&token, "s").unwrap();
        assert_eq!(claims["channel"], "news");
        assert_eq!(claims["sub"], "42");
        assert_eq!(claims["exp"], 4600);
    }

    #[test]
    fn subscription_tokens_use_their_own_secret_when_enabled() {
        let mut client = secret(Some("conn"));
        client.subscription_token.hmac_secret_key = Some("sub".into());
        let token = generate(&client, &request(Some("news")), 1000).unwrap();
        assert!(claims(&token, "conn").is_some(), "disabled: connection key");
        client.subscription_token.enabled = true;
        let token = generate(&client, &request(Some("news")), 1000).unwrap();
        assert!(claims(&token, "sub").is_some(), "enabled: its own key");
        let token = generate(&client, &request(None), 1000).unwrap();
        assert!(
            claims(&token, "conn").is_some(),
            "connection tokens unchanged"
        );
        client.subscription_token.hmac_secret_key = None;
        let error = generate(&client, &request(Some("news")), 0)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hub.client.subscription_token.hmac_secret_key"),
            "{error}"
        );
    }

    #[test]
    fn errors_are_clear() {
        let error = generate(&secret(None), &request(None), 0)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hub.client.token.hmac_secret_key")
                && error.contains("SIDEWIRE_HUB_CLIENT_TOKEN_HMAC_SECRET_KEY"),
            "{error}"
        );
        assert!(matches!(
            generate(&secret(Some("")), &request(None), 0),
            Err(GentokenError::NoSecret { .. })
        ));
        assert!(matches!(parse_info("{"), Err(GentokenError::BadInfo(_))));
        let mut long = request(None);
        long.ttl = Duration::MAX;
        assert!(matches!(
            generate(&secret(Some("s")), &long, 1),
            Err(GentokenError::TtlTooLarge)
        ));
    }
}
