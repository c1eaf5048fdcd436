//! `log.*`: the log filter, parsed once when the config is read, and the line format.
//!
//! Guarantee: a [`LogLevel`] holds directives that parsed; building its filter cannot fail,
//! so neither startup nor a reload has a fallback path for a bad level.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

/// Default `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info` or `sidewire=debug` (default `info`).
    pub level: LogLevel,
    /// Output format.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A parsed `log.level`: the text as written (compared on reload, shown in errors) and its
/// directives.
#[derive(Debug, Clone)]
pub struct LogLevel {
    text: String,
    directives: Vec<Directive>,
}

/// Why a `log.level` is not a valid filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log.level: not a valid filter: {text:?} ({reason})")]
pub struct LogLevelError {
    /// The rejected text.
    pub text: String,
    /// The parser's reason.
    pub reason: String,
}

impl LogLevel {
    /// The text as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A fresh filter with these directives (`EnvFilter` is not `Clone`; this only copies the
    /// parsed directives, it does not parse again).
    pub fn filter(&self) -> EnvFilter {
        self.directives
            .iter()
            .cloned()
            .fold(EnvFilter::default(), EnvFilter::add_directive)
    }
}

impl FromStr for LogLevel {
    type Err = LogLevelError;

    /// Parses comma-separated directives, as `EnvFilter` does (empty entries are skipped).
    fn from_str(text: &str) -> Result<LogLevel, LogLevelError> {
        let directives = text
            .split(',')
            .filter(|part| !part.is_empty())
            .map(Directive::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| LogLevelError {
                text: text.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(LogLevel {
            text: text.to_owned(),
            directives,
        })
    }
}

impl Default for LogLevel {
    fn default() -> LogLevel {
        LogLevel {
            text: DEFAULT_LOG_LEVEL.to_owned(),
            directives: vec![Directive::from(tracing::Level::INFO)],
        }
    }
}

impl PartialEq for LogLevel {
    fn eq(&self, other: &LogLevel) -> bool {
        self.text == other.text
    }
}

impl PartialEq<&str> for LogLevel {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LogLevel, D::Error> {
        struct LevelVisitor;
        impl Visitor<'_> for LevelVisitor {
            type Value = LogLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a log filter such as \"info\" or \"sidewire=debug\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<LogLevel, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(LevelVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_once_and_bad_ones_name_the_field() {
        let level: LogLevel = "warn,sidewire=debug".parse().unwrap();
        assert_eq!(level.directives.len(), 2);
        assert_eq!(level, "warn,sidewire=debug");
        assert_eq!(LogLevel::default(), DEFAULT_LOG_LEVEL);
        let error = "sidewire=loud".parse::<LogLevel>().unwrap_err().to_string();
        assert!(error.starts_with("log.level: "), "{error}");
        assert_eq!(
            level.filter().to_string(),
            EnvFilter::new("warn,sidewire=debug").to_string()
        );
    }

    #[test]
    fn a_bad_level_is_a_config_error_naming_log_level() {
        let error = crate::config::Config::from_yaml("log:\n  level: \"sidewire=loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("log.level"), "{error}");
    }
}
