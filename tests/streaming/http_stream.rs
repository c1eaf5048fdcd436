//! HTTP-stream sessions in both encodings: response headers, framing, commands through
//! `/emulation`, server publications, app-level ping/pong, and the disconnect push that ends
//! the response.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde_json::{Value, json};
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Command, Reply};

use crate::support::*;

/// Timers short enough to see pings within a test: first ping within 2 s, pong due in 1 s.
const FAST_PING: &str = "ping_interval: \"2s\"\npong_timeout: \"1s\"\n";

#[tokio::test]
async fn http_stream_json_session_from_connect_to_disconnect() {
    let server = start_server(FAST_PING).await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("hs-json");

    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    assert_eq!(
        header_text(&stream.headers, "x-accel-buffering").as_deref(),
        Some("no"),
        "{:?}",
        stream.headers
    );
    let cache_control = header_text(&stream.headers, "cache-control").unwrap_or_default();
    assert!(
        cache_control.contains("no-cache"),
        "cache-control {cache_control:?}"
    );
    // The first line on the wire is the connect reply, with what emulation needs.
    let first_line = stream.raw().split(|b| *b == b'\n').next().unwrap().to_vec();
    let first: Value = serde_json::from_slice(&first_line).unwrap();
    assert_eq!(first["id"], 1, "{first}");
    assert_eq!(first["connect"]["session"], stream.session.as_str());
    assert_eq!(first["connect"]["node"], stream.node.as_str());
    assert_eq!(first["connect"]["ping"], 2, "{first}");
    assert_eq!(first["connect"]["pong"], true, "{first}");

    // Subscribe through /emulation (JSON body, data a string of JSON): the reply is on the
    // stream.
    let data = format!(r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#);
    let fetched = fetch(
        addr,
        request(
            addr,
            "POST",
            "/emulation",
            &[("content-type", "application/json")],
            Payload::Sized(Bytes::from(
                json!({"node": stream.node, "session": stream.session, "data": data}).to_string(),
            )),
        ),
    )
    .await;
    assert_eq!(fetched.status, 204, "{}", fetched.text());
    assert!(
        fetched.body.is_empty(),
        "emulation body: {}",
        fetched.text()
    );
    let reply = stream.expect_reply(2).await;
    assert!(
        reply.error.is_none() && reply.subscribe.is_some(),
        "{reply:?}"
    );

    // A server API publication arrives.
    api_publish(admin, &channel, &json!({"x": 1})).await;
    assert_eq!(stream.expect_publication(&channel).await, json!({"x": 1}));
    // Newlines inside a payload never break the line framing.
    publish_pretty(admin, &channel).await;
    assert_eq!(
        stream.expect_publication(&channel).await,
        json!({"y": [1, 2]})
    );

    // Pings come as `{}`; answered with `"data":"{}"` through /emulation the session stays
    // (an unanswered ping would end it with 3012 one second later, before the next ping).
    stream.auto_pong = true;
    stream.wait_pings(2, Duration::from_secs(7)).await;
    let ping_lines = stream
        .raw()
        .split(|b| *b == b'\n')
        .filter(|line| *line == b"{}")
        .count();
    assert!(ping_lines >= 2, "pings are not `{{}}` lines");
    stream.auto_pong = false;

    // A server-side disconnect: a disconnect push, then the end of the response.
    let target = json!({"user": "", "client": stream.client});
    api_ok(admin, "disconnect", &target, None).await;
    stream.expect_disconnect(3503, Duration::from_secs(5)).await;
    let raw = stream.raw();
    let last_line = raw[..raw.len() - 1].rsplit(|b| *b == b'\n').next().unwrap();
    let last: Value = serde_json::from_slice(last_line).unwrap();
    assert_eq!(last["push"]["disconnect"]["code"], 3503, "{last}");
    assert!(last["push"]["disconnect"]["reason"].is_string(), "{last}");

    // Framing over the whole response: every message ends with `\n`, no empty line.
    assert!(raw.ends_with(b"\n"), "{:?}", String::from_utf8_lossy(raw));
    assert!(
        !raw.starts_with(b"\n") && !raw.windows(2).any(|w| w == b"\n\n"),
        "empty line in {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[tokio::test]
async fn http_stream_unanswered_ping_ends_with_3012() {
    let server = start_server(FAST_PING).await;
    let mut stream = StreamClient::http_stream(server.client_addr, Encoding::Json, None).await;
    let before = stream.expect_disconnect(3012, Duration::from_secs(6)).await;
    assert_eq!(
        before,
        vec![Reply::default()],
        "expected exactly one ping before the 3012 push"
    );
}

#[tokio::test]
async fn http_stream_protobuf_session() {
    let server = start_server(FAST_PING).await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("hs-pb");

    // Content-Type exactly application/octet-stream: a varint-delimited Command body.
    let connect = connect_command().encode_length_delimited_to_vec();
    let opened = request(
        addr,
        "POST",
        "/connection/http_stream",
        &[("content-type", "application/octet-stream")],
        Payload::Sized(Bytes::from(connect)),
    );
    let mut stream =
        StreamClient::open(addr, Flavor::HttpStream(Encoding::Protobuf), opened, None).await;
    let reply = stream.expect_connected().await;
    assert!(reply.connect.unwrap().pong, "pong not advertised");
    assert_eq!(
        header_text(&stream.headers, "x-accel-buffering").as_deref(),
        Some("no")
    );

    // Emulation with a Protobuf EmulationRequest whose data is delimited commands.
    let data = frame_commands(Encoding::Protobuf, &[with_id(subscribe(&channel), 2)]);
    let fetched = fetch(
        addr,
        emulation_request(
            addr,
            Encoding::Protobuf,
            &stream.node,
            &stream.session,
            &data,
            None,
        ),
    )
    .await;
    assert_eq!(fetched.status, 204, "{}", fetched.text());
    let reply = stream.expect_reply(2).await;
    assert!(
        reply.error.is_none() && reply.subscribe.is_some(),
        "{reply:?}"
    );

    api_publish(admin, &channel, &json!({"x": 1})).await;
    assert_eq!(stream.expect_publication(&channel).await, json!({"x": 1}));

    // Pings are empty messages (a single 0x00 byte); pongs go back as a delimited empty
    // command inside a Protobuf EmulationRequest.
    stream.auto_pong = true;
    stream.wait_pings(2, Duration::from_secs(7)).await;
    stream.auto_pong = false;

    let target = json!({"user": "", "client": stream.client});
    api_ok(admin, "disconnect", &target, None).await;
    stream.expect_disconnect(3503, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn octet_stream_with_parameters_is_json() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let content_type = [("content-type", "application/octet-stream; charset=x")];

    // A JSON connect works: the session speaks JSON.
    let json_connect = request(
        addr,
        "POST",
        "/connection/http_stream",
        &content_type,
        Payload::Sized(Bytes::from_static(br#"{"id":1,"connect":{}}"#)),
    );
    let mut stream =
        StreamClient::open(addr, Flavor::HttpStream(Encoding::Json), json_connect, None).await;
    stream.expect_connected().await;
    assert!(stream.raw().starts_with(br#"{"id":1,"connect":"#));

    // A Protobuf body is then a malformed JSON frame: the stream (JSON) carries a 3501
    // disconnect push and ends, as for any bad command.
    let protobuf_connect = request(
        addr,
        "POST",
        "/connection/http_stream",
        &content_type,
        Payload::Sized(Bytes::from(
            connect_command().encode_length_delimited_to_vec(),
        )),
    );
    let mut bad = StreamClient::open(
        addr,
        Flavor::HttpStream(Encoding::Json),
        protobuf_connect,
        None,
    )
    .await;
    assert_eq!(bad.status, 200, "{:?}", bad.headers);
    let before = bad.expect_disconnect(3501, Duration::from_secs(5)).await;
    assert!(
        before.is_empty(),
        "messages before the 3501 push: {before:?}"
    );
    let body: Value = serde_json::from_slice(bad.raw().strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(body["push"]["disconnect"]["code"], 3501, "{body}");
}

#[tokio::test]
async fn commands_in_the_connect_body_after_connect_are_processed() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let channel = unique_channel("hs-batch");
    let commands = [connect_command(), with_id(subscribe(&channel), 2)];
    let opened = http_stream_request(addr, Encoding::Json, &commands, None);
    let mut stream =
        StreamClient::open(addr, Flavor::HttpStream(Encoding::Json), opened, None).await;
    stream.expect_connected().await;
    let reply = stream.expect_reply(2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    // A second connect through emulation is a protocol violation: 3501 on the stream.
    stream
        .emulate(&[Command {
            id: 3,
            ..connect_command()
        }])
        .await;
    stream.expect_disconnect(3501, Duration::from_secs(5)).await;
}
