//! Connection tokens of the reference hub: HS256 JWTs whose `sub` is the user id and whose
//! `exp` (optional) bounds the connection. `nbf`, when present, is honoured with no leeway:
//! a token not yet valid is invalid.

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

/// Outcome of checking a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid: the user id and the expiry (unix seconds), if any.
    Valid {
        /// `sub` claim.
        user: String,
        /// `exp` claim.
        expires_at: Option<u64>,
    },
    /// Signature and claims are fine but `exp` has passed (error 109: the SDK refreshes).
    Expired,
    /// Anything else (disconnect 3500).
    Invalid,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
}

/// Verifies an HS256 token with `secret`.
pub fn check_token(token: &str, secret: &str) -> TokenCheck {
    if token.is_empty() {
        return TokenCheck::Invalid;
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims = HashSet::new();
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    match decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    ) {
        Ok(data) => TokenCheck::Valid {
            user: data.claims.sub,
            expires_at: data.claims.exp,
        },
        Err(error) if matches!(error.kind(), ErrorKind::ExpiredSignature) => TokenCheck::Expired,
        Err(_) => TokenCheck::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_expired_invalid() {
        let exp = now() + 60;
        assert_eq!(
            check_token(
                &token("s", serde_json::json!({"sub": "u1", "exp": exp})),
                "s"
            ),
            TokenCheck::Valid {
                user: "u1".into(),
                expires_at: Some(exp)
            }
        );
        assert_eq!(
            check_token(&token("s", serde_json::json!({"sub": "u1"})), "s"),
            TokenCheck::Valid {
                user: "u1".into(),
                expires_at: None
            }
        );
        assert_eq!(
            check_token(
                &token("s", serde_json::json!({"sub": "u1", "exp": now() - 10})),
                "s"
            ),
            TokenCheck::Expired
        );
        assert_eq!(
            check_token(&token("other", serde_json::json!({"sub": "u1"})), "s"),
            TokenCheck::Invalid
        );
        assert_eq!(check_token("garbage", "s"), TokenCheck::Invalid);
        assert_eq!(check_token("", "s"), TokenCheck::Invalid);
    }

    #[test]
    fn future_nbf_is_invalid_past_nbf_is_fine() {
        assert_eq!(
            check_token(
                &token("s", serde_json::json!({"sub": "u1", "nbf": now() + 60})),
                "s"
            ),
            TokenCheck::Invalid
        );
        assert_eq!(
            check_token(
                &token("s", serde_json::json!({"sub": "u1", "nbf": now() - 60})),
                "s"
            ),
            TokenCheck::Valid {
                user: "u1".into(),
                expires_at: None
            }
        );
    }
}
