//! The YAML configuration: typed schema, defaults (named constants), validation that names
//! every bad field by its dotted path, and loading from a file.
//!
//! Guarantee: a `Config` returned by [`Config::load`] or [`Config::from_yaml`] has passed
//! [`Config::validate`]; nothing binds a port before that.

pub mod channel;
pub mod cidr;
pub mod client;
pub mod duration;
pub mod engine;
pub mod env;
pub mod http_api;
pub mod logging;
pub mod pem;
pub mod proxy;
pub mod renamed;
pub mod schema;
pub mod secret;
pub mod sources;
pub mod url;

pub use duration::ConfigDuration;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use logging::{LogConfig, LogFormat, LogLevel};
pub use url::HttpUrl;

/// Default client listener (`0.0.0.0:8000`).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8000));
/// Default admin listener (health, readiness, server API of the embedded hub;
/// `127.0.0.1:9100`).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9100));
/// Default Link (gRPC) listener of `sidewire hub` (`127.0.0.1:9200`).
pub const DEFAULT_HUB_LINK_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9200));
/// Default server API listener of `sidewire hub` (`127.0.0.1:9201`).
pub const DEFAULT_HUB_API_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9201));
/// Default time between a shutdown signal and closing the listener (`shutdown.delay`).
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
/// Default spread of the 3001 disconnects on shutdown (`shutdown.drain_window`).
pub const DEFAULT_SHUTDOWN_DRAIN_WINDOW: Duration = Duration::from_secs(10);
/// Default hard deadline of a shutdown, from the signal (`shutdown.timeout`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest request body passed through to the backend, bytes.
pub const DEFAULT_BACKEND_MAX_REQUEST_BODY_SIZE: usize = 10 * 1024 * 1024;
/// Default time allowed to open a TCP connection to the backend.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for the backend's response headers.
pub const DEFAULT_BACKEND_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default lifetime of an idle pooled backend connection.
pub const DEFAULT_BACKEND_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default number of idle pooled connections kept per backend.
pub const DEFAULT_BACKEND_POOL_MAX_IDLE_PER_HOST: usize = 256;
/// Default `backend.fast_path`: the owned HTTP/1.1 passthrough path is on.
pub const DEFAULT_BACKEND_FAST_PATH: bool = true;
/// Default time allowed to establish the Link to an external upstream.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default first reconnect delay of the Link to an external upstream.
pub const DEFAULT_UPSTREAM_RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default cap of the reconnect delay of the Link to an external upstream.
pub const DEFAULT_UPSTREAM_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default WebSocket endpoint path.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/connection/websocket";
/// Default HTTP-streaming endpoint path.
pub const DEFAULT_HTTP_STREAM_PATH: &str = "/connection/http_stream";
/// Default SSE endpoint path.
pub const DEFAULT_SSE_PATH: &str = "/connection/sse";
/// Default emulation endpoint path.
pub const DEFAULT_EMULATION_PATH: &str = "/emulation";
/// Default unidirectional WebSocket endpoint path (Centrifugo's).
pub const DEFAULT_UNI_WEBSOCKET_PATH: &str = "/connection/uni_websocket";
/// Default unidirectional HTTP-streaming endpoint path (Centrifugo's).
pub const DEFAULT_UNI_HTTP_STREAM_PATH: &str = "/connection/uni_http_stream";
/// Default unidirectional SSE endpoint path (Centrifugo's).
pub const DEFAULT_UNI_SSE_PATH: &str = "/connection/uni_sse";
/// Default limit of HTTP-streaming, SSE and emulation request bodies, bytes.
pub const DEFAULT_MAX_REQUEST_BODY_SIZE: usize = 65_536;
/// Default limit of one WebSocket message (the whole batch of commands), bytes.
pub const DEFAULT_MESSAGE_SIZE_LIMIT: usize = 65_536;
/// Default of the former per-WebSocket read buffer, bytes. Since the server owns its framing
/// (`edge::wsconn`), reads go through one buffer per worker thread and an idle connection holds
/// none, so the key is accepted (and validated) but no longer changes anything.
pub const DEFAULT_WEBSOCKET_READ_BUFFER_SIZE: usize = 2048;
/// Default app-level ping period.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time allowed for the pong after a ping.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(8);
/// Default time allowed for the first `connect` command.
pub const DEFAULT_STALE_CLOSE_DELAY: Duration = Duration::from_secs(10);
/// Default bound of one session's outbound queue, bytes.
pub const DEFAULT_QUEUE_MAX_SIZE: usize = 1_048_576;
/// Default time allowed for one write to a client.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default hub-wide cap of a namespace's `history_size` (publications kept per channel): the
/// largest accepted, so a namespace's own size applies, as in Centrifugo.
pub const DEFAULT_HISTORY_SIZE: usize = channel::MAX_NAMESPACE_HISTORY_SIZE;
/// Default lifetime of the hub's channel history.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// Headers of the connection request passed to the upstream by default.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "origin",
    "user-agent",
    "x-forwarded-for",
    "x-real-ip",
    "x-request-id",
];
/// Default time the upstream has to answer one command before the client gets error 100
/// (`upstream.command_timeout`; the embedded hub uses it too).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default HTTP/2 keepalive ping period of the sidecar's Link (`upstream.keepalive_interval`).
pub const DEFAULT_UPSTREAM_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default time allowed for a keepalive answer (`upstream.keepalive_timeout`).
pub const DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest channel name accepted.
pub const MAX_CHANNEL_LENGTH: usize = 255;
/// Default time a new client connection has to finish TLS and send its first request headers
/// (also the HTTP/1 header read timeout, and the wait for a partial HTTP/2 preface).
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client connection may stay open with no request in flight (HTTP/1
/// keep-alive, HTTP/2 with no streams) before it is closed.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a request body may make no progress before it is abandoned (408).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default HTTP/2 PING period on client connections.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time allowed for the HTTP/2 PING acknowledgement before the connection is closed.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap of open client connections (every transport and passthrough together). At
/// ~7 KiB per idle WebSocket this is ~140 MiB; raise it (and the descriptor limit) on purpose.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default cap of open client connections per remote IP (0 = no per-IP cap).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
/// Environment variable that, when set and non-empty, replaces `hub.http_api.key` of a loaded
/// config file (one instance of the generic `SIDEWIRE_*` rule of [`env`]).
pub const API_KEY_ENV: &str = "SIDEWIRE_HUB_HTTP_API_KEY";
/// Default HTTP/2 PING period of the standalone hub's Link server.
pub const DEFAULT_LINK_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default time the standalone hub waits for a PING acknowledgement before it drops the Link
/// (and forgets its sessions).
pub const DEFAULT_LINK_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default number of channels one client may be subscribed to at once (Centrifugo's
/// `client.channel_limit`).
pub const DEFAULT_HUB_CLIENT_CHANNEL_LIMIT: usize = client::DEFAULT_CHANNEL_LIMIT;
/// Default longest channel name the hub accepts, bytes (Centrifugo's `channel.max_length`).
pub const DEFAULT_HUB_CHANNEL_MAX_LENGTH: usize = MAX_CHANNEL_LENGTH;
/// Default bound of the frames queued by the hub towards one sidecar, bytes.
pub const DEFAULT_HUB_LINK_QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default largest frame the hub sends over a Link, bytes (a larger reply fails its command).
pub const DEFAULT_HUB_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Default bound of the history the hub holds across all channels, bytes.
pub const DEFAULT_HUB_HISTORY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Default bound of the number of channels the hub knows at once.
pub const DEFAULT_HUB_MAX_CHANNELS: usize = 100_000;
/// Largest frame tonic carries on a Link (its message size limit), bytes.
pub const LINK_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

/// A configuration error: one or more fields are invalid, or the file cannot be read or parsed.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The YAML did not match the schema (the message names the field and position).
    #[error("{0}")]
    Parse(String),
    /// Fields have invalid values; each entry is `field.path: problem`.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The whole sidewire configuration. Keys follow Centrifugo's where the concept is the same.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client listener address: every client transport and the passthrough to the backend.
    pub listen: SocketAddr,
    /// Admin listener address: `/healthz`, `/readyz`, and the embedded hub's `/api/*`.
    pub admin_listen: SocketAddr,
    /// Glob patterns (`*`, `?`) matched case-insensitively against the whole `Origin` header.
    /// Requests without Origin always pass; `["*"]` allows every origin.
    pub allowed_origins: Vec<String>,
    /// Serve the WebSocket endpoint.
    pub websocket: bool,
    /// Path of the WebSocket endpoint.
    pub websocket_path: String,
    /// Serve the HTTP-streaming endpoint (and `/emulation`).
    pub http_stream: bool,
    /// Path of the HTTP-streaming endpoint.
    pub http_stream_path: String,
    /// Largest connect POST body of HTTP-streaming, bytes (larger: 413).
    pub http_stream_max_request_body_size: usize,
    /// Serve the SSE endpoint (and `/emulation`); JSON only.
    pub sse: bool,
    /// Path of the SSE endpoint.
    pub sse_path: String,
    /// Largest SSE POST body, bytes (larger: 413); GET carries the command in `cf_connect`.
    pub sse_max_request_body_size: usize,
    /// Path of the emulation endpoint (served when `http_stream` or `sse` is on).
    pub emulation_path: String,
    /// Largest emulation POST body, bytes (larger: 413).
    pub emulation_max_request_body_size: usize,
    /// Largest WebSocket message accepted from a client, bytes (larger: close 1009).
    pub message_size_limit: usize,
    /// Former read buffer of each WebSocket, bytes: accepted for compatibility, unused (reads
    /// go through one buffer per worker thread; an idle connection holds no buffer).
    pub websocket_read_buffer_size: usize,
    /// App-level ping period; `0s` turns pings off.
    pub ping_interval: ConfigDuration,
    /// Time allowed for a pong after each ping (3012 when missed); `0s` stops expecting pongs.
    pub pong_timeout: ConfigDuration,
    /// Time allowed for the first `connect` command (3502 stale when missed).
    pub stale_close_delay: ConfigDuration,
    /// Bound of a session's outbound queue, bytes; overflow disconnects with 3008 slow.
    pub queue_max_size: usize,
    /// Time allowed for one write to a client (3009 write error when exceeded).
    pub write_timeout: ConfigDuration,
    /// Request headers (case-insensitive names) passed to the upstream in `SessionOpen`.
    pub forward_headers: Vec<String>,
    /// TLS on the client listener; plain TCP when absent.
    pub tls: Option<TlsConfig>,
    /// Graceful shutdown on SIGTERM / SIGINT.
    pub shutdown: ShutdownConfig,
    /// The existing HTTP backend every other path is proxied to; when absent those paths get
    /// 404.
    pub backend: Option<BackendConfig>,
    /// External upstream; when absent the embedded hub serves the Link in-process.
    pub upstream: Option<UpstreamConfig>,
    /// The reference hub (embedded, or `sidewire hub`).
    pub hub: HubConfig,
    /// Where shared state lives: `memory` (one node) or `redis` (replicas share channels).
    pub engine: engine::EngineConfig,
    /// Logging.
    pub log: LogConfig,
    /// Time a new client connection has to finish TLS and send its first request headers.
    pub client_handshake_timeout: ConfigDuration,
    /// Time a client connection may stay open with no request in flight.
    pub client_idle_timeout: ConfigDuration,
    /// Time a request body (emulation, HTTP-stream, SSE, server API, passthrough) may make no
    /// progress before it is abandoned with 408.
    pub request_body_timeout: ConfigDuration,
    /// HTTP/2 PING period on client connections; `0s` turns pings off.
    pub http2_keepalive_interval: ConfigDuration,
    /// Time allowed for an HTTP/2 PING acknowledgement.
    pub http2_keepalive_timeout: ConfigDuration,
    /// Cap of open client connections; further ones are closed at once after accept.
    /// 0 = no cap.
    pub max_connections: usize,
    /// Cap of open client connections per remote IP; 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Serve the unidirectional WebSocket endpoint (connect request as first message).
    pub uni_websocket: bool,
    /// Path of the unidirectional WebSocket endpoint.
    pub uni_websocket_path: String,
    /// Largest message (the connect request) accepted on a unidirectional WebSocket, bytes.
    pub uni_websocket_message_size_limit: usize,
    /// Serve the unidirectional HTTP-streaming endpoint (POST connect request).
    pub uni_http_stream: bool,
    /// Path of the unidirectional HTTP-streaming endpoint.
    pub uni_http_stream_path: String,
    /// Largest connect POST body of unidirectional HTTP-streaming, bytes (larger: 413).
    pub uni_http_stream_max_request_body_size: usize,
    /// Serve the unidirectional SSE endpoint (GET `?cf_connect=` or POST connect request).
    pub uni_sse: bool,
    /// Path of the unidirectional SSE endpoint.
    pub uni_sse_path: String,
    /// Largest unidirectional SSE POST body, bytes (larger: 413).
    pub uni_sse_max_request_body_size: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            allowed_origins: Vec::new(),
            websocket: true,
            websocket_path: DEFAULT_WEBSOCKET_PATH.to_owned(),
            http_stream: false,
            http_stream_path: DEFAULT_HTTP_STREAM_PATH.to_owned(),
            http_stream_max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
            sse: false,
            sse_path: DEFAULT_SSE_PATH.to_owned(),
            sse_max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
            emulation_path: DEFAULT_EMULATION_PATH.to_owned(),
            emulation_max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
            message_size_limit: DEFAULT_MESSAGE_SIZE_LIMIT,
            websocket_read_buffer_size: DEFAULT_WEBSOCKET_READ_BUFFER_SIZE,
            ping_interval: DEFAULT_PING_INTERVAL.into(),
            pong_timeout: DEFAULT_PONG_TIMEOUT.into(),
            stale_close_delay: DEFAULT_STALE_CLOSE_DELAY.into(),
            queue_max_size: DEFAULT_QUEUE_MAX_SIZE,
            write_timeout: DEFAULT_WRITE_TIMEOUT.into(),
            forward_headers: DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            tls: None,
            shutdown: ShutdownConfig::default(),
            backend: None,
            upstream: None,
            hub: HubConfig::default(),
            engine: engine::EngineConfig::default(),
            log: LogConfig::default(),
            client_handshake_timeout: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT.into(),
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT.into(),
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT.into(),
            http2_keepalive_interval: DEFAULT_HTTP2_KEEPALIVE_INTERVAL.into(),
            http2_keepalive_timeout: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            uni_websocket: false,
            uni_websocket_path: DEFAULT_UNI_WEBSOCKET_PATH.to_owned(),
            uni_websocket_message_size_limit: DEFAULT_MESSAGE_SIZE_LIMIT,
            uni_http_stream: false,
            uni_http_stream_path: DEFAULT_UNI_HTTP_STREAM_PATH.to_owned(),
            uni_http_stream_max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
            uni_sse: false,
            uni_sse_path: DEFAULT_UNI_SSE_PATH.to_owned(),
            uni_sse_max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
        }
    }
}

/// Certificate and key of the client listener (PEM files; reloaded when they change).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_file: String,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Only under `hub.tls`: PEM file of the CA that signs sidecars' client certificates;
    /// when set, a Link connection without a valid client certificate is refused (mutual TLS).
    pub client_ca_file: Option<String>,
    /// Only under `tls` (the client listener): keep TLS 1.3 record keys unexpanded between
    /// records (`server::tls_keys`), ~1.1 KiB less per idle connection for one key expansion
    /// per record that follows another connection's on the same thread (+10 % instructions
    /// per wss fan-out delivery). Default (unset): on.
    pub compact_record_keys: Option<bool>,
}

impl TlsConfig {
    /// Whether the client listener keeps record keys compact (`compact_record_keys`, default on).
    pub fn compact_record_keys(&self) -> bool {
        self.compact_record_keys.unwrap_or(true)
    }
}

/// Graceful shutdown: readiness turns false, the listener keeps accepting for `delay` (load
/// balancers deregister the pod), then live sessions are disconnected with 3001 at random
/// moments within `drain_window`; the process exits when empty or at `timeout`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time between the signal and closing the listener.
    pub delay: ConfigDuration,
    /// Spread of the 3001 disconnects.
    pub drain_window: ConfigDuration,
    /// Hard deadline, counted from the signal.
    pub timeout: ConfigDuration,
}

impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        ShutdownConfig {
            delay: DEFAULT_SHUTDOWN_DELAY.into(),
            drain_window: DEFAULT_SHUTDOWN_DRAIN_WINDOW.into(),
            timeout: DEFAULT_SHUTDOWN_TIMEOUT.into(),
        }
    }
}

/// The backend behind the passthrough proxy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host:port` or `https://host:port`, optionally with a path prefix.
    pub url: HttpUrl,
    /// For an `https://` backend: PEM file of the CA to trust (default: the system roots).
    pub tls_ca_file: Option<String>,
    /// Speak HTTP/2 cleartext (prior knowledge, h2c) to the backend instead of HTTP/1.1.
    pub http2: bool,
    /// Largest request body passed through, bytes (larger: 413); 0 = no limit.
    pub max_request_body_size: usize,
    /// Time allowed to open a TCP connection to the backend (else 502).
    pub connect_timeout: ConfigDuration,
    /// Time allowed for the backend's response headers (else 504). Bodies stream unbounded.
    pub response_timeout: ConfigDuration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: ConfigDuration,
    /// Idle pooled connections kept per backend.
    pub pool_max_idle_per_host: usize,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-Host` / `X-Forwarded-Proto` are kept;
    /// from any other peer they are overwritten. `X-Forwarded-For` is always appended to.
    pub trusted_proxies: Vec<String>,
    /// Serve the common HTTP/1.1 passthrough requests on the edge's owned fast path (plain
    /// `http` HTTP/1.1 backends only); `false`: every request goes through hyper.
    pub fast_path: bool,
}

impl Default for BackendConfig {
    fn default() -> BackendConfig {
        BackendConfig {
            url: HttpUrl::default(),
            tls_ca_file: None,
            http2: false,
            max_request_body_size: DEFAULT_BACKEND_MAX_REQUEST_BODY_SIZE,
            connect_timeout: DEFAULT_BACKEND_CONNECT_TIMEOUT.into(),
            response_timeout: DEFAULT_BACKEND_RESPONSE_TIMEOUT.into(),
            pool_idle_timeout: DEFAULT_BACKEND_POOL_IDLE_TIMEOUT.into(),
            pool_max_idle_per_host: DEFAULT_BACKEND_POOL_MAX_IDLE_PER_HOST,
            trusted_proxies: Vec::new(),
            fast_path: DEFAULT_BACKEND_FAST_PATH,
        }
    }
}

/// Where the Link connects when the upstream is an external process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// gRPC endpoint, `http://host:port` (or `https://` for TLS).
    pub endpoint: HttpUrl,
    /// Time allowed to establish the Link stream (TCP, HTTP/2, hello/welcome).
    pub connect_timeout: ConfigDuration,
    /// First reconnect delay; doubles per failure with full jitter.
    pub reconnect_backoff_min: ConfigDuration,
    /// Cap of the reconnect delay.
    pub reconnect_backoff_max: ConfigDuration,
    /// For an `https://` endpoint: PEM file of the CA to trust (default: the system roots).
    pub tls_ca_file: Option<String>,
    /// For an `https://` endpoint: name to verify in the upstream's certificate (default: the
    /// endpoint's host).
    pub tls_domain: Option<String>,
    /// For an `https://` endpoint: client certificate chain (PEM) presented to the upstream
    /// (mutual TLS); requires `tls_key_file`.
    pub tls_cert_file: Option<String>,
    /// Private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<String>,
    /// Bearer token sent as gRPC metadata `authorization: Bearer <token>` on every Link
    /// stream. A secret: it may come from `upstream.token_file` or `SIDEWIRE_UPSTREAM_TOKEN`
    /// (see [`secret`]); a rotated file is picked up by the reload watcher.
    pub token: Option<String>,
    /// Time the upstream has to answer one command; then the client gets error 100 for it
    /// and the upstream a `SessionCommandTimeout`.
    pub command_timeout: ConfigDuration,
    /// HTTP/2 keepalive ping period on the Link, sent even while no data flows; `0s` turns
    /// pings off. The upstream's gRPC server must allow pings this often (docs/link.md §9).
    pub keepalive_interval: ConfigDuration,
    /// Time allowed for a keepalive ping's answer before the Link is considered lost.
    pub keepalive_timeout: ConfigDuration,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            endpoint: HttpUrl::default(),
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT.into(),
            reconnect_backoff_min: DEFAULT_UPSTREAM_RECONNECT_BACKOFF_MIN.into(),
            reconnect_backoff_max: DEFAULT_UPSTREAM_RECONNECT_BACKOFF_MAX.into(),
            tls_ca_file: None,
            tls_domain: None,
            tls_cert_file: None,
            tls_key_file: None,
            token: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT.into(),
            keepalive_interval: DEFAULT_UPSTREAM_KEEPALIVE_INTERVAL.into(),
            keepalive_timeout: DEFAULT_UPSTREAM_KEEPALIVE_TIMEOUT.into(),
        }
    }
}

/// The reference hub's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// `hub.client`: connection and subscription tokens, per-client limits (Centrifugo v6's
    /// `client.*`).
    pub client: client::ClientConfig,
    /// `hub.http_api`: the server API's key and `insecure` flag (Centrifugo v6's
    /// `http_api.*`).
    pub http_api: http_api::HttpApiConfig,
    /// Hub-wide cap of a namespace's `history_size` (publications kept per channel).
    pub history_size: usize,
    /// How long publications stay in history.
    pub history_ttl: ConfigDuration,
    /// Link (gRPC) listener of `sidewire hub`.
    pub link_listen: SocketAddr,
    /// Server API listener of `sidewire hub`.
    pub api_listen: SocketAddr,
    /// TLS on the Link listener of `sidewire hub` (sidecars then use an `https://` endpoint).
    /// With `tls.client_ca_file`, sidecars must present a certificate signed by that CA.
    pub tls: Option<TlsConfig>,
    /// HTTP/2 PING period of the standalone hub's Link server; `0s` turns pings off.
    pub link_keepalive_interval: ConfigDuration,
    /// Time the standalone hub waits for a PING acknowledgement before dropping the Link.
    pub link_keepalive_timeout: ConfigDuration,
    /// Bound of the frames queued towards one sidecar, bytes (prost encoded length). On
    /// overflow only the affected subscriptions (2500) or sessions (3010) pay, never the Link.
    pub link_queue_max_bytes: usize,
    /// Largest frame sent over a Link, bytes; a larger reply fails its command with 106.
    pub max_frame_bytes: usize,
    /// Bound of the history held across all channels, bytes; the oldest publications are
    /// evicted first.
    pub history_max_bytes: usize,
    /// Bound of the number of channels; a publish or subscribe creating one more answers 106.
    pub max_channels: usize,
    /// Glob patterns (`*`, `?`) of binary-only channels: any bytes may be published there, and
    /// JSON clients cannot subscribe (107). Elsewhere non-JSON data is refused with 107.
    pub binary_channels: Vec<String>,
    /// When set, `sidewire hub` requires gRPC metadata `authorization: Bearer <token>` on each
    /// Link stream (else UNAUTHENTICATED, before `welcome`). A secret: it may come from
    /// `hub.link_token_file` or `SIDEWIRE_HUB_LINK_TOKEN` (see [`secret`]).
    pub link_token: Option<String>,
    /// `hub.channel`: the channel name limit, namespaces and permissions (Centrifugo v6's
    /// `channel.*`).
    pub channel: channel::ChannelConfig,
    /// `hub.rpc`: the RPC hook and the RPC namespaces routed to it.
    pub rpc: proxy::RpcConfig,
    /// Hook calls in flight across the hub; beyond it a call fails at once with error 100.
    pub proxy_max_in_flight: usize,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            client: client::ClientConfig::default(),
            http_api: http_api::HttpApiConfig::default(),
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL.into(),
            link_listen: DEFAULT_HUB_LINK_LISTEN,
            api_listen: DEFAULT_HUB_API_LISTEN,
            tls: None,
            link_keepalive_interval: DEFAULT_LINK_KEEPALIVE_INTERVAL.into(),
            link_keepalive_timeout: DEFAULT_LINK_KEEPALIVE_TIMEOUT.into(),
            link_queue_max_bytes: DEFAULT_HUB_LINK_QUEUE_MAX_BYTES,
            max_frame_bytes: DEFAULT_HUB_MAX_FRAME_BYTES,
            history_max_bytes: DEFAULT_HUB_HISTORY_MAX_BYTES,
            max_channels: DEFAULT_HUB_MAX_CHANNELS,
            binary_channels: Vec::new(),
            link_token: None,
            channel: channel::ChannelConfig::default(),
            rpc: proxy::RpcConfig::default(),
            proxy_max_in_flight: proxy::DEFAULT_PROXY_MAX_IN_FLIGHT,
        }
    }
}

impl Config {
    /// Whether `/emulation` is served (HTTP-stream or SSE on).
    pub fn emulation_enabled(&self) -> bool {
        self.http_stream || self.sse
    }

    /// Reads, parses and validates a YAML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text)
    }

    /// Parses and validates YAML text; an empty document gives the defaults. The process's
    /// `SIDEWIRE_*` variables override keys and `<secret>_file` keys are read (see
    /// [`sources`]), on every call, so reloads re-apply them.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, &sources::process_vars())
    }

    /// [`Config::from_yaml`] with the given variables instead of the process environment.
    pub fn from_yaml_with_env(
        text: &str,
        vars: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let config = sources::build(text, vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field and reports all problems at once, each as `dotted.path: problem`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        check(
            self.websocket_path.starts_with('/'),
            format!(
                "websocket_path: must start with '/', got {:?}",
                self.websocket_path
            ),
        );
        let mut paths = vec![("websocket_path", &self.websocket_path)];
        if self.http_stream {
            paths.push(("http_stream_path", &self.http_stream_path));
        }
        if self.sse {
            paths.push(("sse_path", &self.sse_path));
        }
        if self.emulation_enabled() {
            paths.push(("emulation_path", &self.emulation_path));
        }
        for (index, (name, path)) in paths.iter().enumerate() {
            if *name != "websocket_path" {
                check(
                    path.starts_with('/'),
                    format!("{name}: must start with '/', got {path:?}"),
                );
            }
            if let Some((other, _)) = paths[..index].iter().find(|(_, p)| p == path) {
                check(false, format!("{name}: same path as {other} ({path:?})"));
            }
        }
        for (name, size) in [
            (
                "http_stream_max_request_body_size",
                self.http_stream_max_request_body_size,
            ),
            ("sse_max_request_body_size", self.sse_max_request_body_size),
            (
                "emulation_max_request_body_size",
                self.emulation_max_request_body_size,
            ),
        ] {
            check(
                size >= 128,
                format!("{name}: must be at least 128 bytes, got {size}"),
            );
        }
        check(
            self.message_size_limit >= 128,
            format!(
                "message_size_limit: must be at least 128 bytes, got {}",
                self.message_size_limit
            ),
        );
        check(
            (256..=1_048_576).contains(&self.websocket_read_buffer_size),
            format!(
                "websocket_read_buffer_size: must be between 256 and 1048576 bytes, got {}",
                self.websocket_read_buffer_size
            ),
        );
        check(
            self.queue_max_size >= 1024,
            format!(
                "queue_max_size: must be at least 1024 bytes, got {}",
                self.queue_max_size
            ),
        );
        check(
            self.ping_interval.is_zero()
                || self.pong_timeout.is_zero()
                || self.ping_interval > self.pong_timeout,
            "pong_timeout: must be shorter than ping_interval".to_owned(),
        );
        check(
            !self.stale_close_delay.is_zero(),
            "stale_close_delay: must be greater than 0s".to_owned(),
        );
        check(
            !self.write_timeout.is_zero(),
            "write_timeout: must be greater than 0s".to_owned(),
        );
        for (index, pattern) in self.allowed_origins.iter().enumerate() {
            check(
                !pattern.trim().is_empty(),
                format!("allowed_origins[{index}]: empty pattern"),
            );
        }
        if let Some(tls) = &self.tls {
            check(
                !tls.cert_file.is_empty(),
                "tls.cert_file: required when tls is set".to_owned(),
            );
            check(
                !tls.key_file.is_empty(),
                "tls.key_file: required when tls is set".to_owned(),
            );
        }
        check(
            *self.shutdown.delay + *self.shutdown.drain_window <= *self.shutdown.timeout,
            "shutdown.timeout: must be at least shutdown.delay + shutdown.drain_window".to_owned(),
        );
        if let Some(backend) = &self.backend {
            check(
                backend.url.uri().is_some(),
                format!(
                    "backend.url: must be http(s)://host:port[/prefix], got {:?}",
                    backend.url
                ),
            );
            check(
                !backend.connect_timeout.is_zero(),
                "backend.connect_timeout: must be greater than 0s".to_owned(),
            );
            check(
                !backend.response_timeout.is_zero(),
                "backend.response_timeout: must be greater than 0s".to_owned(),
            );
            for (index, entry) in backend.trusted_proxies.iter().enumerate() {
                if let Err(error) = entry.parse::<cidr::Cidr>() {
                    check(false, format!("backend.trusted_proxies[{index}]: {error}"));
                }
            }
        }
        if let Some(upstream) = &self.upstream {
            check(
                upstream.endpoint.uri().is_some(),
                format!(
                    "upstream.endpoint: must be an http:// or https:// URL, got {:?}",
                    upstream.endpoint
                ),
            );
            check(
                upstream.reconnect_backoff_min <= upstream.reconnect_backoff_max,
                "upstream.reconnect_backoff_min: must not exceed upstream.reconnect_backoff_max"
                    .to_owned(),
            );
            check(
                !upstream.connect_timeout.is_zero(),
                "upstream.connect_timeout: must be greater than 0s".to_owned(),
            );
            check(
                upstream.keepalive_interval.is_zero() || !upstream.keepalive_timeout.is_zero(),
                "upstream.keepalive_timeout: must be greater than 0s".to_owned(),
            );
            check(
                !upstream.command_timeout.is_zero(),
                "upstream.command_timeout: must be greater than 0s".to_owned(),
            );
            check(
                upstream.tls_cert_file.is_some() == upstream.tls_key_file.is_some(),
                "upstream.tls_cert_file: tls_cert_file and tls_key_file go together".to_owned(),
            );
            check(
                upstream.tls_cert_file.is_none() || upstream.endpoint.is_https(),
                "upstream.tls_cert_file: needs an https:// upstream.endpoint".to_owned(),
            );
            check(
                upstream.token.as_deref().is_none_or(valid_token),
                "upstream.token: must be non-empty printable ASCII without spaces".to_owned(),
            );
        }
        for problem in self.engine.problems() {
            check(false, problem);
        }
        if let Some(tls) = &self.tls {
            check(
                tls.client_ca_file.is_none(),
                "tls.client_ca_file: only supported under hub.tls".to_owned(),
            );
        }
        if let Some(tls) = &self.hub.tls {
            check(
                tls.compact_record_keys.is_none(),
                "hub.tls.compact_record_keys: only supported under tls (the client listener)"
                    .to_owned(),
            );
        }
        check(
            self.hub.link_token.as_deref().is_none_or(valid_token),
            "hub.link_token: must be non-empty printable ASCII without spaces".to_owned(),
        );
        check(
            self.hub.history_size <= 100_000,
            format!(
                "hub.history_size: at most 100000, got {}",
                self.hub.history_size
            ),
        );
        for problem in self.hub.client.problems() {
            check(false, problem);
        }
        for error in self.hub.client.key_problems() {
            check(false, error.to_string());
        }
        for problem in self.hub.http_api.problems() {
            check(false, problem);
        }
        check(
            (64 * 1024..=LINK_MESSAGE_LIMIT).contains(&self.hub.max_frame_bytes),
            format!(
                "hub.max_frame_bytes: must be 65536..={LINK_MESSAGE_LIMIT}, got {}",
                self.hub.max_frame_bytes
            ),
        );
        check(
            self.hub.link_queue_max_bytes >= self.hub.max_frame_bytes,
            format!(
                "hub.link_queue_max_bytes: must be at least hub.max_frame_bytes ({}), got {}",
                self.hub.max_frame_bytes, self.hub.link_queue_max_bytes
            ),
        );
        check(
            self.hub.max_channels >= 1,
            "hub.max_channels: must be at least 1".to_owned(),
        );
        for pattern in &self.hub.binary_channels {
            check(
                !pattern.is_empty(),
                "hub.binary_channels: patterns must not be empty".to_owned(),
            );
        }
        for (name, value) in [
            ("client_handshake_timeout", self.client_handshake_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
            (
                "hub.link_keepalive_timeout",
                self.hub.link_keepalive_timeout,
            ),
        ] {
            check(!value.is_zero(), format!("{name}: must be greater than 0s"));
        }
        check(
            self.max_connections == 0 || self.max_connections_per_ip <= self.max_connections,
            format!(
                "max_connections_per_ip: must not exceed max_connections ({}), got {}",
                self.max_connections, self.max_connections_per_ip
            ),
        );
        problems.extend(self.uni_problems());
        problems.extend(self.hub.channel.problems());
        problems.extend(proxy::rpc_problems(&self.hub.rpc));
        if self.hub.proxy_max_in_flight == 0 {
            problems.push("hub.proxy_max_in_flight: must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Problems of the unidirectional transport keys (paths and limits), named by field.
    fn uni_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut taken: Vec<(&str, &String)> = vec![("websocket_path", &self.websocket_path)];
        if self.http_stream {
            taken.push(("http_stream_path", &self.http_stream_path));
        }
        if self.sse {
            taken.push(("sse_path", &self.sse_path));
        }
        if self.emulation_enabled() {
            taken.push(("emulation_path", &self.emulation_path));
        }
        for (enabled, name, path) in [
            (
                self.uni_websocket,
                "uni_websocket_path",
                &self.uni_websocket_path,
            ),
            (
                self.uni_http_stream,
                "uni_http_stream_path",
                &self.uni_http_stream_path,
            ),
            (self.uni_sse, "uni_sse_path", &self.uni_sse_path),
        ] {
            if !enabled {
                continue;
            }
            if !path.starts_with('/') {
                problems.push(format!("{name}: must start with '/', got {path:?}"));
            }
            if let Some((other, _)) = taken.iter().find(|(_, p)| *p == path) {
                problems.push(format!("{name}: same path as {other} ({path:?})"));
            }
            taken.push((name, path));
        }
        for (name, size) in [
            (
                "uni_websocket_message_size_limit",
                self.uni_websocket_message_size_limit,
            ),
            (
                "uni_http_stream_max_request_body_size",
                self.uni_http_stream_max_request_body_size,
            ),
            (
                "uni_sse_max_request_body_size",
                self.uni_sse_max_request_body_size,
            ),
        ] {
            if size < 128 {
                problems.push(format!("{name}: must be at least 128 bytes, got {size}"));
            }
        }
        problems
    }
}

impl Config {
    /// Time the upstream has to answer one command (the embedded hub gets the default).
    pub fn command_timeout(&self) -> Duration {
        self.upstream
            .as_ref()
            .map_or(DEFAULT_COMMAND_TIMEOUT, |upstream| {
                *upstream.command_timeout
            })
    }
}

/// Whether `token` can travel as a bearer token in gRPC metadata.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../configs/sidewire.yaml");
        let config = Config::from_yaml(text).unwrap();
        assert_eq!(config.listen.port(), 8000);
        assert!(config.upstream.is_none());
    }

    #[test]
    fn long_comment_blocks_parse() {
        // A commented-out section of any length (e.g. a pasted Centrifugo config) is fine.
        let comments = "# a comment line\n".repeat(500);
        let text = format!("hub:\n{comments}  history_size: 7\n{comments}");
        let config = Config::from_yaml(&text).unwrap();
        assert_eq!(config.hub.history_size, 7);
    }

    #[test]
    fn token_keys_are_validated_by_name_and_read_from_files() {
        let text = Config::from_yaml_with_env(
            "hub:\n  client:\n    token:\n      rsa_public_key: \"nope\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("hub.client.token.rsa_public_key"), "{text}");
        let text = Config::from_yaml_with_env(
            "hub:\n  client:\n    token:\n      audience: \"\"\n    subscription_token:\n      enabled: true\n      ecdsa_public_key: \"nope\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("hub.client.token.audience"), "{text}");
        assert!(
            text.contains("hub.client.subscription_token.ecdsa_public_key"),
            "{text}"
        );
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ec.pem");
        std::fs::write(&path, pair.public_key_pem()).unwrap();
        let yaml = format!(
            "hub:\n  client:\n    token:\n      ecdsa_public_key_file: {:?}\n",
            path.display()
        );
        let config = Config::from_yaml_with_env(&yaml, &[]).unwrap();
        assert!(
            config
                .hub
                .client
                .token
                .ecdsa_public_key
                .is_some_and(|k| k.contains("BEGIN PUBLIC KEY"))
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::from_yaml("listen: 127.0.0.1:1\nbogus_key: 1\n").unwrap_err();
        assert!(error.to_string().contains("bogus_key"), "{error}");
    }

    #[test]
    fn bad_duration_is_named() {
        let error = Config::from_yaml("ping_interval: 25\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ping_interval") || text.contains("no unit"),
            "{text}"
        );
    }

    #[test]
    fn connection_limits_are_validated_by_name() {
        let yaml = "client_handshake_timeout: 0s\nrequest_body_timeout: 0s\nmax_connections: 10\nmax_connections_per_ip: 11\nhub:\n  link_keepalive_timeout: 0s\n";
        let text = Config::from_yaml(yaml).unwrap_err().to_string();
        for field in [
            "client_handshake_timeout:",
            "request_body_timeout:",
            "max_connections_per_ip:",
            "hub.link_keepalive_timeout:",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        let config = Config::default();
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(!config.hub.http_api.insecure);
    }

    #[test]
    fn hub_limits_are_validated_by_name() {
        let error = Config::from_yaml(
            "hub:\n  client:\n    channel_limit: 0\n  channel:\n    max_length: 300\n  max_frame_bytes: 10\n  max_channels: 0\n  binary_channels: [\"\"]\n",
        )
        .unwrap_err()
        .to_string();
        for field in [
            "hub.client.channel_limit",
            "hub.channel.max_length",
            "hub.max_frame_bytes",
            "hub.max_channels",
            "hub.binary_channels",
        ] {
            assert!(error.contains(field), "{field} in {error}");
        }
        let error = Config::from_yaml("hub:\n  link_queue_max_bytes: 65536\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("hub.link_queue_max_bytes"), "{error}");
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let yaml = "websocket_path: ws\nping_interval: 5s\npong_timeout: 10s\nupstream:\n  endpoint: grpc://x\nqueue_max_size: 10\n";
        let text = Config::from_yaml(yaml).unwrap_err().to_string();
        for field in [
            "websocket_path:",
            "pong_timeout:",
            "upstream.endpoint:",
            "queue_max_size:",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
    }

    #[test]
    fn compact_record_keys_belongs_to_the_client_listener() {
        let yaml = "tls:\n  cert_file: c\n  key_file: k\n  compact_record_keys: false\n";
        let config = Config::from_yaml(yaml).unwrap();
        assert!(!config.tls.unwrap().compact_record_keys());
        let config = Config::from_yaml("tls:\n  cert_file: c\n  key_file: k\n").unwrap();
        assert!(config.tls.unwrap().compact_record_keys(), "on by default");
        let yaml =
            "hub:\n  tls:\n    cert_file: c\n    key_file: k\n    compact_record_keys: true\n";
        let error = Config::from_yaml(yaml).unwrap_err().to_string();
        assert!(error.contains("hub.tls.compact_record_keys:"), "{error}");
    }

    #[test]
    fn link_auth_keys_are_validated_by_name() {
        let yaml = "upstream:\n  endpoint: \"http://h:1\"\n  token: \"a b\"\n  tls_cert_file: \"/c\"\n  command_timeout: \"0s\"\nhub:\n  link_token: \"\"\ntls:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n";
        let error = Config::from_yaml(yaml).unwrap_err().to_string();
        for field in [
            "upstream.token:",
            "upstream.tls_cert_file: tls_cert_file and tls_key_file",
            "upstream.tls_cert_file: needs an https://",
            "upstream.command_timeout:",
            "hub.link_token:",
            "tls.client_ca_file:",
        ] {
            assert!(error.contains(field), "{field} missing in {error}");
        }
    }

    #[test]
    fn command_timeout_defaults_for_the_embedded_hub() {
        assert_eq!(Config::default().command_timeout(), DEFAULT_COMMAND_TIMEOUT);
        let config =
            Config::from_yaml("upstream:\n  endpoint: \"http://h:1\"\n  command_timeout: 2s\n")
                .unwrap();
        assert_eq!(config.command_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn uni_transports_are_off_by_default_and_validated_by_name() {
        let config = Config::default();
        assert!(!config.uni_websocket && !config.uni_http_stream && !config.uni_sse);
        assert_eq!(config.uni_sse_path, DEFAULT_UNI_SSE_PATH);
        let yaml = "uni_websocket: true\nuni_websocket_path: uni\nuni_http_stream: true\nuni_http_stream_path: /connection/websocket\nuni_sse: true\nuni_sse_max_request_body_size: 1\nuni_websocket_message_size_limit: 2\nuni_http_stream_max_request_body_size: 3\n";
        let text = Config::from_yaml(yaml).unwrap_err().to_string();
        for field in [
            "uni_websocket_path:",
            "uni_http_stream_path: same path as websocket_path",
            "uni_sse_max_request_body_size:",
            "uni_websocket_message_size_limit:",
            "uni_http_stream_max_request_body_size:",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        // Disabled transports are not checked.
        assert!(Config::from_yaml("uni_sse_path: nope\n").is_ok());
    }
}
