//! The hub's server API as Centrifugo v6 OSS answers it: every method over `POST /api/<method>`
//! on the admin listener, its results and its error codes, with real WebSocket clients where a
//! method acts on connections (server-side subscribe/unsubscribe, disconnect, refresh).

mod support;

use serde_json::{Value, json};
use support::*;

const KEY: &str = "api-test-key";
const SECRET: &str = "server-api-secret";

async fn server() -> Server {
    Server::start(&hub_section(&format!(
        "http_api: {{key: \"{KEY}\"}}\nclient: {{token: {{hmac_secret_key: \"{SECRET}\"}}}}\nhistory_size: 10"
    )))
    .await
}

async fn call(server: &Server, method: &str, body: Value) -> Value {
    api_ok(server.admin_addr, method, &body, Some(KEY)).await
}

/// HTTP status and the `error.code` of a refused call.
async fn refused(server: &Server, method: &str, body: Value) -> (u16, u64) {
    let (status, answer) = api(server.admin_addr, method, &body, Some(KEY)).await;
    let code = answer["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("/api/{method} {body}: no error in {answer}"));
    (status, code)
}

async fn user_client(server: &Server, user: &str, exp_in_secs: i64) -> (WsClient, String) {
    let mut client = server.ws(WsOptions::json()).await;
    let id = client
        .handshake_with(connect_token(&hs256_token(SECRET, user, exp_in_secs)))
        .await;
    (client, id)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

#[tokio::test]
async fn publish_answers_its_position_and_errors_as_centrifugo_does() {
    let server = server().await;
    let channel = unique_channel("pub");
    let result = call(
        &server,
        "publish",
        json!({"channel": channel, "data": {"n": 1}}),
    )
    .await;
    assert_eq!(result["offset"], 1, "{result}");
    assert!(result["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    // Refusals are HTTP 200 with an error object.
    let (status, code) = refused(&server, "publish", json!({"channel": "", "data": 1})).await;
    assert_eq!((status, code), (200, 107));
    let (status, code) = refused(&server, "publish", json!({"channel": channel})).await;
    assert_eq!((status, code), (200, 107), "data is required");
    // Unknown method: 404 + 104; unparsable body: 400; wrong key: 401.
    let (status, code) = refused(&server, "no_such_method", json!({})).await;
    assert_eq!((status, code), (404, 104));
    let (status, _) = http(
        server.admin_addr,
        "POST",
        "/api/publish",
        &[("X-API-Key", KEY)],
        Some("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(server.admin_addr, "info", &json!({}), Some("wrong")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn publish_carries_tags_skips_history_and_honours_idempotency_keys() {
    let server = server().await;
    let channel = unique_channel("opts");
    let (mut client, _) = user_client(&server, "ann", 600).await;
    client.request(subscribe(&channel)).await;
    let body = json!({"channel": channel, "data": {"n": 1}, "tags": {"kind": "greeting"}});
    call(&server, "publish", body).await;
    let publication = client.expect_publication(&channel, 1).await;
    assert_eq!(
        publication.tags.get("kind").map(String::as_str),
        Some("greeting")
    );
    let body = json!({"channel": channel, "data": {"n": 2}, "skip_history": true});
    assert_eq!(call(&server, "publish", body).await["offset"], 2);
    client.expect_publication(&channel, 2).await;
    // The same idempotency key twice: one publication, the first result twice.
    let body = json!({"channel": channel, "data": {"n": 3}, "idempotency_key": "once"});
    let first = call(&server, "publish", body.clone()).await;
    let second = call(&server, "publish", body).await;
    assert_eq!(first, second);
    assert_eq!(first["offset"], 3);
    let history = call(&server, "history", json!({"channel": channel, "limit": -1})).await;
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        vec![1, 3],
        "skipped history and no duplicate: {history}"
    );
    assert_eq!(history["offset"], 3);
    // The key is per channel: elsewhere it publishes.
    let other = unique_channel("opts-other");
    let body = json!({"channel": other, "data": 1, "idempotency_key": "once"});
    assert_eq!(call(&server, "publish", body).await["offset"], 1);
}

#[tokio::test]
async fn broadcast_answers_one_response_per_channel() {
    let server = server().await;
    let (a, b) = (unique_channel("bc"), unique_channel("bc"));
    let body = json!({"channels": [a, "", b], "data": {"x": 1}});
    let result = call(&server, "broadcast", body).await;
    let responses = result["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3, "{result}");
    assert_eq!(responses[0]["result"]["offset"], 1);
    assert_eq!(responses[1]["error"]["code"], 107);
    assert_eq!(responses[2]["result"]["offset"], 1);
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_reach_a_websocket_client() {
    let server = server().await;
    let channel = unique_channel("server-sub");
    let (mut bob, bob_id) = user_client(&server, "bob", 600).await;
    let (mut eve, _) = user_client(&server, "eve", 600).await;
    let body = json!({"user": "bob", "channel": channel, "data": {"welcome": true}});
    call(&server, "subscribe", body).await;
    let push = bob
        .expect_push("subscribe push", WAIT, |p| {
            p.channel == channel && p.subscribe.is_some()
        })
        .await;
    let data: Value = serde_json::from_slice(&push.subscribe.unwrap().data).unwrap();
    assert_eq!(data, json!({"welcome": true}));
    // The sidecar routes the channel to bob now, and the hub counts him.
    call(&server, "publish", json!({"channel": channel, "data": 1})).await;
    bob.expect_publication(&channel, 1).await;
    let presence = call(&server, "presence", json!({"channel": channel})).await;
    assert_eq!(presence["presence"][&bob_id]["user"], "bob", "{presence}");
    let channels = call(&server, "channels", json!({"pattern": "server-sub-*"})).await;
    assert_eq!(
        channels["channels"][&channel]["num_clients"], 1,
        "{channels}"
    );
    let none = call(&server, "channels", json!({"pattern": "nothing-*"})).await;
    assert_eq!(none["channels"], json!({}));
    // Unsubscribe: push 2000 "server unsubscribe", membership gone.
    call(
        &server,
        "unsubscribe",
        json!({"user": "bob", "channel": channel}),
    )
    .await;
    let push = bob
        .expect_push("unsubscribe push", WAIT, |p| {
            p.channel == channel && p.unsubscribe.is_some()
        })
        .await;
    let unsubscribe = push.unsubscribe.unwrap();
    assert_eq!(
        (unsubscribe.code, unsubscribe.reason.as_str()),
        (2000, "server unsubscribe")
    );
    let stats = call(&server, "presence_stats", json!({"channel": channel})).await;
    assert_eq!(stats, json!({"num_clients": 0, "num_users": 0}));
    call(&server, "publish", json!({"channel": channel, "data": 2})).await;
    let echo = bob.request(rpc("echo", &json!("after"))).await;
    assert!(echo.rpc.is_some());
    assert!(
        bob.take_pushes(|p| p.r#pub.is_some()).is_empty(),
        "no publication after the server unsubscribe"
    );
    // eve was never addressed.
    assert!(eve.take_pushes(|p| p.subscribe.is_some()).is_empty());
    let (status, code) = refused(&server, "subscribe", json!({"user": "bob", "channel": ""})).await;
    assert_eq!((status, code), (200, 107));
    let (status, code) = refused(&server, "subscribe", json!({"user": "", "channel": "c"})).await;
    assert_eq!(
        (status, code),
        (200, 107),
        "an empty user must name a client"
    );
    let echo = eve.request(rpc("echo", &json!("alive"))).await;
    assert!(echo.rpc.is_some());
}

#[tokio::test]
async fn server_side_subscribe_respects_the_client_channel_limit() {
    let server = Server::start(&hub_section(&format!(
        "http_api: {{key: \"{KEY}\"}}\nclient: {{token: {{hmac_secret_key: \"{SECRET}\"}}, channel_limit: 1}}"
    )))
    .await;
    let (mut bob, _) = user_client(&server, "bob", 600).await;
    let first = unique_channel("limit");
    let reply = bob.request(subscribe(&first)).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let second = unique_channel("limit");
    call(
        &server,
        "subscribe",
        json!({"user": "bob", "channel": second}),
    )
    .await;
    let stats = call(&server, "presence_stats", json!({"channel": second})).await;
    assert_eq!(stats["num_clients"], 0, "over the limit: not subscribed");
    let echo = bob.request(rpc("echo", &json!("alive"))).await;
    assert!(echo.rpc.is_some());
    assert!(bob.take_pushes(|p| p.subscribe.is_some()).is_empty());
}

#[tokio::test]
async fn refresh_prolongs_or_expires_connections() {
    let server = server().await;
    let (mut bob, _) = user_client(&server, "bob", 60).await;
    let expire_at = unix_now() + 3600;
    call(
        &server,
        "refresh",
        json!({"user": "bob", "expire_at": expire_at}),
    )
    .await;
    let push = bob
        .expect_push("refresh push", WAIT, |p| p.refresh.is_some())
        .await;
    let refresh = push.refresh.unwrap();
    assert!(refresh.expires && refresh.ttl > 3000, "{refresh:?}");
    call(&server, "refresh", json!({"user": "bob", "expired": true})).await;
    let (code, reason) = bob.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (3005, "connection expired"));
}

#[tokio::test]
async fn disconnect_keeps_whitelisted_connections() {
    let server = server().await;
    let (mut kept, kept_id) = user_client(&server, "dan", 600).await;
    let (mut gone, _) = user_client(&server, "dan", 600).await;
    let body = json!({"user": "dan", "whitelist": [kept_id]});
    call(&server, "disconnect", body).await;
    let (code, _) = gone.expect_close(WAIT).await;
    assert_eq!(code, 3503);
    let echo = kept.request(rpc("echo", &json!("kept"))).await;
    assert!(echo.rpc.is_some(), "{echo:?}");
}

#[tokio::test]
async fn history_positions_filters_and_removal() {
    let server = server().await;
    let channel = unique_channel("hist");
    let (mut watcher, _) = user_client(&server, "w", 600).await;
    watcher.request(subscribe(&channel)).await;
    for n in 1..=4 {
        call(
            &server,
            "publish",
            json!({"channel": channel, "data": {"n": n}}),
        )
        .await;
    }
    // Without limit: only the position.
    let position = call(&server, "history", json!({"channel": channel})).await;
    assert_eq!(position["publications"], json!([]), "{position}");
    assert_eq!(position["offset"], 4);
    let epoch = position["epoch"].as_str().unwrap().to_owned();
    let newest = call(
        &server,
        "history",
        json!({"channel": channel, "limit": 2, "reverse": true}),
    )
    .await;
    let offsets: Vec<u64> = newest["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![4, 3]);
    let since = call(
        &server,
        "history",
        json!({"channel": channel, "limit": 10, "since": {"offset": 3, "epoch": epoch}}),
    )
    .await;
    assert_eq!(since["publications"][0]["data"], json!({"n": 4}), "{since}");
    let (status, code) = refused(
        &server,
        "history",
        json!({"channel": channel, "limit": 10, "since": {"offset": 3, "epoch": "other"}}),
    )
    .await;
    assert_eq!((status, code), (200, 112));
    call(&server, "history_remove", json!({"channel": channel})).await;
    let after = call(&server, "history", json!({"channel": channel, "limit": -1})).await;
    assert_eq!(after["publications"], json!([]));
    assert_eq!(
        (after["offset"].as_u64(), after["epoch"].as_str()),
        (Some(4), Some(epoch.as_str()))
    );
    let (status, code) = refused(&server, "history_remove", json!({"channel": ""})).await;
    assert_eq!((status, code), (200, 107));
}

#[tokio::test]
async fn info_reports_one_node_with_its_counts() {
    let server = server().await;
    let (mut a, _) = user_client(&server, "ann", 600).await;
    let (_b, _) = user_client(&server, "ann", 600).await;
    a.request(subscribe(&unique_channel("info"))).await;
    let info = call(&server, "info", json!({})).await;
    let nodes = info["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{info}");
    let node = &nodes[0];
    assert!(node["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(node["name"].as_str().is_some());
    assert!(node["version"].as_str().is_some());
    assert_eq!(node["num_clients"], 2, "{info}");
    assert_eq!(node["num_users"], 1, "{info}");
    assert_eq!(node["num_channels"], 1, "{info}");
    assert!(node["uptime"].as_u64().is_some());
}

#[tokio::test]
async fn batch_replies_in_order_with_an_error_for_the_failing_command() {
    let server = server().await;
    let channel = unique_channel("batch");
    let body = json!({"commands": [
        {"publish": {"channel": channel, "data": 1}},
        {"publish": {"channel": "", "data": 2}},
        {"history": {"channel": channel, "limit": -1}},
        {"no_such_method": {}},
        {"batch": {"commands": []}},
    ], "parallel": true});
    let (status, answer) = api(server.admin_addr, "batch", &body, Some(KEY)).await;
    assert_eq!(status, 200, "{answer}");
    let replies = answer["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 5, "{answer}");
    assert_eq!(replies[0]["publish"]["offset"], 1);
    assert_eq!(replies[1]["error"]["code"], 107);
    assert_eq!(replies[2]["history"]["publications"][0]["data"], 1);
    assert_eq!(replies[3]["error"]["code"], 104);
    assert_eq!(replies[4]["error"]["code"], 104, "no nested batch");
    // Bounded: more than 1000 commands is refused as a whole, nothing runs.
    let commands: Vec<Value> = (0..1001)
        .map(|_| json!({"publish": {"channel": channel, "data": 1}}))
        .collect();
    let (status, code) = refused(&server, "batch", json!({"commands": commands})).await;
    assert_eq!((status, code), (200, 106));
    let position = call(&server, "history", json!({"channel": channel})).await;
    assert_eq!(position["offset"], 1);
}

#[tokio::test]
async fn concurrent_duplicate_idempotency_keys_publish_once() {
    let server = server().await;
    let channel = unique_channel("idem");
    let body = json!({"channel": channel, "data": {"once": true}, "idempotency_key": "k"});
    let calls = (0..8).map(|_| api(server.admin_addr, "publish", &body, Some(KEY)));
    let answers = futures_util::future::join_all(calls).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["result"]["offset"], 1, "{answer}");
    }
    let history = call(&server, "history", json!({"channel": channel, "limit": -1})).await;
    assert_eq!(history["publications"].as_array().map(Vec::len), Some(1));
}

/// Publication data reaches subscribers as the backend wrote it: key order, number text and
/// spaces kept (Centrifugo passes it as raw JSON), through publish, broadcast and batch.
#[tokio::test]
async fn publication_data_reaches_subscribers_byte_for_byte() {
    let server = server().await;
    let channel = unique_channel("exact");
    let (mut client, _) = user_client(&server, "ann", 600).await;
    client.request(subscribe(&channel)).await;
    let data = r#"{"z": 1.10, "a": 123456789012345678901234567890, "e": 1e3, "s": "\u00e9"}"#;
    let bodies = [
        (
            "publish",
            format!(r#"{{"channel": "{channel}", "data": {data}}}"#),
        ),
        (
            "broadcast",
            format!(r#"{{"channels": ["{channel}"], "data": {data}}}"#),
        ),
        (
            "batch",
            format!(
                r#"{{"commands": [{{"publish": {{"channel": "{channel}", "data": {data}}}}}]}}"#
            ),
        ),
    ];
    for (offset, (method, body)) in (1..).zip(bodies) {
        let (status, answer) = http(
            server.admin_addr,
            "POST",
            &format!("/api/{method}"),
            &[("X-API-Key", KEY)],
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{method}: {answer}");
        assert!(!answer.contains("error"), "{method}: {answer}");
        let publication = client.expect_publication(&channel, offset).await;
        assert_eq!(
            std::str::from_utf8(&publication.data).unwrap(),
            data,
            "{method} changed the data"
        );
    }
}
