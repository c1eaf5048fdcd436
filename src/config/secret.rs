//! Secret settings read from files: `<key>_file` next to a secret key.
//!
//! ```yaml
//! hub:
//!   http_api:
//!     key_file: /var/run/secrets/sidewire/api-key   # instead of key: ...
//! ```
//!
//! The file's content, without trailing newlines (`\n`, `\r\n`), becomes the key's value.
//! Both the key and its `_file` set → error naming both; an unreadable file → error naming
//! the `_file` field and the path. Files are read on every load, so a reload (SIGHUP or a
//! config change) picks up a rotated Kubernetes Secret.
//!
//! **Adding a secret key** (for everyone adding one): declare the field as a plain
//! `Option<String>` in the schema and append its dotted path to [`SECRET_KEYS`]. That is all:
//! `<key>_file` in YAML, `SIDEWIRE_<KEY>` and `SIDEWIRE_<KEY>_FILE` in the environment all
//! work from then on. Paths listed here that the schema does not (yet) have are ignored.

use std::path::PathBuf;

use serde_json::Value;

use super::env::lookup_mut;
use super::schema::Schema;

/// Dotted paths of the secret settings (each may come from `<path>_file`).
pub const SECRET_KEYS: &[&str] = &[
    "hub.http_api.key",
    "hub.client.token.hmac_secret_key",
    "hub.client.token.hmac_previous_secret_key",
    "hub.link_token",
    "hub.client.token.rsa_public_key",
    "hub.client.token.ecdsa_public_key",
    "hub.client.subscription_token.hmac_secret_key",
    "hub.client.subscription_token.hmac_previous_secret_key",
    "hub.client.subscription_token.rsa_public_key",
    "hub.client.subscription_token.ecdsa_public_key",
    "upstream.token",
    "engine.redis.password",
];

/// Suffix of the sibling key naming a secret's file.
pub const FILE_SUFFIX: &str = "_file";

/// The secret keys the schema actually has.
pub fn present(schema: &Schema) -> Vec<String> {
    SECRET_KEYS
        .iter()
        .filter(|path| schema.leaves.contains_key(**path))
        .map(|path| (*path).to_owned())
        .collect()
}

/// Whether `path` is a secret (or a secret's `_file`): its value must not be logged.
pub fn is_secret(path: &str) -> bool {
    let base = path.strip_suffix(FILE_SUFFIX).unwrap_or(path);
    SECRET_KEYS.contains(&base)
}

/// Replaces every `<secret>_file` of `tree` with `<secret>: <file content>`; returns whether
/// anything changed, or every problem (each naming its field).
pub fn resolve(tree: &mut Value, schema: &Schema) -> Result<bool, Vec<String>> {
    let mut changed = false;
    let mut problems = Vec::new();
    for path in present(schema) {
        let (parent, name) = match path.rsplit_once('.') {
            Some((parent, name)) => (lookup_mut(tree, parent), name),
            None => (Some(&mut *tree), path.as_str()),
        };
        let Some(Value::Object(section)) = parent else {
            continue;
        };
        let file_key = format!("{name}{FILE_SUFFIX}");
        let Some(file) = section.remove(&file_key) else {
            continue;
        };
        changed = true;
        let file = match file {
            Value::Null => continue,
            Value::String(file) => file,
            _ => {
                problems.push(format!("{path}{FILE_SUFFIX}: must be a file path"));
                continue;
            }
        };
        if section.get(name).is_some_and(|value| !value.is_null()) {
            problems.push(format!(
                "{path}: set together with {path}{FILE_SUFFIX}; use one"
            ));
            continue;
        }
        match read_secret(&file) {
            Ok(secret) => {
                section.insert(name.to_owned(), Value::String(secret));
            }
            Err(error) => problems.push(format!(
                "{path}{FILE_SUFFIX}: cannot read {file:?}: {error}"
            )),
        }
    }
    if problems.is_empty() {
        Ok(changed)
    } else {
        Err(problems)
    }
}

/// The files named by `<secret>_file` keys of `tree` (for watching them).
pub fn files(tree: &mut Value, schema: &Schema) -> Vec<PathBuf> {
    present(schema)
        .iter()
        .filter_map(|path| {
            let file = format!("{path}{FILE_SUFFIX}");
            lookup_mut(tree, &file)?.as_str().map(PathBuf::from)
        })
        .collect()
}

/// Reads a secret file: its content without trailing line breaks.
fn read_secret(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::schema::trace;
    use serde_json::json;

    #[test]
    fn file_content_becomes_the_secret_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-key");
        std::fs::write(&path, "s3cret \n").unwrap();
        let mut tree = json!({"hub": {"http_api": {"key_file": path.to_str().unwrap()}}});
        assert_eq!(resolve(&mut tree, &trace::<Config>()), Ok(true));
        assert_eq!(tree, json!({"hub": {"http_api": {"key": "s3cret "}}}));
    }

    #[test]
    fn both_set_names_both_fields() {
        let mut tree = json!({"hub": {"client": {"token": {"hmac_secret_key": "x", "hmac_secret_key_file": "/f"}}}});
        let problems = resolve(&mut tree, &trace::<Config>()).unwrap_err();
        assert_eq!(
            problems,
            [
                "hub.client.token.hmac_secret_key: set together with hub.client.token.hmac_secret_key_file; use one"
            ]
        );
    }

    #[test]
    fn unreadable_file_names_field_and_path() {
        let mut tree = json!({"hub": {"http_api": {"key_file": "/nonexistent/sidewire-key"}}});
        let problems = resolve(&mut tree, &trace::<Config>()).unwrap_err();
        assert!(
            problems[0]
                .starts_with("hub.http_api.key_file: cannot read \"/nonexistent/sidewire-key\""),
            "{problems:?}"
        );
    }

    #[test]
    fn nothing_to_resolve_changes_nothing() {
        let mut tree = json!({"hub": {"http_api": {"key": "k"}}});
        assert_eq!(resolve(&mut tree, &trace::<Config>()), Ok(false));
        assert!(is_secret("hub.http_api.key_file"));
        assert!(is_secret("hub.client.subscription_token.hmac_secret_key"));
        assert!(!is_secret("hub.history_size"));
    }
}
