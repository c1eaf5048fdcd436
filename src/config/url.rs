//! `http://` / `https://` URLs of the config (`backend.url`, `upstream.endpoint`), parsed once
//! when the config is read: a real URI parse with a scheme and authority check.
//!
//! A text that does not parse is kept with the reason, so that [`super::Config::validate`]
//! reports it by its dotted field together with every other problem (serde stops at its
//! first error); a config that passed validation holds only parsed URLs.

use std::fmt;

use http::Uri;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// An `http(s)://host[:port][/path]` URL as written in the config, and its parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    parsed: Option<Uri>,
}

impl HttpUrl {
    /// Parses `text`; a URL without an `http`/`https` scheme or without a host is kept as
    /// invalid (see [`HttpUrl::uri`]).
    pub fn new(text: &str) -> HttpUrl {
        let parsed = text.parse::<Uri>().ok().filter(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
        });
        HttpUrl {
            text: text.to_owned(),
            parsed,
        }
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL; `None` only when it is invalid, which validation reports.
    pub fn uri(&self) -> Option<&Uri> {
        self.parsed.as_ref()
    }

    /// Whether the URL parsed with the `https` scheme.
    pub fn is_https(&self) -> bool {
        self.parsed
            .as_ref()
            .is_some_and(|uri| uri.scheme_str() == Some("https"))
    }
}

impl Default for HttpUrl {
    /// The empty (invalid) URL of a section written without its URL key.
    fn default() -> HttpUrl {
        HttpUrl::new("")
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<&str> for HttpUrl {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HttpUrl, D::Error> {
        struct UrlVisitor;
        impl Visitor<'_> for UrlVisitor {
            type Value = HttpUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an http:// or https:// URL")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HttpUrl, E> {
                Ok(HttpUrl::new(text))
            }
        }
        deserializer.deserialize_str(UrlVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_parse() {
        for good in ["http://h:1", "https://h", "http://127.0.0.1:9/prefix"] {
            assert!(HttpUrl::new(good).uri().is_some(), "{good}");
        }
        // A prefix check would take the first two.
        for bad in [
            "http://",
            "https://:80",
            "grpc://h:1",
            "h:1",
            "",
            "http://h h",
        ] {
            assert!(HttpUrl::new(bad).uri().is_none(), "{bad}");
        }
        assert!(HttpUrl::new("https://h:1").is_https());
        assert!(!HttpUrl::new("https://").is_https());
        assert_eq!(HttpUrl::new("http://h:1"), "http://h:1");
    }
}
