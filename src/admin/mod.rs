//! The admin listener (never the client port): `/healthz` (process alive), `/readyz` (Link up
//! and not shutting down) and, when the hub is embedded, its server API under `/api/`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::http::{Body, json, status};
use crate::hub::{Hub, api};
use crate::link::{Link, LinkState};

/// What the admin handlers read.
pub struct Admin {
    /// The Link whose state decides readiness.
    pub link: Link,
    /// The embedded hub, when there is one (serves `/api/`).
    pub hub: Option<Hub>,
    /// The hub's API key.
    pub api_key: Option<String>,
    /// Fires on shutdown (readiness turns false).
    pub shutdown: watch::Receiver<bool>,
}

impl Admin {
    /// Routes one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" => {
                let link_up = self.link.state() == LinkState::Up;
                let draining = *self.shutdown.borrow();
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
            _ if path.starts_with("/api/") => match &self.hub {
                Some(hub) => api_call(hub, self.api_key.as_deref(), request).await,
                None => status(StatusCode::NOT_FOUND),
            },
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
