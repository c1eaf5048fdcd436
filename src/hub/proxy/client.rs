//! The HTTP side of the hooks: one pooled hyper client for every hook (HTTP/1.1 and h2 over
//! TLS by ALPN), one POST per call, the whole call (connect, headers, body) under the hook's
//! timeout, the response body bounded by [`MAX_PROXY_RESPONSE_BYTES`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thiserror::Error;

use crate::config::proxy::HookConfig;

/// Largest hook response body read, bytes; a larger one fails the call (error 100).
pub const MAX_PROXY_RESPONSE_BYTES: usize = 1024 * 1024;
/// Idle pooled connections kept per backend host.
const POOL_MAX_IDLE_PER_HOST: usize = 64;
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a hook call failed (every one reaches the client as error 100, temporary).
#[derive(Debug, Error)]
pub enum CallError {
    /// `hub.proxy_max_in_flight` calls were already running.
    #[error("too many hook calls in flight")]
    Overloaded,
    /// No complete answer within the hook's `timeout`.
    #[error("timed out")]
    Timeout,
    /// Connection or protocol failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The backend answered another status than 200.
    #[error("unexpected HTTP status {0}")]
    Status(StatusCode),
    /// The response body exceeded the bound or could not be read.
    #[error("response body: {0}")]
    Body(String),
    /// The response is not the hook's JSON.
    #[error("bad response: {0}")]
    Decode(String),
}

impl CallError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Overloaded => "overloaded",
            CallError::Timeout => "timeout",
            CallError::Transport(_) => "transport",
            CallError::Status(_) => "status",
            CallError::Body(_) | CallError::Decode(_) => "response",
        }
    }
}

/// Why a hook could not be set up (an endpoint that is not a URL, a bad header).
#[derive(Debug, Error)]
#[error("{field}: {problem}")]
pub struct SetupError {
    /// Dotted config field.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// One configured hook, ready to call.
#[derive(Debug, Clone)]
pub struct Endpoint {
    uri: Uri,
    timeout: Duration,
    /// Lower-case names of the connection headers to forward.
    pub http_headers: Vec<String>,
    /// Add the connection meta to requests.
    pub include_connection_meta: bool,
    static_headers: HeaderMap,
}

impl Endpoint {
    /// Parses a hook's config; `field` names it in errors.
    pub fn new(field: &str, config: &HookConfig) -> Result<Endpoint, SetupError> {
        let uri = config.endpoint.parse::<Uri>().map_err(|e| SetupError {
            field: format!("{field}.endpoint"),
            problem: e.to_string(),
        })?;
        let mut static_headers = HeaderMap::new();
        for (name, value) in &config.http.static_headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .ok()
                .zip(HeaderValue::from_str(value).ok());
            let Some((name, value)) = header else {
                return Err(SetupError {
                    field: format!("{field}.http.static_headers"),
                    problem: format!("not a valid header: {name:?}"),
                });
            };
            static_headers.insert(name, value);
        }
        Ok(Endpoint {
            uri,
            timeout: *config.timeout,
            http_headers: config
                .http_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            include_connection_meta: config.include_connection_meta,
            static_headers,
        })
    }
}

/// The pooled client shared by every hook.
#[derive(Debug, Clone)]
pub struct HookClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HookClient {
    /// A client verifying `https://` endpoints against the system roots.
    pub fn new() -> Result<HookClient, SetupError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = crate::passthrough::tls_client_config(None).map_err(|e| SetupError {
            field: "hub.client.proxy".to_owned(),
            problem: e.to_string(),
        })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST);
        Ok(HookClient {
            client: builder.build(connector),
        })
    }

    /// POSTs `body` (JSON) to `endpoint` with the connection `headers` it forwards and its
    /// static headers; the 200 response body, within the endpoint's timeout.
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Bytes, CallError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(endpoint.uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let map = request.headers_mut();
        for (name, value) in headers {
            if endpoint.http_headers.iter().any(|h| h == name)
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                )
            {
                map.append(name, value);
            }
        }
        for (name, value) in &endpoint.static_headers {
            map.insert(name.clone(), value.clone());
        }
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Transport(crate::error::Chain(&e).to_string()))?;
            if response.status() != StatusCode::OK {
                return Err(CallError::Status(response.status()));
            }
            // The whole call is under the hook's timeout: no progress deadline of its own.
            crate::body::read_bounded(response.into_body(), MAX_PROXY_RESPONSE_BYTES, None)
                .await
                .map_err(|e| CallError::Body(e.to_string()))
        };
        tokio::time::timeout(endpoint.timeout, call)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}
