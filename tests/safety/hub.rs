//! Safety regressions: hub.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Command, PublishRequest, Reply};

use crate::support::*;

const SECRET: &str = "hub-safety-secret";

fn error_code(reply: &Reply) -> Option<u32> {
    reply.error.as_ref().map(|e| e.code)
}

/// A token with arbitrary claims, signed with [`SECRET`].
fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The victim answers an rpc: it is connected and its session is served.
async fn assert_served(client: &mut WsClient, what: &str) {
    let reply = client.request(rpc("echo", &json!({"alive": what}))).await;
    assert_eq!(error_code(&reply), None, "{what}: {reply:?}");
    assert!(reply.rpc.is_some(), "{what}: {reply:?}");
}

fn raw_publish(channel: &str, data: &'static [u8]) -> Command {
    Command {
        publish: Some(PublishRequest {
            channel: channel.to_owned(),
            data: Bytes::from_static(data),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn channel_limit_answers_106_and_others_keep_working() {
    let server = Server::start("").await;
    let mut victim = server.ws(WsOptions::json()).await;
    victim.handshake().await;
    let channel = unique_channel("victim");
    assert_eq!(error_code(&victim.request(subscribe(&channel)).await), None);

    let mut greedy = server.ws(WsOptions::json()).await;
    greedy.handshake().await;
    let prefix = unique_channel("greedy");
    let mut ids = Vec::new();
    let mut commands = Vec::new();
    for i in 0..200 {
        let mut command = subscribe(&format!("{prefix}-{i}"));
        command.id = greedy.next_id();
        ids.push(command.id);
        commands.push(command);
    }
    greedy.send_commands(&commands).await;
    let mut codes = Vec::new();
    for id in ids {
        codes.push(error_code(&greedy.expect_reply(id, WAIT).await));
    }
    assert!(codes[..128].iter().all(|c| c.is_none()), "{codes:?}");
    assert!(codes[128..].iter().all(|c| *c == Some(106)), "{codes:?}");
    // Unsubscribing makes room again.
    assert_eq!(
        error_code(&greedy.request(unsubscribe(&format!("{prefix}-0"))).await),
        None
    );
    assert_eq!(
        error_code(&greedy.request(subscribe(&format!("{prefix}-x"))).await),
        None
    );

    assert_served(&mut victim, "after the channel limit").await;
    api_publish(server.admin_addr, &channel, &json!({"n": 1})).await;
    victim.expect_publication(&channel, 1).await;
}

#[tokio::test]
async fn subscribe_flood_does_not_disconnect_others() {
    let server = Server::start("http_stream: true").await;
    let channel = unique_channel("flood-victim");
    let mut victim = server.ws(WsOptions::json()).await;
    victim.handshake().await;
    assert_eq!(error_code(&victim.request(subscribe(&channel)).await), None);
    let mut streamer = StreamClient::http_stream(server.client_addr, Encoding::Json, None).await;
    let reply = streamer.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");

    // 20 000 subscribes in batches of 400, each batch sent in one message as soon as the
    // previous batch is answered; the flooder gets its 128 channels, then 106 for the rest.
    let mut flooder = server.ws(WsOptions::json()).await;
    flooder.handshake().await;
    let prefix = unique_channel("flood");
    let (mut accepted, mut limited) = (0usize, 0usize);
    for batch in 0..50 {
        let commands: Vec<Command> = (0..400)
            .map(|i| {
                let mut command = subscribe(&format!("{prefix}-{batch}-{i}"));
                command.id = flooder.next_id();
                command
            })
            .collect();
        flooder.send_commands(&commands).await;
        for command in &commands {
            match error_code(&flooder.expect_reply(command.id, WAIT).await) {
                None => accepted += 1,
                Some(106) => limited += 1,
                Some(other) => panic!("flooder got error {other}"),
            }
        }
        flooder.take_pushes(|_| true);
        if batch % 10 == 0 {
            assert_served(&mut victim, "ws victim during the flood").await;
        }
    }
    assert_eq!((accepted, limited), (128, 20_000 - 128));
    assert_served(&mut victim, "ws victim during the flood").await;
    let reply = streamer.request(rpc("echo", &json!({"x": 1})), 3).await;
    assert!(reply.rpc.is_some(), "{reply:?}");
    api_publish(server.admin_addr, &channel, &json!({"after": "flood"})).await;
    victim.expect_publication(&channel, 1).await;
    streamer
        .expect_push("publication after the flood", |p| {
            p.channel == channel && p.r#pub.as_ref().is_some_and(|p| p.offset == 1)
        })
        .await;
    // A client connecting after the flood is served as well.
    let mut late = server.ws(WsOptions::json()).await;
    late.handshake().await;
    assert_served(&mut late, "late client").await;
}

#[tokio::test]
async fn history_bytes_are_capped() {
    let server = Server::start(&hub_section("history_max_bytes: 1048576")).await;
    let prefix = unique_channel("capped");
    let payload = "x".repeat(60_000);
    for i in 0..300 {
        api_publish(
            server.admin_addr,
            &format!("{prefix}-{i}"),
            &json!({"p": payload}),
        )
        .await;
    }
    let mut kept = 0usize;
    for i in 0..300 {
        let result = api_ok(
            server.admin_addr,
            "history",
            &json!({"channel": format!("{prefix}-{i}"), "limit": 10}),
            None,
        )
        .await;
        let publications = result["publications"].as_array().map_or(0, Vec::len);
        kept += publications;
        if i == 0 {
            assert_eq!(publications, 0, "the oldest publication was evicted");
        }
        if i == 299 {
            assert_eq!(publications, 1, "the newest publication is kept");
        }
    }
    // 1 MiB holds at most 17 publications of 60 KB.
    assert!((1..=17).contains(&kept), "kept {kept} publications");
    // A generous memory bound (not a timing): far below 300 × 60 KB kept twice.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    assert!(rss_kb < 200 * 1024, "RSS {rss_kb} kB");
}

#[tokio::test]
async fn private_channel_history_presence_publish_need_subscribe_right() {
    let server = Server::start("").await;
    let channel = format!("${}", unique_channel("private"));
    api_publish(server.admin_addr, &channel, &json!({"secret": 1})).await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    let denied = [
        subscribe(&channel),
        history(&channel, -1, None, false),
        presence(&channel),
        presence_stats(&channel),
        publish(&channel, &json!({"forged": 1})),
    ];
    for command in denied {
        let what = format!("{command:?}");
        let reply = client.request(command).await;
        assert_eq!(error_code(&reply), Some(103), "{what}: {reply:?}");
        assert!(
            reply.history.is_none() && reply.presence.is_none(),
            "{reply:?}"
        );
    }
    // The client's publish was not stored: only the server's publication is there.
    let result = api_ok(
        server.admin_addr,
        "history",
        &json!({"channel": channel, "limit": -1}),
        None,
    )
    .await;
    assert_eq!(result["publications"].as_array().map(Vec::len), Some(1));
    assert_served(&mut client, "after the refusals").await;
}

#[tokio::test]
async fn non_json_publish_is_refused_with_107_and_json_subscribers_stay() {
    let server = Server::start(&hub_section("binary_channels: [\"bin-*\"]")).await;
    let channel = unique_channel("json-only");
    let mut subscriber = server.ws(WsOptions::json()).await;
    subscriber.handshake().await;
    assert_eq!(
        error_code(&subscriber.request(subscribe(&channel)).await),
        None
    );
    let mut binary = server.ws(WsOptions::protobuf()).await;
    binary.handshake().await;
    let reply = binary
        .request(raw_publish(&channel, &[0xff, 0x00, 0x01]))
        .await;
    assert_eq!(error_code(&reply), Some(107), "{reply:?}");
    let reply = binary.request(raw_publish(&channel, b"")).await;
    assert_eq!(error_code(&reply), Some(107), "empty data: {reply:?}");
    // The JSON subscriber was not kicked and still receives the channel.
    assert_served(&mut subscriber, "JSON subscriber").await;
    let reply = binary
        .request(raw_publish(&channel, b"{\"ok\":true}"))
        .await;
    assert_eq!(error_code(&reply), None, "{reply:?}");
    subscriber.expect_publication(&channel, 1).await;

    // A binary-only channel takes any bytes, for Protobuf subscribers only.
    let binary_channel = format!("bin-{}", unique_channel("raw"));
    assert_eq!(
        error_code(&binary.request(subscribe(&binary_channel)).await),
        None
    );
    let reply = binary
        .request(raw_publish(&binary_channel, &[0xff, 0x00]))
        .await;
    assert_eq!(error_code(&reply), None, "{reply:?}");
    let publication = binary.expect_publication(&binary_channel, 1).await;
    assert_eq!(&publication.data[..], &[0xff, 0x00]);
    let reply = subscriber.request(subscribe(&binary_channel)).await;
    assert_eq!(
        error_code(&reply),
        Some(107),
        "JSON client on a binary channel"
    );
    let reply = subscriber
        .request(history(&binary_channel, -1, None, false))
        .await;
    assert_eq!(
        error_code(&reply),
        Some(107),
        "JSON history of a binary channel"
    );
    assert_served(&mut subscriber, "JSON subscriber after binary refusals").await;
}

async fn token_server() -> Server {
    Server::start(&hub_section(&format!(
        "client: {{token: {{hmac_secret_key: \"{SECRET}\"}}}}"
    )))
    .await
}

#[tokio::test]
async fn refresh_with_another_users_token_is_refused() {
    let server = token_server().await;
    let mut alice = server.ws(WsOptions::json()).await;
    alice
        .handshake_with(connect_token(&token_with(
            json!({"sub": "alice", "exp": unix_now() + 60}),
        )))
        .await;
    // Mallory's valid token with no expiry.
    let id = alice.next_id();
    let mut command = refresh(&token_with(json!({"sub": "mallory"})));
    command.id = id;
    alice.send_commands(&[command]).await;
    let (code, _) = alice.expect_close(WAIT).await;
    assert_eq!(code, 3500, "invalid token");
}

#[tokio::test]
async fn refresh_applies_new_exp() {
    let server = token_server().await;
    let mut alice = server.ws(WsOptions::json()).await;
    alice
        .handshake_with(connect_token(&token_with(
            json!({"sub": "alice", "exp": unix_now() + 3600}),
        )))
        .await;
    // Same user, no exp: no expiry.
    let reply = alice
        .request(refresh(&token_with(json!({"sub": "alice"}))))
        .await;
    let result = reply.refresh.expect("refresh result");
    assert!(!result.expires, "{result:?}");
    // Same user, exp in 2 s: the connection expires with it.
    let reply = alice
        .request(refresh(&token_with(
            json!({"sub": "alice", "exp": unix_now() + 2}),
        )))
        .await;
    let result = reply.refresh.expect("refresh result");
    assert!(result.expires && result.ttl <= 2, "{result:?}");
    let (code, _) = alice.expect_close(Duration::from_secs(8)).await;
    assert_eq!(code, 3005, "connection expired");
}

#[tokio::test]
async fn token_with_future_nbf_is_refused() {
    let server = token_server().await;
    let mut early = server.ws(WsOptions::json()).await;
    let id = early.next_id();
    early
        .send_commands(&[Command {
            id,
            connect: Some(connect_token(&token_with(
                json!({"sub": "early", "nbf": unix_now() + 600}),
            ))),
            ..Default::default()
        }])
        .await;
    let (code, _) = early.expect_close(WAIT).await;
    assert_eq!(code, 3500, "not yet valid on connect");

    let mut bob = server.ws(WsOptions::json()).await;
    bob.handshake_with(connect_token(&token_with(
        json!({"sub": "bob", "nbf": unix_now() - 10}),
    )))
    .await;
    let id = bob.next_id();
    let mut command = refresh(&token_with(json!({"sub": "bob", "nbf": unix_now() + 600})));
    command.id = id;
    bob.send_commands(&[command]).await;
    let (code, _) = bob.expect_close(WAIT).await;
    assert_eq!(code, 3500, "not yet valid on refresh");
}

#[tokio::test]
async fn api_disconnect_with_empty_user_is_refused() {
    let server = Server::start("").await;
    let mut anonymous = server.ws(WsOptions::json()).await;
    anonymous.handshake().await;
    let mut targeted = server.ws(WsOptions::json()).await;
    let client = targeted.handshake().await;
    let (status, body) = api(server.admin_addr, "disconnect", &json!({"user": ""}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], 107, "{body}");
    assert_served(&mut anonymous, "anonymous client").await;
    // One anonymous connection can still be named by its client id.
    let body = json!({"user": "", "client": client});
    api_ok(server.admin_addr, "disconnect", &body, None).await;
    let (code, _) = targeted.expect_close(WAIT).await;
    assert_eq!(code, 3503);
    assert_served(&mut anonymous, "the other anonymous client").await;
}

#[tokio::test]
async fn api_disconnect_with_reserved_code_is_refused() {
    let server = token_server().await;
    let mut bob = server.ws(WsOptions::json()).await;
    bob.handshake_with(connect_token(&token_with(json!({"sub": "bob"}))))
        .await;
    for code in [1005, 1006, 1015, 1000, 2999, 5000] {
        let body = json!({"user": "bob", "disconnect": {"code": code, "reason": "x"}});
        let (status, answer) = api(server.admin_addr, "disconnect", &body, None).await;
        assert_eq!(status, 200, "code {code}: {answer}");
        assert_eq!(answer["error"]["code"], 107, "code {code}: {answer}");
    }
    assert_served(&mut bob, "bob after refused disconnects").await;
    let body = json!({"user": "bob", "disconnect": {"code": 4001, "reason": "custom"}});
    api_ok(server.admin_addr, "disconnect", &body, None).await;
    let (code, reason) = bob.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (4001, "custom"));
}

#[tokio::test]
async fn oversized_history_reply_fails_the_command_not_the_link() {
    let server = Server::start(&hub_section("max_frame_bytes: 65536")).await;
    let channel = unique_channel("big");
    let payload = "y".repeat(30_000);
    for _ in 0..3 {
        api_publish(server.admin_addr, &channel, &json!({"p": payload})).await;
    }
    let mut bystander = server.ws(WsOptions::json()).await;
    bystander.handshake().await;
    let mut reader = server.ws(WsOptions::json()).await;
    reader.handshake().await;
    let reply = reader.request(history(&channel, -1, None, false)).await;
    assert_eq!(error_code(&reply), Some(106), "{reply:?}");
    let reply = reader.request(history(&channel, 1, None, true)).await;
    assert_eq!(error_code(&reply), None, "{reply:?}");
    assert_eq!(reply.history.map(|h| h.publications.len()), Some(1));
    // Too large a publication is refused before it is stored or sent.
    let (status, answer) = api(
        server.admin_addr,
        "publish",
        &json!({"channel": channel, "data": {"p": "z".repeat(70_000)}}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["error"]["code"], 106, "{answer}");
    assert_served(&mut reader, "reader").await;
    assert_served(&mut bystander, "bystander").await;
}
