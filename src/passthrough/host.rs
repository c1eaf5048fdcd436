//! The host a client addressed: taken from the request target's authority (HTTP/2
//! `:authority`, HTTP/1.1 absolute-form) or else the single `Host` header, and validated.
//!
//! Guarantee: a host returned by [`client_host`] is an RFC 3986 `reg-name` (without `,`, the
//! list separator of `X-Forwarded-Host`) or an IPv6 literal, with an optional numeric port, so
//! it can never carry quotes, spaces or list/parameter syntax into a forwarding header.

use std::net::Ipv6Addr;

use http::Uri;
use http::header::{self, HeaderMap};
use thiserror::Error;

/// Why a request's host is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    /// More than one `Host` header (RFC 9112 §3.2).
    #[error("more than one Host header")]
    Duplicate,
    /// A host that is not `reg-name` / IPv6 literal with an optional port.
    #[error("invalid host {0:?}")]
    Invalid(String),
}

/// The validated host (with port, if any) the client addressed, or `None` when the request
/// names none (HTTP/1.0 without `Host`).
pub fn client_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<String>, HostError> {
    let mut values = headers.get_all(header::HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let header = header
        .map(|value| {
            value
                .to_str()
                .ok()
                .filter(|text| is_valid_host(text))
                .map(str::to_owned)
                .ok_or_else(|| HostError::Invalid(String::from_utf8_lossy(value.as_bytes()).into()))
        })
        .transpose()?;
    // The target's authority wins over Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    match uri.authority() {
        Some(authority) if is_valid_host(authority.as_str()) => {
            Ok(Some(authority.as_str().to_owned()))
        }
        Some(authority) => Err(HostError::Invalid(authority.as_str().to_owned())),
        None => Ok(header),
    }
}

/// `host [":" port]` with host an IPv6 literal or a `reg-name` without `,`.
pub fn is_valid_host(text: &str) -> bool {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("[]", Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    port_ok && (host == "[]" || is_reg_name(host))
}

/// RFC 3986 `reg-name` (unreserved / pct-encoded / sub-delims), non-empty, without `,`.
fn is_reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3);
                if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                index += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' => {}
            _ => return false,
        }
        index += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_validated() {
        for good in [
            "app.example",
            "app.example:8080",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a%20b",
            "under_score",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a\", for=6.6.6.6;host=\"b",
            "a b",
            "a,b",
            "a:",
            "a:123456",
            "a:8x",
            "[::1",
            "[::1]x",
            "[nope]",
            "user@host",
            "a/b",
            "a\\b",
            "%zz",
            "a\"b",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, host.parse().unwrap());
        }
        headers
    }

    #[test]
    fn authority_wins_and_duplicates_are_refused() {
        let origin_form: Uri = "/x".parse().unwrap();
        assert_eq!(
            client_host(&origin_form, &headers(&["app.example"])),
            Ok(Some("app.example".into()))
        );
        assert_eq!(client_host(&origin_form, &headers(&[])), Ok(None));
        assert_eq!(
            client_host(&origin_form, &headers(&["a", "b"])),
            Err(HostError::Duplicate)
        );
        assert!(matches!(
            client_host(&origin_form, &headers(&["a\", for=6.6.6.6;host=\"b"])),
            Err(HostError::Invalid(_))
        ));
        let h2: Uri = "https://public.example:8443/x".parse().unwrap();
        assert_eq!(
            client_host(&h2, &headers(&[])),
            Ok(Some("public.example:8443".into()))
        );
        assert_eq!(
            client_host(&h2, &headers(&["other.example"])),
            Ok(Some("public.example:8443".into()))
        );
        let userinfo: Uri = "http://user@host/x".parse().unwrap();
        assert!(matches!(
            client_host(&userinfo, &headers(&[])),
            Err(HostError::Invalid(_))
        ));
    }
}
