//! Child processes of the tests: the sidecar ([`Server`]), the standalone hub ([`Hub`]) and
//! both together ([`Deployment`]), on ephemeral ports, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{STARTUP_TIMEOUT, WsClient, WsOptions, bin, eventually, try_http};

/// Bytes of a child's stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

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

/// `sidewire gentoken` output, signed with the secret of `config`.
pub fn gentoken(config: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "gentoken"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sidewire gentoken");
    assert!(
        output.status.success(),
        "gentoken failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Runs `sidewire check --config <yaml>`; returns (success, stderr).
pub fn sidewire_check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sidewire check");
    // Bounded: `check` must not start serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sidewire check did not exit within 20s for {yaml:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
