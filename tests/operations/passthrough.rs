//! Passthrough: every path that is not a sidewire endpoint is proxied to the backend, streamed
//! both ways, with hop-by-hop headers removed and forwarding headers added; protocol upgrades
//! (the backend's own WebSocket) pass through; backend failures map to 502 / 504 / 413; no
//! backend means 404.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

/// GET with query and custom headers; response status, headers and body unchanged;
/// hop-by-hop headers stripped both ways; forwarding headers added.
#[tokio::test]
async fn get_passes_unchanged_with_forwarding_headers_and_without_hop_by_hop() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let request = http::Request::get("/api/items?x=1&y=a%20b&y=2")
        .header(header::HOST, "app.example:8080")
        .header("x-custom", "hello")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header(header::CONNECTION, "keep-alive, x-hop")
        .header("x-hop", "must not reach the backend")
        .header("keep-alive", "timeout=5")
        .header(header::TE, "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let fetched = fetch(addr, request).await;

    // What the backend saw.
    let seen = backend.next_request().await;
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path_and_query, "/api/items?x=1&y=a%20b&y=2");
    assert_eq!(header_value(&seen.headers, "x-custom"), "hello");
    assert_eq!(header_values(&seen.headers, "x-multi"), ["one", "two"]);
    for hop in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(hop),
            "hop-by-hop header {hop} reached the backend: {:?}",
            seen.headers
        );
    }
    let connection = header_values(&seen.headers, "connection").join(",");
    assert!(
        !connection.contains("x-hop"),
        "Connection still names x-hop at the backend: {connection:?}"
    );
    let xff = header_value(&seen.headers, "x-forwarded-for");
    assert!(xff.contains("127.0.0.1"), "X-Forwarded-For {xff:?}");
    assert_eq!(header_value(&seen.headers, "x-forwarded-proto"), "http");
    assert_eq!(
        header_value(&seen.headers, "x-forwarded-host"),
        "app.example:8080"
    );
    assert_eq!(
        header_value(&seen.headers, "forwarded"),
        "for=127.0.0.1;proto=http;host=\"app.example:8080\""
    );

    // What the client got.
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.text(), BACKEND_HELLO);
    assert_eq!(header_value(&fetched.headers, "x-backend"), "yes");
    assert_eq!(
        header_values(&fetched.headers, "set-cookie"),
        ["a=1", "b=2"]
    );
    assert!(
        !fetched.headers.contains_key("x-resp-hop"),
        "header named in the backend's Connection reached the client: {:?}",
        fetched.headers
    );

    // A client-supplied X-Forwarded-For is appended to, not replaced.
    let request = request_to(addr, "GET", "/chain")
        .header("x-forwarded-for", "203.0.113.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(fetch(addr, request).await.status, 200);
    let seen = backend.next_request().await;
    assert_eq!(
        header_value(&seen.headers, "x-forwarded-for"),
        "203.0.113.7, 127.0.0.1"
    );
}

/// Status codes and their headers and bodies come back unchanged.
#[tokio::test]
async fn backend_status_codes_pass_unchanged() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;
    for code in [201u16, 404, 500] {
        let request = request_to(addr, "GET", &format!("/status/{code}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fetched = fetch(addr, request).await;
        assert_eq!(fetched.status, code, "{fetched:?}");
        assert_eq!(fetched.text(), format!("status {code}"));
        assert_eq!(
            header_value(&fetched.headers, "x-backend-status"),
            code.to_string()
        );
        let seen = backend.next_request().await;
        assert_eq!(seen.path_and_query, format!("/status/{code}"));
    }
}

/// A chunked POST body streams through: each chunk reaches the backend before the next one
/// is sent (a proxy that buffered the body would never deliver the first), and the bytes,
/// method, path, query and headers arrive unchanged; the 201 response comes back whole.
#[tokio::test]
async fn streamed_request_body_arrives_chunk_by_chunk() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let request = request_to(addr, "POST", "/upload?kind=log&n=3")
        .header("content-type", "application/octet-stream")
        .header("x-upload-id", "u-42")
        .body(StreamBody::new(ReceiverStream::new(chunks_rx)))
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));

    let chunks: [&[u8]; 4] = [
        b"first chunk\n",
        b"\x00\x01\x02binary\xff",
        b"third",
        b"-last",
    ];
    let mut all = Vec::new();
    for chunk in chunks {
        chunks_tx
            .send(Ok(Frame::data(Bytes::from_static(chunk))))
            .await
            .unwrap();
        backend.expect_chunks(chunk).await;
        all.extend_from_slice(chunk);
    }
    drop(chunks_tx);

    let seen = backend.next_request().await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/upload?kind=log&n=3");
    assert_eq!(header_value(&seen.headers, "x-upload-id"), "u-42");
    assert_eq!(
        header_value(&seen.headers, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(&seen.body[..], &all[..]);

    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("upload response in time")
        .unwrap()
        .expect("upload response");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/upload/1");
    assert_eq!(
        response.headers()["x-received-bytes"],
        all.len().to_string().as_str()
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], &all[..]);
    driver.abort();
}

/// A streamed response arrives incrementally: the backend sends the next chunk only after
/// the client has received the previous one through sidewire.
#[tokio::test]
async fn streamed_response_arrives_incrementally() {
    let backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let request = request_to(addr, "GET", "/stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response headers in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let mut body = response.into_body();
    let mut received = Vec::new();
    for (index, expected) in ["one\n", "one\ntwo\n", "one\ntwo\nthree\n"]
        .iter()
        .enumerate()
    {
        if index > 0 {
            backend.release();
        }
        while received.len() < expected.len() {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "chunk {index} not received within {WAIT:?}; so far {:?}",
                        String::from_utf8_lossy(&received)
                    )
                })
                .expect("body ended early")
                .expect("body error");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8_lossy(&received), *expected);
    }
    let end = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("end of body in time");
    assert!(
        end.is_none(),
        "unexpected data after the last chunk: {end:?}"
    );
    driver.abort();
}

/// The backend's own WebSocket endpoint works end to end through sidewire.
#[tokio::test]
async fn backend_websocket_passes_through() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let request = format!("ws://{addr}/backend-ws?room=7")
        .into_client_request()
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
            .await
            .expect("handshake in time")
            .expect("WebSocket handshake through sidewire");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["x-backend-ws"], "echo");

    let seen = backend.next_request().await;
    assert_eq!(seen.path_and_query, "/backend-ws?room=7");
    assert_eq!(header_value(&seen.headers, "upgrade"), "websocket");
    assert!(
        header_value(&seen.headers, "x-forwarded-for").contains("127.0.0.1"),
        "{:?}",
        seen.headers
    );

    for message in [
        Message::text("hello through the proxy"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(100_000)),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = loop {
            let next = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("echo in time")
                .expect("stream open")
                .expect("read");
            if next.is_text() || next.is_binary() {
                break next;
            }
        };
        assert_eq!(echoed, message);
    }
    ws.close(None).await.unwrap();
}

/// 504 when the backend answers after `response_timeout`, 413 for bodies over
/// `max_request_body_size` (declared or streamed), and 502 once the backend is gone.
#[tokio::test]
async fn backend_failures_map_to_502_504_413() {
    let mut backend = Backend::start().await;
    let server = Server::start(
        &backend.yaml(&["response_timeout: \"500ms\"", "max_request_body_size: 1024"]),
    )
    .await;
    let addr = server.client_addr;

    // Within the limits: passes.
    let request = request_to(addr, "POST", "/upload")
        .body(Full::new(Bytes::from(vec![b'a'; 1024])))
        .unwrap();
    let fetched = fetch(addr, request).await;
    assert_eq!(fetched.status, 201, "{fetched:?}");
    assert_eq!(fetched.body.len(), 1024);

    // Slow backend: 504 after about response_timeout.
    let started = Instant::now();
    let request = request_to(addr, "GET", "/slow")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let fetched = fetch(addr, request).await;
    let elapsed = started.elapsed();
    assert_eq!(fetched.status, 504, "{fetched:?}");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "504 after {elapsed:?} (response_timeout 500ms)"
    );

    // Declared body over the limit: 413.
    backend.drain();
    let request = request_to(addr, "POST", "/upload")
        .body(Full::new(Bytes::from(vec![b'b'; 1025])))
        .unwrap();
    let fetched = fetch(addr, request).await;
    assert_eq!(fetched.status, 413, "{fetched:?}");

    // Streamed (chunked, no Content-Length) body over the limit: 413.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    for _ in 0..4 {
        chunks_tx
            .send(Ok(Frame::data(Bytes::from(vec![b'c'; 600]))))
            .await
            .unwrap();
    }
    drop(chunks_tx);
    let request = request_to(addr, "POST", "/upload")
        .body(StreamBody::new(ReceiverStream::new(chunks_rx)))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("streamed 413 in time")
        .expect("response to an oversized streamed body");
    assert_eq!(response.status(), 413);
    driver.abort();

    // Backend gone: 502.
    drop(backend);
    let request = request_to(addr, "GET", "/after-backend-died")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let fetched = fetch(addr, request).await;
    assert_eq!(fetched.status, 502, "{fetched:?}");
}

/// A backend that was never reachable (nothing listens on its port): 502.
#[tokio::test]
async fn unreachable_backend_is_502() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let server = Server::start(&format!(
        "backend:\n  url: \"http://{closed}\"\n  connect_timeout: \"2s\"\n"
    ))
    .await;
    let (status, _) = crate::support::http_get(server.client_addr, "/anything").await;
    assert_eq!(status, 502);
}

/// Without a backend, other paths get 404, and sidewire's own endpoints still work.
#[tokio::test]
async fn no_backend_is_404() {
    let server = Server::start("").await;
    for path in ["/", "/anything?x=1", "/backend-ws"] {
        let (status, _) = crate::support::http_get(server.client_addr, path).await;
        assert_eq!(status, 404, "GET {path}");
    }
    let mut ws = server.ws(WsOptions::json()).await;
    ws.handshake().await;
}
