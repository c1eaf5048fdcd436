//! Header rewriting for the reverse proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! forwarding headers (`X-Forwarded-For/-Proto/-Host`, `Forwarded`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

/// Hop-by-hop headers, always removed when crossing the proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Whether the request is a WebSocket handshake we may pass through: HTTP/1.1 `GET` with
/// `Upgrade: websocket` (case-insensitive, the only protocol offered) and `Connection`
/// naming `upgrade`. Any other `Upgrade` is not a protocol switch for the proxy.
pub fn is_websocket_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let websocket = upgrades.next().is_some_and(|value| {
        value
            .to_str()
            .is_ok_and(|text| text.trim().eq_ignore_ascii_case("websocket"))
    }) && upgrades.next().is_none();
    websocket
        && method == Method::GET
        && version == Version::HTTP_11
        && crate::http::header_has_token(headers, header::CONNECTION, "upgrade")
}

/// Whether a response switches to WebSocket (`Upgrade: websocket`).
pub fn upgrades_to_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|text| text.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers and every header named in `Connection`. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive (protocol switch passed through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) names instead of a hashed removal per hop-by-hop name: most
    // messages carry none, or only `Connection`.
    if !headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = crate::http::header_tokens(headers, header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if keep_upgrade && let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What the proxy knows about the hop it is forwarding.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// How the peer reached us: `http` or `https`.
    pub proto: &'static str,
    /// The validated host the client addressed (see [`super::host`]).
    pub host: Option<&'a str>,
    /// Whether the peer is in `backend.trusted_proxies`.
    pub trusted: bool,
}

/// Whether `name` (any case) is a hop-by-hop header that never crosses the proxy (the fixed
/// list plus `Upgrade`; names listed in `Connection` come on top).
pub fn is_hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case(header::UPGRADE.as_str())
        || HOP_BY_HOP
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
}

/// What becomes of `X-Forwarded-Host` (see [`add_forwarding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedHost<'a> {
    /// The trusted peer's own values are kept.
    Keep,
    /// Replaced by this hop's host.
    Set(&'a str),
    /// Removed (the request names no host).
    Remove,
}

/// The forwarding headers of one hop (see [`add_forwarding`] for the policy), computed from
/// the client's header lines; what [`add_forwarding`] writes into a map and the owned HTTP/1
/// fast path writes after the client's lines.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The `X-Forwarded-For` value (replaces the client's lines).
    pub xff: String,
    /// The `Forwarded` value (replaces the client's lines).
    pub forwarded: String,
    /// `Some(proto)`: `X-Forwarded-Proto` replaced by it; `None`: the trusted peer's kept.
    pub proto: Option<&'static str>,
    /// `X-Forwarded-Host`.
    pub host: ForwardedHost<'a>,
}

/// Computes the forwarding headers of `hop` from the client's header lines `(name, value)`
/// (names in any case, values in arrival order), which `lines` iterates afresh at each call.
pub fn forwarding<'l, 'h, I>(lines: impl Fn() -> I, hop: &Hop<'h>) -> Forwarding<'h>
where
    I: Iterator<Item = (&'l str, &'l [u8])>,
{
    use std::fmt::Write as _;
    let peer = hop.peer.to_canonical();
    // Built in place: one string per header, each prior value copied once, the peer formatted
    // once.
    let mut xff = String::with_capacity(64);
    append_values(&mut xff, lines(), "x-forwarded-for", |_| true);
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    let peer_start = xff.len();
    let _ = write!(xff, "{peer}");
    let peer_text = &xff[peer_start..];

    let mut forwarded = String::with_capacity(64);
    append_values(
        &mut forwarded,
        lines(),
        header::FORWARDED.as_str(),
        well_formed_forwarded,
    );
    if !forwarded.is_empty() {
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    match peer {
        IpAddr::V4(_) => forwarded.push_str(peer_text),
        IpAddr::V6(_) => {
            forwarded.push_str("\"[");
            forwarded.push_str(peer_text);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(hop.proto);
    if let Some(host) = hop.host {
        forwarded.push_str(";host=");
        push_quoted_string(&mut forwarded, host);
    }
    let keep = |name: &str| hop.trusted && lines().any(|(line, _)| line.eq_ignore_ascii_case(name));
    let proto = (!keep("x-forwarded-proto")).then_some(hop.proto);
    let host = if keep("x-forwarded-host") {
        ForwardedHost::Keep
    } else {
        match hop.host {
            Some(host) => ForwardedHost::Set(host),
            None => ForwardedHost::Remove,
        }
    };
    Forwarding {
        xff,
        forwarded,
        proto,
        host,
    }
}

/// Sets the forwarding headers. Policy:
/// - `X-Forwarded-For`: the client's values (all lines, joined) with the peer appended;
/// - `Forwarded`: the client's value, if well-formed (RFC 7239), with an element for this hop
///   appended (`for`, `proto`, and `host` as an escaped quoted-string); a malformed value is
///   dropped, so it cannot swallow the appended element;
/// - `X-Forwarded-Host` / `X-Forwarded-Proto`: kept from a trusted peer that sent them,
///   otherwise overwritten with this hop's host and proto (`X-Forwarded-Host` removed when the
///   request names no host).
pub fn add_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let Forwarding {
        xff,
        forwarded,
        proto,
        host,
    } = forwarding(
        || {
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
        },
        hop,
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert("x-forwarded-for", value);
    }
    if let Some(proto) = proto {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    match host {
        ForwardedHost::Keep => {}
        ForwardedHost::Set(host) => {
            if let Ok(host) = HeaderValue::from_str(host) {
                headers.insert("x-forwarded-host", host);
            } else {
                headers.remove("x-forwarded-host");
            }
        }
        ForwardedHost::Remove => {
            headers.remove("x-forwarded-host");
        }
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
        headers.insert(header::FORWARDED, value);
    }
}

/// Appends to `out`, joined by `", "`, every non-empty, visible-ASCII value of `name` (trimmed,
/// in order) that `keep` accepts.
fn append_values<'l>(
    out: &mut String,
    lines: impl Iterator<Item = (&'l str, &'l [u8])>,
    name: &str,
    keep: impl Fn(&str) -> bool,
) {
    for value in lines
        .filter(|(line, _)| line.eq_ignore_ascii_case(name))
        .filter_map(|(_, value)| visible_ascii(value))
        .map(str::trim)
        .filter(|v| !v.is_empty() && keep(v))
    {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(value);
    }
}

/// `value` as text when it is visible ASCII (tab allowed), as `HeaderValue::to_str` accepts.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| (32..127).contains(&b) || b == b'\t')
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// `text` as an RFC 7230 quoted-string (`"` and `\` escaped).
#[cfg(test)]
fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_quoted_string(&mut out, text);
    out
}

/// Appends `text` to `out` as an RFC 7230 quoted-string (`"` and `\` escaped).
fn push_quoted_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// RFC 7239: `1#forwarded-element`, each `[pair] *( ";" [pair] )`, a pair being
/// `token "=" ( token / quoted-string )`.
fn well_formed_forwarded(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut index = 0;
    let skip_ows = |index: &mut usize| {
        while bytes.get(*index).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *index += 1;
        }
    };
    let token = |index: &mut usize| {
        let start = *index;
        while bytes.get(*index).is_some_and(|b| is_tchar(*b)) {
            *index += 1;
        }
        *index > start
    };
    loop {
        skip_ows(&mut index);
        if token(&mut index) {
            if bytes.get(index) != Some(&b'=') {
                return false;
            }
            index += 1;
            if bytes.get(index) == Some(&b'"') {
                index += 1;
                loop {
                    match bytes.get(index) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => index += 2,
                        Some(_) => index += 1,
                    }
                }
                index += 1;
            } else if !token(&mut index) {
                return false;
            }
        }
        skip_ows(&mut index);
        match bytes.get(index) {
            None => return true,
            Some(b';' | b',') => index += 1,
            Some(_) => return false,
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn connection_tokens_match_names_case_insensitively_and_odd_tokens_are_harmless() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, "close, X-Secret".parse().unwrap());
        headers.append(
            header::CONNECTION,
            " ,x-other , not a name,".parse().unwrap(),
        );
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("x-other", "1".parse().unwrap());
        headers.insert(header::UPGRADE, "h2c".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key(header::UPGRADE));
    }

    fn upgrade_headers(upgrade: &str, connection: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, connection.parse().unwrap());
        headers.insert(header::UPGRADE, upgrade.parse().unwrap());
        headers
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        assert!(is_websocket_upgrade(
            &get,
            v11,
            &upgrade_headers("WebSocket", "keep-alive, Upgrade")
        ));
        for (upgrade, connection) in [
            ("h2c", "upgrade"),
            ("TLS/1.2", "upgrade"),
            ("websocket, h2c", "upgrade"),
            ("websocket", "keep-alive"),
        ] {
            assert!(
                !is_websocket_upgrade(&get, v11, &upgrade_headers(upgrade, connection)),
                "{upgrade} / {connection}"
            );
        }
        let ws = upgrade_headers("websocket", "upgrade");
        assert!(!is_websocket_upgrade(&Method::POST, v11, &ws));
        assert!(!is_websocket_upgrade(&get, Version::HTTP_10, &ws));
    }

    fn hop(host: Option<&str>, trusted: bool) -> Hop<'_> {
        Hop {
            peer: "::1".parse().unwrap(),
            proto: "https",
            host,
            trusted,
        }
    }

    #[test]
    fn forwarding_headers_append() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        headers.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        add_forwarding(&mut headers, &hop(Some("app.example"), false));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, ::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example");
        assert_eq!(
            headers[header::FORWARDED],
            "for=\"[::1]\";proto=https;host=\"app.example\""
        );
        let mut headers = HeaderMap::new();
        add_forwarding(
            &mut headers,
            &Hop {
                peer: "::ffff:192.0.2.1".parse().unwrap(),
                ..hop(None, false)
            },
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(headers[header::FORWARDED], "for=192.0.2.1;proto=https");
    }

    #[test]
    fn client_forwarded_host_and_proto_are_believed_from_trusted_peers_only() {
        let sent = || {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-host", "evil.example".parse().unwrap());
            headers.insert("x-forwarded-proto", "https".parse().unwrap());
            headers
        };
        let mut headers = sent();
        add_forwarding(
            &mut headers,
            &Hop {
                proto: "http",
                ..hop(None, false)
            },
        );
        assert!(!headers.contains_key("x-forwarded-host"));
        assert_eq!(headers["x-forwarded-proto"], "http");
        let mut headers = sent();
        add_forwarding(
            &mut headers,
            &Hop {
                proto: "http",
                ..hop(Some("real"), true)
            },
        );
        assert_eq!(headers["x-forwarded-host"], "evil.example");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_keeps_only_well_formed_prior_values_and_escapes_host() {
        assert!(well_formed_forwarded(
            "for=1.2.3.4;proto=http, for=\"[::1]\";host=\"a\\\"b\""
        ));
        assert!(well_formed_forwarded("for=a;;by=b"));
        assert!(!well_formed_forwarded("for=\"unterminated"));
        assert!(!well_formed_forwarded("for=a b"));
        assert!(!well_formed_forwarded("for"));
        assert_eq!(quoted_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        let mut headers = HeaderMap::new();
        headers.insert(header::FORWARDED, "for=\"x".parse().unwrap());
        add_forwarding(
            &mut headers,
            &Hop {
                peer: "192.0.2.1".parse().unwrap(),
                ..hop(Some("h"), false)
            },
        );
        assert_eq!(
            headers[header::FORWARDED],
            "for=192.0.2.1;proto=https;host=\"h\""
        );
    }
}
