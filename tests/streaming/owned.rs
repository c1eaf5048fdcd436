//! The owned HTTP/1.1 path (`edge::owned`): streaming sessions opened by a plain HTTP/1.1
//! request with a sized body are served outside hyper. Their response must be hyper's, byte
//! for byte (hyper still serves the same request sent with a chunked body), plus
//! `connection: close`; and one hostile client (malformed, huge or slow head, stalled body,
//! pipelined bytes) gets its specific answer while other sessions keep working.

use std::net::SocketAddr;
use std::time::Duration;

use sidewire::protocol::Encoding;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::*;

const SESSIONS_LIVE: &str = "sidewire_sessions_live";
/// Bound for one raw exchange.
const RAW_WAIT: Duration = Duration::from_secs(10);
/// The owned path's head limit (`edge::h1::MAX_HEAD_BYTES`).
const MAX_HEAD_BYTES: usize = 64 * 1024;

async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the end of the stream (bounded): everything received.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(RAW_WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap_or_default();
    out
}

/// Reads until `out` holds `count` chunks of a chunked body after the head (bounded).
async fn read_head_and_chunks(stream: &mut TcpStream, count: usize) -> (String, Vec<Vec<u8>>) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + RAW_WAIT;
    loop {
        if let Some(parsed) = split_chunks(&out, count) {
            return parsed;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("response incomplete")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
}

fn split_chunks(out: &[u8], count: usize) -> Option<(String, Vec<Vec<u8>>)> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8(out[..end].to_vec()).unwrap();
    let mut rest = &out[end..];
    let mut chunks = Vec::new();
    while chunks.len() < count {
        let line = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?, 16).ok()?;
        let total = line + 2 + size + 2;
        if rest.len() < total {
            return None;
        }
        // The whole chunk, size line included, so framing is compared too.
        chunks.push(rest[..total].to_vec());
        rest = &rest[total..];
    }
    Some((head, chunks))
}

/// Head lines without `date` (and without `connection: close`, which only the owned path
/// sends), in order.
fn comparable(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter(|line| !line.starts_with("date: ") && *line != "connection: close")
        .map(str::to_owned)
        .collect()
}

/// Random ids (client, session) replaced: the same length, so chunk sizes still compare.
fn masked(chunk: &[u8]) -> String {
    let text = String::from_utf8_lossy(chunk);
    let uuid =
        regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    uuid.replace_all(&text, "UUID").into_owned()
}

/// The same streaming request sent sized (owned path) and chunked (hyper): identical head
/// but for `date` and `connection: close`, identical chunks but for the random ids.
async fn compare_with_hyper(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    chunks: usize,
) {
    let origin = ALLOWED_ORIGIN;
    let sized = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut owned = raw(addr, &[sized.as_bytes(), body].concat()).await;
    let (owned_head, owned_chunks) = read_head_and_chunks(&mut owned, chunks).await;

    let mut chunked = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    if !body.is_empty() {
        chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        chunked.extend_from_slice(body);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut hyper = raw(addr, &chunked).await;
    let (hyper_head, hyper_chunks) = read_head_and_chunks(&mut hyper, chunks).await;

    assert!(
        owned_head.contains("\r\nconnection: close\r\n"),
        "{owned_head}"
    );
    assert!(!hyper_head.contains("connection: close"), "{hyper_head}");
    assert!(owned_head.contains("\r\ndate: "), "{owned_head}");
    assert_eq!(comparable(&owned_head), comparable(&hyper_head));
    assert!(owned_head.contains("access-control-allow-origin: http://ok.example\r\n"));
    let owned_chunks: Vec<String> = owned_chunks.iter().map(|c| masked(c)).collect();
    let hyper_chunks: Vec<String> = hyper_chunks.iter().map(|c| masked(c)).collect();
    assert_eq!(owned_chunks, hyper_chunks);
    assert!(
        owned_chunks.last().unwrap().contains("\"connect\""),
        "{owned_chunks:?}"
    );
}

#[tokio::test]
async fn owned_responses_match_hyper_byte_for_byte() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let connect = br#"{"id":1,"connect":{}}"#;
    compare_with_hyper(addr, "POST", "/connection/http_stream", connect, 1).await;
    // SSE: the blank-line preamble, then the connect reply.
    let path = sse_connect_path(r#"{"id":1,"connect":{}}"#);
    compare_with_hyper(addr, "GET", &path, b"", 2).await;
    compare_with_hyper(addr, "POST", "/connection/sse", connect, 2).await;
}

#[tokio::test]
async fn malformed_huge_and_slow_heads_get_their_answer_while_sessions_go_on() {
    let server = start_server("client_handshake_timeout: \"1s\"").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let mut session = StreamClient::http_stream(addr, Encoding::Json, None).await;

    // Slow: half a request line, then nothing; closed at the handshake deadline, unanswered.
    let mut slow = raw(addr, b"POST /connection/http_stream HT").await;

    let mut malformed = raw(
        addr,
        b"POST /connection/http_stream HTTP/1.1\r\nbad header\r\n\r\n",
    )
    .await;
    let answer = String::from_utf8(read_to_close(&mut malformed).await).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");

    let mut garbage = raw(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    let answer = String::from_utf8_lossy(&read_to_close(&mut garbage).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // Exactly the limit, never finished: all of it is read, then 431.
    let mut huge = b"GET /connection/sse?cf_connect=x HTTP/1.1\r\nx-big: ".to_vec();
    huge.resize(MAX_HEAD_BYTES, b'a');
    let mut huge = raw(addr, &huge).await;
    let answer = String::from_utf8(read_to_close(&mut huge).await).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );

    let closed = read_to_close(&mut slow).await;
    assert!(closed.is_empty(), "{:?}", String::from_utf8_lossy(&closed));
    wait_metric(
        admin,
        "sidewire_connection_timeouts_total",
        &[("reason", "handshake")],
        WAIT,
        |v| v >= 1.0,
    )
    .await;

    // The session opened before is still served, and new ones open.
    let reply = session
        .request(crate::support::subscribe("owned-heads"), 2)
        .await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    StreamClient::sse(addr, None).await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_with_cors_and_a_short_one_is_dropped() {
    let server = start_server("request_body_timeout: \"1s\"").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let before = scrape(admin)
        .await
        .value("sidewire_request_body_timeouts_total", &[]);
    let head = format!(
        "POST /connection/http_stream HTTP/1.1\r\nhost: x\r\norigin: {ALLOWED_ORIGIN}\r\ncontent-length: 100\r\n\r\n{{\"id\":1,"
    );
    let mut stalled = raw(addr, head.as_bytes()).await;
    let answer = String::from_utf8(read_to_close(&mut stalled).await).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\naccess-control-allow-origin: http://ok.example\r\n"),
        "{answer}"
    );
    wait_metric(
        admin,
        "sidewire_request_body_timeouts_total",
        &[],
        WAIT,
        |v| v >= before + 1.0,
    )
    .await;

    // The client leaves mid-body: nothing is opened, nothing answered.
    let live = scrape(admin).await.value(SESSIONS_LIVE, &[]);
    let mut short = raw(addr, head.as_bytes()).await;
    short.shutdown().await.unwrap();
    let answer = read_to_close(&mut short).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(scrape(admin).await.value(SESSIONS_LIVE, &[]), live);
    StreamClient::http_stream(addr, Encoding::Protobuf, None).await;
}

#[tokio::test]
async fn pipelined_bytes_are_dropped_and_later_bytes_end_the_session() {
    let server = start_server("").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let live = scrape(admin).await.value(SESSIONS_LIVE, &[]);
    let connect = br#"{"id":1,"connect":{}}"#;
    let request = format!(
        "POST /connection/http_stream HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        connect.len()
    );
    let pipelined = b"GET /other HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut stream = raw(addr, &[request.as_bytes(), connect, pipelined].concat()).await;
    let (head, chunks) = read_head_and_chunks(&mut stream, 1).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(masked(&chunks[0]).contains("\"connect\""), "{chunks:?}");
    wait_metric(admin, SESSIONS_LIVE, &[], WAIT, |v| v == live + 1.0).await;

    // Anything more is garbage on a streaming connection: the session ends, the response is
    // terminated and the connection closed.
    stream.write_all(&[0xAB; 100_000]).await.ok();
    let rest = read_to_close(&mut stream).await;
    assert!(
        rest.is_empty() || rest.ends_with(b"0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    wait_metric(admin, SESSIONS_LIVE, &[], WAIT, |v| v == live).await;
    StreamClient::sse(addr, None).await;
}
