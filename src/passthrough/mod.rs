//! Reverse proxy for every request that is not a sidewire endpoint: streamed both ways, hop-by-
//! hop headers removed, forwarding headers added, WebSocket upgrades (a backend's own
//! WebSocket) passed through, pooled connections (HTTP/1.1 or h2c) to the backend.
//!
//! Guarantees: bodies are never buffered whole; backend failures map to 502 (unreachable or
//! broken) and 504 (no response headers within `response_timeout`) with one log line each; a
//! request body over `max_request_body_size` gets 413; a client's own faults (several or an
//! invalid Host, a path hiding an encoded dot segment, a broken request body) get 400 and are
//! logged at debug only; the path sent to the backend never leaves its prefix; only WebSocket
//! upgrades are tunnelled.

pub mod chunked;
pub mod headers;
pub mod host;
pub mod local;
pub mod path;
pub mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::MapErr;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use thiserror::Error;

use crate::body::{TimedBody, is_body_timeout};
use crate::config::BackendConfig;
use crate::config::cidr::{self as trust, Cidr};
use crate::http::{Body, BoxError, status};
use headers::{Hop, add_forwarding, is_websocket_upgrade, strip_hop_by_hop, upgrades_to_websocket};
use host::HostError;
use path::PathError;
use pool::{Http1Pool, PoolConfig, PoolError};

/// Why a backend could not be set up from config; the message starts with the dotted field.
#[derive(Debug, Error)]
#[error("backend.{0}")]
pub struct BackendError(String);

/// A request refused as the client's fault (answered 400, logged at debug).
#[derive(Debug, Error)]
pub enum RequestError {
    /// Several or an invalid Host / authority.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A path that cannot be normalised safely.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The backend URL joined with the path is not a URI.
    #[error("request target does not form a backend URI")]
    Target,
}

/// The client's request body failed (bad chunk, reset): the client's fault, not the backend's.
#[derive(Debug, Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

/// How requests reach the backend.
#[derive(Clone)]
enum Transport {
    /// Plain `http://`, HTTP/1.1: our own connection pool (the common, fast case), with the
    /// backend's `host[:port]` for requests that name no host.
    Http1(Http1Pool<ForwardBody>, http::HeaderValue),
    /// `https://` or h2c: hyper-util's pooled client (boxed: it is large, and rarer).
    General(Box<Client<HttpsConnector<HttpConnector>, Body>>),
}

/// Why the exchange with the backend failed, whichever transport carried it.
#[derive(Debug, Error)]
enum ExchangeError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    General(#[from] hyper_util::client::legacy::Error),
}

/// The client's request body as forwarded (hyper path): progress deadline, then the size limit (one
/// concrete type, boxed only for the general client).
pub type ForwardBody = Limited<TimedBody<MapErr<Incoming, fn(hyper::Error) -> ClientBodyError>>>;

/// A response from either transport, before its body is adapted.
enum Exchanged {
    Http1(pool::Exchange<ForwardBody>),
    General(Response<Incoming>),
}

impl Exchanged {
    fn response(&self) -> &Response<Incoming> {
        match self {
            Exchanged::Http1(exchange) => exchange.response(),
            Exchanged::General(response) => response,
        }
    }
}

/// A pooled client for one backend.
#[derive(Clone)]
pub struct Backend {
    transport: Transport,
    /// `scheme://authority` plus an optional path prefix without trailing slash.
    base: String,
    /// The path prefix alone (empty, or `/...` without trailing slash).
    prefix: String,
    http2: bool,
    max_request_body_size: usize,
    response_timeout: Duration,
    trusted_proxies: Vec<Cidr>,
    /// `backend.fast_path`.
    fast_path: bool,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("base", &self.base).finish()
    }
}

impl Backend {
    /// Builds the client from config (no connection is made yet).
    pub fn new(config: &BackendConfig) -> Result<Backend, BackendError> {
        // Parsed (scheme and host checked) when the config was read.
        let uri = config.url.uri().cloned().ok_or_else(|| {
            BackendError(format!(
                "url: must be http(s)://host:port[/prefix], got {:?}",
                config.url.as_str()
            ))
        })?;
        let trusted_proxies = trust::parse_all(&config.trusted_proxies)
            .map_err(|(index, error)| BackendError(format!("trusted_proxies[{index}]: {error}")))?;
        let base = config.url.as_str().trim_end_matches('/').to_owned();
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let common = |transport| Backend {
            transport,
            base: base.clone(),
            prefix: prefix.clone(),
            http2: config.http2,
            max_request_body_size: config.max_request_body_size,
            response_timeout: *config.response_timeout,
            trusted_proxies: trusted_proxies.clone(),
            fast_path: config.fast_path,
        };
        if uri.scheme_str() == Some("http") && !config.http2 {
            let authority = uri
                .authority()
                .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok())
                .ok_or_else(|| {
                    BackendError(format!("url: no host in {:?}", config.url.as_str()))
                })?;
            let pool = Http1Pool::new(PoolConfig {
                origin: uri.clone(),
                connect_timeout: *config.connect_timeout,
                idle_timeout: *config.pool_idle_timeout,
                max_idle: config.pool_max_idle_per_host,
            });
            return Ok(common(Transport::Http1(pool, authority)));
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(*config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // `https://` backends are verified against `tls_ca_file`, or the system roots.
        http.enforce_http(false);
        let tls = tls_client_config(config.tls_ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(*config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_only(config.http2);
        Ok(common(Transport::General(Box::new(
            builder.build(connector),
        ))))
    }

    /// Proxies one request from `peer` (which reached us over `proto`, `http` or `https`).
    /// A request body that makes no progress for `body_timeout` is abandoned: 408. An
    /// upgraded tunnel runs on a task of `tracker` (drain waits for it).
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
        body_timeout: Duration,
        tracker: &crate::server::TaskTracker,
    ) -> Response<Body> {
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if self.max_request_body_size > 0
            && declared.is_some_and(|length| length > self.max_request_body_size as u64)
        {
            return status(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let client_version = request.version();
        let (uri, host) = match self.target(&request) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%peer, %error, "passthrough: bad request from client");
                return status(StatusCode::BAD_REQUEST);
            }
        };
        let upgrade = is_websocket_upgrade(request.method(), client_version, request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let host_from_target = request.uri().authority().is_some();
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if host_from_target {
            // The client's host, also for HTTP/2 clients (whose `:authority` has no header).
            parts.headers.remove(http::header::HOST);
            if let Some(host) = host
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok())
            {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        // Otherwise the one valid Host header (or none) is already what `host` says: kept.
        let hop = Hop {
            peer: peer.ip(),
            proto,
            host: host.as_deref(),
            trusted: self.trusted_proxies.iter().any(|c| c.contains(peer.ip())),
        };
        add_forwarding(&mut parts.headers, &hop);
        parts.uri = uri;
        parts.version = if self.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let client_body: fn(hyper::Error) -> ClientBodyError = ClientBodyError;
        let limit = match self.max_request_body_size {
            0 => usize::MAX,
            limit => limit,
        };
        let body = Limited::new(
            TimedBody::new(body.map_err(client_body), body_timeout),
            limit,
        );
        let method = parts.method.clone();
        let target = parts.uri.clone();
        let request = Request::from_parts(parts, body);
        let outcome = tokio::time::timeout(self.response_timeout, self.exchange(request)).await;
        let path = target.path();
        let exchanged = match outcome {
            Err(_) => {
                tracing::warn!(%method, %path, timeout = ?self.response_timeout, "passthrough: backend timed out");
                return status(StatusCode::GATEWAY_TIMEOUT);
            }
            Ok(Err(error)) => {
                if crate::error::in_chain::<http_body_util::LengthLimitError>(&error) {
                    return status(StatusCode::PAYLOAD_TOO_LARGE);
                }
                if is_body_timeout(&error) {
                    tracing::debug!(%peer, %method, %path, "passthrough: client request body stalled");
                    return status(StatusCode::REQUEST_TIMEOUT);
                }
                if crate::error::in_chain::<ClientBodyError>(&error) {
                    tracing::debug!(%peer, %method, %path, error = %crate::error::Chain(&error), "passthrough: client request body failed");
                    return status(StatusCode::BAD_REQUEST);
                }
                tracing::warn!(%method, %path, error = %crate::error::Chain(&error), "passthrough: backend failed");
                return status(StatusCode::BAD_GATEWAY);
            }
            Ok(Ok(exchanged)) => exchanged,
        };
        if exchanged.response().status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only the WebSocket handshake we forwarded may switch protocols.
            let Some(client_upgrade) =
                client_upgrade.filter(|_| upgrades_to_websocket(exchanged.response().headers()))
            else {
                tracing::warn!(%method, %path, "passthrough: backend switched protocols unasked");
                return status(StatusCode::BAD_GATEWAY);
            };
            let mut response = match exchanged {
                Exchanged::Http1(exchange) => exchange.into_upgrade(),
                Exchanged::General(response) => response,
            };
            let backend_upgrade = hyper::upgrade::on(&mut response);
            tracker.spawn(async move {
                match tokio::try_join!(client_upgrade, backend_upgrade) {
                    Ok((client, backend)) => {
                        let mut client = TokioIo::new(client);
                        let mut backend = TokioIo::new(backend);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                    Err(error) => tracing::debug!(%error, "passthrough: upgrade failed"),
                }
            });
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            parts.version = client_version;
            return Response::from_parts(parts, crate::http::empty());
        }
        let (mut parts, body) = match exchanged {
            Exchanged::Http1(exchange) => {
                let (parts, body) = exchange.into_response().into_parts();
                (parts, body.map_err(BoxError::from).boxed())
            }
            Exchanged::General(response) => {
                let (parts, body) = response.into_parts();
                (parts, body.map_err(BoxError::from).boxed())
            }
        };
        strip_hop_by_hop(&mut parts.headers, false);
        // Answer in the client's HTTP version, whatever the backend spoke.
        parts.version = client_version;
        Response::from_parts(parts, body)
    }

    /// Sends `request` (origin-form for our own pool, absolute for the general client) on the
    /// backend's transport; the response head only. Not an `async fn`: the transport's own
    /// future is returned as is, so the request is held once (this future is part of every
    /// request's, which the edge moves into a box).
    fn exchange(
        &self,
        mut request: Request<ForwardBody>,
    ) -> impl Future<Output = Result<Exchanged, ExchangeError>> + Send + '_ {
        use futures_util::future::{Either, FutureExt};
        match &self.transport {
            Transport::Http1(pool, authority) => {
                if !request.headers().contains_key(http::header::HOST) {
                    // As the general client does: a request without a Host names the backend.
                    request
                        .headers_mut()
                        .insert(http::header::HOST, authority.clone());
                }
                Either::Left(
                    pool.send(request)
                        .map(|sent| sent.map(Exchanged::Http1).map_err(ExchangeError::from)),
                )
            }
            Transport::General(client) => Either::Right(
                client
                    .request(request.map(|body| body.boxed()))
                    .map(|sent| sent.map(Exchanged::General).map_err(ExchangeError::from)),
            ),
        }
    }
}

/// What the edge's owned HTTP/1.1 fast path needs of a plain-`http` HTTP/1.1 backend.
pub struct FastBackend<'a> {
    /// The path prefix (empty, or `/...` without trailing slash).
    pub prefix: &'a str,
    /// `max_request_body_size` (0: no limit).
    pub max_request_body_size: usize,
    /// `response_timeout`.
    pub response_timeout: Duration,
    trusted_proxies: &'a [Cidr],
    /// The backend's connections (connect, limits, identity).
    pub pool: &'a Http1Pool<ForwardBody>,
}

impl FastBackend<'_> {
    /// Whether `peer` is in `trusted_proxies`.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }
}

impl Backend {
    /// The fast path's view of this backend: `None` unless it is plain `http` over HTTP/1.1
    /// (https and h2c backends are served through hyper) and `backend.fast_path` is on.
    pub fn fast(&self) -> Option<FastBackend<'_>> {
        match &self.transport {
            Transport::Http1(pool, _) if self.fast_path => Some(FastBackend {
                prefix: &self.prefix,
                max_request_body_size: self.max_request_body_size,
                response_timeout: self.response_timeout,
                trusted_proxies: &self.trusted_proxies,
                pool,
            }),
            _ => None,
        }
    }
}

impl Backend {
    /// The backend URI for `request` (normalised path joined to the prefix, query kept) and the
    /// validated host the client addressed.
    fn target(&self, request: &Request<Incoming>) -> Result<(Uri, Option<String>), RequestError> {
        let host = host::client_host(request.uri(), request.headers())?;
        let path = path::normalize(request.uri().path())?;
        if let Transport::Http1(..) = self.transport {
            // Origin-form, written once: the client's own target when nothing changes.
            if self.prefix.is_empty()
                && matches!(path, std::borrow::Cow::Borrowed(_))
                && let Some(path_and_query) = request.uri().path_and_query()
                && path_and_query.path() == path
            {
                return Ok((Uri::from(path_and_query.clone()), host));
            }
            let mut target = String::with_capacity(
                self.prefix.len() + path.len() + request.uri().query().map_or(0, |q| q.len() + 1),
            );
            target.push_str(&self.prefix);
            target.push_str(&path);
            if let Some(query) = request.uri().query() {
                target.push('?');
                target.push_str(query);
            }
            let path_and_query =
                http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target))
                    .map_err(|_| RequestError::Target)?;
            return Ok((Uri::from(path_and_query), host));
        }
        let target = match request.uri().query() {
            Some(query) => format!("{}{path}?{query}", self.base),
            None => format!("{}{path}", self.base),
        };
        let uri = target.parse::<Uri>().map_err(|_| RequestError::Target)?;
        Ok((uri, host))
    }
}

/// Client TLS settings: the CA in `ca_file` (PEM) or the system roots.
pub(crate) fn tls_client_config(
    ca_file: Option<&str>,
) -> Result<rustls::ClientConfig, BackendError> {
    let roots = match ca_file {
        Some(path) => crate::server::tls::load_ca_roots(path)
            .map_err(|error| BackendError(format!("tls_ca_file: {error}")))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // Unusable system certificates are skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError(format!("url: TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
