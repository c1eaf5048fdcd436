//! The admin listener (never the client port): `/healthz` (process alive), `/readyz` (Link up,
//! config valid, not draining), `/metrics` (OpenMetrics text) and, when the hub is embedded,
//! its server API under `/api/`.

pub mod metrics;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::edge::Edge;
use crate::http::{Body, full, json, status};
use crate::hub::{Hub, api};
use crate::link::LinkState;

/// What the admin handlers read.
pub struct Admin {
    /// The client edge: its current settings decide readiness.
    pub edge: Arc<Edge>,
    /// The embedded hub, when there is one (serves `/api/`).
    pub hub: Option<Hub>,
}

impl Admin {
    /// Routes one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" => {
                let settings = self.edge.settings();
                let link_up = settings.link.state() == LinkState::Up;
                let draining = self.edge.is_draining();
                let ready = link_up && !draining;
                let body =
                    format!(r#"{{"ready":{ready},"link_up":{link_up},"draining":{draining}}}"#);
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, body)
            }
            "/metrics" => {
                let mut response = Response::new(full(self.edge.metrics.encode()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ if path.starts_with("/api/") => {
                let settings = self.edge.settings();
                // The embedded hub's API is served only while the hub is the upstream.
                match (&self.hub, &settings.config.upstream) {
                    (Some(hub), None) => {
                        let api_key = settings.config.hub.api_key.clone();
                        api_call(hub, api_key.as_deref(), request).await
                    }
                    _ => status(StatusCode::NOT_FOUND),
                }
            }
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

/// Reads a bounded body and answers a server API call.
pub async fn api_call(
    hub: &Hub,
    api_key: Option<&str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body: Bytes = match Limited::new(body, api::MAX_API_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    api::respond(
        hub,
        api_key,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        &body,
    )
}
