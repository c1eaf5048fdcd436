//! Shared harness for the integration tests: runs the real `sidewire` binary (and the
//! standalone `sidewire hub`) on ephemeral ports, speaks WebSocket client protocol v2 to it in
//! both encodings, and calls its HTTP endpoints.
//!
//! Rules kept here so that every test file gets them for free:
//! - no fixed ports: every listener is `127.0.0.1:0`, addresses come from the "listening" line;
//! - no sleeping to wait for startup: we await that line (bounded by [`STARTUP_TIMEOUT`]);
//! - every wait is bounded, and a failed wait panics with what was received meanwhile;
//! - child processes are killed on drop; their stderr is copied to the test's stderr (shown by
//!   `cargo test` for failing tests) and its tail is quoted in startup errors.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use serde_json::Value;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{
    Command, ConnectRequest, HistoryRequest, PresenceRequest, PresenceStatsRequest, PublishRequest,
    Push, RefreshRequest, Reply, RpcRequest, SendRequest, StreamPosition, SubscribeRequest,
    UnsubscribeRequest,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Time allowed for a process to print its "listening" line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time allowed for one expected reply, push or close.
pub const WAIT: Duration = Duration::from_secs(5);
/// Time allowed for one HTTP exchange with the admin or API listener.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a child's stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidewire")
}

// === processes ===

/// A running child process: killed (SIGKILL) and reaped on drop.
struct Proc {
    label: String,
    child: Child,
    stderr_tail: Arc<Mutex<String>>,
    /// The config file the process was started with.
    config_path: std::path::PathBuf,
    /// Holds the config file for the life of the process.
    _dir: tempfile::TempDir,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap().clone();
        if tail.trim().is_empty() {
            "<empty>".to_owned()
        } else {
            tail
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `sidewire <args> --config <yaml in a temp file>` and waits for a stdout line that
/// starts with `ready_prefix`. Errors carry the exit status and the stderr tail.
async fn spawn_until_line(
    label: &str,
    args: &[&str],
    yaml: &str,
    ready_prefix: &'static str,
) -> Result<(Proc, String), String> {
    spawn_exact_until_line(label, args, &with_test_defaults(yaml), ready_prefix).await
}

/// [`spawn_until_line`] with `yaml` exactly as given (no [`with_test_defaults`]).
async fn spawn_exact_until_line(
    label: &str,
    args: &[&str],
    yaml: &str,
    ready_prefix: &'static str,
) -> Result<(Proc, String), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("sidewire.yaml");
    std::fs::write(&path, yaml).map_err(|e| format!("write config: {e}"))?;
    spawn_with_config_until_line(label, args, dir, path, ready_prefix).await
}

/// The permissive channel options the harness gives channels without a namespace when a
/// test configures no namespaces: every operation for every client kind, presence,
/// join/leave and history (the hub's defaults before secure defaults).
pub const PERMISSIVE_WITHOUT_NAMESPACE: &str = r#"{
  "presence": true, "join_leave": true, "history_size": 100, "history_ttl": "300s",
  "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true,
  "allow_publish_for_client": true, "allow_publish_for_anonymous": true,
  "allow_history_for_client": true, "allow_history_for_anonymous": true,
  "allow_presence_for_client": true, "allow_presence_for_anonymous": true
}"#;

/// `yaml` with the opt-ins the hub's secure defaults ask for, where the test set nothing
/// itself: `hub.client.allow_anonymous_connect_without_token: true` unless `hub.client` sets
/// it or `insecure`, and [`PERMISSIVE_WITHOUT_NAMESPACE`] unless `hub.channel` sets
/// `without_namespace` or `namespaces`. Text that is not a YAML mapping is returned as is
/// (tests of bad configs). The result is JSON, which is YAML.
pub fn with_test_defaults(yaml: &str) -> String {
    let mut tree = match serde_saphyr::from_str::<Value>(yaml) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(Value::Null) => Value::Object(Default::default()),
        _ => return yaml.to_owned(),
    };
    let Some(root) = tree.as_object_mut() else {
        return yaml.to_owned();
    };
    let hub = root
        .entry("hub")
        .or_insert_with(|| Value::Object(Default::default()));
    if hub.is_null() {
        *hub = Value::Object(Default::default());
    }
    let Some(hub) = hub.as_object_mut() else {
        return yaml.to_owned();
    };
    for (section, skip_if, key, value) in [
        (
            "client",
            &["allow_anonymous_connect_without_token", "insecure"][..],
            "allow_anonymous_connect_without_token",
            Value::Bool(true),
        ),
        (
            "channel",
            &["without_namespace", "namespaces"][..],
            "without_namespace",
            serde_json::from_str(PERMISSIVE_WITHOUT_NAMESPACE).expect("constant JSON"),
        ),
    ] {
        let entry = hub
            .entry(section)
            .or_insert_with(|| Value::Object(Default::default()));
        if entry.is_null() {
            *entry = Value::Object(Default::default());
        }
        let Some(entry) = entry.as_object_mut() else {
            return yaml.to_owned();
        };
        if !skip_if.iter().any(|k| entry.contains_key(*k)) {
            entry.insert(key.to_owned(), value);
        }
    }
    tree.to_string()
}

/// Spawns `sidewire <args> --config <path>` (a file the caller wrote, kept alive by `dir`)
/// and waits for a stdout line that starts with `ready_prefix`.
async fn spawn_with_config_until_line(
    label: &str,
    args: &[&str],
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ready_prefix: &'static str,
) -> Result<(Proc, String), String> {
    let mut child = Process::new(bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin()))?;

    let stderr_tail = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = child.stdout.take().expect("piped stdout");
    {
        let tail = stderr_tail.clone();
        let label = label.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{label}] {line}");
                let mut tail = tail.lock().unwrap();
                tail.push_str(&line);
                tail.push('\n');
                if tail.len() > STDERR_TAIL_BYTES {
                    let mut cut = tail.len() - STDERR_TAIL_BYTES;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
        });
    }
    let (line_tx, line_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let label = label.to_owned();
        std::thread::spawn(move || {
            let mut line_tx = Some(line_tx);
            // Keep draining stdout for the whole life of the process.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(ready_prefix)
                    && let Some(tx) = line_tx.take()
                {
                    let _ = tx.send(line);
                    continue;
                }
                eprintln!("[{label} stdout] {line}");
            }
        });
    }

    let mut proc = Proc {
        label: label.to_owned(),
        child,
        stderr_tail,
        config_path: path,
        _dir: dir,
    };
    match tokio::time::timeout(STARTUP_TIMEOUT, line_rx).await {
        Ok(Ok(line)) => Ok((proc, line)),
        Ok(Err(_)) => {
            // stdout closed without the line: the process is (nearly) gone.
            let status = wait_exit(&mut proc.child, Duration::from_secs(5)).await;
            // Let the stderr reader catch up with the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(format!(
                "{label} exited before printing {ready_prefix:?} (status: {status}); stderr:\n{}",
                proc.stderr_tail()
            ))
        }
        Err(_) => {
            proc.kill();
            Err(format!(
                "{label} did not print {ready_prefix:?} within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                proc.stderr_tail()
            ))
        }
    }
}

/// Waits (bounded) for a child to exit; describes its status.
async fn wait_exit(child: &mut Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(None) => return "still running".to_owned(),
            Err(e) => return format!("unknown ({e})"),
        }
    }
}

/// Waits (bounded) for a child to exit; `None` if it is still running at `timeout`.
async fn wait_exit_status(
    child: &mut Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Parses `key=value` words of a listening line.
fn addr_in_line(line: &str, key: &str) -> Result<SocketAddr, String> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("no {key}= in listening line {line:?}"))?
        .parse()
        .map_err(|e| format!("bad {key} address in {line:?}: {e}"))
}

/// Indents `key: value` lines so they sit under a `hub:` mapping.
pub fn hub_section(lines: &str) -> String {
    let mut out = String::from("hub:\n");
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    if out == "hub:\n" {
        return String::new();
    }
    out
}

/// The sidecar: `sidewire --config FILE`.
pub struct Server {
    /// Client listener (WebSocket endpoint).
    pub client_addr: SocketAddr,
    /// Admin listener (/healthz, /readyz, embedded hub's /api/*).
    pub admin_addr: SocketAddr,
    proc: Proc,
}

impl Server {
    /// Starts a sidecar; `yaml` is appended to ephemeral `listen` / `admin_listen` lines.
    /// Panics (failing the test) when it does not come up.
    pub async fn start(yaml: &str) -> Server {
        match Server::try_start(yaml).await {
            Ok(server) => server,
            Err(e) => panic!("sidewire did not start: {e}"),
        }
    }

    /// Starts a sidecar with `yaml` exactly (plus the listener lines): none of the opt-ins of
    /// [`with_test_defaults`], so the hub's secure defaults apply.
    pub async fn start_exact(yaml: &str) -> Server {
        let yaml = format!("listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n{yaml}\n");
        let (proc, line) = spawn_exact_until_line("sidewire", &[], &yaml, "sidewire listening ")
            .await
            .unwrap_or_else(|e| panic!("sidewire did not start: {e}"));
        Server {
            client_addr: addr_in_line(&line, "client").expect("client address"),
            admin_addr: addr_in_line(&line, "admin").expect("admin address"),
            proc,
        }
    }

    /// Like [`Server::start`], returning the failure instead of panicking.
    pub async fn try_start(yaml: &str) -> Result<Server, String> {
        let yaml = format!("listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n{yaml}\n");
        let (proc, line) = spawn_until_line("sidewire", &[], &yaml, "sidewire listening ").await?;
        Ok(Server {
            client_addr: addr_in_line(&line, "client")?,
            admin_addr: addr_in_line(&line, "admin")?,
            proc,
        })
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }

    /// Last lines of the server's stderr.
    pub fn stderr_tail(&self) -> String {
        self.proc.stderr_tail()
    }

    /// Waits until `GET /readyz` answers 200 (bounded polling of a scraped value).
    pub async fn wait_ready(&self, timeout: Duration) {
        let admin = self.admin_addr;
        eventually(timeout, "GET /readyz == 200", || async move {
            matches!(
                try_http(admin, "GET", "/readyz", &[], None).await,
                Ok((200, _))
            )
        })
        .await;
    }

    /// A WebSocket client of this server's client listener.
    pub async fn ws(&self, options: WsOptions) -> WsClient {
        WsClient::connect(self.client_addr, options).await
    }
}

// === Server: config files, signals, exit ===

impl Server {
    /// The config text [`Server::start`] writes for `yaml`: ephemeral `listen` and
    /// `admin_listen` lines, then `yaml`. Use it when rewriting the file for a reload, so the
    /// listener lines stay the same.
    pub fn config_text(yaml: &str) -> String {
        with_test_defaults(&format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n{yaml}\n"
        ))
    }

    /// Starts a sidecar on a config file the caller already wrote at `path` (for example a
    /// symlink into `dir`); `dir` is kept until the server is dropped. The file must contain
    /// the listener lines (see [`Server::config_text`]).
    pub async fn start_with_config_file(
        dir: tempfile::TempDir,
        path: std::path::PathBuf,
    ) -> Server {
        let started =
            spawn_with_config_until_line("sidewire", &[], dir, path, "sidewire listening ").await;
        let (proc, line) = started.unwrap_or_else(|e| panic!("sidewire did not start: {e}"));
        Server {
            client_addr: addr_in_line(&line, "client").unwrap(),
            admin_addr: addr_in_line(&line, "admin").unwrap(),
            proc,
        }
    }

    /// Path of the config file the process was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.proc.config_path
    }

    /// Replaces the config file's content with [`Server::config_text`]`(yaml)`, atomically
    /// (write a sibling file, then rename it over the config).
    pub fn rewrite_config(&self, yaml: &str) {
        let path = self.config_path();
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, Server::config_text(yaml)).expect("write new config");
        std::fs::rename(&tmp, path).expect("rename new config into place");
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Sends a signal (`"TERM"`, `"HUP"` or `"INT"`) with kill(2), without the delay of
    /// spawning a `kill` process (tests of startup windows depend on it).
    pub fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "HUP" => libc::SIGHUP,
            "INT" => libc::SIGINT,
            other => panic!("unsupported signal {other}"),
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our
        // own child, not yet reaped (the Child is reaped only on drop or after exit).
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "kill({pid}, SIG{name}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits (bounded) for the process to exit on its own; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit_status(&mut self.proc.child, timeout).await
    }
}

/// The standalone hub: `sidewire hub --config FILE`.
pub struct Hub {
    /// Link (gRPC) listener.
    pub link_addr: SocketAddr,
    /// Server API listener.
    pub api_addr: SocketAddr,
    proc: Proc,
}

impl Hub {
    /// Starts a hub on ephemeral ports; `hub_lines` are extra `key: value` lines of the `hub:`
    /// section (e.g. `client: {token: {hmac_secret_key: "s"}}`).
    pub async fn start(hub_lines: &str) -> Hub {
        match Hub::try_start_on("127.0.0.1:0".parse().unwrap(), hub_lines).await {
            Ok(hub) => hub,
            Err(e) => panic!("sidewire hub did not start: {e}"),
        }
    }

    /// Starts a hub whose Link listens on `link` (its API on an ephemeral port).
    pub async fn try_start_on(link: SocketAddr, hub_lines: &str) -> Result<Hub, String> {
        Hub::try_start_with(link, "", hub_lines).await
    }

    /// Like [`Hub::try_start_on`], with `top_level` YAML (e.g. an `engine:` section) added.
    pub async fn try_start_with(
        link: SocketAddr,
        top_level: &str,
        hub_lines: &str,
    ) -> Result<Hub, String> {
        let lines = format!("link_listen: \"{link}\"\napi_listen: \"127.0.0.1:0\"\n{hub_lines}");
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n{top_level}\n{}",
            hub_section(&lines)
        );
        let (proc, line) =
            spawn_until_line("sidewire hub", &["hub"], &yaml, "sidewire hub listening ").await?;
        Ok(Hub {
            link_addr: addr_in_line(&line, "link")?,
            api_addr: addr_in_line(&line, "api")?,
            proc,
        })
    }

    /// `upstream.endpoint` value for a sidecar using this hub.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.link_addr)
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// Which upstream a sidecar relays to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The in-process reference hub (no `upstream` in the config).
    Embedded,
    /// A `sidewire hub` process reached over the Link.
    External,
}

/// A sidecar plus, for [`Upstream::External`], its hub process.
pub struct Deployment {
    /// The sidecar.
    pub server: Server,
    /// The external hub, if any (dropped after the sidecar).
    pub hub: Option<Hub>,
    /// Where the hub's server API (`/api/*`) is served: the sidecar's admin listener for the
    /// embedded hub, the hub's `api=` listener otherwise.
    pub api_addr: SocketAddr,
}

impl Deployment {
    /// Starts the deployment and waits until the sidecar is ready (Link up).
    /// `sidecar_yaml` must not contain `hub:` or `upstream:`; `hub_lines` go into `hub:`.
    pub async fn start(upstream: Upstream, sidecar_yaml: &str, hub_lines: &str) -> Deployment {
        match upstream {
            Upstream::Embedded => {
                let server =
                    Server::start(&format!("{sidecar_yaml}\n{}", hub_section(hub_lines))).await;
                server.wait_ready(Duration::from_secs(10)).await;
                let api_addr = server.admin_addr;
                Deployment {
                    server,
                    hub: None,
                    api_addr,
                }
            }
            Upstream::External => {
                let hub = Hub::start(hub_lines).await;
                let server = Server::start(&format!(
                    "{sidecar_yaml}\nupstream:\n  endpoint: \"{}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\n",
                    hub.endpoint()
                ))
                .await;
                server.wait_ready(Duration::from_secs(10)).await;
                let api_addr = hub.api_addr;
                Deployment {
                    server,
                    hub: Some(hub),
                    api_addr,
                }
            }
        }
    }
}

// === WebSocket client ===

/// How to open a WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// Request path (default `/connection/websocket`).
    pub path: String,
    /// Query string without `?`.
    pub query: Option<String>,
    /// `Origin` header.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` header value as sent.
    pub subprotocols: Option<String>,
    /// The encoding the test expects the server to pick (and that the client speaks).
    pub encoding: Encoding,
    /// `SO_RCVBUF` of the client socket (small values make a non-reading client back up fast).
    pub recv_buffer: Option<u32>,
    /// Extra request headers (e.g. `Cookie`).
    pub headers: Vec<(String, String)>,
}

impl WsOptions {
    /// JSON, no subprotocol (what centrifuge-js does for JSON).
    pub fn json() -> WsOptions {
        WsOptions {
            path: "/connection/websocket".to_owned(),
            query: None,
            origin: None,
            subprotocols: None,
            encoding: Encoding::Json,
            recv_buffer: None,
            headers: Vec::new(),
        }
    }

    /// Protobuf via the `centrifuge-protobuf` subprotocol (what centrifuge-js does).
    pub fn protobuf() -> WsOptions {
        WsOptions {
            subprotocols: Some("centrifuge-protobuf".to_owned()),
            encoding: Encoding::Protobuf,
            ..WsOptions::json()
        }
    }

    /// [`WsOptions::json`] or [`WsOptions::protobuf`].
    pub fn for_encoding(encoding: Encoding) -> WsOptions {
        match encoding {
            Encoding::Json => WsOptions::json(),
            Encoding::Protobuf => WsOptions::protobuf(),
        }
    }

    /// Sets the Origin header.
    pub fn origin(mut self, origin: &str) -> WsOptions {
        self.origin = Some(origin.to_owned());
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> WsOptions {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the query string (without `?`).
    pub fn query(mut self, query: &str) -> WsOptions {
        self.query = Some(query.to_owned());
        self
    }
}

/// Why a WebSocket handshake failed.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The server answered the upgrade with a non-101 status.
    Status(u16),
    /// Anything else (TCP error, bad handshake response, timeout).
    Other(String),
}

/// Something read from the connection.
enum Inbound {
    Replies(Vec<Reply>),
    Close(u16, String),
    Ended(String),
}

/// A client-protocol v2 WebSocket client that keeps every decoded message in arrival order,
/// so that tests can wait for a reply by id or a push by predicate whatever the interleaving.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// Encoding spoken on this connection.
    pub encoding: Encoding,
    /// Headers of the server's 101 response.
    pub response_headers: http::HeaderMap,
    /// Received and not yet consumed messages (replies and pushes; pings unless auto-ponged).
    inbox: VecDeque<Reply>,
    /// Answer server pings with a pong as soon as they are read (they never reach the inbox).
    pub auto_pong: bool,
    /// Number of server pings read so far.
    pub pings: usize,
    next_id: u32,
    /// Close frame (or end of stream) seen while waiting for something else.
    ended: Option<Result<(u16, String), String>>,
}

impl WsClient {
    /// Connects and panics (failing the test) when the handshake fails.
    pub async fn connect(addr: SocketAddr, options: WsOptions) -> WsClient {
        match WsClient::try_connect(addr, options).await {
            Ok(client) => client,
            Err(e) => panic!("WebSocket handshake to {addr} failed: {e:?}"),
        }
    }

    /// Connects; returns the HTTP status when the server refuses the upgrade.
    pub async fn try_connect(
        addr: SocketAddr,
        options: WsOptions,
    ) -> Result<WsClient, HandshakeFailure> {
        let mut url = format!("ws://{addr}{}", options.path);
        if let Some(query) = &options.query {
            url.push('?');
            url.push_str(query);
        }
        let mut request = url
            .into_client_request()
            .map_err(|e| HandshakeFailure::Other(e.to_string()))?;
        if let Some(origin) = &options.origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        for (name, value) in &options.headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| HandshakeFailure::Other(e.to_string()))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| HandshakeFailure::Other(e.to_string()))?;
            request.headers_mut().append(name, value);
        }
        if let Some(protocols) = &options.subprotocols {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(protocols).unwrap(),
            );
        }
        let handshake = async {
            let socket = tokio::net::TcpSocket::new_v4()
                .map_err(|e| HandshakeFailure::Other(format!("socket: {e}")))?;
            if let Some(size) = options.recv_buffer {
                socket
                    .set_recv_buffer_size(size)
                    .map_err(|e| HandshakeFailure::Other(format!("SO_RCVBUF: {e}")))?;
            }
            let tcp = socket
                .connect(addr)
                .await
                .map_err(|e| HandshakeFailure::Other(format!("tcp connect: {e}")))?;
            tcp.set_nodelay(true).ok();
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(64 << 20));
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| match e {
                    WsError::Http(response) => HandshakeFailure::Status(response.status().as_u16()),
                    other => HandshakeFailure::Other(other.to_string()),
                })
        };
        let (ws, response) = tokio::time::timeout(WAIT, handshake)
            .await
            .map_err(|_| HandshakeFailure::Other("handshake timed out".to_owned()))??;
        Ok(WsClient {
            ws,
            encoding: options.encoding,
            response_headers: response.headers().clone(),
            inbox: VecDeque::new(),
            auto_pong: false,
            pings: 0,
            next_id: 1,
            ended: None,
        })
    }

    /// The `Sec-WebSocket-Protocol` the server answered with, if any.
    pub fn selected_subprotocol(&self) -> Option<String> {
        self.response_headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    // --- sending ---

    /// Sends the commands as one WebSocket message (JSON joined by `\n` in a text frame,
    /// Protobuf varint-delimited in a binary frame).
    pub async fn send_commands(&mut self, commands: &[Command]) {
        let message = match self.encoding {
            Encoding::Json => {
                let lines: Vec<String> = commands
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("encode command"))
                    .collect();
                Message::text(lines.join("\n"))
            }
            Encoding::Protobuf => {
                let mut frame = Vec::new();
                for command in commands {
                    frame.extend_from_slice(&command.encode_length_delimited_to_vec());
                }
                Message::binary(frame)
            }
        };
        self.send_message(message).await;
    }

    /// Sends one raw text message.
    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text.to_owned())).await;
    }

    /// Sends one raw binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_message(Message::binary(bytes)).await;
    }

    /// Sends a pong (empty command: `{}` or `0x00`).
    pub async fn send_pong(&mut self) {
        match self.encoding {
            Encoding::Json => self.send_text("{}").await,
            Encoding::Protobuf => self.send_binary(vec![0]).await,
        }
    }

    async fn send_message(&mut self, message: Message) {
        match tokio::time::timeout(WAIT, self.ws.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("WebSocket send failed: {e}"),
            Err(_) => panic!("WebSocket send did not complete within {WAIT:?}"),
        }
    }

    /// Allocates the next command id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `command` with a fresh id and waits for the reply carrying that id.
    pub async fn request(&mut self, mut command: Command) -> Reply {
        command.id = self.next_id();
        let id = command.id;
        self.send_commands(&[command]).await;
        self.expect_reply(id, WAIT).await
    }

    /// Sends `connect` and returns its reply (result or error).
    pub async fn connect_with(&mut self, request: ConnectRequest) -> Reply {
        self.request(Command {
            connect: Some(request),
            ..Default::default()
        })
        .await
    }

    /// Connects anonymously and returns the client id; panics on an error reply.
    pub async fn handshake(&mut self) -> String {
        self.handshake_with(ConnectRequest::default()).await
    }

    /// Connects and returns the client id; panics on an error reply.
    pub async fn handshake_with(&mut self, request: ConnectRequest) -> String {
        let reply = self.connect_with(request).await;
        assert_eq!(reply.error, None, "connect failed: {reply:?}");
        let result = reply.connect.expect("connect reply without ConnectResult");
        assert!(!result.client.is_empty(), "empty client id: {result:?}");
        result.client
    }

    // --- receiving ---

    /// Reads one WebSocket message (bounded by `deadline`) and decodes it.
    async fn read_inbound(&mut self, deadline: Instant) -> Option<Inbound> {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            let message = match next {
                None => return Some(Inbound::Ended("stream ended without close frame".into())),
                Some(Err(e)) => return Some(Inbound::Ended(format!("read error: {e}"))),
                Some(Ok(message)) => message,
            };
            let payload: Bytes = match (message, self.encoding) {
                (Message::Text(text), Encoding::Json) => Bytes::copy_from_slice(text.as_bytes()),
                (Message::Binary(bytes), Encoding::Protobuf) => bytes,
                (Message::Text(text), Encoding::Protobuf) => {
                    panic!("text frame on a Protobuf connection: {text:?}")
                }
                (Message::Binary(bytes), Encoding::Json) => {
                    panic!("binary frame on a JSON connection: {bytes:?}")
                }
                (Message::Close(frame), _) => {
                    return Some(match frame {
                        Some(frame) => {
                            Inbound::Close(u16::from(frame.code), frame.reason.to_string())
                        }
                        None => Inbound::Close(1005, String::new()),
                    });
                }
                // WebSocket-level ping/pong: tungstenite answers pings itself.
                (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => continue,
            };
            return Some(Inbound::Replies(decode_replies(self.encoding, &payload)));
        }
    }

    /// Reads more messages into the inbox; false on timeout. Panics if the connection ended.
    async fn fill(&mut self, deadline: Instant, waiting_for: &str) -> bool {
        if let Some(ended) = &self.ended {
            panic!(
                "connection already ended ({ended:?}) while waiting for {waiting_for}; unconsumed: {:?}",
                self.inbox
            );
        }
        match self.read_inbound(deadline).await {
            None => false,
            Some(Inbound::Replies(replies)) => {
                for reply in replies {
                    if reply == Reply::default() {
                        self.pings += 1;
                        if self.auto_pong {
                            self.send_pong().await;
                            continue;
                        }
                    }
                    self.inbox.push_back(reply);
                }
                true
            }
            Some(Inbound::Close(code, reason)) => {
                self.ended = Some(Ok((code, reason.clone())));
                panic!(
                    "connection closed with {code} {reason:?} while waiting for {waiting_for}; unconsumed: {:?}",
                    self.inbox
                );
            }
            Some(Inbound::Ended(why)) => {
                self.ended = Some(Err(why.clone()));
                panic!(
                    "connection ended ({why}) while waiting for {waiting_for}; unconsumed: {:?}",
                    self.inbox
                );
            }
        }
    }

    /// The next received message in order (replies, pushes, and pings unless auto-ponged).
    pub async fn next_reply(&mut self, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return reply;
            }
            if !self.fill(deadline, "any message").await {
                panic!("no message within {timeout:?}");
            }
        }
    }

    /// Waits for the reply with `id` (pushes and other replies stay in the inbox).
    pub async fn expect_reply(&mut self, id: u32, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        let what = format!("reply id {id}");
        loop {
            if let Some(index) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(index).unwrap();
            }
            if !self.fill(deadline, &what).await {
                panic!("no {what} within {timeout:?}; unconsumed: {:?}", self.inbox);
            }
        }
    }

    /// Waits for a push matching `matches` (other messages stay in the inbox).
    pub async fn expect_push(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Push) -> bool,
    ) -> Push {
        let deadline = Instant::now() + timeout;
        let waiting_for = format!("push: {what}");
        loop {
            if let Some(index) = self
                .inbox
                .iter()
                .position(|r| r.id == 0 && r.push.as_ref().is_some_and(&matches))
            {
                return self.inbox.remove(index).unwrap().push.unwrap();
            }
            if !self.fill(deadline, &waiting_for).await {
                panic!(
                    "no {waiting_for} within {timeout:?}; unconsumed: {:?}",
                    self.inbox
                );
            }
        }
    }

    /// Waits for a publication push on `channel` with the given offset.
    pub async fn expect_publication(
        &mut self,
        channel: &str,
        offset: u64,
    ) -> sidewire::protocol::client::Publication {
        let push = self
            .expect_push(&format!("publication {channel}@{offset}"), WAIT, |p| {
                p.channel == channel && p.r#pub.as_ref().is_some_and(|p| p.offset == offset)
            })
            .await;
        push.r#pub.unwrap()
    }

    /// Pushes received and not consumed yet that match `matches`, removed from the inbox.
    pub fn take_pushes(&mut self, matches: impl Fn(&Push) -> bool) -> Vec<Push> {
        let (taken, kept): (Vec<Reply>, Vec<Reply>) = self
            .inbox
            .drain(..)
            .partition(|r| r.id == 0 && r.push.as_ref().is_some_and(&matches));
        self.inbox = kept.into();
        taken.into_iter().filter_map(|r| r.push).collect()
    }

    /// Unconsumed messages, for assertions and diagnostics.
    pub fn unconsumed(&self) -> &VecDeque<Reply> {
        &self.inbox
    }

    /// Reads until the server's close frame and returns (code, reason); data messages before it
    /// are discarded. Panics if the stream ends without a close frame or nothing comes in time.
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        if let Some(ended) = self.ended.take() {
            return match ended {
                Ok(close) => close,
                Err(why) => panic!("expected a close frame, but the connection ended: {why}"),
            };
        }
        let deadline = Instant::now() + timeout;
        let mut discarded = 0usize;
        loop {
            match self.read_inbound(deadline).await {
                None => panic!(
                    "no close frame within {timeout:?} ({discarded} messages read meanwhile; last unconsumed: {:?})",
                    self.inbox.back()
                ),
                Some(Inbound::Close(code, reason)) => return (code, reason),
                Some(Inbound::Ended(why)) => panic!(
                    "expected a close frame, but the connection ended: {why} ({discarded} messages read before)"
                ),
                Some(Inbound::Replies(replies)) => {
                    discarded += replies.len();
                    self.pings += replies.iter().filter(|r| **r == Reply::default()).count();
                    // Keep the last few for diagnostics only.
                    self.inbox.extend(replies);
                    while self.inbox.len() > 8 {
                        self.inbox.pop_front();
                    }
                }
            }
        }
    }

    /// Waits until `count` server pings have been read in total, answering each with a pong
    /// when `auto_pong` is set. Other messages stay in the inbox.
    pub async fn wait_pings(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pings < count {
            if !self.fill(deadline, &format!("{count} pings")).await {
                panic!(
                    "only {} of {count} pings within {timeout:?}; unconsumed: {:?}",
                    self.pings, self.inbox
                );
            }
        }
    }
}

/// Splits one server WebSocket message into replies: JSON lines (no empty line allowed) or
/// varint-delimited Protobuf messages (no trailing partial message allowed).
pub fn decode_replies(encoding: Encoding, payload: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    match encoding {
        Encoding::Json => {
            let text = std::str::from_utf8(payload).expect("JSON frame is not UTF-8");
            for line in text.split('\n') {
                assert!(
                    !line.is_empty(),
                    "empty line in a JSON frame from the server: {text:?}"
                );
                let reply: Reply = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("server sent an invalid JSON reply {line:?}: {e}"));
                replies.push(reply);
            }
        }
        Encoding::Protobuf => {
            let mut rest = payload;
            assert!(!rest.is_empty(), "empty binary frame from the server");
            while !rest.is_empty() {
                let size = prost::encoding::decode_varint(&mut rest)
                    .unwrap_or_else(|e| panic!("bad varint in {payload:?}: {e}"))
                    as usize;
                assert!(
                    size <= rest.len(),
                    "truncated Protobuf reply in frame {payload:?}"
                );
                let reply = Reply::decode(&rest[..size])
                    .unwrap_or_else(|e| panic!("server sent an invalid Protobuf reply: {e}"));
                rest = &rest[size..];
                replies.push(reply);
            }
        }
    }
    replies
}

// === command builders ===

/// `subscribe` with default options.
pub fn subscribe(channel: &str) -> Command {
    subscribe_with(SubscribeRequest {
        channel: channel.to_owned(),
        ..Default::default()
    })
}

/// `subscribe` with the given request.
pub fn subscribe_with(request: SubscribeRequest) -> Command {
    Command {
        subscribe: Some(request),
        ..Default::default()
    }
}

/// `unsubscribe`.
pub fn unsubscribe(channel: &str) -> Command {
    Command {
        unsubscribe: Some(UnsubscribeRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `publish` of a JSON document.
pub fn publish(channel: &str, data: &Value) -> Command {
    Command {
        publish: Some(PublishRequest {
            channel: channel.to_owned(),
            data: json_bytes(data),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `presence`.
pub fn presence(channel: &str) -> Command {
    Command {
        presence: Some(PresenceRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `presence_stats`.
pub fn presence_stats(channel: &str) -> Command {
    Command {
        presence_stats: Some(PresenceStatsRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    }
}

/// `history` with a limit, optional `since` position and direction.
pub fn history(channel: &str, limit: i32, since: Option<(u64, &str)>, reverse: bool) -> Command {
    Command {
        history: Some(HistoryRequest {
            channel: channel.to_owned(),
            limit,
            since: since.map(|(offset, epoch)| StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            }),
            reverse,
        }),
        ..Default::default()
    }
}

/// `rpc`.
pub fn rpc(method: &str, data: &Value) -> Command {
    Command {
        rpc: Some(RpcRequest {
            method: method.to_owned(),
            data: json_bytes(data),
        }),
        ..Default::default()
    }
}

/// `send` (asynchronous message; sent with id 0).
pub fn send(data: &Value) -> Command {
    Command {
        send: Some(SendRequest {
            data: json_bytes(data),
        }),
        ..Default::default()
    }
}

/// `refresh`.
pub fn refresh(token: &str) -> Command {
    Command {
        refresh: Some(RefreshRequest {
            token: token.to_owned(),
        }),
        ..Default::default()
    }
}

/// A connect request carrying a token.
pub fn connect_token(token: &str) -> ConnectRequest {
    ConnectRequest {
        token: token.to_owned(),
        ..Default::default()
    }
}

/// Compact JSON bytes of a value (valid as a raw `bytes` field in both encodings).
pub fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap())
}

/// Parses a `bytes` field holding JSON (compared as values, so whitespace does not matter).
pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// A channel name unique to this call.
pub fn unique_channel(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// === tokens ===

/// HS256 JWT with `sub` and `exp` = now + `exp_in_secs` (negative for an expired token).
pub fn hs256_token(secret: &str, sub: &str, exp_in_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "sub": sub, "exp": now + exp_in_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

// === HTTP ===

/// One HTTP/1.1 exchange; `(status, body)`. Panics on transport errors or timeout.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    match try_http(addr, method, path, headers, body).await {
        Ok(result) => result,
        Err(e) => panic!("HTTP {method} http://{addr}{path} failed: {e}"),
    }
}

/// `GET path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], None).await
}

/// One HTTP/1.1 exchange, returning transport errors (refused connection, timeout) as `Err`.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no response within {HTTP_TIMEOUT:?}"))?
}

/// `POST /api/<method>` with a JSON body; returns (status, parsed body or `Value::Null` when
/// the body is not JSON).
pub async fn api(
    addr: SocketAddr,
    method: &str,
    body: &Value,
    api_key: Option<&str>,
) -> (u16, Value) {
    let mut headers = Vec::new();
    if let Some(key) = api_key {
        headers.push(("X-API-Key", key));
    }
    let (status, text) = http(
        addr,
        "POST",
        &format!("/api/{method}"),
        &headers,
        Some(&body.to_string()),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `POST /api/<method>` that must succeed: 200 and a body with `result` and no `error`;
/// returns `result`.
pub async fn api_ok(addr: SocketAddr, method: &str, body: &Value, api_key: Option<&str>) -> Value {
    let (status, response) = api(addr, method, body, api_key).await;
    assert_eq!(status, 200, "/api/{method} {body}: {response}");
    assert!(
        response.get("error").is_none(),
        "/api/{method} {body} answered an error: {response}"
    );
    response
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("/api/{method} {body}: no result in {response}"))
}

// === waiting ===

/// Polls `check` every 50 ms until it returns true; panics after `timeout`. Only for values
/// that cannot be awaited as events (readiness, HTTP-visible state).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("condition not reached within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
