//! WebSocket edge and session policy against the real binary: origin check, subprotocol and
//! encoding selection, message size limit, protocol violations, stale / ping-pong timers,
//! slow clients, isolation of bad clients, and `sidewire check`.
//!
//! Every test starts its own sidewire (embedded hub) on ephemeral ports; every wait is bounded.

mod support;

use std::time::Duration;

use serde_json::json;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Command, Reply};
use support::*;
use tokio::time::Instant;

const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::Protobuf];

/// Starts a sidecar with `yaml` and waits until it is ready.
async fn server(yaml: &str) -> Server {
    let server = Server::start(yaml).await;
    server.wait_ready(Duration::from_secs(10)).await;
    server
}

/// Opens a connection and asserts that the handshake is refused with `status`.
async fn assert_refused(server: &Server, options: WsOptions, status: u16) {
    let what = format!("{options:?}");
    match WsClient::try_connect(server.client_addr, options).await {
        Err(HandshakeFailure::Status(got)) => assert_eq!(got, status, "handshake {what}"),
        Err(other) => panic!("handshake {what}: expected HTTP {status}, got {other:?}"),
        Ok(_) => panic!("handshake {what}: expected HTTP {status}, got an upgrade"),
    }
}

/// Opens a connection, asserts the upgrade succeeded and that the session works (connect).
async fn assert_accepted(server: &Server, options: WsOptions) {
    let what = format!("{options:?}");
    match WsClient::try_connect(server.client_addr, options).await {
        Ok(mut client) => {
            client.handshake().await;
        }
        Err(e) => panic!("handshake {what}: expected an upgrade, got {e:?}"),
    }
}

// === origin ===

#[tokio::test]
async fn allowed_origins_globs_are_case_insensitive_and_whole() {
    let server =
        server("allowed_origins:\n  - \"https://*.example.com\"\n  - \"http://localhost:*\"\n")
            .await;
    assert_accepted(&server, WsOptions::json().origin("https://app.example.com")).await;
    assert_accepted(&server, WsOptions::json().origin("HTTPS://App.Example.COM")).await;
    assert_accepted(
        &server,
        WsOptions::protobuf().origin("http://localhost:3000"),
    )
    .await;
    assert_accepted(&server, WsOptions::json()).await; // no Origin always passes
    assert_refused(&server, WsOptions::json().origin("https://evil.com"), 403).await;
    assert_refused(
        &server,
        WsOptions::json().origin("https://app.example.com.evil.com"),
        403,
    )
    .await;
    assert_refused(&server, WsOptions::json().origin("http://example.com"), 403).await;
    assert_refused(
        &server,
        WsOptions::protobuf().origin("https://localhost:3000"),
        403,
    )
    .await;
}

#[tokio::test]
async fn empty_allowed_origins_only_admits_clients_without_origin() {
    let server = server("").await;
    assert_refused(
        &server,
        WsOptions::json().origin("http://localhost:8000"),
        403,
    )
    .await;
    assert_accepted(&server, WsOptions::json()).await;
}

#[tokio::test]
async fn star_allows_every_origin() {
    let server = server("allowed_origins: [\"*\"]\n").await;
    assert_accepted(
        &server,
        WsOptions::json().origin("https://anything.example.org"),
    )
    .await;
    assert_accepted(&server, WsOptions::protobuf().origin("null")).await;
    assert_accepted(&server, WsOptions::json()).await;
}

// === encoding selection ===

#[tokio::test]
async fn subprotocol_and_query_select_the_encoding() {
    let server = server("").await;

    // Protobuf by subprotocol: echoed, binary frames (checked by the client), Protobuf replies.
    let mut c = server.ws(WsOptions::protobuf()).await;
    assert_eq!(
        c.selected_subprotocol().as_deref(),
        Some("centrifuge-protobuf")
    );
    let id = c.handshake().await;
    assert!(!id.is_empty());

    // JSON: no subprotocol offered, none answered.
    let mut c = server.ws(WsOptions::json()).await;
    assert_eq!(c.selected_subprotocol(), None);
    c.handshake().await;

    // Protobuf by query: no subprotocol offered, none answered.
    let mut options = WsOptions::json().query("cf_protocol=protobuf");
    options.encoding = Encoding::Protobuf;
    let mut c = server.ws(options).await;
    assert_eq!(c.selected_subprotocol(), None);
    c.handshake().await;
}

/// Sends a raw upgrade request offering `protocols`; returns the status line and the
/// `Sec-WebSocket-Protocol` response header, if any.
async fn raw_upgrade(server: &Server, protocols: &str) -> (String, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(server.client_addr)
            .await
            .unwrap();
        let request = format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n",
            server.client_addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                tcp.read(&mut byte).await.unwrap(),
                1,
                "connection closed in headers"
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    };
    let head = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("upgrade response in time");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let protocol = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-protocol")
            .then(|| value.trim().to_owned())
    });
    (status, protocol)
}

#[tokio::test]
async fn only_offered_subprotocols_are_selected() {
    let server = server("").await;
    let (status, protocol) = raw_upgrade(&server, "foo").await;
    assert!(status.contains(" 101 "), "{status}");
    assert_eq!(protocol, None, "nothing we support was offered");
    let (status, protocol) = raw_upgrade(&server, "foo, centrifuge-protobuf").await;
    assert!(status.contains(" 101 "), "{status}");
    assert_eq!(protocol.as_deref(), Some("centrifuge-protobuf"));
}

#[tokio::test]
async fn custom_websocket_path() {
    let server = server("websocket_path: \"/rt/ws\"\n").await;
    let mut options = WsOptions::json();
    options.path = "/rt/ws".to_owned();
    assert_accepted(&server, options).await;
    match WsClient::try_connect(server.client_addr, WsOptions::json()).await {
        Err(HandshakeFailure::Status(status)) => {
            assert!(status >= 400, "default path must not upgrade: {status}")
        }
        Err(other) => panic!("default path: expected an HTTP error status, got {other:?}"),
        Ok(_) => panic!("default path must not upgrade when websocket_path is set"),
    }
}

// === size limit ===

/// A publish command of exactly `size` encoded bytes (padding in the data).
fn publish_of_size(encoding: Encoding, size: usize) -> Command {
    let mut pad = size;
    loop {
        let mut command = publish("sized", &json!({ "pad": "x".repeat(pad) }));
        command.id = 2;
        let encoded = match encoding {
            Encoding::Json => serde_json::to_vec(&command).unwrap().len(),
            Encoding::Protobuf => prost::Message::encode_length_delimited_to_vec(&command).len(),
        };
        if encoded == size {
            return command;
        }
        assert!(encoded > size || pad == size, "cannot hit size {size}");
        pad -= (encoded - size).min(pad);
    }
}

#[tokio::test]
async fn message_over_the_size_limit_closes_1009() {
    let server = server("message_size_limit: 1024\n").await;
    for encoding in BOTH {
        let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
        c.handshake().await;
        // At the limit: accepted.
        c.send_commands(&[publish_of_size(encoding, 1024)]).await;
        let reply = c.expect_reply(2, WAIT).await;
        assert_eq!(
            reply.error, None,
            "{encoding:?}: message at the limit: {reply:?}"
        );
        // One byte over (well, a lot over): 1009.
        let mut big = publish_of_size(encoding, 4096);
        big.id = 3;
        c.send_commands(&[big]).await;
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 1009, "{encoding:?}: message over message_size_limit");

        let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
        c.handshake().await;
        let mut over = publish_of_size(encoding, 1025);
        over.id = 2;
        c.send_commands(&[over]).await;
        let (code, _) = c.expect_close(WAIT).await;
        assert_eq!(code, 1009, "{encoding:?}: 1025 bytes with a 1024 limit");
    }
}

// === protocol violations ===

/// Sends `frame` on a fresh connection (after connect when `connected`) and expects 3501.
async fn expect_bad_request(
    server: &Server,
    encoding: Encoding,
    connected: bool,
    what: &str,
    frame: Frame,
) {
    let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
    if connected {
        c.handshake().await;
    }
    match frame {
        Frame::Text(text) => c.send_text(&text).await,
        Frame::Binary(bytes) => c.send_binary(bytes).await,
        Frame::Commands(commands) => c.send_commands(&commands).await,
        Frame::Pong => c.send_pong().await,
    }
    let (code, reason) = c.expect_close(WAIT).await;
    assert_eq!(code, 3501, "{encoding:?}: {what} (reason {reason:?})");
}

enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Commands(Vec<Command>),
    Pong,
}

#[tokio::test]
async fn protocol_violations_close_3501() {
    let server = server("").await;
    let with_id = |mut command: Command, id: u32| {
        command.id = id;
        command
    };
    let second_connect = Command {
        id: 2,
        connect: Some(Default::default()),
        ..Default::default()
    };
    let ping_command = Command {
        id: 2,
        ping: Some(Default::default()),
        ..Default::default()
    };

    // (encoding, connect first?, what, frame)
    let cases = vec![
        (Encoding::Json, false, "malformed JSON", Frame::Text("not json".into())),
        (Encoding::Json, true, "malformed JSON after connect", Frame::Text("{\"id\":2,".into())),
        (
            Encoding::Json,
            true,
            "empty line between commands",
            Frame::Text(
                "{\"id\":2,\"rpc\":{\"method\":\"echo\"}}\n\n{\"id\":3,\"rpc\":{\"method\":\"echo\"}}"
                    .into(),
            ),
        ),
        (Encoding::Json, true, "empty message", Frame::Text(String::new())),
        (Encoding::Protobuf, false, "truncated Protobuf", Frame::Binary(vec![0x05, 0x08])),
        (
            Encoding::Protobuf,
            true,
            "garbage Protobuf after connect",
            Frame::Binary(vec![0x03, 0xff, 0xff, 0xff]),
        ),
        (
            Encoding::Protobuf,
            true,
            "length prefix far over the limit",
            Frame::Binary(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x08]),
        ),
        (Encoding::Protobuf, true, "empty message", Frame::Binary(Vec::new())),
    ];
    for (encoding, connected, what, frame) in cases {
        expect_bad_request(&server, encoding, connected, what, frame).await;
    }
    for encoding in BOTH {
        let cases = vec![
            (
                false,
                "command before connect",
                Frame::Commands(vec![with_id(subscribe("early"), 1)]),
            ),
            (true, "unexpected pong", Frame::Pong),
            // id 0 without `send` counts as a pong; none was asked for.
            (
                true,
                "id 0 command without a ping",
                Frame::Commands(vec![subscribe("zero")]),
            ),
            (
                true,
                "second connect",
                Frame::Commands(vec![second_connect.clone()]),
            ),
            (
                true,
                "ping command (field 11)",
                Frame::Commands(vec![ping_command.clone()]),
            ),
        ];
        for (connected, what, frame) in cases {
            expect_bad_request(&server, encoding, connected, what, frame).await;
        }
    }
}

// === timers ===

#[tokio::test]
async fn no_connect_within_stale_close_delay_closes_3502() {
    let server = server("stale_close_delay: \"1s\"\n").await;
    let mut json = server.ws(WsOptions::json()).await;
    let mut protobuf = server.ws(WsOptions::protobuf()).await;
    let started = Instant::now();
    let ((json_code, _), (pb_code, _)) = tokio::join!(
        json.expect_close(Duration::from_secs(6)),
        protobuf.expect_close(Duration::from_secs(6)),
    );
    let elapsed = started.elapsed();
    assert_eq!((json_code, pb_code), (3502, 3502), "stale");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before stale_close_delay"
    );

    // A client that connects in time is not closed by the stale timer.
    let mut c = server.ws(WsOptions::json()).await;
    c.handshake().await;
    let started = Instant::now();
    // Wait past the stale delay with a request-reply exchange every 300 ms.
    while started.elapsed() < Duration::from_millis(1800) {
        let reply = c.request(rpc("echo", &json!(1))).await;
        assert_eq!(reply.error, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const FAST_PINGS: &str = "ping_interval: \"2s\"\npong_timeout: \"1s\"\n";

/// Connects, checks the advertised ping/pong and returns the client.
async fn fast_ping_client(server: &Server, encoding: Encoding) -> WsClient {
    let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
    let reply = c.connect_with(Default::default()).await;
    let result = reply
        .connect
        .clone()
        .unwrap_or_else(|| panic!("connect result: {reply:?}"));
    assert_eq!((result.ping, result.pong), (2, true), "{result:?}");
    c
}

async fn missing_pong(server: &Server, encoding: Encoding) {
    let mut c = fast_ping_client(server, encoding).await;
    let ping = c.next_reply(Duration::from_secs(5)).await;
    assert_eq!(ping, Reply::default(), "{encoding:?}: expected a ping");
    let sent = Instant::now();
    let (code, reason) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 3012, "{encoding:?}: no pong ({reason:?})");
    assert!(
        sent.elapsed() >= Duration::from_millis(700),
        "{encoding:?}: closed {:?} after the ping, before pong_timeout",
        sent.elapsed()
    );
}

#[tokio::test]
async fn missing_pong_closes_3012() {
    let server = server(FAST_PINGS).await;
    tokio::join!(
        missing_pong(&server, Encoding::Json),
        missing_pong(&server, Encoding::Protobuf)
    );
}

async fn answered_pings(server: &Server, encoding: Encoding) {
    let mut c = fast_ping_client(server, encoding).await;
    c.auto_pong = true;
    c.wait_pings(3, Duration::from_secs(12)).await;
    let reply = c.request(rpc("echo", &json!("alive"))).await;
    assert_eq!(reply.error, None, "{encoding:?}: {reply:?}");
    assert_eq!(
        json_of(&reply.rpc.expect("rpc result").data),
        json!("alive")
    );
    assert!(c.unconsumed().is_empty(), "{:?}", c.unconsumed());
}

#[tokio::test]
async fn answered_pings_keep_the_session() {
    let server = server(FAST_PINGS).await;
    tokio::join!(
        answered_pings(&server, Encoding::Json),
        answered_pings(&server, Encoding::Protobuf)
    );
}

#[tokio::test]
async fn ping_interval_zero_disables_pings() {
    let server = server("ping_interval: \"0s\"\n").await;
    let mut c = server.ws(WsOptions::json()).await;
    let reply = c.connect_with(Default::default()).await;
    let result = reply.connect.expect("connect result");
    assert_eq!(result.ping, 0, "{result:?}");
}

// === slow clients ===

/// Payload size of each publication in the slow-client test.
const SLOW_PAYLOAD_BYTES: usize = 48 * 1024;
/// Upper bound of what is published before the slow client must be gone (~15 MB).
const SLOW_MAX_PUBLICATIONS: u64 = 320;
/// Queue bound of the slow-client test: ~20 publications of lag for the reading client.
///
/// Not the brief's 1024: a queued message counts against the bound, so with 1024 every
/// 48 KiB publication overflows at once, also for a client that reads (see
/// `message_larger_than_the_queue_bound_closes_3008`).
const SLOW_QUEUE_BYTES: usize = 1 << 20;
/// Most publications the reading client may be behind (8 × 48 KiB, under the queue bound).
const READER_MAX_LAG: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_3008_and_others_get_everything() {
    // A write_timeout longer than the publishing loop's own 60 s bound, so that the outcome is
    // the queue bound (3008), not 3009, however slowly a loaded machine publishes the last
    // ~20 publications after the slow client's socket buffers are full.
    let server = server(&format!(
        "queue_max_size: {SLOW_QUEUE_BYTES}\nwrite_timeout: \"90s\"\n"
    ))
    .await;
    let api_at = server.admin_addr;
    let chan = unique_channel("firehose");

    let mut reader = server.ws(WsOptions::json()).await;
    reader.auto_pong = true;
    reader.handshake().await;
    assert_eq!(reader.request(subscribe(&chan)).await.error, None);

    let mut slow_options = WsOptions::json();
    slow_options.recv_buffer = Some(16 * 1024);
    let mut slow = server.ws(slow_options).await;
    let slow_id = slow.handshake().await;
    assert_eq!(slow.request(subscribe(&chan)).await.error, None);
    // From here on `slow` is not read until the publishing is over.

    // The reader reports how many publications it has, so the publisher never lets it fall
    // more than READER_MAX_LAG behind (well under the queue bound): the test stays
    // deterministic however the machine schedules the reader.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader_chan = chan.clone();
    let reading = tokio::spawn(async move {
        let mut offsets = Vec::new();
        loop {
            let push = reader
                .expect_push(
                    &format!("publication after {} received", offsets.len()),
                    Duration::from_secs(30),
                    |p| p.channel == reader_chan && p.r#pub.is_some(),
                )
                .await;
            let publication = push.r#pub.unwrap();
            let data = json_of(&publication.data);
            if data.get("end").is_some() {
                return offsets;
            }
            assert_eq!(
                data["n"].as_u64(),
                Some(publication.offset),
                "payload does not match its offset"
            );
            offsets.push(publication.offset);
            let _ = progress_tx.send(offsets.len() as u64);
        }
    });

    // Publish until the hub no longer lists the slow client (it was disconnected), bounded.
    let pad = "p".repeat(SLOW_PAYLOAD_BYTES);
    let started = Instant::now();
    let mut published = 0u64;
    let mut slow_gone = false;
    'publishing: while published < SLOW_MAX_PUBLICATIONS && !reading.is_finished() {
        while *progress.borrow_and_update() + READER_MAX_LAG < published {
            let changed = tokio::time::timeout(Duration::from_secs(30), progress.changed())
                .await
                .expect("reader stalled");
            if changed.is_err() {
                // The reader ended (its own assertion failed): its join below says why.
                break 'publishing;
            }
        }
        published += 1;
        let result = api_publish(api_at, &chan, &json!({"n": published, "pad": pad})).await;
        assert_eq!(result["offset"], json!(published), "{result}");
        let presence = api_ok(api_at, "presence", &json!({"channel": chan}), None).await;
        if presence["presence"].get(&slow_id).is_none() {
            slow_gone = true;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "publishing took too long ({published} publications)"
        );
    }
    let end = api_publish(api_at, &chan, &json!({"end": true})).await;

    let offsets = match tokio::time::timeout(Duration::from_secs(40), reading).await {
        Err(_) => panic!("reader did not get the end marker in time"),
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Ok(Ok(offsets)) => offsets,
    };
    let expected: Vec<u64> = (1..=published).collect();
    assert_eq!(offsets.len(), expected.len(), "reader missed publications");
    assert_eq!(offsets, expected, "reader got publications out of order");
    assert_eq!(end["offset"], json!(published + 1));

    let (code, reason) = slow.expect_close(Duration::from_secs(20)).await;
    assert_eq!(code, 3008, "slow client ({reason:?})");
    if !slow_gone {
        // The hub may learn about the close only once the close handshake is over.
        eprintln!("note: the hub still listed the slow client after {published} publications");
        eventually(
            Duration::from_secs(10),
            "slow client gone from presence",
            || {
                let (chan, slow_id) = (chan.clone(), slow_id.clone());
                async move {
                    let presence =
                        api_ok(api_at, "presence", &json!({"channel": chan}), None).await;
                    presence["presence"].get(&slow_id).is_none()
                }
            },
        )
        .await;
    }
}

/// A client subscribed to `chan` with a small receive buffer, which the test never reads
/// again; its client id.
async fn stuck_subscriber(server: &Server, chan: &str) -> (WsClient, String) {
    let mut options = WsOptions::json();
    options.recv_buffer = Some(16 * 1024);
    let mut stuck = server.ws(options).await;
    let stuck_id = stuck.handshake().await;
    assert_eq!(stuck.request(subscribe(chan)).await.error, None);
    (stuck, stuck_id)
}

/// A client that stops reading is closed by the write deadline (3009) when the queue bound is
/// far away: the deadline of a write that the socket does not take rides the session's one
/// timer, and it must still fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_closes_a_client_that_stops_reading_3009() {
    // 64 MiB of queue: the ~15 MB published below cannot end the session with 3008.
    let server = server("queue_max_size: 67108864\nwrite_timeout: \"1s\"\n").await;
    let api_at = server.admin_addr;
    let chan = unique_channel("unread");
    let (stuck, stuck_id) = stuck_subscriber(&server, &chan).await;

    let pad = "p".repeat(SLOW_PAYLOAD_BYTES);
    let listed = |chan: String, id: String| async move {
        let presence = api_ok(api_at, "presence", &json!({"channel": chan}), None).await;
        presence["presence"].get(&id).is_some()
    };
    for n in 1..=SLOW_MAX_PUBLICATIONS {
        api_publish(api_at, &chan, &json!({"n": n, "pad": pad})).await;
        if !listed(chan.clone(), stuck_id.clone()).await {
            break;
        }
    }
    eventually(
        Duration::from_secs(15),
        "a client that stopped reading is released by the write deadline",
        || {
            let (chan, id) = (chan.clone(), stuck_id.clone());
            async move { !listed(chan, id).await }
        },
    )
    .await;
    let closed = "sidewire_sessions_closed_total";
    let scraped = wait_metric(
        api_at,
        closed,
        &[("code", "3009")],
        Duration::from_secs(10),
        |closes| closes >= 1.0,
    )
    .await;
    assert_eq!(
        scraped.value(closed, &[("code", "3008")]),
        0.0,
        "{}",
        scraped.text
    );
    drop(stuck);
}

/// A client that never reads again must not keep its session (subscriptions, presence, Link
/// session) alive: the sidecar has to let go within bounded time without the client's help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_client_is_released_without_its_cooperation() {
    let server = server(&format!("queue_max_size: {SLOW_QUEUE_BYTES}\n")).await;
    let api_at = server.admin_addr;
    let chan = unique_channel("stuck");
    let (stuck, stuck_id) = stuck_subscriber(&server, &chan).await;

    let pad = "p".repeat(SLOW_PAYLOAD_BYTES);
    for n in 1..=SLOW_MAX_PUBLICATIONS {
        api_publish(api_at, &chan, &json!({"n": n, "pad": pad})).await;
    }
    eventually(
        Duration::from_secs(15),
        "a stuck client's session is released (gone from presence) while it still does not read",
        || {
            let (chan, stuck_id) = (chan.clone(), stuck_id.clone());
            async move {
                let presence = api_ok(api_at, "presence", &json!({"channel": chan}), None).await;
                presence["presence"].get(&stuck_id).is_none()
            }
        },
    )
    .await;
    drop(stuck);
}

#[tokio::test]
async fn message_larger_than_the_queue_bound_closes_3008() {
    let server = server("queue_max_size: 1024\n").await;
    let chan = unique_channel("big");
    let mut small = server.ws(WsOptions::json()).await;
    small.handshake().await;
    assert_eq!(small.request(subscribe(&chan)).await.error, None);
    api_publish(server.admin_addr, &chan, &json!({"pad": "x".repeat(600)})).await;
    small.expect_publication(&chan, 1).await;
    api_publish(server.admin_addr, &chan, &json!({"pad": "x".repeat(2048)})).await;
    let (code, reason) = small.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (3008, "slow"));
}

// === isolation ===

#[tokio::test]
async fn bad_input_from_one_client_leaves_others_working() {
    let server = server("message_size_limit: 4096\n").await;
    let chan = unique_channel("steady");
    let mut good_json = server.ws(WsOptions::json()).await;
    let mut good_pb = server.ws(WsOptions::protobuf()).await;
    good_json.handshake().await;
    good_pb.handshake().await;
    assert_eq!(good_json.request(subscribe(&chan)).await.error, None);
    assert_eq!(good_pb.request(subscribe(&chan)).await.error, None);

    // A garbage JSON client, a garbage Protobuf client, an oversized message, a huge varint.
    let mut bad = server.ws(WsOptions::json()).await;
    bad.handshake().await;
    bad.send_text("\u{0}\u{1}garbage").await;
    assert_eq!(bad.expect_close(WAIT).await.0, 3501);

    let mut bad = server.ws(WsOptions::protobuf()).await;
    bad.send_binary(vec![0x0a, 0xff, 0xfe, 0xfd]).await;
    assert_eq!(bad.expect_close(WAIT).await.0, 3501);

    let mut bad = server.ws(WsOptions::protobuf()).await;
    bad.handshake().await;
    bad.send_binary(vec![0u8; 10_000]).await;
    assert_eq!(bad.expect_close(WAIT).await.0, 1009);

    let mut bad = server.ws(WsOptions::json()).await;
    bad.send_text(&format!(
        "{{\"id\":1,\"connect\":{{\"name\":\"{}\"}}}}",
        "n".repeat(8000)
    ))
    .await;
    assert_eq!(bad.expect_close(WAIT).await.0, 1009);

    // A client that vanishes mid-session without a close frame.
    let mut vanishing = server.ws(WsOptions::json()).await;
    vanishing.handshake().await;
    assert_eq!(vanishing.request(subscribe(&chan)).await.error, None);
    drop(vanishing);

    // The good clients still work both ways.
    for (n, c) in [&mut good_json, &mut good_pb].into_iter().enumerate() {
        let reply = c.request(publish(&chan, &json!({"from": n}))).await;
        assert_eq!(reply.error, None, "{reply:?}");
    }
    for c in [&mut good_json, &mut good_pb] {
        assert_eq!(
            json_of(&c.expect_publication(&chan, 1).await.data),
            json!({"from": 0})
        );
        assert_eq!(
            json_of(&c.expect_publication(&chan, 2).await.data),
            json!({"from": 1})
        );
    }
    api_publish(server.admin_addr, &chan, &json!({"from": "api"})).await;
    for c in [&mut good_json, &mut good_pb] {
        assert_eq!(
            json_of(&c.expect_publication(&chan, 3).await.data),
            json!({"from": "api"})
        );
    }
    let (status, _) = http_get(server.admin_addr, "/healthz").await;
    assert_eq!(status, 200);
    // New clients are still welcome.
    server.ws(WsOptions::json()).await.handshake().await;
}

// === admin ===

#[tokio::test]
async fn health_and_readiness_with_the_embedded_hub() {
    let server = server("").await;
    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(server.admin_addr, "/readyz").await.0, 200);
}

// === sidewire check ===

#[test]
fn check_accepts_valid_configs() {
    for yaml in [
        "",
        "listen: \"127.0.0.1:0\"\nallowed_origins: [\"https://*.example.com\"]\nping_interval: \"0s\"\n",
        include_str!("../configs/sidewire.yaml"),
    ] {
        let (ok, stderr) = sidewire_check(yaml);
        assert!(ok, "valid config rejected: {yaml:?}\n{stderr}");
    }
}

#[test]
fn check_rejects_invalid_configs_naming_the_field() {
    for (yaml, field) in [
        ("queue_max_size: 10\n", "queue_max_size"),
        ("message_size_limit: 1\n", "message_size_limit"),
        (
            "ping_interval: \"5s\"\npong_timeout: \"10s\"\n",
            "pong_timeout",
        ),
        ("ping_interval: \"soon\"\n", "ping_interval"),
        ("websocket_path: \"ws\"\n", "websocket_path"),
        ("bogus_key: 1\n", "bogus_key"),
        (
            "upstream:\n  endpoint: \"grpc://x:1\"\n",
            "upstream.endpoint",
        ),
        (
            "hub:\n  client:\n    token:\n      hmac_secret_key: \"\"\n",
            "hub.client.token.hmac_secret_key",
        ),
        (
            "hub:\n  token_hmac_secret: \"s\"\n",
            "hub.token_hmac_secret: renamed to hub.client.token.hmac_secret_key",
        ),
        ("allowed_origins: [\"\"]\n", "allowed_origins"),
    ] {
        let (ok, stderr) = sidewire_check(yaml);
        assert!(!ok, "invalid config accepted: {yaml:?}");
        assert!(
            stderr.contains(field),
            "stderr of check for {yaml:?} does not name {field}:\n{stderr}"
        );
    }
}

// === payloads a JSON client cannot take ===

/// Binary (non-JSON) data published by a Protobuf client is refused with 107 (issue 8: one
/// client's payload must never close another's session), and the JSON subscriber stays; on a
/// channel declared binary-only (`hub.binary_channels`) it reaches Protobuf subscribers as is.
#[tokio::test]
async fn binary_payload_is_refused_outside_binary_channels() {
    let server = server("hub:\n  binary_channels: [\"bin-*\"]").await;
    let chan = unique_channel("binary");
    let mut publisher = server.ws(WsOptions::protobuf()).await;
    let mut json_sub = server.ws(WsOptions::json()).await;
    publisher.handshake().await;
    json_sub.handshake().await;
    assert_eq!(publisher.request(subscribe(&chan)).await.error, None);
    assert_eq!(json_sub.request(subscribe(&chan)).await.error, None);

    let binary = bytes::Bytes::from_static(&[0xff, 0x00, 0xfe, b'\n', 0x01]);
    let publish = |channel: &str| Command {
        publish: Some(sidewire::protocol::client::PublishRequest {
            channel: channel.to_owned(),
            data: binary.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = publisher.request(publish(&chan)).await;
    assert_eq!(reply.error.map(|e| e.code), Some(107));
    let reply = json_sub.request(rpc("echo", &json!(1))).await;
    assert_eq!(reply.error, None, "the JSON subscriber stays: {reply:?}");

    let bin = format!("bin-{chan}");
    assert_eq!(publisher.request(subscribe(&bin)).await.error, None);
    let reply = publisher.request(publish(&bin)).await;
    assert_eq!(reply.error, None, "{reply:?}");
    let publication = publisher.expect_publication(&bin, 1).await;
    assert_eq!(
        publication.data, binary,
        "Protobuf subscribers get the bytes unchanged"
    );

    // The publisher's session is unaffected.
    let reply = publisher.request(rpc("echo", &json!(1))).await;
    assert_eq!(reply.error, None, "{reply:?}");
}
