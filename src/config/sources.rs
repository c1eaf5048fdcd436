//! Where a config comes from, in order of precedence: `SIDEWIRE_*` environment variables
//! ([`super::env`]), then the YAML file, then the defaults; `<secret>_file` keys
//! ([`super::secret`]) are read last. The result is not yet validated.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::schema::{self, Schema};
use super::{Config, ConfigError, env, renamed, secret};

/// The traced schema of [`Config`] (computed once).
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(schema::trace::<Config>)
}

/// The process's `SIDEWIRE_*` variables (names and values that are valid UTF-8).
pub fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| name.starts_with(env::ENV_PREFIX))
        .collect()
}

/// Builds a config from YAML `text` and the variables `vars`; every problem of the overrides
/// and secret files is reported at once, each naming its variable or field.
pub fn build(text: &str, vars: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut tree = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_saphyr::from_str::<Value>(text) {
            Ok(Value::Null) => Value::Object(Map::new()),
            Ok(tree @ Value::Object(_)) => tree,
            // Not a mapping, or not representable: the typed parse names the problem.
            _ => return parse_text(text),
        }
    };
    let schema = schema();
    let mut problems = renamed::problems(&mut tree, vars);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let applied = env::apply(&mut tree, schema, vars).unwrap_or_else(|mut found| {
        problems.append(&mut found);
        Vec::new()
    });
    let resolved = secret::resolve(&mut tree, schema).unwrap_or_else(|mut found| {
        problems.append(&mut found);
        false
    });
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    coerce_text(&mut tree, schema);
    if applied.is_empty() && !resolved {
        // Nothing changed: parse the text itself, whose errors carry line and column.
        return parse_text(text);
    }
    Config::deserialize(tree).map_err(|error| {
        let from_env = if applied.is_empty() {
            String::new()
        } else {
            format!("; environment overrides: {}", applied.join(", "))
        };
        ConfigError::Parse(format!("{error}{from_env}"))
    })
}

/// Plain YAML scalars are strings to a typed parse (`key: 12345`), but numbers and
/// booleans in the tree: turn those at string keys back into text.
fn coerce_text(tree: &mut Value, schema: &Schema) {
    for (path, kind) in &schema.leaves {
        if *kind != schema::Kind::Text {
            continue;
        }
        if let Some(node) = env::lookup_mut(tree, path)
            && (node.is_number() || node.is_boolean())
        {
            *node = Value::String(node.to_string());
        }
    }
}

/// The secret files a config text names (`<secret>_file` keys, after `SIDEWIRE_*`
/// overrides of the process), for watching and change detection; empty when the text does
/// not parse.
pub fn secret_files(text: &str) -> Vec<std::path::PathBuf> {
    let Ok(mut tree) = serde_saphyr::from_str::<Value>(text) else {
        return Vec::new();
    };
    if tree.is_null() {
        tree = Value::Object(Map::new());
    }
    let schema = schema();
    if env::apply(&mut tree, schema, &process_vars()).is_err() {
        return Vec::new();
    }
    secret::files(&mut tree, schema)
}

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_beats_the_file_and_is_validated() {
        let yaml = "listen: 127.0.0.1:1\nping_interval: 25s\nhub:\n  history_size: 5\n";
        let config = Config::from_yaml_with_env(
            yaml,
            &vars(&[
                ("SIDEWIRE_LISTEN", "127.0.0.1:7001"),
                ("SIDEWIRE_PING_INTERVAL", "40s"),
                ("SIDEWIRE_HUB_HTTP_API_KEY", "from-env"),
                ("SIDEWIRE_BACKEND_URL", "http://127.0.0.1:9"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7001);
        assert_eq!(config.ping_interval, Duration::from_secs(40));
        assert_eq!(config.hub.http_api.key.as_deref(), Some("from-env"));
        assert_eq!(config.hub.history_size, 5, "file values stay");
        let backend = config.backend.expect("section created by the override");
        assert_eq!(backend.url, "http://127.0.0.1:9");
        assert_eq!(backend.connect_timeout, Duration::from_secs(5), "defaults");

        let error = Config::from_yaml_with_env(yaml, &vars(&[("SIDEWIRE_PING_INTERVAL", "4s")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("pong_timeout:"),
            "validated after overrides: {error}"
        );
    }

    #[test]
    fn secret_file_key_goes_through_the_whole_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hmac-secret\n").unwrap();
        let yaml = format!(
            "hub:\n  client:\n    token:\n      hmac_secret_key_file: {}\n",
            path.display()
        );
        let config = Config::from_yaml_with_env(&yaml, &[]).unwrap();
        assert_eq!(
            config.hub.client.token.hmac_secret_key.as_deref(),
            Some("hmac-secret")
        );

        std::fs::write(&path, "").unwrap();
        let error = Config::from_yaml_with_env(&yaml, &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hub.client.token.hmac_secret_key: must not be empty"),
            "{error}"
        );
    }

    #[test]
    fn unquoted_numbers_stay_strings_with_overrides() {
        let yaml = "hub:\n  http_api:\n    key: 12345\n";
        let with_env =
            Config::from_yaml_with_env(yaml, &vars(&[("SIDEWIRE_LISTEN", "127.0.0.1:1")])).unwrap();
        assert_eq!(with_env.hub.http_api.key.as_deref(), Some("12345"));
        let plain = Config::from_yaml_with_env(yaml, &[]).unwrap();
        assert_eq!(plain.hub.http_api.key, with_env.hub.http_api.key);
    }

    #[test]
    fn plain_files_keep_positioned_errors() {
        let error = Config::from_yaml_with_env("hub:\n  bogus: 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("bogus"), "{error}");
        let error = Config::from_yaml_with_env(
            "hub:\n  bogus: 1\n",
            &vars(&[("SIDEWIRE_LISTEN", "127.0.0.1:1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("bogus") && error.contains("SIDEWIRE_LISTEN"),
            "{error}"
        );
    }
}
