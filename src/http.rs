//! Small HTTP helpers shared by the listeners: one boxed body type, canned responses, and the
//! one scanner of comma-separated header tokens.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type carried by response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response sidewire writes.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text response with the status' reason phrase as body.
pub fn status(code: StatusCode) -> Response<Body> {
    let text = code.canonical_reason().unwrap_or("error");
    let mut response = Response::new(full(format!("{text}\n")));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response.
pub fn json(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The comma-separated tokens of every `name` header, trimmed, in order (values that are not
/// visible ASCII are skipped; empty tokens are kept).
pub fn header_tokens<'a>(
    headers: &'a HeaderMap,
    name: impl header::AsHeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// Whether some `name` header lists `token` (ASCII case-insensitive), e.g.
/// `Connection: keep-alive, Upgrade` has `upgrade`.
pub fn header_has_token(headers: &HeaderMap, name: impl header::AsHeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn tokens_span_repeated_headers_and_ignore_case_and_spaces() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive , X-Hop"),
        );
        headers.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let tokens: Vec<_> = header_tokens(&headers, header::CONNECTION).collect();
        assert_eq!(tokens, ["keep-alive", "X-Hop", "Upgrade"]);
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(header_has_token(&headers, header::CONNECTION, "x-hop"));
        assert!(!header_has_token(&headers, header::CONNECTION, "close"));
        assert!(!header_has_token(&headers, header::UPGRADE, "websocket"));
        // A token is a whole item, not a substring.
        assert!(!header_has_token(&headers, header::CONNECTION, "keep"));
    }
}
