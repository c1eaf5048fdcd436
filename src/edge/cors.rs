//! CORS for the HTTP transports (HTTP-stream, SSE, emulation), driven by the same
//! `allowed_origins` policy as WebSocket. An allowed Origin is echoed with credentials; a
//! present, disallowed Origin is refused with 403 before any session exists (stricter than
//! Centrifugo, on purpose).

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::Edge;
use super::origin::OriginPolicy;
use crate::http::{Body, empty};

/// Outcome of the CORS check of a request.
#[derive(Debug)]
pub enum Cors {
    /// Go on; add these headers to the response.
    Allowed(Option<HeaderValue>),
    /// Answer now (403 for a disallowed origin, 204 for a preflight).
    Respond(Response<Body>),
}

/// Checks the origin and answers preflights. `methods` is the Allow-Methods value.
pub fn check(
    edge: &Edge,
    policy: &OriginPolicy,
    method: &Method,
    headers: &HeaderMap,
    methods: &'static str,
) -> Cors {
    if !policy.check(headers) {
        return Cors::Respond(edge.origin_rejected());
    }
    let origin = headers.get(header::ORIGIN).cloned();
    if method == Method::OPTIONS {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("300"),
        );
        if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            && !requested.is_empty()
            && requested != "null"
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        apply(out, origin.as_ref());
        return Cors::Respond(response);
    }
    Cors::Allowed(origin)
}

/// Adds the CORS headers for an allowed origin (nothing without Origin).
pub fn apply(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
