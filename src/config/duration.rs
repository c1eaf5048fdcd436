//! Human-readable durations in config files: `"25s"`, `"500ms"`, `"5m"`, `"1h"`, or `"0s"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m or h)"))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A duration read from a config file (`"25s"`, `"500ms"`, `"5m"`, `"1h"`): the one type every
/// duration field has, so parsing is written once, on the type, not on each field. Derefs to
/// [`std::time::Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(Duration);

impl ConfigDuration {
    /// Wraps `duration` (for defaults and tests).
    pub const fn new(duration: Duration) -> ConfigDuration {
        ConfigDuration(duration)
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl std::ops::Deref for ConfigDuration {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl From<Duration> for ConfigDuration {
    fn from(duration: Duration) -> ConfigDuration {
        ConfigDuration(duration)
    }
}

impl From<ConfigDuration> for Duration {
    fn from(duration: ConfigDuration) -> Duration {
        duration.0
    }
}

impl PartialEq<Duration> for ConfigDuration {
    fn eq(&self, other: &Duration) -> bool {
        self.0 == *other
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ConfigDuration, D::Error> {
        deserialize(deserializer).map(ConfigDuration)
    }
}

/// Reads a duration string (what [`ConfigDuration`] deserializes with).
fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"25s\" or \"500ms\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(DurationVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert!(parse("25").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5 days").is_err());
        assert!(parse("99999999999999999h").is_err());
    }

    #[test]
    fn config_duration_reads_the_same_strings_and_refuses_the_same() {
        #[derive(serde::Deserialize)]
        struct Holder {
            timeout: ConfigDuration,
        }
        let holder: Holder = serde_saphyr::from_str("timeout: \"1500ms\"\n").unwrap();
        assert_eq!(holder.timeout, Duration::from_millis(1500));
        assert_eq!(*holder.timeout, Duration::from_millis(1500));
        let error = serde_saphyr::from_str::<Holder>("timeout: \"5 days\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("unknown unit"), "{error}");
    }
}
