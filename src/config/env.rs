//! `SIDEWIRE_*` environment overrides of config keys.
//!
//! Rule (Centrifugo's, with our prefix): a key's variable is `SIDEWIRE_` + its dotted path
//! upper-cased with `.` → `_`, e.g. `hub.http_api.key` → `SIDEWIRE_HUB_HTTP_API_KEY`,
//! `shutdown.drain_window` → `SIDEWIRE_SHUTDOWN_DRAIN_WINDOW`. Every key of the traced schema
//! ([`super::schema`]) has one, plus `<secret>_file` for each secret key
//! ([`super::secret::SECRET_KEYS`]). Values:
//! - booleans: `true`/`false`/`1`/`0`/`t`/`f` (any case, as Go's `ParseBool`);
//! - numbers: decimal; durations, addresses, URLs, enum names: as in YAML (`25s`);
//! - lists: a JSON array (`["a","b"]`), or items separated by commas and/or spaces;
//! - an empty variable counts as unset.
//!
//! Setting a secret (or its `_file`) from the environment replaces whichever of the pair the
//! file had. An unknown `SIDEWIRE_*` variable is *reported* (see [`unknown_variables`]) only
//! when it starts with the name of a top-level key (`SIDEWIRE_HUB_…`, `SIDEWIRE_LISTEN…`);
//! others (`SIDEWIRE_BIN`, `SIDEWIRE_TEST_LOG`) belong to other tools and are ignored.
//! Values are never logged, only variable names.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::schema::{Kind, Schema};
use super::secret::{self, FILE_SUFFIX};

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "SIDEWIRE_";

/// The variable name of a dotted key path: `hub.http_api.key` → `SIDEWIRE_HUB_HTTP_API_KEY`.
pub fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

/// Every override variable the schema accepts: name → (dotted path, kind).
pub fn known_variables(schema: &Schema) -> BTreeMap<String, (String, Kind)> {
    let mut known = BTreeMap::new();
    for (path, kind) in &schema.leaves {
        known.insert(env_name(path), (path.clone(), *kind));
    }
    for path in secret::present(schema) {
        let file = format!("{path}{FILE_SUFFIX}");
        known.insert(env_name(&file), (file, Kind::Text));
    }
    known
}

/// `SIDEWIRE_*` variables that look like config keys (their name starts with a top-level
/// key) but match none; sorted, names only.
pub fn unknown_variables(schema: &Schema, vars: &[(String, String)]) -> Vec<String> {
    let known = known_variables(schema);
    let top: &[&str] = schema.sections.get("").map(Vec::as_slice).unwrap_or(&[]);
    let mut unknown: Vec<String> = vars
        .iter()
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            let looks_like_key = top
                .iter()
                .any(|key| rest == *key || rest.starts_with(&format!("{key}_")));
            (looks_like_key && !known.contains_key(name)).then(|| name.clone())
        })
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Names of the known, non-empty override variables of `vars` (sorted): what [`apply`] uses.
pub fn applied_variables(schema: &Schema, vars: &[(String, String)]) -> Vec<String> {
    let known = known_variables(schema);
    let mut applied: Vec<String> = vars
        .iter()
        .filter(|(name, value)| !value.is_empty() && known.contains_key(name))
        .map(|(name, _)| name.clone())
        .collect();
    applied.sort();
    applied.dedup();
    applied
}

/// Applies the known, non-empty override variables of `vars` to the config `tree`; returns
/// the names applied (sorted), or every problem (each naming its variable; no values of
/// secrets).
pub fn apply(
    tree: &mut Value,
    schema: &Schema,
    vars: &[(String, String)],
) -> Result<Vec<String>, Vec<String>> {
    let known = known_variables(schema);
    let mut problems = Vec::new();
    let mut set: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for (name, raw) in vars {
        let Some((path, kind)) = known.get(name) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        match convert(raw, *kind) {
            Ok(value) => {
                set.insert(path.clone(), (name.clone(), value));
            }
            Err(problem) => problems.push(format!("{name} (for {path}): {problem}")),
        }
    }
    // A secret from the environment replaces its pair in the file; both from the
    // environment is ambiguous.
    for path in secret::present(schema) {
        let file = format!("{path}{FILE_SUFFIX}");
        match (set.contains_key(&path), set.contains_key(&file)) {
            (true, true) => problems.push(format!(
                "{} and {}: both set; use one",
                env_name(&path),
                env_name(&file)
            )),
            (true, false) => remove(tree, &file),
            (false, true) => remove(tree, &path),
            (false, false) => {}
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut applied = Vec::new();
    for (path, (name, value)) in set {
        insert(tree, &path, value);
        applied.push(name);
    }
    applied.sort();
    Ok(applied)
}

/// Converts one variable's text to the JSON value its key takes.
fn convert(raw: &str, kind: Kind) -> Result<Value, String> {
    let text = raw.trim();
    match kind {
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(Value::Bool(true)),
            "0" | "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        },
        Kind::Integer => text
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| text.parse::<i64>().map(Value::from))
            .map_err(|_| format!("expected a whole number, got {text:?}")),
        Kind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {text:?}")),
        // Not trimmed: a secret may end with spaces on purpose.
        Kind::Text => Ok(Value::String(raw.to_owned())),
        Kind::List if text.starts_with('[') => match serde_json::from_str::<Value>(text) {
            Ok(list @ Value::Array(_)) => Ok(list),
            _ => Err("expected a JSON array or comma-separated items".to_owned()),
        },
        Kind::List => Ok(Value::Array(
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        )),
        Kind::Other => {
            Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(raw.to_owned())))
        }
    }
}

/// Sets `path` in `tree`, turning missing or null sections on the way into mappings (so an
/// override of `upstream.endpoint` enables an `upstream` section the file lacks).
pub(crate) fn insert(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if segments.peek().is_none() {
            map.insert(segment.to_owned(), value);
            return;
        }
        node = map.entry(segment.to_owned()).or_insert(Value::Null);
    }
}

/// Removes `path` from `tree` when present.
pub(crate) fn remove(tree: &mut Value, path: &str) {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (lookup_mut(tree, parent), key),
        None => (Some(tree), path),
    };
    if let Some(Value::Object(map)) = parent {
        map.remove(key);
    }
}

/// The node at `path`, when every section on the way exists.
pub(crate) fn lookup_mut<'t>(tree: &'t mut Value, path: &str) -> Option<&'t mut Value> {
    path.split('.')
        .try_fold(tree, |node, segment| node.as_object_mut()?.get_mut(segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::schema::trace;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_follow_the_dotted_path() {
        assert_eq!(env_name("listen"), "SIDEWIRE_LISTEN");
        assert_eq!(env_name("hub.http_api.key"), "SIDEWIRE_HUB_HTTP_API_KEY");
        assert_eq!(
            env_name("shutdown.drain_window"),
            "SIDEWIRE_SHUTDOWN_DRAIN_WINDOW"
        );
        let known = known_variables(&trace::<Config>());
        for name in [
            "SIDEWIRE_LISTEN",
            "SIDEWIRE_PING_INTERVAL",
            "SIDEWIRE_HUB_HTTP_API_KEY",
            "SIDEWIRE_HUB_HTTP_API_KEY_FILE",
            "SIDEWIRE_HUB_CLIENT_TOKEN_HMAC_SECRET_KEY_FILE",
            "SIDEWIRE_HUB_CLIENT_SUBSCRIPTION_TOKEN_HMAC_SECRET_KEY_FILE",
            "SIDEWIRE_BACKEND_URL",
            "SIDEWIRE_SHUTDOWN_DRAIN_WINDOW",
            "SIDEWIRE_HUB_TLS_CERT_FILE",
            "SIDEWIRE_ALLOWED_ORIGINS",
            // Keys added by others after this mechanism: covered without a list.
            "SIDEWIRE_HUB_CLIENT_CHANNEL_LIMIT",
            "SIDEWIRE_HUB_CHANNEL_MAX_LENGTH",
            "SIDEWIRE_HUB_BINARY_CHANNELS",
        ] {
            assert!(known.contains_key(name), "{name} not known");
        }
    }

    #[test]
    fn no_two_keys_share_a_variable() {
        let schema = trace::<Config>();
        let known = known_variables(&schema);
        let expected = schema.leaves.len() + secret::present(&schema).len();
        assert_eq!(known.len(), expected, "colliding names in {known:?}");
    }

    #[test]
    fn overrides_convert_by_kind_and_nest() {
        let schema = trace::<Config>();
        let mut tree = serde_json::json!({"hub": null, "websocket": true});
        let applied = apply(
            &mut tree,
            &schema,
            &vars(&[
                ("SIDEWIRE_PING_INTERVAL", "40s"),
                ("SIDEWIRE_WEBSOCKET", "false"),
                ("SIDEWIRE_SSE", "1"),
                ("SIDEWIRE_QUEUE_MAX_SIZE", "4096"),
                ("SIDEWIRE_HUB_HTTP_API_KEY", "k"),
                ("SIDEWIRE_SHUTDOWN_DRAIN_WINDOW", "3s"),
                (
                    "SIDEWIRE_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("SIDEWIRE_FORWARD_HEADERS", r#"["x-one","x-two"]"#),
                ("SIDEWIRE_LOG_LEVEL", ""),
                ("SIDEWIRE_BIN", "/usr/bin/sidewire"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 8, "{applied:?}");
        let config: Config = serde_json::from_value(tree).unwrap();
        assert_eq!(config.ping_interval, std::time::Duration::from_secs(40));
        assert!(!config.websocket);
        assert!(config.sse);
        assert_eq!(config.queue_max_size, 4096);
        assert_eq!(config.hub.http_api.key.as_deref(), Some("k"));
        assert_eq!(
            config.shutdown.drain_window,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(config.forward_headers, ["x-one", "x-two"]);
        assert_eq!(config.log.level, "info", "empty variable = unset");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let schema = trace::<Config>();
        let mut tree = serde_json::json!({});
        let problems = apply(
            &mut tree,
            &schema,
            &vars(&[
                ("SIDEWIRE_WEBSOCKET", "maybe"),
                ("SIDEWIRE_QUEUE_MAX_SIZE", "lots"),
                ("SIDEWIRE_ALLOWED_ORIGINS", "[1, "),
            ]),
        )
        .unwrap_err();
        let text = problems.join("\n");
        for name in [
            "SIDEWIRE_WEBSOCKET",
            "SIDEWIRE_QUEUE_MAX_SIZE",
            "SIDEWIRE_ALLOWED_ORIGINS",
        ] {
            assert!(text.contains(name), "{name} missing in {text}");
        }
    }

    #[test]
    fn unknown_variables_are_reported_only_under_known_sections() {
        let schema = trace::<Config>();
        let unknown = unknown_variables(
            &schema,
            &vars(&[
                ("SIDEWIRE_HUB_APIKEY", "x"),
                ("SIDEWIRE_LISTEN_ADDR", "x"),
                ("SIDEWIRE_LISTEN", "127.0.0.1:1"),
                ("SIDEWIRE_BIN", "x"),
                ("SIDEWIRE_TEST_LOG", "1"),
                ("HOME", "/root"),
            ]),
        );
        assert_eq!(unknown, ["SIDEWIRE_HUB_APIKEY", "SIDEWIRE_LISTEN_ADDR"]);
    }

    #[test]
    fn environment_secret_replaces_the_file_pair() {
        let schema = trace::<Config>();
        let mut tree = serde_json::json!({"hub": {"http_api": {"key_file": "/nonexistent"}}});
        apply(
            &mut tree,
            &schema,
            &vars(&[("SIDEWIRE_HUB_HTTP_API_KEY", "k")]),
        )
        .unwrap();
        assert_eq!(tree, serde_json::json!({"hub": {"http_api": {"key": "k"}}}));

        let problems = apply(
            &mut tree,
            &schema,
            &vars(&[
                ("SIDEWIRE_HUB_HTTP_API_KEY", "k"),
                ("SIDEWIRE_HUB_HTTP_API_KEY_FILE", "/f"),
            ]),
        )
        .unwrap_err();
        assert!(
            problems[0].contains("SIDEWIRE_HUB_HTTP_API_KEY_FILE"),
            "{problems:?}"
        );
    }
}
