//! Keys renamed to Centrifugo v6's names: an old key (or its `_file`, or its `SIDEWIRE_*`
//! variable) is a config error naming the new key, never silently ignored (a forgotten
//! `hub.api_key` must not leave the server API open).

use serde_json::Value;

use super::env::{env_name, lookup_mut};
use super::secret::FILE_SUFFIX;

/// Old dotted path → new dotted path.
pub const RENAMED: &[(&str, &str)] = &[
    ("hub.token_hmac_secret", "hub.client.token.hmac_secret_key"),
    (
        "hub.token_rsa_public_key",
        "hub.client.token.rsa_public_key",
    ),
    (
        "hub.token_ecdsa_public_key",
        "hub.client.token.ecdsa_public_key",
    ),
    ("hub.token_audience", "hub.client.token.audience"),
    ("hub.token_issuer", "hub.client.token.issuer"),
    ("hub.api_key", "hub.http_api.key"),
    ("hub.api_insecure", "hub.http_api.insecure"),
    ("hub.client_channel_limit", "hub.client.channel_limit"),
    ("hub.channel_max_length", "hub.channel.max_length"),
];

/// Problems for every old key present in the config `tree` and every old variable set in
/// `vars`, each naming the old and the new key.
pub fn problems(tree: &mut Value, vars: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (old, new) in RENAMED {
        for suffix in ["", FILE_SUFFIX] {
            let path = format!("{old}{suffix}");
            if lookup_mut(tree, &path).is_some() {
                problems.push(format!("{path}: renamed to {new}{suffix}"));
            }
            let name = env_name(&path);
            if vars.iter().any(|(n, v)| *n == name && !v.is_empty()) {
                problems.push(format!(
                    "{name}: renamed to {} ({new}{suffix})",
                    env_name(&format!("{new}{suffix}"))
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn old_keys_name_their_new_key() {
        let text = Config::from_yaml_with_env("hub:\n  token_hmac_secret: s\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("hub.token_hmac_secret: renamed to hub.client.token.hmac_secret_key"),
            "{text}"
        );
        let text = Config::from_yaml_with_env(
            "hub:\n  api_key_file: /k\n  channel_max_length: 10\n  api_insecure: true\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "hub.api_key_file: renamed to hub.http_api.key_file",
            "hub.channel_max_length: renamed to hub.channel.max_length",
            "hub.api_insecure: renamed to hub.http_api.insecure",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn old_variables_name_their_new_variable() {
        let vars = [("SIDEWIRE_HUB_API_KEY".to_owned(), "k".to_owned())];
        let text = Config::from_yaml_with_env("", &vars)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("SIDEWIRE_HUB_API_KEY: renamed to SIDEWIRE_HUB_HTTP_API_KEY"),
            "{text}"
        );
        // Every new key exists in the schema.
        let schema = super::super::sources::schema();
        for (_, new) in RENAMED {
            assert!(schema.leaves.contains_key(*new), "{new}");
        }
    }
}
