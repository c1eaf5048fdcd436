//! `hub.client`: how clients connect to the embedded hub, with Centrifugo v6's option names
//! (`client.token.*`, `client.subscription_token.*`, `client.channel_limit`, `client.proxy.*`).
//!
//! Guarantee: every key here is validated by [`ClientConfig::problems`], each problem naming
//! its dotted field.

use serde::Deserialize;

use super::proxy::ClientProxyConfig;

/// Default number of channels one client may be subscribed to at once (Centrifugo's
/// `client.channel_limit`).
pub const DEFAULT_CHANNEL_LIMIT: usize = 128;

/// `hub.client`: connection tokens, subscription tokens and per-client limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// `hub.client.token`: keys and expectations connection tokens are verified against (and
    /// subscription tokens too, unless `subscription_token.enabled`).
    pub token: TokenConfig,
    /// `hub.client.subscription_token`: separate keys for subscription tokens, used only when
    /// its `enabled` is true (as in Centrifugo v6).
    pub subscription_token: SubscriptionTokenConfig,
    /// Channels one client may be subscribed to at once; beyond it subscribe answers 106.
    pub channel_limit: usize,
    /// A connect without a token is accepted as anonymous (empty user). Off (the default, as
    /// in Centrifugo): such a connect is refused with disconnect 3501.
    pub allow_anonymous_connect_without_token: bool,
    /// Centrifugo's `client.insecure`, for development only: a connect without a token is
    /// anonymous, connection tokens never expire, and every client operation that exists on a
    /// channel is granted (namespaces, features and `$` channels are still checked).
    pub insecure: bool,
    /// `hub.client.proxy`: the connect and refresh hooks.
    pub proxy: ClientProxyConfig,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            channel_limit: DEFAULT_CHANNEL_LIMIT,
            allow_anonymous_connect_without_token: false,
            insecure: false,
            proxy: ClientProxyConfig::default(),
        }
    }
}

/// Keys and claim expectations of JWTs (Centrifugo's `client.token`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// HS256/384/512 tokens are accepted, signed with this secret. A secret: may come from
    /// `hmac_secret_key_file` or the environment.
    pub hmac_secret_key: Option<String>,
    /// PEM RSA public key: RS256 tokens are accepted. May come from `rsa_public_key_file`.
    pub rsa_public_key: Option<String>,
    /// PEM EC (P-256) public key: ES256 tokens are accepted. May come from
    /// `ecdsa_public_key_file`.
    pub ecdsa_public_key: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// `http(s)://` URL of a JWK set: RS256/ES256 tokens whose header names a `kid` are
    /// verified with that key (fetched in the background, refetched every minute and on an
    /// unknown `kid`, at most once a second).
    pub jwks_public_endpoint: Option<String>,
    /// The previous HMAC secret during a key rotation: HS tokens that fail with
    /// `hmac_secret_key` are tried with it. A secret, like `hmac_secret_key`.
    pub hmac_previous_secret_key: Option<String>,
    /// Unix time after which `hmac_previous_secret_key` is no longer accepted (0: no end).
    pub hmac_previous_secret_key_valid_until: i64,
    /// When set, one of the token's `aud` values must match this regular expression
    /// (exclusive with `audience`).
    pub audience_regex: Option<String>,
    /// When set, the token's `iss` must match this regular expression (exclusive with
    /// `issuer`).
    pub issuer_regex: Option<String>,
    /// The claim holding the user id instead of `sub` (a dotted path reaches into objects).
    pub user_id_claim: Option<String>,
}

impl TokenConfig {
    /// Whether any verification key is configured.
    pub fn has_key(&self) -> bool {
        self.hmac_secret_key.is_some()
            || self.rsa_public_key.is_some()
            || self.ecdsa_public_key.is_some()
            || self.jwks_public_endpoint.is_some()
    }

    /// Problems of these keys, named under `field` (e.g. `hub.client.token`).
    pub fn problems(&self, field: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("hmac_secret_key", &self.hmac_secret_key),
            ("audience", &self.audience),
            ("issuer", &self.issuer),
            ("hmac_previous_secret_key", &self.hmac_previous_secret_key),
            ("audience_regex", &self.audience_regex),
            ("issuer_regex", &self.issuer_regex),
            ("user_id_claim", &self.user_id_claim),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                problems.push(format!("{field}.{name}: must not be empty when set"));
            }
        }
        for (name, value) in [
            ("audience_regex", &self.audience_regex),
            ("issuer_regex", &self.issuer_regex),
        ] {
            if let Some(Err(error)) = value.as_deref().map(regex::Regex::new) {
                problems.push(format!("{field}.{name}: not a regular expression: {error}"));
            }
        }
        if self.audience.is_some() && self.audience_regex.is_some() {
            problems.push(format!(
                "{field}.audience_regex: set audience or audience_regex, not both"
            ));
        }
        if self.issuer.is_some() && self.issuer_regex.is_some() {
            problems.push(format!(
                "{field}.issuer_regex: set issuer or issuer_regex, not both"
            ));
        }
        if self.hmac_previous_secret_key.is_some() && self.hmac_secret_key.is_none() {
            problems.push(format!(
                "{field}.hmac_previous_secret_key: needs {field}.hmac_secret_key"
            ));
        }
        if let Some(url) = &self.jwks_public_endpoint {
            let valid = url.parse::<http::Uri>().ok().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            });
            if !valid {
                problems.push(format!(
                    "{field}.jwks_public_endpoint: must be an http(s):// URL, got {url:?}"
                ));
            }
        }
        problems
    }
}

/// `hub.client.subscription_token`: Centrifugo v6's separate subscription-token keys. When
/// `enabled` is false (the default) subscription tokens are verified with `hub.client.token`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionTokenConfig {
    /// Use the keys below for subscription tokens instead of `hub.client.token`'s.
    pub enabled: bool,
    /// As `hub.client.token.hmac_secret_key`, for subscription tokens.
    pub hmac_secret_key: Option<String>,
    /// As `hub.client.token.rsa_public_key`, for subscription tokens.
    pub rsa_public_key: Option<String>,
    /// As `hub.client.token.ecdsa_public_key`, for subscription tokens.
    pub ecdsa_public_key: Option<String>,
    /// As `hub.client.token.audience`, for subscription tokens.
    pub audience: Option<String>,
    /// As `hub.client.token.issuer`, for subscription tokens.
    pub issuer: Option<String>,
    /// As `hub.client.token.jwks_public_endpoint`, for subscription tokens.
    pub jwks_public_endpoint: Option<String>,
    /// As `hub.client.token.hmac_previous_secret_key`, for subscription tokens.
    pub hmac_previous_secret_key: Option<String>,
    /// As `hub.client.token.hmac_previous_secret_key_valid_until`, for subscription tokens.
    pub hmac_previous_secret_key_valid_until: i64,
    /// As `hub.client.token.audience_regex`, for subscription tokens.
    pub audience_regex: Option<String>,
    /// As `hub.client.token.issuer_regex`, for subscription tokens.
    pub issuer_regex: Option<String>,
    /// As `hub.client.token.user_id_claim`, for subscription tokens.
    pub user_id_claim: Option<String>,
}

impl SubscriptionTokenConfig {
    /// The keys as a [`TokenConfig`].
    pub fn token(&self) -> TokenConfig {
        TokenConfig {
            hmac_secret_key: self.hmac_secret_key.clone(),
            rsa_public_key: self.rsa_public_key.clone(),
            ecdsa_public_key: self.ecdsa_public_key.clone(),
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            jwks_public_endpoint: self.jwks_public_endpoint.clone(),
            hmac_previous_secret_key: self.hmac_previous_secret_key.clone(),
            hmac_previous_secret_key_valid_until: self.hmac_previous_secret_key_valid_until,
            audience_regex: self.audience_regex.clone(),
            issuer_regex: self.issuer_regex.clone(),
            user_id_claim: self.user_id_claim.clone(),
        }
    }
}

impl ClientConfig {
    /// The keys subscription tokens are verified with, and the field they come from:
    /// `subscription_token` when enabled, else `token` (Centrifugo v6's rule).
    pub fn subscription_keys(&self) -> (TokenConfig, &'static str) {
        if self.subscription_token.enabled {
            (
                self.subscription_token.token(),
                "hub.client.subscription_token",
            )
        } else {
            (self.token.clone(), "hub.client.token")
        }
    }

    /// Every unusable public key (connection keys, and subscription keys when enabled), each
    /// naming its section; the hub builds its keys from the same checks.
    pub fn key_problems(&self) -> Vec<super::pem::KeyError> {
        let mut sections = vec![(self.token.clone(), "hub.client.token")];
        if self.subscription_token.enabled {
            sections.push(self.subscription_keys());
        }
        let mut problems = Vec::new();
        for (token, section) in sections {
            if let Some(pem) = &token.rsa_public_key {
                problems.extend(super::pem::rsa_der(pem, section).err());
            }
            if let Some(pem) = &token.ecdsa_public_key {
                problems.extend(super::pem::ec_point(pem, section).err());
            }
        }
        problems
    }

    /// Every problem, each naming its dotted field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.token.problems("hub.client.token");
        problems.extend(
            self.subscription_token
                .token()
                .problems("hub.client.subscription_token"),
        );
        if self.subscription_token.enabled && !self.subscription_token.token().has_key() {
            problems.push(
                "hub.client.subscription_token.enabled: needs hmac_secret_key, rsa_public_key \
                 or ecdsa_public_key under hub.client.subscription_token"
                    .to_owned(),
            );
        }
        if self.channel_limit < 1 {
            problems.push("hub.client.channel_limit: must be at least 1".to_owned());
        }
        for (name, hook) in [
            ("connect", &self.proxy.connect),
            ("refresh", &self.proxy.refresh),
        ] {
            let field = format!("hub.client.proxy.{name}");
            let why = format!("{field}.enabled");
            problems.extend(super::proxy::hook_problems(
                &field,
                &hook.hook(),
                hook.enabled.then_some(why.as_str()),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_tokens_use_the_connection_keys_unless_enabled() {
        let mut config = ClientConfig::default();
        config.token.hmac_secret_key = Some("conn".into());
        config.subscription_token.hmac_secret_key = Some("sub".into());
        let (keys, field) = config.subscription_keys();
        assert_eq!(keys.hmac_secret_key.as_deref(), Some("conn"));
        assert_eq!(field, "hub.client.token");
        config.subscription_token.enabled = true;
        let (keys, field) = config.subscription_keys();
        assert_eq!(keys.hmac_secret_key.as_deref(), Some("sub"));
        assert_eq!(field, "hub.client.subscription_token");
    }

    #[test]
    fn problems_name_the_dotted_field() {
        let config = ClientConfig {
            token: TokenConfig {
                hmac_secret_key: Some(String::new()),
                audience: Some(String::new()),
                jwks_public_endpoint: Some("ftp://x".into()),
                ..TokenConfig::default()
            },
            subscription_token: SubscriptionTokenConfig {
                enabled: true,
                issuer: Some(String::new()),
                ..SubscriptionTokenConfig::default()
            },
            channel_limit: 0,
            ..ClientConfig::default()
        };
        let text = config.problems().join("\n");
        for field in [
            "hub.client.token.hmac_secret_key:",
            "hub.client.token.audience:",
            "hub.client.token.jwks_public_endpoint:",
            "hub.client.subscription_token.issuer:",
            "hub.client.subscription_token.enabled:",
            "hub.client.channel_limit:",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert!(ClientConfig::default().problems().is_empty());
    }

    #[test]
    fn token_rotation_and_regex_options_are_checked_by_name() {
        let mut config = ClientConfig::default();
        config.token.audience = Some("a".into());
        config.token.audience_regex = Some("(".into());
        config.token.issuer = Some("i".into());
        config.token.issuer_regex = Some("^i$".into());
        config.token.hmac_previous_secret_key = Some("old".into());
        let problems = config.problems().join("\n");
        for expected in [
            "hub.client.token.audience_regex: not a regular expression",
            "hub.client.token.audience_regex: set audience or audience_regex, not both",
            "hub.client.token.issuer_regex: set issuer or issuer_regex, not both",
            "hub.client.token.hmac_previous_secret_key: needs hub.client.token.hmac_secret_key",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }
}
