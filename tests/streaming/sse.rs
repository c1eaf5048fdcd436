//! SSE sessions: `GET ?cf_connect=` (as EventSource sends it) and `POST`, the event framing,
//! commands through `/emulation`, and the disconnect event that ends the response.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sidewire::protocol::client::Reply;

use crate::support::*;

#[tokio::test]
async fn sse_get_session_from_connect_to_disconnect() {
    let server = start_server("ping_interval: \"2s\"\npong_timeout: \"1s\"\n").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("sse");

    let mut sse = StreamClient::sse(addr, None).await;
    assert_eq!(
        header_text(&sse.headers, "content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        header_text(&sse.headers, "x-accel-buffering").as_deref(),
        Some("no")
    );
    assert!(
        sse.raw().starts_with(b"\r\ndata: {\"id\":1,\"connect\":{"),
        "{:?}",
        String::from_utf8_lossy(sse.raw())
    );

    let reply = sse.request(subscribe(&channel), 2).await;
    assert!(
        reply.error.is_none() && reply.subscribe.is_some(),
        "{reply:?}"
    );
    api_publish(admin, &channel, &json!({"x": 1})).await;
    assert_eq!(sse.expect_publication(&channel).await, json!({"x": 1}));
    // Newlines inside a payload never split an event's data line.
    publish_pretty(admin, &channel).await;
    assert_eq!(sse.expect_publication(&channel).await, json!({"y": [1, 2]}));

    // The ping is the event `data: {}`; a pong through /emulation keeps the session.
    sse.auto_pong = true;
    sse.wait_pings(2, Duration::from_secs(7)).await;
    assert!(
        sse.raw().windows(10).any(|w| w == b"data: {}\n\n"),
        "no `data: {{}}` ping event"
    );
    sse.auto_pong = false;

    let target = json!({"user": "", "client": sse.client});
    api_ok(admin, "disconnect", &target, None).await;
    sse.expect_disconnect(3503, Duration::from_secs(5)).await;

    // The whole body: `\r\n`, then only `data: <json>\n\n` events, one reply each.
    let raw = String::from_utf8(sse.raw().to_vec()).unwrap();
    let events = raw.strip_prefix("\r\n").expect("starts with \\r\\n");
    let events = events.strip_suffix("\n\n").expect("ends with an event");
    for event in events.split("\n\n") {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {event:?} in {raw:?}"));
        assert!(
            !data.is_empty() && !data.contains('\n'),
            "bad event {event:?}"
        );
        serde_json::from_str::<Reply>(data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
    }
}

#[tokio::test]
async fn sse_without_cf_connect_is_400() {
    let server = start_server("").await;
    let addr = server.client_addr;
    for path in [
        "/connection/sse",
        "/connection/sse?cf_connect=",
        "/connection/sse?other=1",
    ] {
        let fetched = fetch(addr, request(addr, "GET", path, &[], Payload::Empty)).await;
        assert_eq!(fetched.status, 400, "GET {path}: {}", fetched.text());
    }
}

#[tokio::test]
async fn sse_post_with_json_body() {
    let server = start_server("").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("sse-post");
    let opened = request(
        addr,
        "POST",
        "/connection/sse",
        &[("content-type", "application/json")],
        Payload::Sized(Bytes::from_static(br#"{"id":1,"connect":{}}"#)),
    );
    let mut sse = StreamClient::open(addr, Flavor::Sse, opened, None).await;
    sse.expect_connected().await;
    assert_eq!(
        header_text(&sse.headers, "content-type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    let reply = sse.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    api_publish(admin, &channel, &json!({"y": 2})).await;
    assert_eq!(sse.expect_publication(&channel).await, json!({"y": 2}));
}
