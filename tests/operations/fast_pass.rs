//! The owned HTTP/1.1 passthrough fast path (`src/edge/fast_pass.rs`), byte for byte: a raw
//! TCP client and a raw TCP backend see exactly what crosses the proxy. Header names keep their
//! case on the fast path (hyper lowercases them), which is how these tests tell which path
//! served a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::{Server, WAIT, backend_yaml};

/// A raw byte stream with a read buffer.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..read]);
        read
    }

    /// The next head (through the blank line), or `None` at the end of the stream.
    async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await > 0, "stream ended before {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    /// Asserts the next bytes are exactly `expected`.
    async fn expect(&mut self, expected: &str) {
        let got = self.take(expected.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    /// Everything until the peer closes (within [`WAIT`]).
    async fn until_close(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// A chunked body up to and including its last chunk and final CRLF (simple bodies).
    async fn chunked_body(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = self.buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                return self.buf.drain(..end + 5).collect();
            }
            assert!(self.fill().await > 0, "stream ended inside a chunked body");
        }
    }
}

/// What the raw backend saw of one request.
#[derive(Debug)]
struct RawSeen {
    /// Which accepted connection (0-based) carried it.
    conn: usize,
    head: String,
    body: Vec<u8>,
}

impl RawSeen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }
}

/// A backend speaking raw HTTP/1.1: each request (`Content-Length` or simple chunked body) is
/// reported, then answered with `respond(request line)`: the bytes and whether to close after
/// (`None`: never answer).
struct RawBackend {
    addr: std::net::SocketAddr,
    seen: mpsc::UnboundedReceiver<RawSeen>,
    accepted: Arc<AtomicUsize>,
}

type Respond = fn(&str) -> Option<(Vec<u8>, bool)>;

impl RawBackend {
    async fn start(respond: Respond) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut raw = Raw {
                        stream,
                        buf: Vec::new(),
                    };
                    while let Some(head) = raw.head().await {
                        let lower = head.to_ascii_lowercase();
                        let body = if lower.contains("transfer-encoding: chunked") {
                            raw.chunked_body().await
                        } else if let Some(length) = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                        {
                            raw.take(length).await
                        } else {
                            Vec::new()
                        };
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        let _ = tx.send(RawSeen { conn, head, body });
                        let Some((response, close)) = respond(&line) else {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        };
                        if raw.stream.write_all(&response).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            seen,
            accepted,
        }
    }

    async fn next(&mut self) -> RawSeen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the backend saw nothing in time")
            .expect("backend stopped")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn yaml(&self, extra: &[&str]) -> String {
        backend_yaml(self.addr, extra)
    }
}

fn reply(bytes: &str) -> Option<(Vec<u8>, bool)> {
    Some((bytes.as_bytes().to_vec(), false))
}

/// The responses of the byte-exact test, by request line.
fn scripted(line: &str) -> Option<(Vec<u8>, bool)> {
    let target = line.split(' ').nth(1).unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/length" => reply(
            "HTTP/1.1 200 OK\r\nX-Resp-Case: A\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        "/chunked" => reply(
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-After: 1\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        "/head" => reply("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        "/nocontent" => reply("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"),
        "/notmodified" => reply("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        "/hints" => reply(
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/upload" => reply("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbig"),
        "/close" => Some((
            b"HTTP/1.1 200 OK\r\nX-Until: close\r\n\r\nuntil the end".to_vec(),
            true,
        )),
        "/stall" => None,
        "/silent-close" => Some((
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbye.".to_vec(),
            true,
        )),
        "/badchunk" => reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"),
        "/midbody" => Some((
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            true,
        )),
        "/big" => {
            let body = vec![b'x'; 8 << 20];
            let mut bytes =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            bytes.extend_from_slice(&body);
            Some((bytes, false))
        }
        other => {
            let body = format!("at {other}");
            Some((
                format!(
                    "HTTP/1.1 200 OK\r\nX-Path: {other}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            ))
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\nX-Mixed-Case: v\r\n\r\n")
}

/// Content-Length, chunked with extensions and trailers, HEAD, 204, 304, an informational
/// head, a request body, then a close-delimited response: all on one client connection and
/// one backend connection, byte for byte.
#[tokio::test]
async fn responses_and_requests_cross_byte_for_byte_on_kept_alive_connections() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&[])).await;
    let mut client = Raw::connect(server.client_addr).await;

    client
        .send(
            b"GET /length?q=1 HTTP/1.1\r\nHost: app.example\r\nX-Mixed-Case: v\r\n\
              Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nTE: trailers\r\n\r\n",
        )
        .await;
    let seen = backend.next().await;
    assert_eq!(seen.request_line(), "GET /length?q=1 HTTP/1.1");
    let peer = "127.0.0.1";
    let expected_head = format!(
        "GET /length?q=1 HTTP/1.1\r\nHost: app.example\r\nX-Mixed-Case: v\r\n\
         x-forwarded-for: {peer}\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: app.example\r\nforwarded: for={peer};proto=http;host=\"app.example\"\r\n\r\n"
    );
    assert_eq!(seen.head, expected_head);
    client
        .expect("HTTP/1.1 200 OK\r\nX-Resp-Case: A\r\nContent-Length: 5\r\n\r\nhello")
        .await;

    client.send(get("/chunked").as_bytes()).await;
    client
        .expect(
            "HTTP/1.1 201 Created\r\nX-After: 1\r\ntransfer-encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .await;

    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    client
        .expect("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        .await;
    client.send(get("/nocontent").as_bytes()).await;
    client
        .expect("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        .await;
    client.send(get("/notmodified").as_bytes()).await;
    client
        .expect("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")
        .await;
    client.send(get("/hints").as_bytes()).await;
    client
        .expect("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await;

    // A body: part with the head, part later.
    client
        .send(b"POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(b"56789").await;
    client
        .expect("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbig")
        .await;

    // All of it on one backend connection.
    for path in [
        "/chunked",
        "/head",
        "/nocontent",
        "/notmodified",
        "/hints",
        "/upload",
    ] {
        let seen = backend.next().await;
        assert!(seen.request_line().contains(path), "{seen:?}");
        assert_eq!(seen.conn, 0, "{seen:?}");
        if path == "/upload" {
            assert_eq!(seen.body, b"0123456789");
            assert!(seen.head.contains("\r\nContent-Length: 10\r\n"), "{seen:?}");
        }
    }
    assert_eq!(backend.accepted(), 1);

    // Close-delimited: forwarded, then the client connection ends.
    client.send(get("/close").as_bytes()).await;
    let rest = client.until_close().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "HTTP/1.1 200 OK\r\nX-Until: close\r\nconnection: close\r\n\r\nuntil the end"
    );

    // A client's `Connection: close` is honoured after its response.
    let mut client = Raw::connect(server.client_addr).await;
    client
        .send(b"GET /bye HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await;
    let rest = client.until_close().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "HTTP/1.1 200 OK\r\nX-Path: /bye\r\nContent-Length: 7\r\nconnection: close\r\n\r\nat /bye"
    );
}

/// Several requests in one write are answered in order, each forwarded once.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&[])).await;
    let mut client = Raw::connect(server.client_addr).await;
    let pipelined = [get("/p1"), get("/p2"), get("/p3")].concat();
    client.send(pipelined.as_bytes()).await;
    for n in 1..=3 {
        let path = format!("/p{n}");
        let body = format!("at {path}");
        client
            .expect(&format!(
                "HTTP/1.1 200 OK\r\nX-Path: {path}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
            .await;
        assert_eq!(
            backend.next().await.request_line(),
            format!("GET {path} HTTP/1.1")
        );
    }
    assert_eq!(backend.accepted(), 1);
}

/// A request outside the subset after fast ones goes to hyper with the bytes already read,
/// and hyper serves the rest of the connection; a sidewire endpoint is never forwarded.
#[tokio::test]
async fn a_request_outside_the_subset_hands_the_connection_to_hyper() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&[])).await;
    let mut client = Raw::connect(server.client_addr).await;

    client.send(get("/fast").as_bytes()).await;
    let seen = backend.next().await;
    assert!(seen.head.contains("\r\nX-Mixed-Case: v\r\n"), "{seen:?}");
    client.head().await.expect("response");
    client.take(8).await;

    // A chunked request body and the request after it, in one write: hyper's from here.
    client
        .send(
            b"POST /chunked-upload HTTP/1.1\r\nHost: app.example\r\nX-Mixed-Case: v\r\n\
              Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
    client.send(get("/after").as_bytes()).await;
    let seen = backend.next().await;
    assert_eq!(seen.request_line(), "POST /chunked-upload HTTP/1.1");
    assert!(
        seen.head.contains("\r\nx-mixed-case: v\r\n"),
        "hyper: {seen:?}"
    );
    assert_eq!(seen.body, b"3\r\nabc\r\n0\r\n\r\n");
    let head = client.head().await.expect("response");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("x-path: /chunked-upload"), "{head}");
    client.take("at /chunked-upload".len()).await;
    let seen = backend.next().await;
    assert_eq!(seen.request_line(), "GET /after HTTP/1.1");
    assert!(
        seen.head.contains("\r\nx-mixed-case: v\r\n"),
        "hyper: {seen:?}"
    );
    let head = client.head().await.expect("response");
    assert!(head.contains("x-path: /after"), "{head}");
    client.take("at /after".len()).await;

    // A sidewire endpoint after a fast request: answered by sidewire, never forwarded.
    let mut client = Raw::connect(server.client_addr).await;
    client.send(get("/fast2").as_bytes()).await;
    backend.next().await;
    client.head().await.expect("response");
    client.take("at /fast2".len()).await;
    client
        .send(b"GET /connection/websocket HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    let head = client.head().await.expect("response");
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("x-path"), "{head}");
    // The next request the backend sees is a later one.
    let mut other = Raw::connect(server.client_addr).await;
    other.send(get("/marker").as_bytes()).await;
    assert_eq!(backend.next().await.request_line(), "GET /marker HTTP/1.1");
}

/// Smuggling attempts after a fast request get hyper's answer (the same as on a fresh
/// connection), and the smuggled request never reaches the backend.
#[tokio::test]
async fn smuggling_attempts_get_hypers_answer_and_never_reach_the_backend() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&[])).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n";
    let attempts = [
        format!(
            "POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n\
             Content-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!("POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: +5\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5x\r\n\r\n{smuggled}"),
        format!("GET /a HTTP/1.1\r\nHost: app.example\r\nX-Fold: a\r\n b\r\n\r\n{smuggled}"),
        format!("GET /a HTTP/1.1\nHost: app.example\nContent-Length: 0\n\n{smuggled}"),
    ];
    for (index, attempt) in attempts.iter().enumerate() {
        let mut fresh = Raw::connect(server.client_addr).await;
        fresh.send(attempt.as_bytes()).await;
        let reference = fresh.head().await.unwrap_or_default();
        let status = |head: &str| head.lines().next().unwrap_or_default().to_owned();

        let mut client = Raw::connect(server.client_addr).await;
        client.send(get("/first").as_bytes()).await;
        client.head().await.expect("response");
        client.take("at /first".len()).await;
        client.send(attempt.as_bytes()).await;
        let head = client.head().await.unwrap_or_default();
        assert_eq!(status(&head), status(&reference), "{attempt:?}");
        // Two differing lengths, invalid lengths and obs-fold are refused outright.
        if (1..=4).contains(&index) {
            assert_eq!(status(&head), "HTTP/1.1 400 Bad Request", "{attempt:?}");
        }
    }
    // Where hyper reads the trailing bytes as a request of their own (after a chunked body, or
    // with bare LFs), hyper forwards it: nothing after an ambiguous head goes through the fast
    // path (which would keep the `Host` spelling).
    let mut marker = Raw::connect(server.client_addr).await;
    marker.send(get("/marker").as_bytes()).await;
    loop {
        let seen = backend.next().await;
        if seen.head.contains("/smuggled") {
            assert!(
                seen.head.contains("\r\nhost: app.example\r\n"),
                "fast path: {seen:?}"
            );
        }
        if seen.request_line() == "GET /marker HTTP/1.1" {
            break;
        }
    }
}

/// Backend faults: a stalled backend is 504 at `response_timeout`; a bad chunk and a close
/// mid-body end the client connection without passing more on; a client that does not read
/// its response does not hold up another.
#[tokio::test]
async fn backend_faults_and_slow_clients_stay_contained() {
    let backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&["response_timeout: \"1s\""])).await;

    let mut client = Raw::connect(server.client_addr).await;
    let started = Instant::now();
    client.send(get("/stall").as_bytes()).await;
    let head = client.head().await.expect("response");
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let mut client = Raw::connect(server.client_addr).await;
    client.send(get("/badchunk").as_bytes()).await;
    let rest = client.until_close().await;
    let text = String::from_utf8_lossy(&rest);
    // 502 when the bad frame came with the head, else the head alone, then the close.
    assert!(
        text.starts_with("HTTP/1.1 502 Bad Gateway\r\n")
            || text == "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "{text}"
    );
    assert!(!text.contains("zz") && !text.contains("abc"), "{text}");

    let mut client = Raw::connect(server.client_addr).await;
    client.send(get("/midbody").as_bytes()).await;
    let rest = client.until_close().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    );

    // One client asks for 8 MiB and never reads; another is served meanwhile.
    let mut stuck = Raw::connect(server.client_addr).await;
    stuck.send(get("/big").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = Raw::connect(server.client_addr).await;
    other.send(get("/other").as_bytes()).await;
    other
        .expect("HTTP/1.1 200 OK\r\nX-Path: /other\r\nContent-Length: 9\r\n\r\nat /other")
        .await;
    drop(stuck);
}

/// Pinned backend connections count against `pool_max_idle_per_host`: past it, a client
/// connection's backend connection is closed after each response instead of kept.
#[tokio::test]
async fn pinned_backend_connections_are_capped_by_max_idle() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&["pool_max_idle_per_host: 1"])).await;
    let mut first = Raw::connect(server.client_addr).await;
    let mut second = Raw::connect(server.client_addr).await;
    for round in 0..2 {
        for (client, name) in [(&mut first, "a"), (&mut second, "b")] {
            let path = format!("/{name}{round}");
            client.send(get(&path).as_bytes()).await;
            let head = client.head().await.expect("response");
            assert!(head.contains(&format!("X-Path: {path}")), "{head}");
            client.take(format!("at {path}").len()).await;
            backend.next().await;
        }
    }
    // `first` kept its backend connection (1), `second` opened one per request (2).
    assert_eq!(backend.accepted(), 3);
}

/// A kept backend connection the backend closed while idle is replaced: the next request is
/// answered on a new one.
#[tokio::test]
async fn a_kept_connection_closed_by_the_backend_is_replaced() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&[])).await;
    let mut client = Raw::connect(server.client_addr).await;
    client.send(get("/silent-close").as_bytes()).await;
    client
        .expect("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbye.")
        .await;
    assert_eq!(backend.next().await.conn, 0);
    for n in 1..=2 {
        client.send(get("/next").as_bytes()).await;
        client
            .expect("HTTP/1.1 200 OK\r\nX-Path: /next\r\nContent-Length: 8\r\n\r\nat /next")
            .await;
        assert_eq!(backend.next().await.conn, 1, "request {n}");
    }
    assert_eq!(backend.accepted(), 2);
}

/// `backend.fast_path: false` sends every request through hyper (which lowercases names).
#[tokio::test]
async fn the_fast_path_can_be_turned_off() {
    let mut backend = RawBackend::start(scripted).await;
    let server = Server::start(&backend.yaml(&["fast_path: false"])).await;
    let mut client = Raw::connect(server.client_addr).await;
    client.send(get("/slow-path").as_bytes()).await;
    let seen = backend.next().await;
    assert!(seen.head.contains("\r\nx-mixed-case: v\r\n"), "{seen:?}");
    let head = client.head().await.expect("response");
    assert!(head.contains("x-path: /slow-path"), "{head}");
}

/// Over TLS (ALPN `http/1.1`) the fast path serves kept-alive requests too, with
/// `x-forwarded-proto: https`.
#[tokio::test]
async fn tls_connections_take_the_fast_path() {
    let mut backend = RawBackend::start(scripted).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::tls::make_cert("fast", 1);
    crate::tls::install(&cert, dir.path());
    let server = Server::start(&format!(
        "tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{}",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display(),
        backend.yaml(&[])
    ))
    .await;
    server.wait_ready(crate::support::RELOAD_WAIT).await;
    let connector = crate::tls::connector(&[&cert], &[b"http/1.1"]);
    let mut tls = crate::tls::tls_connect(&connector, server.client_addr)
        .await
        .expect("TLS handshake");
    for n in 1..=2 {
        let path = format!("/tls{n}");
        tls.write_all(get(&path).as_bytes()).await.unwrap();
        let seen = backend.next().await;
        assert!(seen.head.contains("\r\nX-Mixed-Case: v\r\n"), "{seen:?}");
        assert!(
            seen.head.contains("\r\nx-forwarded-proto: https\r\n"),
            "{seen:?}"
        );
        let expected =
            format!("HTTP/1.1 200 OK\r\nX-Path: {path}\r\nContent-Length: 8\r\n\r\nat {path}");
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(WAIT, tls.read_exact(&mut got))
            .await
            .expect("response in time")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
    assert_eq!(backend.accepted(), 1);
}

/// A backend that answers an upload before reading its body (a 401 to an unauthenticated
/// upload) and then waits: the client gets the answer at once, not a 504 at
/// `response_timeout`. The fast path sends a body before reading the response, so it takes
/// only small bodies; hyper's client, which reads while it sends, serves this one.
#[tokio::test]
async fn an_early_answer_to_a_large_upload_reaches_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope";
        let _ = stream.write_all(answer).await;
        // Never reads the body, never closes (within the test).
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let yaml = backend_yaml(
        addr,
        &[
            "response_timeout: \"60s\"",
            "max_request_body_size: 268435456",
        ],
    );
    let server = Server::start(&yaml).await;
    let (mut read, mut write) = TcpStream::connect(server.client_addr)
        .await
        .unwrap()
        .into_split();
    let body = vec![b'u'; 64 << 20];
    let upload = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"nope") {
        let read = tokio::time::timeout(WAIT, read.read(&mut chunk))
            .await
            .expect("no answer while the upload is stuck")
            .unwrap_or(0);
        if read == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
    upload.abort();
}
