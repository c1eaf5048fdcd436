//! Graceful drain on SIGTERM: readiness false first, the listener keeps accepting for
//! `shutdown.delay`, then live sessions get close 3001 spread over `shutdown.drain_window`,
//! and the process exits 0.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::{Server, WsOptions, try_http};

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
