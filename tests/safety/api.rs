//! Safety regressions: api. The admin key is checked before any body byte; the API is never
//! open on a public listener by default; the standalone hub drains gracefully and forgets a
//! dead sidecar's sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::edge::{ShellChild, addr_of};
use crate::support::presence_clients;
use crate::support::{
    Hub, Server, WAIT, WsOptions, api, api_ok, eventually, http, subscribe, unique_channel,
};

#[tokio::test]
async fn api_key_checked_before_body_is_read() {
    let server = Server::start("hub:\n  http_api:\n    key: \"right-key\"\n").await;
    // A head announcing ~16 MB (under the API limit) with a wrong key, and no body at all:
    // the answer must come without waiting for the body.
    let mut stream = TcpStream::connect(server.admin_addr).await.unwrap();
    let head = "POST /api/publish HTTP/1.1\r\nHost: admin\r\nX-API-Key: wrong-key\r\n\
                Content-Type: application/json\r\nContent-Length: 16000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + WAIT;
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!("no answer before the body was sent: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // The right key still works, through both header forms.
    let channel = unique_channel("key");
    api_ok(
        server.admin_addr,
        "publish",
        &json!({"channel": channel, "data": {}}),
        Some("right-key"),
    )
    .await;
    let (status, _) = http(
        server.admin_addr,
        "POST",
        "/api/publish",
        &[("Authorization", "apikey right-key")],
        Some(&json!({"channel": channel, "data": {}}).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        server.admin_addr,
        "publish",
        &json!({"channel": channel, "data": {}}),
        Some("right-kez"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn api_refused_on_public_admin_listen_without_key() {
    let yaml = "listen: \"127.0.0.1:0\"\nadmin_listen: \"0.0.0.0:0\"\n";
    let (mut child, line) = ShellChild::start("", "", yaml, "sidewire listening ").await;
    let admin = addr_of(&line, "admin");
    let body = json!({"channel": "c", "data": {}});
    let (status, _) = api(admin, "publish", &body, None).await;
    assert_eq!(status, 403, "open server API on a public admin listener");
    // Probes keep working.
    let (status, _) = http(admin, "GET", "/healthz", &[], None).await;
    assert_eq!(status, 200);
    child.kill();

    // Explicitly insecure (Centrifugo's http_api.insecure): served.
    let yaml = format!("{yaml}hub:\n  http_api:\n    insecure: true\n");
    let (_child, line) = ShellChild::start("", "", &yaml, "sidewire listening ").await;
    let admin = addr_of(&line, "admin");
    api_ok(admin, "publish", &body, None).await;
}

#[tokio::test]
async fn standalone_hub_drains_on_sigterm_spread() {
    let yaml = "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n\
                shutdown:\n  delay: \"100ms\"\n  drain_window: \"2s\"\n  timeout: \"10s\"\n\
                hub:\n  link_listen: \"127.0.0.1:0\"\n  api_listen: \"127.0.0.1:0\"\n";
    let (mut hub, line) = ShellChild::start("", "hub", yaml, "sidewire hub listening ").await;
    let link = addr_of(&line, "link");
    let server = Server::start(&format!(
        "upstream:\n  endpoint: \"http://{link}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\n"
    ))
    .await;
    server.wait_ready(Duration::from_secs(10)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = server.ws(WsOptions::json()).await;
        client.handshake().await;
        clients.push(client);
    }
    let pid = libc::pid_t::try_from(hub.pid()).expect("pid");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let closes = join_all(clients.iter_mut().map(|client| async move {
        let close = client.expect_close(Duration::from_secs(8)).await;
        (close, signalled.elapsed())
    }))
    .await;
    for ((code, reason), _) in &closes {
        assert_eq!(
            *code, 3001,
            "expected a reconnect 3001 shutdown, got {code} {reason}"
        );
    }
    let first = closes.iter().map(|(_, at)| *at).min().unwrap_or_default();
    let last = closes.iter().map(|(_, at)| *at).max().unwrap_or_default();
    assert!(
        last - first >= Duration::from_millis(300),
        "disconnects were not spread over the window: {closes:?}"
    );
    assert!(
        hub.exited_within(Duration::from_secs(10)).await,
        "the hub did not exit after draining"
    );
}

/// A TCP proxy that can be switched to a blackhole: bytes are read and dropped, sockets stay
/// open (no FIN reaches either side), as with a dead host behind a silent network.
async fn blackhole_proxy(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blackhole = Arc::new(AtomicBool::new(false));
    let flag = blackhole.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            for (mut from, mut to) in [(in_read, out_write), (out_read, in_write)] {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(n) if n > 0 => n,
                            _ if flag.load(Ordering::SeqCst) => {
                                // Hold both halves: the other side must see nothing.
                                std::future::pending::<()>().await;
                                return;
                            }
                            _ => return,
                        };
                        if flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, blackhole)
}

#[tokio::test]
async fn dead_sidecar_sessions_leave_hub_presence() {
    let hub =
        Hub::start("link_keepalive_interval: \"300ms\"\nlink_keepalive_timeout: \"1s\"\n").await;
    let (proxy, blackhole) = blackhole_proxy(hub.link_addr).await;
    let mut server = Server::start(&format!(
        "upstream:\n  endpoint: \"http://{proxy}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\n"
    ))
    .await;
    server.wait_ready(Duration::from_secs(10)).await;
    let channel = unique_channel("ghost");
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    let reply = client.request(subscribe(&channel)).await;
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(presence_clients(hub.api_addr, &channel).await.len(), 1);

    // The sidecar's host dies silently: nothing more crosses the network, no FIN, no RST.
    blackhole.store(true, Ordering::SeqCst);
    server.kill();
    let api_addr = hub.api_addr;
    let channel_ref = &channel;
    eventually(
        Duration::from_secs(10),
        "the dead sidecar's session leaves the hub's presence",
        || async move { presence_clients(api_addr, channel_ref).await.is_empty() },
    )
    .await;
}
