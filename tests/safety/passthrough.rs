//! Safety regressions: passthrough (issue 8 findings 6, 7, 10, 11, 12).
//!
//! Requests are written as raw bytes where the point is what a hostile client can put on the
//! wire (duplicate Host, quotes in Host, dot segments, a broken chunk, `OPTIONS *`, CONNECT);
//! the recording backend of `crate::support` shows what reached it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// A response head read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
}

impl RawResponse {
    /// Value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// Writes `raw` on a new connection to `addr` and reads the response head (bounded).
async fn raw_request(addr: SocketAddr, raw: &str) -> RawResponse {
    let run = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(raw.as_bytes()).await.expect("write request");
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                buffer.truncate(end);
                break;
            }
            let read = tcp.read(&mut chunk).await.expect("read response");
            assert!(
                read > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..read]);
        }
        let head = String::from_utf8_lossy(&buffer).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        RawResponse { status, head }
    };
    match tokio::time::timeout(HTTP_TIMEOUT, run).await {
        Ok(response) => response,
        Err(_) => panic!("no response head within {HTTP_TIMEOUT:?} for {raw:?}"),
    }
}

/// A GET for `path` with a valid Host; the next request the backend records must be this one
/// (seen as `reached`), proving nothing refused before it got through.
async fn marker_at(addr: SocketAddr, backend: &mut Backend, path: &str, reached: &str) -> Seen {
    let response = raw_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: ok\r\n\r\n")).await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(
        seen.path_and_query, reached,
        "the backend saw a request that should have been refused before this marker"
    );
    seen
}

/// [`marker_at`] for a backend without path prefix.
async fn marker(addr: SocketAddr, backend: &mut Backend, path: &str) -> Seen {
    marker_at(addr, backend, path, path).await
}

#[tokio::test]
async fn forwarded_host_is_escaped_and_injection_rejected() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let injected = raw_request(
        addr,
        "GET /inject HTTP/1.1\r\nHost: a\", for=6.6.6.6;host=\"b\r\n\r\n",
    )
    .await;
    assert_eq!(injected.status, 400, "{injected:?}");
    marker(addr, &mut backend, "/after-injection").await;

    // A valid but unusual host (RFC 3986 sub-delims) is quoted; a client's malformed
    // Forwarded (unterminated quote that would swallow our element) is dropped.
    let response = raw_request(
        addr,
        "GET /odd HTTP/1.1\r\nHost: a;b=c:81\r\nForwarded: for=\"x\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(
        header_value(&seen.headers, "forwarded"),
        "for=127.0.0.1;proto=http;host=\"a;b=c:81\""
    );
    assert_eq!(header_value(&seen.headers, "x-forwarded-host"), "a;b=c:81");
}

#[tokio::test]
async fn two_host_headers_get_400() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let response = raw_request(
        addr,
        "GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400, "{response:?}");
    let seen = marker(addr, &mut backend, "/after-two").await;
    assert_eq!(header_values(&seen.headers, "host"), ["ok"]);
}

/// Sends one HTTP/2 (h2c, prior knowledge) GET for `uri` with `headers` and returns the status.
async fn h2_get(addr: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> http::StatusCode {
    let run = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        let driver = tokio::spawn(connection);
        let mut request = http::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.expect("h2 request");
        let status = response.status();
        let _ = response.into_body().collect().await;
        driver.abort();
        status
    };
    tokio::time::timeout(HTTP_TIMEOUT, run)
        .await
        .expect("h2 exchange within bound")
}

#[tokio::test]
async fn h2_authority_reaches_backend_as_host() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;

    let status = h2_get(server.client_addr, "http://public.example:8443/h2?q=1", &[]).await;
    assert_eq!(status, 200);
    let seen = backend.next_request().await;
    assert_eq!(seen.path_and_query, "/h2?q=1");
    assert_eq!(
        header_values(&seen.headers, "host"),
        ["public.example:8443"]
    );
    assert_eq!(
        header_value(&seen.headers, "x-forwarded-host"),
        "public.example:8443"
    );
    assert_eq!(
        header_value(&seen.headers, "forwarded"),
        "for=127.0.0.1;proto=http;host=\"public.example:8443\""
    );
}

#[tokio::test]
async fn client_x_forwarded_host_is_overwritten() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;

    // HTTP/2: no Host header, the host is the :authority.
    let status = h2_get(
        server.client_addr,
        "http://app.example/xfh2",
        &[
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = backend.next_request().await;
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-host"),
        ["app.example"]
    );
    assert_eq!(header_values(&seen.headers, "x-forwarded-proto"), ["http"]);

    // HTTP/1.1 with Host.
    let response = raw_request(
        server.client_addr,
        "GET /xfh HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-Host: evil.example\r\n\
         X-Forwarded-Proto: https\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-host"),
        ["app.example"]
    );
    assert_eq!(header_values(&seen.headers, "x-forwarded-proto"), ["http"]);

    // HTTP/1.0 without Host: the client's value is removed, not passed on.
    let response = raw_request(
        server.client_addr,
        "GET /xfh10 HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert!(
        !seen.headers.contains_key("x-forwarded-host"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn xff_is_appended() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;

    let response = raw_request(
        server.client_addr,
        "GET /xff HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
         X-Forwarded-For: 198.51.100.1\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    );
}

#[tokio::test]
async fn xff_is_appended_and_forwarded_host_kept_from_trusted_proxy() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&["trusted_proxies: [\"127.0.0.0/8\"]"])).await;

    let response = raw_request(
        server.client_addr,
        "GET /trusted HTTP/1.1\r\nHost: internal:8000\r\nX-Forwarded-Host: public.example\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-host"),
        ["public.example"]
    );
    assert_eq!(header_values(&seen.headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
}

#[tokio::test]
async fn trusted_proxies_entry_is_validated() {
    let backend = Backend::start().await;
    let error = Server::try_start(&backend.yaml(&["trusted_proxies: [\"10.0.0.0/40\"]"]))
        .await
        .err()
        .expect("an invalid CIDR must be refused at startup");
    assert!(
        error.contains("backend.trusted_proxies[0]"),
        "error does not name the field: {error}"
    );
}

/// A backend that answers every request with `101 Switching Protocols` to `Upgrade: evil`,
/// reporting each request head it read.
async fn switching_backend() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&buffer).into_owned());
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
                          Upgrade: evil\r\n\r\nraw tunnel bytes",
                    )
                    .await;
                let _ = tcp.read(&mut chunk).await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn only_websocket_upgrades_are_forwarded() {
    // A non-WebSocket Upgrade is stripped: the request is proxied as a normal request.
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let response = raw_request(
        server.client_addr,
        "GET /plain HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert!(
        !seen.headers.contains_key("upgrade"),
        "a non-WebSocket Upgrade reached the backend: {:?}",
        seen.headers
    );
    drop(server);

    // A backend that switches protocols anyway (or to anything but WebSocket) gets 502: no
    // raw tunnel is opened.
    let (addr, mut heads) = switching_backend().await;
    let server = Server::start(&format!("backend:\n  url: \"http://{addr}\"\n")).await;
    let response = raw_request(
        server.client_addr,
        "GET /evil HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 502, "{response:?}");
    let head = tokio::time::timeout(HTTP_TIMEOUT, heads.recv())
        .await
        .expect("backend saw the request")
        .expect("backend running");
    assert!(
        !head.to_ascii_lowercase().contains("upgrade: evil"),
        "the Upgrade reached the backend: {head:?}"
    );
    let response = raw_request(
        server.client_addr,
        "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 502, "{response:?}");
}

#[tokio::test]
async fn dot_segments_cannot_escape_backend_prefix() {
    let mut backend = Backend::start().await;
    let server = Server::start(&format!(
        "backend:\n  url: \"http://{}/app\"\n",
        backend.addr
    ))
    .await;
    let addr = server.client_addr;

    for (target, reached) in [
        ("/../secret", "/app/secret"),
        ("/a/../../../secret?x=1", "/app/secret?x=1"),
        ("/%2e%2e/secret", "/app/secret"),
        ("/.%2E/%2e/secret", "/app/secret"),
        ("/ok/./b", "/app/ok/b"),
    ] {
        let response =
            raw_request(addr, &format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n")).await;
        assert_eq!(response.status, 200, "{target}: {response:?}");
        let seen = backend.next_request().await;
        assert_eq!(seen.path_and_query, reached, "{target}");
    }
    for target in ["/..%2fsecret", "/x/..%5C..%5Csecret"] {
        let response =
            raw_request(addr, &format!("GET {target} HTTP/1.1\r\nHost: app\r\n\r\n")).await;
        assert_eq!(response.status, 400, "{target}: {response:?}");
    }
    marker_at(addr, &mut backend, "/after-dots", "/app/after-dots").await;
}

#[tokio::test]
async fn backend_target_and_host_are_written_exactly_with_and_without_prefix() {
    // Clean targets take the short way (the client's own path-and-query reused, or joined to
    // the prefix without a URI re-parse); dotted ones are rewritten; Host is kept byte for byte.
    let mut backend = Backend::start().await;
    let plain = Server::start(&format!("backend:\n  url: \"http://{}\"\n", backend.addr)).await;
    let prefixed = Server::start(&format!(
        "backend:\n  url: \"http://{}/app/\"\n",
        backend.addr
    ))
    .await;
    for (addr, target, reached) in [
        (plain.client_addr, "/plain/path?q=1&r", "/plain/path?q=1&r"),
        (plain.client_addr, "/.well-known/x?", "/.well-known/x?"),
        (plain.client_addr, "/a/./b/../c?x=%20", "/a/c?x=%20"),
        (plain.client_addr, "/", "/"),
        (prefixed.client_addr, "/", "/app/"),
        (
            prefixed.client_addr,
            "/plain/path?q=1",
            "/app/plain/path?q=1",
        ),
        (prefixed.client_addr, "/.well-known/x", "/app/.well-known/x"),
        (prefixed.client_addr, "/a/./b?y", "/app/a/b?y"),
    ] {
        let response = raw_request(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: App.Example:8080\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "{target}: {response:?}");
        let seen = backend.next_request().await;
        assert_eq!(seen.path_and_query, reached, "{target}");
        assert_eq!(
            header_values(&seen.headers, "host"),
            ["App.Example:8080"],
            "{target}"
        );
    }
    // Absolute-form: the target's authority is the host, the backend gets origin-form.
    let response = raw_request(
        plain.client_addr,
        "GET http://abs.example/abs?z=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = backend.next_request().await;
    assert_eq!(seen.path_and_query, "/abs?z=1");
    assert_eq!(header_values(&seen.headers, "host"), ["abs.example"]);
}

#[tokio::test]
async fn bad_client_chunk_is_400_not_502() {
    let backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;

    let response = raw_request(
        server.client_addr,
        "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nZZ\r\nnot a chunk\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400, "{response:?}");
    // Give the log line (if any) a moment to reach the captured stderr, bounded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.stderr_tail();
    assert!(
        !log.contains("backend failed"),
        "a client's bad chunk was logged as a backend failure:\n{log}"
    );
}

#[tokio::test]
async fn options_star_answered() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let response = raw_request(addr, "OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n").await;
    assert_eq!(response.status, 200, "{response:?}");
    let allow = response.header("allow").expect("Allow header");
    assert!(
        allow.contains("GET") && allow.contains("OPTIONS"),
        "{allow}"
    );
    marker(addr, &mut backend, "/after-options").await;
}

#[tokio::test]
async fn connect_method_gets_405() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let addr = server.client_addr;

    let response = raw_request(
        addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 405, "{response:?}");
    assert!(response.header("allow").is_some(), "{response:?}");
    marker(addr, &mut backend, "/after-connect").await;
}

/// A full-body request still passes with a valid body (the client-error mapping does not
/// turn good uploads into 400).
#[tokio::test]
async fn good_upload_still_passes() {
    let mut backend = Backend::start().await;
    let server = Server::start(&backend.yaml(&[])).await;
    let request = request_to(server.client_addr, "POST", "/upload")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let fetched = fetch(server.client_addr, request).await;
    assert_eq!(fetched.status, 201, "{fetched:?}");
    assert_eq!(backend.next_request().await.body, "payload");
}

#[tokio::test]
async fn stalled_passthrough_body_gets_408_not_a_backend_error() {
    let backend = Backend::start().await;
    let yaml = format!("{}request_body_timeout: \"1s\"\n", backend.yaml(&[]));
    let server = Server::start(&yaml).await;
    // Declares 100 bytes, sends 5, then stalls (the connection stays open).
    let response = raw_request(
        server.client_addr,
        "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nhello",
    )
    .await;
    assert_eq!(response.status, 408, "{response:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.stderr_tail();
    assert!(
        !log.contains("backend failed") && !log.contains("backend timed out"),
        "a stalled client body was blamed on the backend:\n{log}"
    );
}
