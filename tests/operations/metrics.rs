//! `/metrics` on the admin listener: OpenMetrics text whose counters move with what clients,
//! the backend, reloads and the Link do.

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use sidewire::protocol::Encoding;

use crate::support::*;

const SESSIONS_OPENED: &str = "sidewire_sessions_opened_total";
const COMMANDS: &str = "sidewire_commands_total";
const ORIGIN_REJECTIONS: &str = "sidewire_origin_rejections_total";
const PASSTHROUGH: &str = "sidewire_passthrough_requests_total";
const RELOADS: &str = "sidewire_config_reloads_total";
const EMULATION: &str = "sidewire_emulation_requests_total";
const LINK_UP: &str = "sidewire_link_up";
const SESSIONS_CLOSED: &str = "sidewire_sessions_closed_total";

/// Metric name, label subset, and the least value expected.
type Expectation = (&'static str, &'static [(&'static str, &'static str)], f64);

#[tokio::test]
async fn metrics_are_openmetrics_and_counters_move() {
    let backend = Backend::start().await;
    let yaml = |origin: &str| {
        format!(
            "allowed_origins: [\"{origin}\"]\nhttp_stream: true\n{}",
            backend.yaml(&[])
        )
    };
    let server = Server::start(&yaml("http://a.example")).await;
    server.wait_ready(RELOAD_WAIT).await;
    let admin = server.admin_addr;
    let addr = server.client_addr;

    let before = scrape(admin).await;
    assert_eq!(before.value(LINK_UP, &[]), 1.0, "{}", before.text);
    const WEBSOCKET_JSON: &[(&str, &str)] = &[("transport", "websocket"), ("encoding", "json")];
    for (name, labels) in [
        (SESSIONS_OPENED, WEBSOCKET_JSON),
        (COMMANDS, &[("command", "subscribe")][..]),
        (ORIGIN_REJECTIONS, &[][..]),
        (PASSTHROUGH, &[("status", "200")][..]),
        (RELOADS, &[("result", "applied")][..]),
        (EMULATION, &[("outcome", "delivered")][..]),
        (SESSIONS_CLOSED, &[("code", "3501")][..]),
    ] {
        assert_eq!(
            before.value(name, labels),
            0.0,
            "{name}{labels:?} before anything happened:\n{}",
            before.text
        );
    }

    // A WebSocket session that subscribes.
    let channel = unique_channel("metrics");
    let mut ws = server.ws(WsOptions::json()).await;
    ws.handshake().await;
    assert_eq!(ws.request(subscribe(&channel)).await.error, None);

    // An Origin rejection.
    match WsClient::try_connect(addr, WsOptions::json().origin("http://evil.example")).await {
        Err(HandshakeFailure::Status(403)) => {}
        Err(other) => panic!("evil origin: {other:?}"),
        Ok(_) => panic!("evil origin accepted"),
    }

    // A passthrough request.
    let fetched = fetch(
        addr,
        request_to(addr, "GET", "/metered")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(fetched.status, 200);

    // An emulation delivery (HTTP-streaming session subscribing through /emulation).
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    stream.request(subscribe(&channel), 2).await;
    api_publish(admin, &channel, &json!({"m": 1})).await;
    ws.expect_push("publication", WAIT, |p| p.channel == channel)
        .await;
    stream
        .expect_push("publication", |p| p.channel == channel)
        .await;

    // A session closed by the server (protocol violation: 3501).
    let mut bad = server.ws(WsOptions::json()).await;
    bad.send_text("this is not a command").await;
    let (code, _) = bad.expect_close(WAIT).await;
    assert_eq!(code, 3501);

    // An applied reload.
    server.rewrite_config(&yaml("http://b.example"));

    // Everything shows up (bounded polling of scraped values).
    let after = wait_metric(admin, RELOADS, &[("result", "applied")], RELOAD_WAIT, |v| {
        v >= 1.0
    })
    .await;
    let after = if after.value(SESSIONS_CLOSED, &[("code", "3501")]) >= 1.0 {
        after
    } else {
        wait_metric(
            admin,
            SESSIONS_CLOSED,
            &[("code", "3501")],
            RELOAD_WAIT,
            |v| v >= 1.0,
        )
        .await
    };
    let expectations: [Expectation; 8] = [
        // ws, the rejected one is never opened, bad.
        (SESSIONS_OPENED, WEBSOCKET_JSON, 2.0),
        (
            SESSIONS_OPENED,
            &[("transport", "http_stream"), ("encoding", "json")],
            1.0,
        ),
        (COMMANDS, &[("command", "subscribe")], 2.0),
        (ORIGIN_REJECTIONS, &[], 1.0),
        (PASSTHROUGH, &[("status", "200")], 1.0),
        (RELOADS, &[("result", "applied")], 1.0),
        (EMULATION, &[("outcome", "delivered")], 1.0),
        (SESSIONS_CLOSED, &[("code", "3501")], 1.0),
    ];
    for (name, labels, at_least) in expectations {
        let value = after.value(name, labels);
        assert!(
            value >= at_least,
            "{name}{labels:?} = {value}, expected at least {at_least}; scrape:\n{}",
            after.text
        );
    }
    assert_eq!(after.value(LINK_UP, &[]), 1.0);
    // Every sample line parsed (scrape() panics otherwise); the families are all there.
    for name in [
        SESSIONS_OPENED,
        COMMANDS,
        ORIGIN_REJECTIONS,
        PASSTHROUGH,
        RELOADS,
        EMULATION,
        LINK_UP,
        SESSIONS_CLOSED,
    ] {
        assert!(
            after.samples.iter().any(|s| s.name == name),
            "no {name} sample:\n{}",
            after.text
        );
    }
}

/// The harness's OpenMetrics parser (tests/support/metrics.rs) itself.
#[test]
fn parser_reads_labels_escapes_and_plain_samples() {
    let samples = parse_openmetrics(
        "# HELP x y\n# TYPE a counter\na_total{k=\"v\",q=\"a\\\"b\"} 3\nb 1.5\nc{} 0\n# EOF\n",
    );
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].name, "a_total");
    assert_eq!(samples[0].labels["q"], "a\"b");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(samples[1].value, 1.5);
    assert!(samples[2].labels.is_empty());
    assert!(parse_sample("a{k=v} 1").is_err());
    assert!(parse_sample("a 1 2 3").is_err());
}
