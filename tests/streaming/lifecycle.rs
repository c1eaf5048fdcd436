//! Streaming sessions over time: a client that goes away mid-response is cleaned up (the
//! upstream is told, nothing stays live), emulated commands keep their order, and sessions of
//! every transport share channels.

use std::time::Duration;

use serde_json::json;
use sidewire::protocol::Encoding;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

const SESSIONS_LIVE: &str = "sidewire_sessions_live";
/// Bound for "the server noticed the client is gone".
const GONE_WAIT: Duration = Duration::from_secs(5);

async fn client_gone_is_cleaned_up(flavor: Flavor) {
    let server = start_server("").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("gone");
    let live_before = scrape(admin).await.value(SESSIONS_LIVE, &[]);

    let mut client = match flavor {
        Flavor::HttpStream(encoding) => StreamClient::http_stream(addr, encoding, None).await,
        Flavor::Sse => StreamClient::sse(addr, None).await,
    };
    let reply = client.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    await_presence(admin, &channel, &client.client, true, WAIT).await;
    let live = scrape(admin).await.value(SESSIONS_LIVE, &[]);
    assert_eq!(live, live_before + 1.0, "{flavor:?} session not live");

    // The client drops its TCP connection mid-response.
    let gone = client.client.clone();
    drop(client);

    await_presence(admin, &channel, &gone, false, GONE_WAIT).await;
    wait_metric(admin, SESSIONS_LIVE, &[], GONE_WAIT, |v| v == live_before).await;
    // Publishing to the channel now reaches nobody and breaks nothing.
    api_publish(admin, &channel, &json!({})).await;
}

#[tokio::test]
async fn http_stream_client_gone_mid_response_is_cleaned_up() {
    client_gone_is_cleaned_up(Flavor::HttpStream(Encoding::Json)).await;
}

#[tokio::test]
async fn http_stream_protobuf_client_gone_mid_response_is_cleaned_up() {
    client_gone_is_cleaned_up(Flavor::HttpStream(Encoding::Protobuf)).await;
}

#[tokio::test]
async fn sse_client_gone_mid_response_is_cleaned_up() {
    client_gone_is_cleaned_up(Flavor::Sse).await;
}

/// 20 emulation POSTs, one publish each, sent back to back over one keep-alive connection
/// (each 204 awaited before the next is sent): replies and publications come in command order.
#[tokio::test]
async fn emulated_commands_keep_their_order() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let channel = unique_channel("order");
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");

    let ids: Vec<u32> = (3..23).collect();
    let mut conn = Conn::open(addr).await;
    for &id in &ids {
        let command = with_id(publish(&channel, &json!({ "n": id })), id);
        let data = frame_commands(Encoding::Json, &[command]);
        let fetched = conn
            .fetch(emulation_request(
                addr,
                Encoding::Json,
                &stream.node,
                &stream.session,
                &data,
                None,
            ))
            .await;
        assert_eq!(fetched.status, 204, "POST of id {id}: {}", fetched.text());
    }
    assert_order(&mut stream, &channel, &ids).await;
}

/// The same with true HTTP/1.1 pipelining: all 20 requests written at once on one connection
/// before any response is read.
#[tokio::test]
async fn pipelined_emulation_posts_keep_their_order() {
    let server = start_server("").await;
    let addr = server.client_addr;
    let channel = unique_channel("pipelined");
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");

    let ids: Vec<u32> = (3..23).collect();
    let mut wire = Vec::new();
    for &id in &ids {
        let command = with_id(publish(&channel, &json!({ "n": id })), id);
        let data = String::from_utf8(frame_commands(Encoding::Json, &[command]).to_vec()).unwrap();
        let body =
            json!({"node": stream.node, "session": stream.session, "data": data}).to_string();
        wire.extend_from_slice(
            format!(
                "POST /emulation HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(WAIT, tcp.write_all(&wire))
        .await
        .expect("write in time")
        .expect("write");
    // Read until 20 response heads (204s have no body).
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    let count = |bytes: &[u8]| bytes.windows(4).filter(|w| *w == b"\r\n\r\n").count();
    while count(&received) < ids.len() {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, tcp.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} responses within {WAIT:?}: {:?}",
                    count(&received),
                    String::from_utf8_lossy(&received)
                )
            })
            .expect("read");
        assert!(
            read > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&received);
    assert_eq!(
        text.matches("HTTP/1.1 204").count(),
        ids.len(),
        "responses: {text}"
    );
    assert_order(&mut stream, &channel, &ids).await;
}

/// Reads the replies to `ids` and their publications and checks both come in `ids` order.
async fn assert_order(stream: &mut StreamClient, channel: &str, ids: &[u32]) {
    let mut reply_order = Vec::new();
    let mut publication_order = Vec::new();
    let mut offsets = Vec::new();
    while reply_order.len() < ids.len() || publication_order.len() < ids.len() {
        let message = stream
            .next_message("publish replies and publications")
            .await;
        if message.id != 0 {
            assert!(message.error.is_none(), "{message:?}");
            reply_order.push(message.id);
        } else if let Some(publication) = message
            .push
            .as_ref()
            .filter(|p| p.channel == channel)
            .and_then(|p| p.r#pub.as_ref())
        {
            publication_order.push(json_of(&publication.data)["n"].as_u64().unwrap() as u32);
            offsets.push(publication.offset);
        } else {
            panic!("unexpected message {message:?}");
        }
    }
    assert_eq!(reply_order, ids, "reply order");
    assert_eq!(publication_order, ids, "publication order");
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets {offsets:?}"
    );
}

/// A WebSocket client and streaming clients (HTTP-stream JSON and Protobuf, SSE) on one
/// channel receive each other's publications.
#[tokio::test]
async fn websocket_and_streaming_sessions_share_a_channel() {
    let server = start_server("").await;
    let (addr, admin) = (server.client_addr, server.admin_addr);
    let channel = unique_channel("mixed");

    let mut ws = server.ws(WsOptions::json()).await;
    ws.handshake().await;
    assert_eq!(ws.request(subscribe(&channel)).await.error, None);
    let mut json_stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let mut protobuf_stream = StreamClient::http_stream(addr, Encoding::Protobuf, None).await;
    let mut sse = StreamClient::sse(addr, None).await;
    for client in [&mut json_stream, &mut protobuf_stream, &mut sse] {
        let reply = client.request(subscribe(&channel), 2).await;
        assert!(reply.subscribe.is_some(), "{:?}: {reply:?}", client.flavor);
    }

    // The WebSocket client publishes: everyone gets it.
    let reply = ws.request(publish(&channel, &json!({"from": "ws"}))).await;
    assert_eq!(reply.error, None, "{reply:?}");
    let publication = ws.expect_publication(&channel, 1).await;
    assert_eq!(json_of(&publication.data), json!({"from": "ws"}));
    for client in [&mut json_stream, &mut protobuf_stream, &mut sse] {
        assert_eq!(
            client.expect_publication(&channel).await,
            json!({"from": "ws"}),
            "{:?}",
            client.flavor
        );
    }

    // The HTTP-stream client publishes through /emulation: the WebSocket client gets it.
    let reply = json_stream
        .request(publish(&channel, &json!({"from": "http_stream"})), 3)
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
    let publication = ws.expect_publication(&channel, 2).await;
    assert_eq!(json_of(&publication.data), json!({"from": "http_stream"}));
    for client in [&mut json_stream, &mut protobuf_stream, &mut sse] {
        assert_eq!(
            client.expect_publication(&channel).await,
            json!({"from": "http_stream"}),
            "{:?}",
            client.flavor
        );
    }

    // And a server API publication reaches all four.
    api_publish(admin, &channel, &json!({"from": "api"})).await;
    let publication = ws.expect_publication(&channel, 3).await;
    assert_eq!(json_of(&publication.data), json!({"from": "api"}));
    for client in [&mut json_stream, &mut protobuf_stream, &mut sse] {
        assert_eq!(
            client.expect_publication(&channel).await,
            json!({"from": "api"})
        );
    }
}
