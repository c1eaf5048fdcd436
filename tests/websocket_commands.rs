//! Every client-protocol command over the WebSocket transport, against the real binary.
//!
//! The two main flows (anonymous, and token-authenticated with the server API) run for all four
//! combinations of client encoding (JSON, Protobuf) and upstream (embedded hub, external
//! `sidewire hub` over the Link). Each test starts its own processes on ephemeral ports.

mod support;

use std::collections::BTreeSet;

use serde_json::json;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Publication, Push, Reply, SubscribeRequest};
use support::*;

/// Runs `$flow(encoding, upstream)` for the four combinations.
macro_rules! for_each_combination {
    ($flow:ident) => {
        mod $flow {
            use super::*;

            #[tokio::test]
            async fn json_embedded() {
                super::$flow(Encoding::Json, Upstream::Embedded).await
            }

            #[tokio::test]
            async fn protobuf_embedded() {
                super::$flow(Encoding::Protobuf, Upstream::Embedded).await
            }

            #[tokio::test]
            async fn json_external_hub() {
                super::$flow(Encoding::Json, Upstream::External).await
            }

            #[tokio::test]
            async fn protobuf_external_hub() {
                super::$flow(Encoding::Protobuf, Upstream::External).await
            }
        }
    };
}

for_each_combination!(anonymous_flow);
for_each_combination!(token_flow);

/// A reply that must be a success: no error.
fn ok(reply: Reply, what: &str) -> Reply {
    assert_eq!(reply.error, None, "{what} failed: {reply:?}");
    reply
}

/// The error code of a reply that must be an error.
fn error_code(reply: &Reply) -> u32 {
    reply
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply:?}"))
        .code
}

fn offsets(publications: &[Publication]) -> Vec<u64> {
    publications.iter().map(|p| p.offset).collect()
}

fn is_join_of(channel: &str, client: &str) -> impl Fn(&Push) -> bool {
    let (channel, client) = (channel.to_owned(), client.to_owned());
    move |p| {
        p.channel == channel
            && p.join
                .as_ref()
                .and_then(|j| j.info.as_ref())
                .is_some_and(|i| i.client == client)
    }
}

fn is_leave_of(channel: &str, client: &str) -> impl Fn(&Push) -> bool {
    let (channel, client) = (channel.to_owned(), client.to_owned());
    move |p| {
        p.channel == channel
            && p.leave
                .as_ref()
                .and_then(|l| l.info.as_ref())
                .is_some_and(|i| i.client == client)
    }
}

fn is_publication_on(channel: &str) -> impl Fn(&Push) -> bool {
    let channel = channel.to_owned();
    move |p| p.channel == channel && p.r#pub.is_some()
}

/// Opens a client speaking `encoding` that answers pings by itself.
async fn client(deployment: &Deployment, encoding: Encoding) -> WsClient {
    let mut client = deployment
        .server
        .ws(WsOptions::for_encoding(encoding))
        .await;
    client.auto_pong = true;
    match encoding {
        Encoding::Json => assert_eq!(client.selected_subprotocol(), None),
        Encoding::Protobuf => assert_eq!(
            client.selected_subprotocol().as_deref(),
            Some("centrifuge-protobuf")
        ),
    }
    client
}

/// connect, subscribe (join/leave, 103, 105), publish, presence, presence_stats, history
/// (limit, reverse, since), unsubscribe, recovery, rpc (echo, 104), send, and the server API
/// (publish, broadcast, presence, history), anonymously.
async fn anonymous_flow(encoding: Encoding, upstream: Upstream) {
    let deployment = Deployment::start(upstream, "", "").await;
    let api_at = deployment.api_addr;

    // --- connect ---
    let mut a = client(&deployment, encoding).await;
    let reply = ok(a.connect_with(Default::default()).await, "connect");
    let result = reply
        .connect
        .clone()
        .expect("connect reply has a ConnectResult");
    assert!(!result.client.is_empty(), "client id: {reply:?}");
    assert!(!result.version.is_empty(), "version: {reply:?}");
    assert_eq!(
        result.ping, 25,
        "ping interval in seconds (default 25s): {reply:?}"
    );
    assert!(result.pong, "pong expected: {reply:?}");
    let a_id = result.client;

    let mut b = client(&deployment, encoding).await;
    let b_id = b.handshake().await;
    assert_ne!(a_id, b_id, "client ids must be unique per connection");

    // --- subscribe with join/leave ---
    let chan = unique_channel("chat");
    let join_leave = |channel: &str| {
        subscribe_with(SubscribeRequest {
            channel: channel.to_owned(),
            join_leave: true,
            ..Default::default()
        })
    };
    let reply = ok(a.request(join_leave(&chan)).await, "subscribe A");
    assert!(reply.subscribe.is_some(), "subscribe result: {reply:?}");
    let reply = ok(b.request(join_leave(&chan)).await, "subscribe B");
    assert!(reply.subscribe.is_some(), "subscribe result: {reply:?}");
    let join = a
        .expect_push("join of B", WAIT, is_join_of(&chan, &b_id))
        .await;
    assert_eq!(join.join.unwrap().info.unwrap().user, "");

    // --- subscribe errors ---
    assert_eq!(
        error_code(&a.request(subscribe(&chan)).await),
        105,
        "second subscribe to the same channel: already subscribed"
    );
    assert_eq!(
        error_code(&a.request(subscribe("$private")).await),
        103,
        "$ channels: permission denied"
    );

    // --- publish: every subscriber gets it, the publisher included ---
    let data1 = json!({"text": "hello", "n": 1, "unicode": "héllo ✓"});
    let reply = ok(a.request(publish(&chan, &data1)).await, "publish");
    assert!(reply.publish.is_some(), "publish result: {reply:?}");
    let pa = a.expect_publication(&chan, 1).await;
    assert_eq!(json_of(&pa.data), data1);
    let info = pa.info.clone().expect("publication info");
    assert_eq!(info.client, a_id, "info.client is the publisher");
    assert_eq!(info.user, "");
    let pb = b.expect_publication(&chan, 1).await;
    assert_eq!(json_of(&pb.data), data1);
    assert_eq!(pb.info.expect("info").client, a_id);

    // --- presence ---
    let reply = ok(a.request(presence(&chan)).await, "presence");
    let members = reply.presence.expect("presence result").presence;
    let clients: BTreeSet<&str> = members.keys().map(String::as_str).collect();
    assert_eq!(clients, BTreeSet::from([a_id.as_str(), b_id.as_str()]));
    for (client, info) in &members {
        assert_eq!(&info.client, client);
        assert_eq!(info.user, "");
    }
    let reply = ok(a.request(presence_stats(&chan)).await, "presence_stats");
    let stats = reply.presence_stats.expect("presence_stats result");
    assert_eq!(stats.num_clients, 2, "{stats:?}");
    assert_eq!(
        stats.num_users, 1,
        "two anonymous clients are one user \"\": {stats:?}"
    );

    // --- more publications, offsets count per channel ---
    for n in 2..=3u64 {
        ok(
            b.request(publish(&chan, &json!({"n": n}))).await,
            "publish B",
        );
        let p = a.expect_publication(&chan, n).await;
        assert_eq!(json_of(&p.data), json!({"n": n}));
        assert_eq!(p.info.expect("info").client, b_id);
        b.expect_publication(&chan, n).await;
    }

    // --- history ---
    let reply = ok(a.request(history(&chan, 10, None, false)).await, "history");
    let h = reply.history.expect("history result");
    assert_eq!(offsets(&h.publications), vec![1, 2, 3]);
    // Publication pushes carry no epoch (as in Centrifugo); history gives the stream position.
    assert!(!h.epoch.is_empty(), "history epoch: {h:?}");
    let epoch = h.epoch.clone();
    assert_eq!(h.offset, 3, "top offset");
    assert_eq!(json_of(&h.publications[0].data), data1);
    assert_eq!(json_of(&h.publications[2].data), json!({"n": 3}));

    let reply = ok(
        a.request(history(&chan, 2, None, true)).await,
        "history reverse",
    );
    let h = reply.history.expect("history result");
    assert_eq!(offsets(&h.publications), vec![3, 2], "reverse, limit 2");
    assert_eq!((h.epoch.as_str(), h.offset), (epoch.as_str(), 3));

    let reply = ok(
        a.request(history(&chan, 10, Some((1, &epoch)), false))
            .await,
        "history since",
    );
    let h = reply.history.expect("history result");
    assert_eq!(offsets(&h.publications), vec![2, 3], "since offset 1");

    let reply = ok(
        a.request(history(&chan, 1, Some((1, &epoch)), false)).await,
        "history since, limit 1",
    );
    assert_eq!(
        offsets(&reply.history.expect("history result").publications),
        vec![2]
    );

    let other = unique_channel("empty");
    let reply = ok(
        a.request(history(&other, 10, None, false)).await,
        "history of empty",
    );
    let h = reply.history.expect("history result");
    assert!(h.publications.is_empty(), "{h:?}");
    assert_eq!(h.offset, 0);

    // --- unsubscribe, then recovery of what was missed ---
    let reply = ok(b.request(unsubscribe(&chan)).await, "unsubscribe");
    assert!(reply.unsubscribe.is_some(), "unsubscribe result: {reply:?}");
    a.expect_push("leave of B", WAIT, is_leave_of(&chan, &b_id))
        .await;
    for n in 4..=5u64 {
        ok(
            a.request(publish(&chan, &json!({"n": n}))).await,
            "publish A",
        );
        a.expect_publication(&chan, n).await;
    }
    let reply = ok(
        b.request(subscribe_with(SubscribeRequest {
            channel: chan.clone(),
            recover: true,
            offset: 3,
            epoch: epoch.clone(),
            join_leave: true,
            ..Default::default()
        }))
        .await,
        "recovering subscribe",
    );
    let sub = reply.subscribe.expect("subscribe result");
    assert!(sub.recovered, "recovered: {sub:?}");
    assert_eq!(
        offsets(&sub.publications),
        vec![4, 5],
        "missed publications"
    );
    assert_eq!(json_of(&sub.publications[1].data), json!({"n": 5}));
    assert_eq!(sub.epoch, epoch);
    assert_eq!(sub.offset, 5, "stream top after recovery: {sub:?}");
    a.expect_push("join of B again", WAIT, is_join_of(&chan, &b_id))
        .await;

    // Publication 6 reaches B live; 4 and 5 never came as pushes (B was not subscribed).
    ok(
        a.request(publish(&chan, &json!({"n": 6}))).await,
        "publish A",
    );
    a.expect_publication(&chan, 6).await;
    b.expect_publication(&chan, 6).await;
    let stray = b.take_pushes(is_publication_on(&chan));
    assert!(
        stray.is_empty(),
        "B got publications while unsubscribed: {stray:?}"
    );

    // --- rpc ---
    let payload = json!({"echo": ["this", 1, true, null]});
    let reply = ok(a.request(rpc("echo", &payload)).await, "rpc echo");
    assert_eq!(json_of(&reply.rpc.expect("rpc result").data), payload);
    assert_eq!(
        error_code(&a.request(rpc("no_such_method", &json!({}))).await),
        104,
        "unknown rpc method: method not found"
    );

    // --- send: the hub answers with a message push carrying the same data ---
    let payload = json!({"sent": "async", "n": 42});
    a.send_commands(&[send(&payload)]).await;
    let push = a
        .expect_push("message push", WAIT, |p| p.message.is_some())
        .await;
    assert_eq!(json_of(&push.message.unwrap().data), payload);

    // --- server API: publish ---
    let result = api_publish(api_at, &chan, &json!({"from": "api"})).await;
    assert_eq!(result["offset"], json!(7), "API publish result: {result}");
    assert_eq!(
        result["epoch"],
        json!(epoch),
        "API publish result: {result}"
    );
    for c in [&mut a, &mut b] {
        let p = c.expect_publication(&chan, 7).await;
        assert_eq!(json_of(&p.data), json!({"from": "api"}));
    }

    // --- server API: broadcast to two channels ---
    let chan2 = unique_channel("second");
    ok(a.request(subscribe(&chan2)).await, "subscribe chan2");
    api_ok(
        api_at,
        "broadcast",
        &json!({"channels": [chan, chan2], "data": {"broadcast": true}}),
        None,
    )
    .await;
    let p = a.expect_publication(&chan, 8).await;
    assert_eq!(json_of(&p.data), json!({"broadcast": true}));
    let p = a.expect_publication(&chan2, 1).await;
    assert_eq!(json_of(&p.data), json!({"broadcast": true}));
    let p = b.expect_publication(&chan, 8).await;
    assert_eq!(json_of(&p.data), json!({"broadcast": true}));

    // --- server API: presence and history ---
    let result = api_ok(api_at, "presence", &json!({"channel": chan}), None).await;
    let members = result["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("API presence result: {result}"));
    let clients: BTreeSet<&str> = members.keys().map(String::as_str).collect();
    assert_eq!(clients, BTreeSet::from([a_id.as_str(), b_id.as_str()]));
    assert_eq!(members[&a_id]["client"], json!(a_id));

    let result = api_ok(
        api_at,
        "history",
        &json!({"channel": chan, "limit": 100}),
        None,
    )
    .await;
    let publications = result["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("API history result: {result}"));
    let api_offsets: Vec<u64> = publications
        .iter()
        .map(|p| p["offset"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(api_offsets, (1..=8).collect::<Vec<u64>>(), "{result}");
    assert_eq!(publications[6]["data"], json!({"from": "api"}));
    assert_eq!(result["epoch"], json!(epoch), "{result}");
    assert_eq!(result["offset"], json!(8), "{result}");

    // Nothing unexpected is left over (pings are answered and never queued). Join/leave pushes
    // of a client's own subscription are allowed (Centrifugo sends them to the joiner too).
    for c in [&mut a, &mut b] {
        c.take_pushes(|p| p.join.is_some() || p.leave.is_some());
    }
    let leftover_a: Vec<&Reply> = a.unconsumed().iter().collect();
    assert!(
        leftover_a.is_empty(),
        "A: unexpected messages {leftover_a:?}"
    );
    let leftover_b: Vec<&Reply> = b.unconsumed().iter().collect();
    assert!(
        leftover_b.is_empty(),
        "B: unexpected messages {leftover_b:?}"
    );
}

const SECRET: &str = "integration-secret";
const API_KEY: &str = "integration-api-key";

/// Token auth (valid, invalid → 3500, expired → 109), users in publications and presence,
/// refresh, the API key, and API disconnect (default 3503 and a custom code).
async fn token_flow(encoding: Encoding, upstream: Upstream) {
    let hub = format!(
        "client: {{token: {{hmac_secret_key: \"{SECRET}\"}}}}\nhttp_api: {{key: \"{API_KEY}\"}}"
    );
    let deployment = Deployment::start(upstream, "", &hub).await;
    let api_at = deployment.api_addr;

    // --- bad tokens ---
    let mut bad = client(&deployment, encoding).await;
    let id = bad.next_id();
    bad.send_commands(&[sidewire::protocol::client::Command {
        id,
        connect: Some(connect_token("not-a-jwt")),
        ..Default::default()
    }])
    .await;
    let (code, _) = bad.expect_close(WAIT).await;
    assert_eq!(code, 3500, "garbage token: invalid token");

    let mut forged = client(&deployment, encoding).await;
    let id = forged.next_id();
    forged
        .send_commands(&[sidewire::protocol::client::Command {
            id,
            connect: Some(connect_token(&hs256_token("wrong-secret", "mallory", 3600))),
            ..Default::default()
        }])
        .await;
    let (code, _) = forged.expect_close(WAIT).await;
    assert_eq!(
        code, 3500,
        "token signed with another secret: invalid token"
    );

    let mut expired = client(&deployment, encoding).await;
    let reply = expired
        .connect_with(connect_token(&hs256_token(SECRET, "late", -60)))
        .await;
    assert_eq!(error_code(&reply), 109, "expired token: token expired");

    // --- valid tokens: users ---
    let mut alice = client(&deployment, encoding).await;
    let reply = ok(
        alice
            .connect_with(connect_token(&hs256_token(SECRET, "alice", 3600)))
            .await,
        "alice connect",
    );
    let result = reply.connect.expect("connect result");
    let alice_id = result.client.clone();
    assert!(
        result.expires,
        "token with exp: connection expires: {result:?}"
    );
    assert!(
        (3000..=3600).contains(&result.ttl),
        "ttl close to the token's remaining 3600s: {result:?}"
    );
    let mut bob1 = client(&deployment, encoding).await;
    let bob1_id = bob1
        .handshake_with(connect_token(&hs256_token(SECRET, "bob", 3600)))
        .await;
    let mut bob2 = client(&deployment, encoding).await;
    let bob2_id = bob2
        .handshake_with(connect_token(&hs256_token(SECRET, "bob", 3600)))
        .await;

    let chan = unique_channel("users");
    for c in [&mut alice, &mut bob1, &mut bob2] {
        ok(c.request(subscribe(&chan)).await, "subscribe");
    }
    ok(
        alice
            .request(publish(&chan, &json!({"who": "alice"})))
            .await,
        "publish",
    );
    for c in [&mut alice, &mut bob1, &mut bob2] {
        let p = c.expect_publication(&chan, 1).await;
        let info = p.info.expect("publication info");
        assert_eq!(
            (info.user.as_str(), info.client.as_str()),
            ("alice", alice_id.as_str())
        );
    }
    let reply = ok(bob1.request(presence(&chan)).await, "presence");
    let members = reply.presence.expect("presence result").presence;
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members[&alice_id].user, "alice");
    assert_eq!(members[&bob1_id].user, "bob");
    assert_eq!(members[&bob2_id].user, "bob");
    let reply = ok(bob2.request(presence_stats(&chan)).await, "presence_stats");
    let stats = reply.presence_stats.expect("presence_stats result");
    assert_eq!((stats.num_clients, stats.num_users), (3, 2), "{stats:?}");

    // --- refresh ---
    let reply = ok(
        alice
            .request(refresh(&hs256_token(SECRET, "alice", 7200)))
            .await,
        "refresh",
    );
    let refreshed = reply.refresh.expect("refresh result");
    assert!(refreshed.expires, "{refreshed:?}");
    assert!(
        (3600..=7200).contains(&refreshed.ttl),
        "ttl follows the new token's exp: {refreshed:?}"
    );

    // --- server API key ---
    let body = json!({"channel": chan});
    let (status, _) = api(api_at, "presence", &body, None).await;
    assert_eq!(status, 401, "API without key");
    let (status, _) = api(api_at, "presence", &body, Some("wrong-key")).await;
    assert_eq!(status, 401, "API with a wrong key");
    let result = api_ok(api_at, "presence", &body, Some(API_KEY)).await;
    assert_eq!(
        result["presence"].as_object().map(|m| m.len()),
        Some(3),
        "{result}"
    );

    // --- API disconnect: every session of the user, nobody else ---
    api_ok(api_at, "disconnect", &json!({"user": "bob"}), Some(API_KEY)).await;
    for bob in [&mut bob1, &mut bob2] {
        let (code, reason) = bob.expect_close(WAIT).await;
        assert_eq!(code, 3503, "force disconnect ({reason:?})");
        assert_eq!(reason, "force disconnect");
    }
    let payload = json!({"still": "here"});
    let reply = ok(
        alice.request(rpc("echo", &payload)).await,
        "alice after bob left",
    );
    assert_eq!(json_of(&reply.rpc.expect("rpc result").data), payload);
    let reply = ok(alice.request(presence_stats(&chan)).await, "presence_stats");
    let stats = reply.presence_stats.expect("presence_stats result");
    assert_eq!(
        (stats.num_clients, stats.num_users),
        (1, 1),
        "bob's sessions left presence"
    );

    api_ok(
        api_at,
        "disconnect",
        &json!({"user": "alice", "disconnect": {"code": 4501, "reason": "bye alice"}}),
        Some(API_KEY),
    )
    .await;
    let (code, reason) = alice.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (4501, "bye alice"));
}

/// JSON and Protobuf subscribers of one channel receive the same publication.
#[tokio::test]
async fn mixed_encodings_share_channels() {
    let deployment = Deployment::start(Upstream::Embedded, "", "").await;
    let mut j = client(&deployment, Encoding::Json).await;
    let mut p = client(&deployment, Encoding::Protobuf).await;
    let j_id = j.handshake().await;
    p.handshake().await;
    let chan = unique_channel("mixed");
    ok(j.request(subscribe(&chan)).await, "subscribe json");
    ok(p.request(subscribe(&chan)).await, "subscribe protobuf");
    let data = json!({"text": "ünïcödé ✓", "nested": {"list": [1, 2.5, "x"]}});
    ok(j.request(publish(&chan, &data)).await, "publish");
    for c in [&mut j, &mut p] {
        let publication = c.expect_publication(&chan, 1).await;
        assert_eq!(json_of(&publication.data), data);
        assert_eq!(publication.info.expect("info").client, j_id);
    }
}

/// Several commands batched in one WebSocket message each get their reply.
#[tokio::test]
async fn batched_commands_in_one_message() {
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        let deployment = Deployment::start(Upstream::Embedded, "", "").await;
        let mut c = client(&deployment, encoding).await;
        let chan = unique_channel("batch");
        let mut commands = vec![
            sidewire::protocol::client::Command {
                connect: Some(Default::default()),
                ..Default::default()
            },
            subscribe(&chan),
            publish(&chan, &json!({"batched": true})),
            rpc("echo", &json!("x")),
        ];
        for command in &mut commands {
            command.id = c.next_id();
        }
        c.send_commands(&commands).await;
        let connect = ok(c.expect_reply(1, WAIT).await, "batched connect");
        assert!(connect.connect.is_some(), "{connect:?}");
        let sub = ok(c.expect_reply(2, WAIT).await, "batched subscribe");
        assert!(sub.subscribe.is_some(), "{sub:?}");
        ok(c.expect_reply(3, WAIT).await, "batched publish");
        let echo = ok(c.expect_reply(4, WAIT).await, "batched rpc");
        assert_eq!(json_of(&echo.rpc.expect("rpc result").data), json!("x"));
        c.expect_publication(&chan, 1).await;
    }
}

/// `history` without `since` and a limit below the stream length.
///
/// Contract ambiguity: the brief says "last N"; Centrifugo (memory engine) returns the *first*
/// N publications of the stream when neither `since` nor `reverse` is given. This test pins
/// Centrifugo's behaviour; see the report.
#[tokio::test]
async fn history_limit_without_since_follows_centrifugo() {
    let deployment = Deployment::start(Upstream::Embedded, "", "").await;
    let mut c = client(&deployment, Encoding::Json).await;
    c.handshake().await;
    let chan = unique_channel("hist");
    for n in 1..=5u64 {
        api_publish(deployment.api_addr, &chan, &json!({"n": n})).await;
    }
    let reply = ok(c.request(history(&chan, 2, None, false)).await, "history");
    let h = reply.history.expect("history result");
    assert_eq!(h.offset, 5);
    assert_eq!(
        offsets(&h.publications),
        vec![1, 2],
        "Centrifugo returns the first `limit` publications when iterating forward without since"
    );
}

/// `hub.history_size` bounds what history keeps, and recovery from a position that fell out
/// of it is not `recovered`.
#[tokio::test]
async fn history_size_bounds_history_and_recovery() {
    let deployment = Deployment::start(Upstream::Embedded, "", "history_size: 3").await;
    let mut c = client(&deployment, Encoding::Json).await;
    c.handshake().await;
    let chan = unique_channel("bounded");
    let mut epoch = String::new();
    for n in 1..=6u64 {
        let result = api_publish(deployment.api_addr, &chan, &json!({"n": n})).await;
        assert_eq!(result["offset"], json!(n), "{result}");
        epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
    }
    let reply = ok(c.request(history(&chan, 100, None, false)).await, "history");
    let h = reply.history.expect("history result");
    assert_eq!(
        offsets(&h.publications),
        vec![4, 5, 6],
        "history_size 3 keeps the last 3"
    );
    assert_eq!((h.offset, h.epoch.as_str()), (6, epoch.as_str()));

    // Recovery from offset 4 works (5 and 6 are still kept)...
    let reply = ok(
        c.request(subscribe_with(SubscribeRequest {
            channel: chan.clone(),
            recover: true,
            offset: 4,
            epoch: epoch.clone(),
            ..Default::default()
        }))
        .await,
        "recover from 4",
    );
    let sub = reply.subscribe.expect("subscribe result");
    assert!(sub.recovered, "{sub:?}");
    assert_eq!(offsets(&sub.publications), vec![5, 6]);

    // ...from offset 1 it cannot (2 and 3 are gone).
    let chan_copy = chan.clone();
    ok(c.request(unsubscribe(&chan_copy)).await, "unsubscribe");
    let reply = ok(
        c.request(subscribe_with(SubscribeRequest {
            channel: chan.clone(),
            recover: true,
            offset: 1,
            epoch: epoch.clone(),
            ..Default::default()
        }))
        .await,
        "recover from 1",
    );
    let sub = reply.subscribe.expect("subscribe result");
    assert!(
        !sub.recovered,
        "offsets 2..3 were evicted, recovery must fail: {sub:?}"
    );
}

/// Recovery with a wrong epoch is not `recovered`.
#[tokio::test]
async fn recovery_with_wrong_epoch_is_not_recovered() {
    let deployment = Deployment::start(Upstream::Embedded, "", "").await;
    let mut c = client(&deployment, Encoding::Protobuf).await;
    c.handshake().await;
    let chan = unique_channel("epoch");
    api_publish(deployment.api_addr, &chan, &json!({})).await;
    let reply = ok(
        c.request(subscribe_with(SubscribeRequest {
            channel: chan.clone(),
            recover: true,
            offset: 0,
            epoch: "not-the-epoch".to_owned(),
            ..Default::default()
        }))
        .await,
        "recover with a wrong epoch",
    );
    let sub = reply.subscribe.expect("subscribe result");
    assert!(!sub.recovered, "{sub:?}");
    assert_ne!(sub.epoch, "not-the-epoch");
}

/// A server-API disconnect reason longer than a close frame allows is cut to 123 bytes (at a
/// character boundary), never turned into an abnormal closure.
#[tokio::test]
async fn long_disconnect_reason_is_cut_to_fit_the_close_frame() {
    let secret = "s";
    let deployment = Deployment::start(
        Upstream::Embedded,
        "",
        &format!("client: {{token: {{hmac_secret_key: \"{secret}\"}}}}"),
    )
    .await;
    let mut c = client(&deployment, Encoding::Json).await;
    c.handshake_with(connect_token(&hs256_token(secret, "carol", 600)))
        .await;
    let reason = "é".repeat(100); // 200 bytes
    api_ok(
        deployment.api_addr,
        "disconnect",
        &json!({"user": "carol", "disconnect": {"code": 4000, "reason": reason}}),
        None,
    )
    .await;
    let (code, got) = c.expect_close(WAIT).await;
    assert_eq!(code, 4000);
    assert!(got.len() <= 123, "reason of {} bytes", got.len());
    assert!(reason.starts_with(&got) && !got.is_empty(), "{got:?}");
}
