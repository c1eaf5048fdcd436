//! The admin listener (never the client port): `/healthz` (process alive), `/readyz` (the Link
//! is up, the process is not draining, and, when configured, the shared engine and the
//! emulation routing between replicas are connected), `/metrics` (OpenMetrics text) and, when
//! the hub is embedded, its server API under `/api/`. It reads the edge only through
//! [`EdgeView`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::config::Config;
use crate::config::HubConfig;
use crate::edge::body::read_limited;
use crate::http::{Body, full, json, status};
use crate::hub::{Hub, api};
use crate::metrics::Metrics;

/// What the admin listener reads of the client edge, and nothing more (`app` implements it for
/// the edge). Every method answers from the current settings snapshot, at once.
pub trait EdgeView: Send + Sync {
    /// The config of the current settings.
    fn config(&self) -> Arc<Config>;
    /// Whether the Link new sessions would use is up.
    fn link_up(&self) -> bool;
    /// Whether the process is draining or closing.
    fn draining(&self) -> bool;
    /// Whether emulation routing between replicas is ready (true without a cluster).
    fn cluster_ready(&self) -> bool;
}

/// What the admin handlers read.
pub struct Admin {
    /// The client edge: its current settings decide readiness.
    pub edge: Arc<dyn EdgeView>,
    /// Every counter (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// The embedded hub, when there is one (serves `/api/`).
    pub hub: Option<Hub>,
    /// The admin listener's bound address (decides [`ApiAccess`]).
    pub listen: SocketAddr,
}

/// Who may call the server API on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAccess {
    /// Callers must present this key.
    Key(String),
    /// No key: allowed because the listener is loopback-only or `hub.http_api.insecure` is set.
    Open,
    /// No key on a non-loopback listener: every call gets 403.
    Refused,
}

impl ApiAccess {
    /// The secure default: a key when one is set; without one, open only on a loopback
    /// listener or with `hub.http_api.insecure: true`.
    pub fn decide(listen: SocketAddr, hub: &HubConfig) -> ApiAccess {
        match &hub.http_api.key {
            Some(key) => ApiAccess::Key(key.clone()),
            None if listen.ip().is_loopback() || hub.http_api.insecure => ApiAccess::Open,
            None => ApiAccess::Refused,
        }
    }

    /// Logs at startup why the API is refused, if it is.
    pub fn log_startup(&self, listener: &'static str, listen: SocketAddr) {
        if *self == ApiAccess::Refused {
            tracing::warn!(
                listener,
                %listen,
                "server API refused (403): the listener is not loopback-only and hub.http_api.key \
                 is unset; set hub.http_api.key, bind it to 127.0.0.1, or set hub.http_api.insecure: true"
            );
        }
    }
}

impl Admin {
    /// Routes one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
            "/readyz" => {
                let link_up = self.edge.link_up();
                let draining = self.edge.draining();
                let engine_up = self
                    .hub
                    .as_ref()
                    .and_then(Hub::engine)
                    .is_none_or(|e| e.connected())
                    // Emulation routing between replicas needs its control channel too.
                    && self.edge.cluster_ready();
                let ready = link_up && !draining && engine_up;
                let body = format!(
                    r#"{{"ready":{ready},"link_up":{link_up},"draining":{draining},"engine_up":{engine_up}}}"#
                );
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, body)
            }
            "/metrics" => {
                let counters = self.hub.as_ref().map(Hub::counters);
                let engine = self.hub.as_ref().and_then(Hub::engine);
                let text = self.metrics.encode_with(|registry| {
                    if let Some(counters) = &counters {
                        counters.register(registry, engine.as_deref());
                    }
                });
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ if path.starts_with("/api/") => {
                let config = self.edge.config();
                // The embedded hub's API is served only while the hub is the upstream.
                match (&self.hub, &config.upstream) {
                    (Some(hub), None) => {
                        let access = ApiAccess::decide(self.listen, &config.hub);
                        let timeout = config.request_body_timeout;
                        api_call(hub, &access, *timeout, request).await
                    }
                    _ => status(StatusCode::NOT_FOUND),
                }
            }
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

/// Answers a server API call: access and key are checked from the headers before any body
/// byte is read (401 / 403 without reading it); the body is then read under
/// [`api::MAX_API_BODY_BYTES`], counted while streaming, and `body_timeout` (408 on a stall).
pub async fn api_call(
    hub: &Hub,
    access: &ApiAccess,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Response<Body> {
    let api_key = match access {
        ApiAccess::Refused => {
            return json(
                StatusCode::FORBIDDEN,
                r#"{"error":{"code":101,"message":"server API disabled: public listener without hub.http_api.key"}}"#,
            );
        }
        ApiAccess::Open => None,
        ApiAccess::Key(key) => Some(key.as_str()),
    };
    if !api::authorized(request.headers(), api_key) {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":101,"message":"unauthorized"}}"#,
        );
    }
    let (parts, body) = request.into_parts();
    let body = match read_limited(body, &parts.headers, api::MAX_API_BODY_BYTES, body_timeout).await
    {
        Ok(body) => body,
        Err(code) => return status(code),
    };
    api::respond(
        hub,
        api_key,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        &body,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_access_secure_default() {
        let mut hub = HubConfig::default();
        let public: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:9100".parse().unwrap();
        assert_eq!(ApiAccess::decide(public, &hub), ApiAccess::Refused);
        assert_eq!(ApiAccess::decide(loopback, &hub), ApiAccess::Open);
        assert_eq!(ApiAccess::decide(loopback6, &hub), ApiAccess::Open);
        hub.http_api.insecure = true;
        assert_eq!(ApiAccess::decide(public, &hub), ApiAccess::Open);
        hub.http_api.key = Some("k".into());
        assert_eq!(ApiAccess::decide(public, &hub), ApiAccess::Key("k".into()));
    }
}
