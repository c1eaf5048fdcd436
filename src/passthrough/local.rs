//! Requests the proxy answers itself instead of forwarding: `CONNECT` (no tunnels: 405) and
//! asterisk-form targets (`OPTIONS *`: 200 with `Allow`; anything else with `*`: 400).
//!
//! Guarantee: neither ever reaches the backend, nor makes the proxy connect anywhere.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Uri};

use crate::http::{Body, empty, status};

/// The methods the passthrough forwards, advertised in `Allow`.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The local answer for `method` / `uri`, or `None` when the request is to be routed.
pub fn answer(method: &Method, uri: &Uri) -> Option<Response<Body>> {
    if method == Method::CONNECT {
        let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
        allow(&mut response);
        return Some(response);
    }
    if uri.path() != "*" {
        return None;
    }
    if method != Method::OPTIONS {
        return Some(status(StatusCode::BAD_REQUEST));
    }
    let mut response = Response::new(empty());
    allow(&mut response);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(response)
}

fn allow(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_asterisk_are_answered_locally() {
        let star = Uri::from_static("*");
        let answered = answer(&Method::OPTIONS, &star).unwrap();
        assert_eq!(answered.status(), StatusCode::OK);
        assert_eq!(answered.headers()[header::ALLOW], ALLOWED_METHODS);
        assert_eq!(
            answer(&Method::GET, &star).unwrap().status(),
            StatusCode::BAD_REQUEST
        );
        let authority = Uri::from_static("example.com:443");
        let answered = answer(&Method::CONNECT, &authority).unwrap();
        assert_eq!(answered.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(answered.headers().contains_key(header::ALLOW));
        assert!(answer(&Method::OPTIONS, &Uri::from_static("/x")).is_none());
        assert!(answer(&Method::GET, &Uri::from_static("/")).is_none());
    }
}
