//! The `allowed_origins` policy: glob patterns (`*`, `?`) matched case-insensitively against
//! the whole Origin header. A request without Origin passes; `["*"]` allows everything.

use std::collections::HashSet;
use std::sync::Mutex;

use http::HeaderMap;
use wildmatch::WildMatch;

/// Distinct rejected origins remembered for "log once" (beyond it, rejections are not logged).
const MAX_LOGGED_ORIGINS: usize = 1024;

/// Compiled origin policy.
#[derive(Debug)]
pub struct OriginPolicy {
    allow_all: bool,
    patterns: Vec<WildMatch>,
    logged: Mutex<HashSet<String>>,
}

impl OriginPolicy {
    /// Compiles the configured patterns.
    pub fn new(patterns: &[String]) -> OriginPolicy {
        OriginPolicy {
            allow_all: patterns.iter().any(|p| p.trim() == "*"),
            patterns: patterns
                .iter()
                .map(|p| WildMatch::new_case_insensitive(p.trim()))
                .collect(),
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `origin` (the header's value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_all || self.patterns.iter().any(|p| p.matches(origin))
    }

    /// Checks a request's headers; logs a rejected origin once per distinct value.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            return true;
        };
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if self.allows(&origin) {
            return true;
        }
        let mut logged = crate::sync::lock(&self.logged);
        if logged.len() < MAX_LOGGED_ORIGINS && logged.insert(origin.to_string()) {
            tracing::warn!(%origin, "origin rejected (allowed_origins); logged once per origin");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn globs_match_whole_origin_case_insensitively() {
        let policy = policy(&["https://*.example.com", "http://localhost:*"]);
        assert!(policy.allows("https://app.Example.com"));
        assert!(policy.allows("HTTP://LOCALHOST:3000"));
        assert!(!policy.allows("https://example.com.evil.org"));
        assert!(!policy.allows("https://evil.com"));
    }

    #[test]
    fn star_allows_all_and_empty_allows_none() {
        assert!(policy(&["*"]).allows("https://anything"));
        assert!(!policy(&[]).allows("https://anything"));
    }

    #[test]
    fn missing_origin_passes() {
        assert!(policy(&[]).check(&HeaderMap::new()));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ORIGIN, "https://evil.com".parse().unwrap());
        assert!(!policy(&[]).check(&headers));
        assert!(!policy(&[]).check(&headers));
    }
}
