//! Status codes of the streaming endpoints: 413 for oversized bodies (declared or chunked),
//! 400 for malformed emulation bodies, 404 for an unknown node, 204 for an unknown session,
//! 405 for wrong methods. None of the refused requests opens a session.

use bytes::Bytes;
use sidewire::protocol::Encoding;

use crate::support::*;

const LIMITS: &str = "http_stream_max_request_body_size: 1024\nsse_max_request_body_size: 1024\nemulation_max_request_body_size: 1024\n";
const SESSIONS_OPENED: &str = "sidewire_sessions_opened_total";

/// Request headers as name/value pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// A JSON connect command padded (in `connect.name`) to exactly `size` bytes.
fn connect_of_size(size: usize) -> Bytes {
    let empty = r#"{"id":1,"connect":{"name":""}}"#;
    let name = "a".repeat(size - empty.len());
    let body = format!(r#"{{"id":1,"connect":{{"name":"{name}"}}}}"#);
    assert_eq!(body.len(), size);
    Bytes::from(body)
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_chunked() {
    let server = start_server(LIMITS).await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let before = scrape(admin).await.value(SESSIONS_OPENED, &[]);

    // A live session, so that emulation bodies have a real target.
    let stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let big = connect_of_size(2048);
    let emulation_big = serde_json::json!({
        "node": stream.node,
        "session": stream.session,
        "data": String::from_utf8(big.to_vec()).unwrap(),
    })
    .to_string();

    let cases: [(&str, &str, &str, Bytes); 3] = [
        (
            "/connection/http_stream",
            "application/json",
            "http_stream",
            big.clone(),
        ),
        (
            "/connection/sse",
            "application/json",
            "sse POST",
            big.clone(),
        ),
        (
            "/emulation",
            "application/json",
            "emulation",
            Bytes::from(emulation_big),
        ),
    ];
    for (path, content_type, what, body) in cases {
        for (how, payload) in [
            ("Content-Length", Payload::Sized(body.clone())),
            ("chunked", Payload::chunked(&body, 512)),
        ] {
            let fetched = fetch(
                addr,
                request(
                    addr,
                    "POST",
                    path,
                    &[("content-type", content_type)],
                    payload,
                ),
            )
            .await;
            assert_eq!(
                fetched.status,
                413,
                "{what} body of {} bytes ({how}): {}",
                body.len(),
                fetched.text()
            );
        }
    }

    // At the limit is fine.
    let at_limit = request(
        addr,
        "POST",
        "/connection/http_stream",
        &[("content-type", "application/json")],
        Payload::chunked(&connect_of_size(1024), 300),
    );
    let mut fits =
        StreamClient::open(addr, Flavor::HttpStream(Encoding::Json), at_limit, None).await;
    fits.expect_connected().await;

    // Two sessions exist (`stream` and `fits`): the refused requests opened none.
    let scraped = scrape(admin).await;
    assert_eq!(
        scraped.value(SESSIONS_OPENED, &[]),
        before + 2.0,
        "{}",
        scraped.text
    );
}

#[tokio::test]
async fn emulation_status_codes() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let json_type = [("content-type", "application/json")];
    let protobuf_type = [("content-type", "application/octet-stream")];

    // Malformed bodies: 400.
    let malformed: [(Headers, &[u8]); 5] = [
        (&json_type, b"not json"),
        (&json_type, br#"{"node":"n"}"#),
        (&json_type, br#"{"node":1,"session":"s","data":"{}"}"#),
        (&protobuf_type, b"\xff\xff\xff"),
        (&protobuf_type, b"\x0a\x10short"),
    ];
    for (headers, body) in malformed {
        let fetched = fetch(
            addr,
            request(
                addr,
                "POST",
                "/emulation",
                headers,
                Payload::Sized(Bytes::copy_from_slice(body)),
            ),
        )
        .await;
        assert_eq!(
            fetched.status,
            400,
            "{headers:?} {:?}: {}",
            String::from_utf8_lossy(body),
            fetched.text()
        );
    }

    // Unknown node: 404, in both encodings.
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let fetched = fetch(
            addr,
            emulation_request(addr, encoding, "no-such-node", &stream.session, b"{}", None),
        )
        .await;
        assert_eq!(fetched.status, 404, "{encoding:?}: {}", fetched.text());
    }

    // Right node, unknown session: 204 (as Centrifugo), in both encodings.
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let fetched = fetch(
            addr,
            emulation_request(addr, encoding, &stream.node, "no-such-session", b"{}", None),
        )
        .await;
        assert_eq!(fetched.status, 204, "{encoding:?}: {}", fetched.text());
    }
}

#[tokio::test]
async fn wrong_methods_get_405() {
    let server = start_server("").await;
    let addr = server.client_addr;
    for (method, path) in [
        ("GET", "/connection/http_stream"),
        ("PUT", "/connection/http_stream"),
        ("GET", "/emulation"),
        ("DELETE", "/emulation"),
        ("PUT", "/connection/sse"),
    ] {
        let fetched = fetch(addr, request(addr, method, path, &[], Payload::Empty)).await;
        assert_eq!(fetched.status, 405, "{method} {path}: {}", fetched.text());
    }
}
