//! Graceful drain on SIGTERM: readiness false first, the listener keeps accepting for
//! `shutdown.delay`, then live sessions get close 3001 spread over `shutdown.drain_window`,
//! and the process exits 0. Drain waits for completion: requests in flight and upgraded
//! tunnels hold the process (up to `shutdown.timeout`), and nothing left means an exit at once.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Backend, Conn, Server, WAIT, WsOptions, request_to, try_http};

const DELAY: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(2);
const SESSIONS: usize = 10;

#[tokio::test]
async fn sigterm_drains_sessions_with_3001_spread_over_the_window_then_exits_0() {
    let mut server =
        Server::start("shutdown:\n  delay: \"1s\"\n  drain_window: \"2s\"\n  timeout: \"10s\"\n")
            .await;
    server.wait_ready(Duration::from_secs(10)).await;
    let addr = server.client_addr;
    let admin = server.admin_addr;

    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let mut client = server.ws(WsOptions::json()).await;
        client.handshake().await;
        clients.push(client);
    }

    // Each session waits for its close on its own task and records when it came.
    let close_wait = DELAY + WINDOW + Duration::from_secs(5);
    let watch = |mut client: crate::support::WsClient| {
        tokio::spawn(async move {
            let close = client.expect_close(close_wait).await;
            (close, Instant::now())
        })
    };
    let signalled = Instant::now();
    server.signal("TERM");
    let mut watchers: Vec<_> = clients.into_iter().map(watch).collect();

    // Readiness turns false at once (bounded polling of a scraped value).
    let not_ready_at = loop {
        match try_http(admin, "GET", "/readyz", &[], None).await {
            Ok((503, body)) => {
                assert!(body.contains("\"draining\":true"), "/readyz body {body}");
                break Instant::now();
            }
            Ok((200, _)) => {}
            other => panic!("/readyz during drain: {other:?}"),
        }
        assert!(
            signalled.elapsed() < DELAY,
            "/readyz still 200 {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        watchers.iter().all(|w| !w.is_finished()),
        "a session was closed before readiness turned false"
    );

    // During the delay the listener still accepts, and new sessions connect.
    let mut late = server.ws(WsOptions::json()).await;
    late.handshake().await;
    let accepted_after = signalled.elapsed();
    assert!(
        accepted_after < DELAY,
        "the late session needed {accepted_after:?}: could not check acceptance within the delay"
    );
    watchers.push(watch(late));

    let mut closes = Vec::new();
    for watcher in watchers {
        let ((code, reason), at) = watcher.await.expect("close watcher");
        assert_eq!(code, 3001, "close code (reason {reason:?})");
        closes.push(at);
    }
    closes.sort();
    let first = closes[0];
    let last = *closes.last().unwrap();
    assert!(
        first > not_ready_at,
        "a session closed before /readyz turned 503"
    );
    let since_signal = |at: Instant| at.duration_since(signalled);
    assert!(
        since_signal(first) >= DELAY,
        "first close {:?} after SIGTERM, before shutdown.delay {DELAY:?}",
        since_signal(first)
    );
    assert!(
        since_signal(last) <= DELAY + WINDOW + Duration::from_secs(2),
        "last close {:?} after SIGTERM (delay {DELAY:?} + window {WINDOW:?})",
        since_signal(last)
    );
    assert!(
        last.duration_since(first) > Duration::from_millis(200),
        "closes not spread over the window: first {:?}, last {:?} after SIGTERM",
        since_signal(first),
        since_signal(last)
    );

    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("sidewire did not exit; stderr:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10) + Duration::from_secs(3),
        "exit {:?} after SIGTERM, past shutdown.timeout",
        signalled.elapsed()
    );
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// `shutdown:` section for the completion tests: a short delay, a long window and a long
/// timeout, so that an exit before the test lets go can only come from a drain that ignored
/// what was still in flight, and an exit soon after can only come from completion.
const COMPLETION_SHUTDOWN: &str =
    "shutdown:\n  delay: \"200ms\"\n  drain_window: \"5s\"\n  timeout: \"30s\"\n";

/// How long each test checks that the process stays up with work in flight (well past
/// `shutdown.delay`, when the listener has closed).
const HELD: Duration = Duration::from_millis(1500);

/// A slow passthrough response in flight at SIGTERM completes (200 with its whole body) before
/// the process exits, and the process exits as soon as it has.
#[tokio::test]
async fn slow_passthrough_request_in_flight_completes_before_exit() {
    let backend = Backend::start().await;
    let mut server = Server::start(&format!("{}{COMPLETION_SHUTDOWN}", backend.yaml(&[]))).await;
    let addr = server.client_addr;

    let mut conn = Conn::open(addr).await;
    let request = request_to(addr, "GET", "/stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = conn.send(request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut read_until = async |body: &mut hyper::body::Incoming, expected: &str| {
        while received.len() < expected.len() {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("chunk in time")
                .expect("body ended early")
                .expect("body error");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8_lossy(&received), expected);
    };
    read_until(&mut body, "one\n").await;

    server.signal("TERM");
    assert!(
        server.wait_exit(HELD).await.is_none(),
        "sidewire exited with a passthrough response in flight"
    );
    backend.release();
    backend.release();
    read_until(&mut body, "one\ntwo\nthree\n").await;
    let end = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("end of body in time");
    assert!(end.is_none(), "data after the last chunk: {end:?}");

    let status = server
        .wait_exit(WAIT)
        .await
        .unwrap_or_else(|| panic!("no exit once the response ended:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    drop(conn);
}

/// Opens a WebSocket through the passthrough to the backend's echo endpoint.
async fn backend_tunnel(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let request = format!("ws://{addr}/backend-ws")
        .into_client_request()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("handshake in time")
        .expect("WebSocket handshake through sidewire");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `text` and expects it echoed.
async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo in time")
            .expect("tunnel open")
            .expect("read");
        if next.is_text() {
            assert_eq!(next.into_text().unwrap().as_str(), text);
            return;
        }
    }
}

/// An upgraded passthrough tunnel keeps the process alive (and working) after SIGTERM until
/// the client closes it; then the process exits at once.
#[tokio::test]
async fn upgraded_passthrough_tunnel_keeps_the_process_until_it_closes() {
    let backend = Backend::start().await;
    let mut server = Server::start(&format!("{}{COMPLETION_SHUTDOWN}", backend.yaml(&[]))).await;
    let mut ws = backend_tunnel(server.client_addr).await;
    echo(&mut ws, "before").await;

    server.signal("TERM");
    assert!(
        server.wait_exit(HELD).await.is_none(),
        "sidewire exited with an upgraded tunnel open"
    );
    echo(&mut ws, "while draining").await;
    ws.close(None).await.unwrap();
    drop(ws);

    let status = server
        .wait_exit(WAIT)
        .await
        .unwrap_or_else(|| panic!("no exit once the tunnel closed:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// A tunnel that never closes holds the process only until `shutdown.timeout`.
#[tokio::test]
async fn upgraded_tunnel_left_open_is_cut_at_the_shutdown_timeout() {
    let backend = Backend::start().await;
    let shutdown = "shutdown:\n  delay: \"100ms\"\n  drain_window: \"1s\"\n  timeout: \"2s\"\n";
    let mut server = Server::start(&format!("{}{shutdown}", backend.yaml(&[]))).await;
    let mut ws = backend_tunnel(server.client_addr).await;
    echo(&mut ws, "open").await;

    let signalled = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(WAIT)
        .await
        .unwrap_or_else(|| panic!("no exit at shutdown.timeout:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "exit {:?} after SIGTERM with the tunnel open, before shutdown.timeout",
        signalled.elapsed()
    );
}

/// With nothing in flight, only idle connections (a keep-alive HTTP/1 connection that has
/// been served, a WebSocket-less client), the process exits right after `shutdown.delay`,
/// long before the drain window or the timeout.
#[tokio::test]
async fn exits_promptly_when_nothing_is_left() {
    let backend = Backend::start().await;
    let mut server = Server::start(&format!("{}{COMPLETION_SHUTDOWN}", backend.yaml(&[]))).await;
    let addr = server.client_addr;
    // A keep-alive connection, served once and left idle (client_idle_timeout is far off).
    let mut conn = Conn::open(addr).await;
    let request = request_to(addr, "GET", "/hello")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = conn.send(request).await;
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.unwrap();

    let signalled = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(WAIT)
        .await
        .unwrap_or_else(|| panic!("no exit:\n{}", server.stderr_tail()));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exit {:?} after SIGTERM with nothing in flight (drain window 5 s)",
        signalled.elapsed()
    );
    // The idle keep-alive connection was closed by the server, not left to the exit.
    drop(conn);
}
