//! `hub.http_api`: the embedded hub's server API settings (Centrifugo v6's `http_api.*`).

use serde::Deserialize;

/// `hub.http_api`: the embedded hub's server API (Centrifugo's `http_api`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// When set, the server API requires `X-API-Key: KEY` or `Authorization: apikey KEY`. A
    /// secret: may come from `hub.http_api.key_file` or `SIDEWIRE_HUB_HTTP_API_KEY`.
    pub key: Option<String>,
    /// Serve the server API without a key on a non-loopback listener. Off: such a listener
    /// answers `/api/*` with 403.
    pub insecure: bool,
}

impl HttpApiConfig {
    /// Every problem, each naming its dotted field.
    pub fn problems(&self) -> Vec<String> {
        if self.key.as_deref().is_some_and(str::is_empty) {
            vec!["hub.http_api.key: must not be empty when set".to_owned()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_named() {
        let api = HttpApiConfig {
            key: Some(String::new()),
            insecure: false,
        };
        assert!(api.problems()[0].starts_with("hub.http_api.key:"));
        assert!(HttpApiConfig::default().problems().is_empty());
    }
}
