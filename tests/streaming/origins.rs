//! `allowed_origins` and CORS on every client endpoint: a present, disallowed Origin is
//! refused with 403 before any session exists; an allowed one gets its Origin echoed with
//! credentials and preflight answers; no Origin passes without CORS headers.

use bytes::Bytes;
use sidewire::protocol::Encoding;

use crate::support::*;

const SESSIONS_OPENED: &str = "sidewire_sessions_opened_total";
const ORIGIN_REJECTIONS: &str = "sidewire_origin_rejections_total";
const CONNECT: &[u8] = br#"{"id":1,"connect":{}}"#;

/// Checks the CORS headers of a response to an allowed `origin`.
fn assert_cors(what: &str, headers: &::http::HeaderMap, origin: &str) {
    assert_eq!(
        header_text(headers, "access-control-allow-origin").as_deref(),
        Some(origin),
        "{what}: {headers:?}"
    );
    assert_eq!(
        header_text(headers, "access-control-allow-credentials").as_deref(),
        Some("true"),
        "{what}: {headers:?}"
    );
    let vary: Vec<String> = headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(
        vary.iter()
            .any(|v| v.split(',').any(|t| t.trim() == "origin")),
        "{what}: no Vary: Origin in {headers:?}"
    );
}

/// Checks that a response carries no CORS grant.
fn assert_no_cors(what: &str, headers: &::http::HeaderMap) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
    ] {
        assert!(headers.get(name).is_none(), "{what}: {name} in {headers:?}");
    }
}

#[tokio::test]
async fn disallowed_origin_gets_403_everywhere_and_opens_nothing() {
    let server = start_server("").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let scraped = scrape(admin).await;
    let opened_before = scraped.value(SESSIONS_OPENED, &[]);
    let rejections_before = scraped.value(ORIGIN_REJECTIONS, &[]);
    // A live session (opened without Origin) for the emulation case.
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let mut refused = 0.0;

    match WsClient::try_connect(addr, WsOptions::json().origin(EVIL_ORIGIN)).await {
        Err(HandshakeFailure::Status(403)) => refused += 1.0,
        Err(other) => panic!("websocket with a disallowed Origin: {other:?}"),
        Ok(_) => panic!("websocket with a disallowed Origin was accepted"),
    }
    let channel = unique_channel("evil");
    let evil_emulation = emulation_request(
        addr,
        Encoding::Json,
        &stream.node,
        &stream.session,
        &frame_commands(Encoding::Json, &[with_id(subscribe(&channel), 2)]),
        Some(EVIL_ORIGIN),
    );
    let with_origin = |ct: &'static str| vec![("content-type", ct), ("origin", EVIL_ORIGIN)];
    let requests = [
        (
            "http_stream POST",
            request(
                addr,
                "POST",
                "/connection/http_stream",
                &with_origin("application/json"),
                Payload::Sized(Bytes::from_static(CONNECT)),
            ),
        ),
        (
            "sse GET",
            request(
                addr,
                "GET",
                &sse_connect_path(std::str::from_utf8(CONNECT).unwrap()),
                &[("origin", EVIL_ORIGIN)],
                Payload::Empty,
            ),
        ),
        (
            "sse POST",
            request(
                addr,
                "POST",
                "/connection/sse",
                &with_origin("application/json"),
                Payload::Sized(Bytes::from_static(CONNECT)),
            ),
        ),
        ("emulation POST", evil_emulation),
        (
            "http_stream preflight",
            preflight(addr, "/connection/http_stream", EVIL_ORIGIN),
        ),
        (
            "sse preflight",
            preflight(addr, "/connection/sse", EVIL_ORIGIN),
        ),
        (
            "emulation preflight",
            preflight(addr, "/emulation", EVIL_ORIGIN),
        ),
    ];
    for (what, request) in requests {
        let fetched = fetch(addr, request).await;
        assert_eq!(fetched.status, 403, "{what}: {}", fetched.text());
        assert_no_cors(what, &fetched.headers);
        refused += 1.0;
    }

    // The refused emulation POST never reached the session: the next reply on the stream is
    // the one for a command sent afterwards, and nothing else is queued.
    let reply = stream.request(subscribe(&unique_channel("ok")), 3).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    assert!(
        stream.unconsumed().is_empty(),
        "unexpected messages: {:?}",
        stream.unconsumed()
    );

    // A sentinel session after the refusals: the counter moved by exactly the two sessions
    // opened on purpose, and every refusal was counted.
    let mut ws = WsClient::connect(addr, WsOptions::json()).await;
    ws.handshake().await;
    let scraped = scrape(admin).await;
    assert_eq!(
        scraped.value(SESSIONS_OPENED, &[]),
        opened_before + 2.0,
        "{}",
        scraped.text
    );
    assert_eq!(
        scraped.value(ORIGIN_REJECTIONS, &[]),
        rejections_before + refused,
        "{}",
        scraped.text
    );
}

/// `OPTIONS path` as a browser preflights a POST with a JSON or binary body.
fn preflight(addr: std::net::SocketAddr, path: &str, origin: &str) -> ::http::Request<ReqBody> {
    request(
        addr,
        "OPTIONS",
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        Payload::Empty,
    )
}

#[tokio::test]
async fn allowed_origin_gets_cors_headers_and_preflight_answers() {
    let server = start_server("").await;
    let addr = server.client_addr;

    // WebSocket: the handshake succeeds.
    let mut ws = WsClient::connect(addr, WsOptions::json().origin(ALLOWED_ORIGIN)).await;
    ws.handshake().await;

    // HTTP-stream, its emulation POST, SSE (GET and POST).
    let stream = StreamClient::http_stream(addr, Encoding::Json, Some(ALLOWED_ORIGIN)).await;
    assert_cors("http_stream", &stream.headers, ALLOWED_ORIGIN);
    let fetched = stream.emulate_commands(&[with_id(subscribe("c"), 2)]).await;
    assert_eq!(fetched.status, 204, "{}", fetched.text());
    assert_cors("emulation", &fetched.headers, ALLOWED_ORIGIN);
    let sse = StreamClient::sse(addr, Some(ALLOWED_ORIGIN)).await;
    assert_cors("sse GET", &sse.headers, ALLOWED_ORIGIN);
    let sse_post = request(
        addr,
        "POST",
        "/connection/sse",
        &[
            ("content-type", "application/json"),
            ("origin", ALLOWED_ORIGIN),
        ],
        Payload::Sized(Bytes::from_static(CONNECT)),
    );
    let mut sse_post = StreamClient::open(addr, Flavor::Sse, sse_post, Some(ALLOWED_ORIGIN)).await;
    sse_post.expect_connected().await;
    assert_cors("sse POST", &sse_post.headers, ALLOWED_ORIGIN);

    // Matching is case-insensitive; the Origin is echoed as received.
    let upper = "HTTP://OK.EXAMPLE";
    let stream_upper = StreamClient::http_stream(addr, Encoding::Json, Some(upper)).await;
    assert_cors(
        "http_stream, upper-case Origin",
        &stream_upper.headers,
        upper,
    );

    // Preflights: 204, the methods, the requested headers echoed.
    for (path, method) in [
        ("/connection/http_stream", "POST"),
        ("/emulation", "POST"),
        ("/connection/sse", "POST"),
    ] {
        let fetched = fetch(addr, preflight(addr, path, ALLOWED_ORIGIN)).await;
        assert_eq!(fetched.status, 204, "preflight {path}: {}", fetched.text());
        let what = format!("preflight {path}");
        assert_cors(&what, &fetched.headers, ALLOWED_ORIGIN);
        let methods = fetched
            .header("access-control-allow-methods")
            .unwrap_or_else(|| panic!("{what}: no allow-methods in {:?}", fetched.headers));
        assert!(
            methods.split(',').any(|m| m.trim() == method),
            "{what}: allow-methods {methods:?}"
        );
        assert_eq!(
            fetched.header("access-control-allow-headers").as_deref(),
            Some("content-type"),
            "{what}: {:?}",
            fetched.headers
        );
    }
}

#[tokio::test]
async fn no_origin_passes_without_cors_headers() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let mut ws = WsClient::connect(addr, WsOptions::json()).await;
    ws.handshake().await;
    let stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    assert_no_cors("http_stream", &stream.headers);
    let fetched = stream.emulate_commands(&[with_id(subscribe("c"), 2)]).await;
    assert_eq!(fetched.status, 204, "{}", fetched.text());
    assert_no_cors("emulation", &fetched.headers);
    let sse = StreamClient::sse(addr, None).await;
    assert_no_cors("sse", &sse.headers);
}

/// Centrifugo's CORS middleware adds its headers before the handler runs, so every answer to
/// an allowed Origin carries them, error statuses included. Without them a browser sees a
/// CORS failure (a network error) instead of the status: newer centrifuge-js closes the
/// transport on a network failure of an emulation POST.
#[tokio::test]
async fn error_responses_to_allowed_origins_carry_cors_headers() {
    let server = start_server(
        "http_stream_max_request_body_size: 1024\nemulation_max_request_body_size: 1024\n",
    )
    .await;
    let addr = server.client_addr;
    let stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let json_origin = [
        ("content-type", "application/json"),
        ("origin", ALLOWED_ORIGIN),
    ];
    let cases = [
        (
            "emulation, unknown node (404)",
            emulation_request(
                addr,
                Encoding::Json,
                "no-such-node",
                &stream.session,
                b"{}",
                Some(ALLOWED_ORIGIN),
            ),
            404,
        ),
        (
            "emulation, malformed body (400)",
            request(
                addr,
                "POST",
                "/emulation",
                &json_origin,
                Payload::Sized(Bytes::from_static(b"not json")),
            ),
            400,
        ),
        (
            "emulation, too large (413)",
            request(
                addr,
                "POST",
                "/emulation",
                &json_origin,
                Payload::Sized(Bytes::from(vec![b' '; 2048])),
            ),
            413,
        ),
        (
            "http_stream, too large (413)",
            request(
                addr,
                "POST",
                "/connection/http_stream",
                &json_origin,
                Payload::Sized(Bytes::from(vec![b' '; 2048])),
            ),
            413,
        ),
        (
            "sse, no cf_connect (400)",
            request(
                addr,
                "GET",
                "/connection/sse",
                &[("origin", ALLOWED_ORIGIN)],
                Payload::Empty,
            ),
            400,
        ),
    ];
    let mut missing = Vec::new();
    for (what, request, status) in cases {
        let fetched = fetch(addr, request).await;
        assert_eq!(fetched.status, status, "{what}: {}", fetched.text());
        if fetched.header("access-control-allow-origin").as_deref() != Some(ALLOWED_ORIGIN) {
            missing.push(format!("{what}: {:?}", fetched.headers));
        }
    }
    assert!(
        missing.is_empty(),
        "error responses to an allowed Origin without Access-Control-Allow-Origin:\n{}",
        missing.join("\n")
    );
}
