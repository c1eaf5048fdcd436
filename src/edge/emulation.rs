//! `/emulation`: commands of HTTP-stream and SSE sessions arrive as POSTs
//! (`{"node","session","data"}` JSON with `data` a string of newline-joined commands, or a
//! Protobuf `EmulationRequest` when Content-Type is exactly `application/octet-stream`) and are
//! fed to the session as if read from its stream. Replies go out on the stream.
//!
//! Answers: 204 delivered (also for an unknown session, as Centrifugo), 400 malformed body,
//! 404 unknown node, 413 too large, 503 session busy.
//!
//! With `engine.type: redis`, a POST naming another live node is routed to it
//! ([`crate::cluster`]) and answered once that node has queued the commands: 204 then (or for
//! an unknown session there), 404 for a node not heard from, 500 when Redis is unreachable or
//! the node does not answer within [`crate::cluster::ROUTE_TIMEOUT`], 503 when the session is
//! busy or too many routed POSTs are in flight.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prost::Message;
use serde::Deserialize;

use super::body::{is_protobuf, read_limited};
use super::{Edge, Settings};
use crate::cluster::{Outcome, RouteError};
use crate::http::{Body, empty, status};
use crate::metrics::OutcomeLabels;
use crate::protocol::client::EmulationRequest;
use crate::session::emulation::DeliverError;

#[derive(Deserialize)]
struct JsonEmulation {
    node: String,
    session: String,
    data: String,
}

/// Parses an emulation body into (node, session, inner data).
pub fn parse(body: &[u8], protobuf: bool) -> Option<(String, String, Bytes)> {
    if protobuf {
        let request = EmulationRequest::decode(body).ok()?;
        Some((request.node, request.session, request.data))
    } else {
        let request: JsonEmulation = serde_json::from_slice(body).ok()?;
        Some((request.node, request.session, Bytes::from(request.data)))
    }
}

/// Answers a request to `emulation_path`.
pub async fn handle(
    edge: &Arc<Edge>,
    settings: &Settings,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let protobuf = is_protobuf(request.headers());
    let (parts, body) = request.into_parts();
    let body = match read_limited(
        body,
        &parts.headers,
        settings.config.emulation_max_request_body_size,
        *settings.config.request_body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(code) => return edge.body_refused(code),
    };
    let count = |outcome: &'static str| {
        edge.metrics
            .emulation_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    };
    let Some((node, session, data)) = parse(&body, protobuf) else {
        count("bad_request");
        return status(StatusCode::BAD_REQUEST);
    };
    if node != *edge.node {
        let Some(cluster) = edge.cluster() else {
            count("unknown_node");
            return status(StatusCode::NOT_FOUND);
        };
        let (outcome, code) = routed_answer(cluster.route(&node, &session, data).await);
        count(outcome);
        return status(code);
    }
    let code = match edge.emulation.deliver(&session, data).await {
        Ok(()) => {
            count("delivered");
            StatusCode::NO_CONTENT
        }
        Err(DeliverError::UnknownSession) => {
            count("unknown_session");
            StatusCode::NO_CONTENT
        }
        Err(DeliverError::Busy) => {
            count("busy");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let mut response = Response::new(empty());
    *response.status_mut() = code;
    response
}

/// The metrics outcome and the HTTP status for a routed POST.
fn routed_answer(result: Result<Outcome, RouteError>) -> (&'static str, StatusCode) {
    match result {
        Ok(Outcome::Delivered) => ("routed", StatusCode::NO_CONTENT),
        Ok(Outcome::UnknownSession) => ("routed_unknown_session", StatusCode::NO_CONTENT),
        Ok(Outcome::Busy) => ("routed_busy", StatusCode::SERVICE_UNAVAILABLE),
        Err(RouteError::UnknownNode) => ("unknown_node", StatusCode::NOT_FOUND),
        Err(RouteError::Unavailable) => ("route_unavailable", StatusCode::INTERNAL_SERVER_ERROR),
        Err(RouteError::Timeout) => ("route_timeout", StatusCode::INTERNAL_SERVER_ERROR),
        Err(RouteError::Overloaded) => ("route_overloaded", StatusCode::SERVICE_UNAVAILABLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let json =
            br#"{"session":"s","node":"n","data":"{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}"}"#;
        let (node, session, data) = parse(json, false).unwrap();
        assert_eq!((node.as_str(), session.as_str()), ("n", "s"));
        assert_eq!(&data[..], br#"{"id":2,"subscribe":{"channel":"c"}}"#);
        let protobuf = EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: Bytes::from_static(&[0]),
        }
        .encode_to_vec();
        assert_eq!(parse(&protobuf, true).unwrap().2, Bytes::from_static(&[0]));
        assert!(parse(b"{}", false).is_none());
        assert!(parse(b"\xff\xff", true).is_none());
    }

    #[test]
    fn routed_answers_follow_centrifugo() {
        assert_eq!(
            routed_answer(Ok(Outcome::Delivered)).1,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            routed_answer(Ok(Outcome::UnknownSession)).1,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            routed_answer(Ok(Outcome::Busy)).1,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            routed_answer(Err(RouteError::UnknownNode)).1,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            routed_answer(Err(RouteError::Timeout)).1,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            routed_answer(Err(RouteError::Unavailable)).1,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            routed_answer(Err(RouteError::Overloaded)).1,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
