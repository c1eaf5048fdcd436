//! Configuration from the environment and from secret files, end to end: `SIDEWIRE_*`
//! overrides, `hub.http_api.key_file` (re-read on reload), and `sidewire gentoken` tokens
//! accepted by a real sidewire.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::*;

/// A `sidewire --config FILE` started with extra environment variables; killed on drop.
struct EnvServer {
    child: Child,
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl EnvServer {
    async fn start(config: &std::path::Path, vars: &[(&str, &str)]) -> EnvServer {
        let mut child = Process::new(bin())
            .arg("--config")
            .arg(config)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sidewire");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let pipe = child.stderr.take().expect("piped stderr");
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[sidewire] {line}");
                    let mut text = stderr.lock().unwrap();
                    if text.len() < 64 * 1024 {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        {
            let pipe = child.stdout.take().expect("piped stdout");
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.starts_with("sidewire listening ")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let line = match tokio::time::timeout(STARTUP_TIMEOUT, rx).await {
            Ok(Ok(line)) => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sidewire did not start; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        };
        EnvServer {
            client_addr: addr("client"),
            admin_addr: addr("admin"),
            child,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn hangup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our
        // own child, not yet reaped (it is reaped only on drop).
        let result = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(result, 0, "kill -HUP: {}", std::io::Error::last_os_error());
    }
}

impl Drop for EnvServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

async fn publish_status(admin: SocketAddr, key: &str) -> u16 {
    let body = json!({"channel": "news", "data": {"n": 1}});
    api(admin, "publish", &body, Some(key)).await.0
}

/// The file says port 1 (which cannot be bound): the server must listen where
/// `SIDEWIRE_LISTEN` says; `hub.http_api.key_file` supplies the key, re-read on SIGHUP and when
/// the file changes; an unknown
/// `SIDEWIRE_HUB_*` variable is warned about by name.
#[tokio::test]
async fn env_overrides_listeners_and_api_key_file_rotates_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "key-one\n").unwrap();
    let config = dir.path().join("sidewire.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:1\"\nadmin_listen: \"127.0.0.1:1\"\nhub:\n  client:\n    allow_anonymous_connect_without_token: true\n  http_api:\n    key_file: {:?}\n",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = EnvServer::start(
        &config,
        &[
            ("SIDEWIRE_LISTEN", listen.as_str()),
            ("SIDEWIRE_ADMIN_LISTEN", "127.0.0.1:0"),
            ("SIDEWIRE_PING_INTERVAL", "30s"),
            ("SIDEWIRE_HUB_NO_SUCH_KEY", "1"),
        ],
    )
    .await;
    assert_eq!(
        server.client_addr.port(),
        port,
        "client listener from the env"
    );
    let mut ws = WsClient::connect(server.client_addr, WsOptions::json()).await;
    ws.handshake().await;

    assert_eq!(publish_status(server.admin_addr, "key-one").await, 200);
    assert_ne!(publish_status(server.admin_addr, "key-two").await, 200);
    let stderr = server.stderr();
    assert!(
        stderr.contains("SIDEWIRE_HUB_NO_SUCH_KEY"),
        "unknown variable named in a warning: {stderr}"
    );
    assert!(!stderr.contains("key-one"), "secret logged: {stderr}");

    // Rotate the Secret; a reload re-reads the file.
    std::fs::write(&key_file, "key-two\n").unwrap();
    server.hangup();
    let admin = server.admin_addr;
    eventually(WAIT, "new key accepted after SIGHUP", || async move {
        publish_status(admin, "key-two").await == 200
    })
    .await;
    assert_ne!(
        publish_status(admin, "key-one").await,
        200,
        "old key refused"
    );

    // A rotation alone (no SIGHUP, config unchanged) is seen through the watched directory,
    // as a Kubernetes Secret update would be.
    let staged = dir.path().join("api-key.new");
    std::fs::write(&staged, "key-three\n").unwrap();
    std::fs::rename(&staged, &key_file).unwrap();
    eventually(
        WAIT,
        "rotated key accepted without a signal",
        || async move { publish_status(admin, "key-three").await == 200 },
    )
    .await;
}

fn sidewire(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Process::new(bin())
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sidewire")
}

/// A token printed by `sidewire gentoken` (secret from `hub.client.token.hmac_secret_key_file`) connects
/// to a sidewire with the same secret; `--ttl 1s` signs `exp = iat + 1`. (That the hub refuses
/// an expired token with 109, with no leeway, is tested without waiting for a clock by
/// websocket_commands.rs and hub/auth.rs; gentoken's arithmetic by cli/gentoken.rs.)
#[tokio::test]
async fn gentoken_token_connects_and_its_ttl_sets_exp() {
    const SECRET: &str = "gentoken-test-secret";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hmac");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("gentoken.yaml");
    std::fs::write(
        &config,
        format!(
            "hub:\n  client:\n    token:\n      hmac_secret_key_file: {:?}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let token = gentoken(&config, &["--user", "alice", "--ttl", "1h"]);
    let short = gentoken(&config, &["--user", "bob", "--ttl", "1s"]);

    let server = Server::start(&format!(
        "hub:\n  client:\n    token:\n      hmac_secret_key: \"{SECRET}\"\n"
    ))
    .await;
    let mut alice = server.ws(WsOptions::json()).await;
    let reply = alice.connect_with(connect_token(&token)).await;
    assert_eq!(reply.error, None, "generated token accepted: {reply:?}");

    // exp = iat + 1 s, signed with the file's secret.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &short,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("gentoken signs with the configured secret")
    .claims;
    assert_eq!(claims["sub"], "bob", "{claims}");
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    assert_eq!(exp, iat.map(|iat| iat + 1), "{claims}");
}

/// No secret configured, a bad TTL or a bad override: clear errors naming the problem.
#[tokio::test]
async fn gentoken_and_overrides_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.yaml");
    std::fs::write(&config, "").unwrap();
    let path = config.to_str().unwrap();

    let output = sidewire(&["--config", path, "gentoken", "--user", "u"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hub.client.token.hmac_secret_key"),
        "{stderr}"
    );

    let output = sidewire(
        &["--config", path, "gentoken", "--user", "u", "--ttl", "soon"],
        &[("SIDEWIRE_HUB_CLIENT_TOKEN_HMAC_SECRET_KEY", "s")],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--ttl"), "{stderr}");

    // Without a config file the environment still applies.
    let output = sidewire(
        &["gentoken", "--user", "u"],
        &[("SIDEWIRE_HUB_CLIENT_TOKEN_HMAC_SECRET_KEY", "s")],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).matches('.').count(),
        2,
        "a JWT"
    );

    let output = sidewire(
        &["--config", path, "check"],
        &[("SIDEWIRE_QUEUE_MAX_SIZE", "lots")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SIDEWIRE_QUEUE_MAX_SIZE"), "{stderr}");

    let output = sidewire(
        &["--config", path, "check"],
        &[(
            "SIDEWIRE_HUB_HTTP_API_KEY_FILE",
            "/nonexistent/sidewire-key",
        )],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hub.http_api.key_file") && stderr.contains("/nonexistent/sidewire-key"),
        "{stderr}"
    );

    // A variable of a renamed key is an error naming the new one, never silently ignored.
    let output = sidewire(
        &["--config", path, "check"],
        &[("SIDEWIRE_HUB_API_KEY", "k")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SIDEWIRE_HUB_API_KEY: renamed to SIDEWIRE_HUB_HTTP_API_KEY"),
        "{stderr}"
    );
}
