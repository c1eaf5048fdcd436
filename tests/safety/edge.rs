//! Safety regressions: edge. Every connection makes progress or is closed; the connection cap
//! refuses extra connections at once; running out of descriptors degrades gracefully.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// Generous bound for "closed by a 1 s timer".
const CLOSED_WITHIN: Duration = Duration::from_secs(6);

/// Reads until the peer closes (EOF or reset); `Some(bytes read)` if it did within `bound`.
pub async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + bound;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads an HTTP/1 response head; returns its status code (bounded by `bound`).
async fn response_status(stream: &mut TcpStream, bound: Duration) -> Option<u16> {
    let deadline = Instant::now() + bound;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A child `sidewire` started through `sh -c` (e.g. under `ulimit`), killed on drop.
pub struct ShellChild {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ShellChild {
    /// Runs `sh -c '<prefix> exec sidewire <args> --config FILE'` with `yaml` in FILE and
    /// waits (bounded) for the stdout line starting with `ready`; returns it.
    pub async fn start(prefix: &str, args: &str, yaml: &str, ready: &str) -> (ShellChild, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidewire.yaml");
        std::fs::write(&path, with_test_defaults(yaml)).expect("write config");
        let script = format!(
            "{prefix} exec '{}' {args} --config '{}'",
            bin(),
            path.display()
        );
        let mut child = Process::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(&ready)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let mut started = ShellChild { child, _dir: dir };
        match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(line)) => (started, line),
            _ => {
                started.kill();
                panic!("child sidewire did not start");
            }
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) for the process to exit; whether it did.
    pub async fn exited_within(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ShellChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `key=ADDR` of a listening line (0.0.0.0 replaced by loopback).
pub fn addr_of(line: &str, key: &str) -> SocketAddr {
    let mut addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .expect("address");
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    addr
}

#[tokio::test]
async fn silent_socket_is_closed_after_handshake_timeout() {
    let server = Server::start("client_handshake_timeout: \"1s\"\n").await;
    let mut silent = TcpStream::connect(server.client_addr).await.unwrap();
    assert!(
        closed_within(&mut silent, CLOSED_WITHIN).await.is_some(),
        "a socket that sends nothing stayed open"
    );
    let scraped = scrape(server.admin_addr).await;
    assert!(
        scraped.value(
            "sidewire_connection_timeouts_total",
            &[("reason", "handshake")]
        ) >= 1.0,
        "{}",
        scraped.text
    );
    // Real clients are unaffected.
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
}

#[tokio::test]
async fn partial_h2_preface_is_closed() {
    let server = Server::start("client_handshake_timeout: \"1s\"\n").await;
    let mut partial = TcpStream::connect(server.client_addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut partial, CLOSED_WITHIN).await.is_some(),
        "a partial HTTP/2 preface stayed open"
    );
}

#[tokio::test]
async fn idle_h2c_connection_is_closed() {
    // The handshake timeout is long: only the idle timeout can close it in time.
    let server =
        Server::start("client_handshake_timeout: \"30s\"\nclient_idle_timeout: \"1s\"\n").await;
    let tcp = TcpStream::connect(server.client_addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{}/nothing-here", server.client_addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.status(), 404);
    drop(response);
    let ended = tokio::time::timeout(CLOSED_WITHIN, connection).await;
    assert!(ended.is_ok(), "an idle h2c connection stayed open");
    let scraped = scrape(server.admin_addr).await;
    assert!(
        scraped.value("sidewire_connection_timeouts_total", &[("reason", "idle")]) >= 1.0,
        "{}",
        scraped.text
    );
}

#[tokio::test]
async fn http1_keep_alive_requests_restart_the_idle_timer() {
    // Each request comes well within the idle timeout, all of them together well past it: the
    // connection's one idle timer must count from the last request, not the first.
    let server =
        Server::start("client_handshake_timeout: \"30s\"\nclient_idle_timeout: \"2s\"\n").await;
    let mut stream = TcpStream::connect(server.client_addr).await.unwrap();
    for round in 0..7 {
        stream
            .write_all(b"HEAD /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            response_status(&mut stream, CLOSED_WITHIN).await,
            Some(404),
            "request {round}: the connection was closed while in use"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 3.5 s of use in all, then idle: closed by the idle timer.
    assert!(
        closed_within(&mut stream, CLOSED_WITHIN).await.is_some(),
        "an idle keep-alive connection stayed open"
    );
}

/// Sends a POST head announcing 100 bytes and only 10 of them; returns the status answered.
async fn stalled_post(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":1,  "
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    response_status(&mut stream, CLOSED_WITHIN).await
}

#[tokio::test]
async fn stalled_emulation_body_gets_408() {
    let server = Server::start("http_stream: true\nrequest_body_timeout: \"1s\"\n").await;
    assert_eq!(
        stalled_post(server.client_addr, "/emulation").await,
        Some(408)
    );
    let scraped = scrape(server.admin_addr).await;
    assert!(scraped.value("sidewire_request_body_timeouts_total", &[]) >= 1.0);
}

#[tokio::test]
async fn stalled_http_stream_body_gets_408() {
    let server = Server::start("http_stream: true\nrequest_body_timeout: \"1s\"\n").await;
    assert_eq!(
        stalled_post(server.client_addr, "/connection/http_stream").await,
        Some(408)
    );
}

#[tokio::test]
async fn connection_cap_refuses_extra_and_metric_counts() {
    let server = Server::start("max_connections: 3\n").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = server.ws(WsOptions::json()).await;
        client.handshake().await;
        clients.push(client);
    }
    // The fourth is closed at once (long before any timeout), and counted.
    let mut extra = TcpStream::connect(server.client_addr).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answered = closed_within(&mut extra, Duration::from_secs(3)).await;
    assert_eq!(
        answered,
        Some(Vec::new()),
        "the extra connection was served"
    );
    let scraped = wait_metric(
        server.admin_addr,
        "sidewire_connections_refused_total",
        &[("reason", "max_connections")],
        WAIT,
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        scraped.value("sidewire_tcp_connections", &[]),
        3.0,
        "{}",
        scraped.text
    );
    // Connected clients keep working; a freed slot admits a new client.
    let channel = unique_channel("cap");
    let reply = clients[0]
        .request(publish(&channel, &json!({"x": 1})))
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
    drop(clients.pop());
    let addr = server.client_addr;
    eventually(
        WAIT,
        "a new client is admitted once a slot is free",
        || async move {
            match WsClient::try_connect(addr, WsOptions::json()).await {
                Ok(mut client) => {
                    client.handshake().await;
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn per_ip_cap() {
    let server = Server::start("max_connections_per_ip: 2\n").await;
    let mut first = server.ws(WsOptions::json()).await;
    first.handshake().await;
    let _second = TcpStream::connect(server.client_addr).await.unwrap();
    // Give the server time to accept the second before the third arrives.
    wait_metric(
        server.admin_addr,
        "sidewire_tcp_connections",
        &[],
        WAIT,
        |v| v >= 2.0,
    )
    .await;
    let mut third = TcpStream::connect(server.client_addr).await.unwrap();
    assert_eq!(
        closed_within(&mut third, Duration::from_secs(3)).await,
        Some(Vec::new()),
        "a third connection from one IP was served"
    );
    let scraped = scrape(server.admin_addr).await;
    assert!(
        scraped.value(
            "sidewire_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ) >= 1.0,
        "{}",
        scraped.text
    );
    let reply = first
        .request(publish(&unique_channel("ip"), &json!({"x": 1})))
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
}

#[tokio::test]
async fn fd_exhaustion_backs_off_and_existing_clients_keep_working() {
    let yaml = "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n\
                client_handshake_timeout: \"2s\"\nmax_connections: 0\n";
    let (mut child, line) =
        ShellChild::start("ulimit -n 256;", "", yaml, "sidewire listening ").await;
    let client_addr = addr_of(&line, "client");
    let admin_addr = addr_of(&line, "admin");
    let mut victim = WsClient::connect(client_addr, WsOptions::json()).await;
    victim.handshake().await;

    // More silent sockets than the process has descriptors: the kernel queues the rest.
    let mut silent = Vec::new();
    for _ in 0..320 {
        match TcpStream::connect(client_addr).await {
            Ok(stream) => silent.push(stream),
            Err(_) => break,
        }
    }
    assert!(silent.len() >= 260, "only {} connects", silent.len());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The connected client keeps getting replies while the process is out of descriptors.
    let channel = unique_channel("fd");
    for n in 0..3 {
        let reply = victim.request(publish(&channel, &json!({ "n": n }))).await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    assert!(child.alive(), "sidewire died when out of descriptors");

    // Once the silent sockets are timed out, a real client gets in again.
    eventually(
        Duration::from_secs(30),
        "a new client connects",
        || async move {
            let attempt = async {
                let mut client = WsClient::try_connect(client_addr, WsOptions::json())
                    .await
                    .ok()?;
                client.handshake().await;
                Some(())
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(5), attempt).await,
                Ok(Some(()))
            )
        },
    )
    .await;
    let scraped = scrape(admin_addr).await;
    assert!(
        scraped.value("sidewire_accept_errors_total", &[]) >= 1.0,
        "the flood never exhausted descriptors, so this test proved nothing:\n{}",
        scraped.text
    );
    let reply = victim
        .request(publish(&channel, &json!({"n": "after"})))
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
    drop(silent);
}

#[tokio::test]
async fn live_sessions_outlive_the_idle_timeout() {
    // A WebSocket (upgraded) and an HTTP-stream (response in flight) are not idle connections.
    let server = crate::support::start_server(
        "client_idle_timeout: \"1s\"\nclient_handshake_timeout: \"1s\"\n",
    )
    .await;
    let mut ws = server.ws(WsOptions::json()).await;
    ws.handshake().await;
    let mut stream = crate::support::StreamClient::http_stream(
        server.client_addr,
        sidewire::protocol::Encoding::Json,
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let channel = unique_channel("live");
    let reply = ws.request(publish(&channel, &json!({"x": 1}))).await;
    assert!(reply.error.is_none(), "{reply:?}");
    let reply = stream.request(publish(&channel, &json!({"x": 2})), 7).await;
    assert!(reply.error.is_none(), "{reply:?}");
}
