//! The Redis engine across replicas: two or three sidewire processes (embedded hubs) on one
//! real Redis (or a 3-node Redis Cluster) share publications (exactly once, in order),
//! history and recovery, presence (a killed replica's entries expire), join/leave; a Redis
//! restart under load loses nothing for clients that recover, and readiness is false while
//! Redis is away; presence is written before the subscribe reply; `channels` and idempotent
//! publishes span replicas.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sidewire::protocol::client::{Reply, SubscribeRequest};
use support::*;

const KEY: &str = "engine-test-key";
const SECRET: &str = "engine-test-secret";

fn replica_yaml(redis_lines: &str) -> String {
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    replica_yaml_with(redis_lines, &prefix, "")
}

fn replica_yaml_with(redis_lines: &str, prefix: &str, hub_extra: &str) -> String {
    format!(
        "engine:\n  type: redis\n  redis:\n    prefix: \"{prefix}\"\n    presence_ttl: 2s\n    \
         io_timeout: 1s\n{redis_lines}\n{}",
        hub_section(&format!(
            "http_api:\n  key: \"{KEY}\"\nclient:\n  token:\n    hmac_secret_key: \"{SECRET}\"\nhistory_size: 1000\n\
             history_ttl: 300s\n{hub_extra}"
        ))
    )
}

fn single(redis: &RedisServer) -> String {
    format!("    address: \"{}\"", redis.url())
}

/// Starts `n` replicas sharing the same prefix.
async fn replicas(n: usize, redis_lines: &str) -> Vec<Server> {
    let yaml = replica_yaml(redis_lines);
    let mut servers = Vec::new();
    for _ in 0..n {
        let server = Server::start(&yaml).await;
        server.wait_ready(Duration::from_secs(10)).await;
        servers.push(server);
    }
    servers
}

async fn call(server: &Server, method: &str, body: Value) -> Value {
    api_ok(server.admin_addr, method, &body, Some(KEY)).await
}

async fn subscribed(client: &mut WsClient, request: SubscribeRequest) -> Reply {
    let reply = client.request(subscribe_with(request)).await;
    assert_eq!(reply.error, None, "subscribe failed: {reply:?}");
    reply
}

/// A client of `server` connected as `user` and subscribed to `channels`; its client id.
async fn subscriber(server: &Server, user: &str, channels: &[&str]) -> (WsClient, String) {
    let mut client = server.ws(WsOptions::json()).await;
    let id = client
        .handshake_with(connect_token(&hs256_token(SECRET, user, 3600)))
        .await;
    for channel in channels {
        subscribed(
            &mut client,
            SubscribeRequest {
                channel: (*channel).to_owned(),
                ..Default::default()
            },
        )
        .await;
    }
    (client, id)
}

/// Publication offsets received on `channel` until `last`, in arrival order.
async fn offsets_until(client: &mut WsClient, channel: &str, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let push = client
            .expect_push(
                &format!("publication on {channel} up to {last}"),
                WAIT,
                |p| p.channel == channel && p.r#pub.is_some(),
            )
            .await;
        seen.push(push.r#pub.map(|p| p.offset).unwrap_or_default());
    }
    seen
}

fn record(
    received: &mut std::collections::BTreeSet<u64>,
    publication: &sidewire::protocol::client::Publication,
    offset: &mut u64,
) {
    if let Some(seq) = json_of(&publication.data)["seq"].as_u64() {
        received.insert(seq);
    }
    *offset = publication.offset;
}

async fn presence_count(server: &Server, channel: &str) -> u64 {
    call(server, "presence_stats", json!({ "channel": channel })).await["num_clients"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn replicas_share_publications_history_presence_and_join_leave() {
    let redis = RedisServer::start();
    let servers = replicas(2, &single(&redis)).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    let channel = unique_channel("shared");

    let mut a = r1.ws(WsOptions::json()).await;
    a.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut a,
        SubscribeRequest {
            channel: channel.clone(),
            recoverable: true,
            ..Default::default()
        },
    )
    .await;
    let mut b = r2.ws(WsOptions::json()).await;
    let b_id = b
        .handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut b,
        SubscribeRequest {
            channel: channel.clone(),
            join_leave: true,
            ..Default::default()
        },
    )
    .await;
    eventually(Duration::from_secs(5), "presence of both replicas", || {
        let channel = channel.clone();
        async move { presence_count(r1, &channel).await == 2 }
    })
    .await;
    let presence = call(r2, "presence", json!({ "channel": channel })).await;
    assert!(
        presence["presence"].get(&b_id).is_some(),
        "presence lacks b: {presence}"
    );

    // Publications through both replicas' APIs and from a client on replica 2.
    let mut epoch = String::new();
    for i in 0..20u64 {
        let server = if i % 2 == 0 { r1 } else { r2 };
        let result = call(
            server,
            "publish",
            json!({ "channel": channel, "data": { "i": i } }),
        )
        .await;
        assert_eq!(result["offset"].as_u64(), Some(i + 1), "{result}");
        epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
    }
    let reply = b.request(publish(&channel, &json!({ "i": 20 }))).await;
    assert_eq!(reply.error, None, "client publish: {reply:?}");
    let expected: Vec<u64> = (1..=21).collect();
    assert_eq!(offsets_until(&mut a, &channel, 21).await, expected);
    assert_eq!(offsets_until(&mut b, &channel, 21).await, expected);

    // History agrees on both replicas.
    for server in [r1, r2] {
        let history = call(
            server,
            "history",
            json!({ "channel": channel, "limit": -1 }),
        )
        .await;
        let offsets: Vec<u64> = history["publications"]
            .as_array()
            .map(|list| list.iter().filter_map(|p| p["offset"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(offsets, expected, "{history}");
        assert_eq!(history["epoch"].as_str(), Some(epoch.as_str()));
    }

    // Recovery on the other replica from a position in the middle.
    let mut c = r2.ws(WsOptions::json()).await;
    let c_id = c
        .handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    let recovered = subscribed(
        &mut c,
        SubscribeRequest {
            channel: channel.clone(),
            recover: true,
            recoverable: true,
            epoch: epoch.clone(),
            offset: 15,
            join_leave: true,
            ..Default::default()
        },
    )
    .await;
    let result = recovered.subscribe.expect("subscribe result");
    assert!(result.recovered, "{result:?}");
    let offsets: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (16..=21).collect::<Vec<u64>>());

    // Join and leave of a client on replica 1 reach the join_leave subscriber on replica 2.
    let mut d = r1.ws(WsOptions::json()).await;
    let d_id = d
        .handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut d,
        SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        },
    )
    .await;
    b.expect_push("join of d", WAIT, |p| {
        p.join
            .as_ref()
            .and_then(|j| j.info.as_ref())
            .is_some_and(|i| i.client == d_id)
    })
    .await;
    let reply = d.request(unsubscribe(&channel)).await;
    assert_eq!(reply.error, None);
    b.expect_push("leave of d", WAIT, |p| {
        p.leave
            .as_ref()
            .and_then(|l| l.info.as_ref())
            .is_some_and(|i| i.client == d_id)
    })
    .await;
    eventually(Duration::from_secs(5), "presence after d left", || {
        let channel = channel.clone();
        async move { presence_count(r2, &channel).await == 3 }
    })
    .await;
    let presence = call(r1, "presence", json!({ "channel": channel })).await;
    assert!(presence["presence"].get(&c_id).is_some(), "{presence}");
    assert!(presence["presence"].get(&d_id).is_none(), "{presence}");
}

/// As Centrifugo, presence is written before the subscribe reply: a presence read on another
/// replica right after the reply lists the new subscriber, with no waiting. Replica 1 reaches
/// Redis through a link that holds its writes for 100 ms, so an entry written after the reply
/// would still be missing when replica 2 (direct) reads it.
#[tokio::test]
async fn presence_is_in_redis_before_the_subscribe_reply() {
    let redis = RedisServer::start();
    let slow = SlowRedisLink::start(&redis, Duration::from_millis(100)).await;
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut servers = Vec::new();
    for address in [slow.url(), redis.url()] {
        let lines = format!("    address: \"{address}\"");
        let server = Server::start(&replica_yaml_with(&lines, &prefix, "")).await;
        server.wait_ready(Duration::from_secs(10)).await;
        servers.push(server);
    }
    let (r1, r2) = (&servers[0], &servers[1]);
    for round in 0..3 {
        let channel = unique_channel("present");
        let (_client, id) = subscriber(r1, &format!("u{round}"), &[&channel]).await;
        let presence = call(r2, "presence", json!({ "channel": channel })).await;
        assert!(
            presence["presence"].get(&id).is_some(),
            "round {round}: presence on the other replica lacks the subscriber: {presence}"
        );
    }
}

/// `channels` lists the active channels of every replica, with their subscribers summed
/// across replicas, as Centrifugo's survey does; the pattern applies on every node.
#[tokio::test]
async fn channels_lists_every_replicas_channels() {
    let redis = RedisServer::start();
    let servers = replicas(2, &single(&redis)).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    let shared = unique_channel("both");
    let only_r2 = format!("solo-{}", unique_channel("r2"));
    let _on_r1 = subscriber(r1, "lister", &[&shared]).await;
    let _on_r2 = subscriber(r2, "lister", &[&shared, &only_r2]).await;
    // A node is surveyed once its announcement is in Redis (as for `info`).
    eventually(Duration::from_secs(10), "both nodes announced", || async {
        call(r1, "info", json!({})).await["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;
    let listed = call(r1, "channels", json!({})).await;
    assert_eq!(listed["channels"][&shared]["num_clients"], 2, "{listed}");
    assert_eq!(listed["channels"][&only_r2]["num_clients"], 1, "{listed}");
    let listed = call(r1, "channels", json!({ "pattern": "solo-*" })).await;
    let names: Vec<&String> = listed["channels"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(names, vec![&only_r2], "{listed}");
}

/// An API publication repeated with the same `idempotency_key` on another replica returns
/// the first result and is delivered once (the key's result lives in Redis, as Centrifugo's).
#[tokio::test]
async fn an_idempotency_key_publishes_once_across_replicas() {
    let redis = RedisServer::start();
    let servers = replicas(2, &single(&redis)).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    let channel = unique_channel("idem");
    let (mut client, _) = subscriber(r2, "reader", &[&channel]).await;
    let body = json!({ "channel": channel, "data": {"n": 1}, "idempotency_key": "k1" });
    let first = call(r1, "publish", body.clone()).await;
    let repeat = call(r2, "publish", body).await;
    assert_eq!(first, repeat, "the repeat answers the first result");
    let other = call(
        r2,
        "publish",
        json!({ "channel": channel, "data": {"n": 2}, "idempotency_key": "k2" }),
    )
    .await;
    assert_ne!(other["offset"], first["offset"], "{other} vs {first}");
    // Delivered: n=1 once, then n=2.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let push = client
            .expect_push("publications", WAIT, |p| {
                p.channel == channel && p.r#pub.is_some()
            })
            .await;
        seen.push(json_of(&push.r#pub.map(|p| p.data).unwrap_or_default())["n"].clone());
    }
    assert_eq!(seen, vec![json!(1), json!(2)]);
}

/// Replicas that find their Redis through Sentinel (`sentinel_address`,
/// `sentinel_master_name`) share publications like replicas given the address.
#[tokio::test]
async fn replicas_find_redis_through_sentinel() {
    let redis = RedisServer::start();
    let sentinel = RedisSentinel::start(&redis, "sidewire-master");
    let lines = format!(
        "    sentinel_address: [\"{}\"]\n    sentinel_master_name: \"sidewire-master\"",
        sentinel.url()
    );
    let servers = replicas(2, &lines).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    let channel = unique_channel("sentinel");
    let (mut client, _) = subscriber(r2, "watcher", &[&channel]).await;
    call(
        r1,
        "publish",
        json!({ "channel": channel, "data": {"via": "sentinel"} }),
    )
    .await;
    let push = client
        .expect_push("publication through sentinel", WAIT, |p| {
            p.channel == channel && p.r#pub.is_some()
        })
        .await;
    assert_eq!(
        json_of(&push.r#pub.map(|p| p.data).unwrap_or_default()),
        json!({"via": "sentinel"})
    );
}

#[tokio::test]
async fn a_killed_replica_presence_expires() {
    let redis = RedisServer::start();
    let mut servers = replicas(2, &single(&redis)).await;
    let channel = unique_channel("kill");
    let mut a = servers[0].ws(WsOptions::json()).await;
    a.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut a,
        SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut b = servers[1].ws(WsOptions::json()).await;
    b.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut b,
        SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        },
    )
    .await;
    let r1 = &servers[0];
    eventually(Duration::from_secs(5), "presence of both replicas", || {
        let channel = channel.clone();
        async move { presence_count(r1, &channel).await == 2 }
    })
    .await;
    servers[1].kill();
    let r1 = &servers[0];
    // presence_ttl is 2s: the dead replica's entry is gone soon after, never refreshed.
    eventually(
        Duration::from_secs(10),
        "dead replica's presence expired",
        || {
            let channel = channel.clone();
            async move { presence_count(r1, &channel).await == 1 }
        },
    )
    .await;
    // The survivor's own entry is refreshed past the TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(presence_count(r1, &channel).await, 1);
}

#[tokio::test]
async fn redis_restart_under_load_loses_nothing_for_recovering_clients() {
    let mut redis = RedisServer::start();
    let servers = replicas(2, &single(&redis)).await;
    let channel = unique_channel("restart");
    let publisher_admin = servers[0].admin_addr;
    let mut sub = servers[1].ws(WsOptions::json()).await;
    sub.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    let first = subscribed(
        &mut sub,
        SubscribeRequest {
            channel: channel.clone(),
            recoverable: true,
            ..Default::default()
        },
    )
    .await
    .subscribe
    .expect("subscribe result");
    let mut epoch = first.epoch;
    let mut offset = first.offset;

    // Publisher: sequence numbers through replica 1's API; it remembers what was accepted.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let publish_channel = channel.clone();
    let publisher = tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut failed = 0u64;
        let mut seq = 0u64;
        while !*stop_rx.borrow_and_update() {
            let body = json!({ "channel": publish_channel, "data": { "seq": seq } });
            match try_http(
                publisher_admin,
                "POST",
                "/api/publish",
                &[("X-API-Key", KEY)],
                Some(&body.to_string()),
            )
            .await
            {
                Ok((200, text)) if text.contains("\"result\"") => accepted.push(seq),
                _ => failed += 1,
            }
            seq += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (accepted, failed)
    });

    let mut received = std::collections::BTreeSet::new();
    let mut resubscribed = 0;
    // Let some publications flow, then restart Redis (saving), under load.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        let reply = sub.next_reply(WAIT).await;
        if let Some(p) = reply.push.and_then(|p| p.r#pub) {
            record(&mut received, &p, &mut offset);
        }
    }
    let stopper = std::thread::spawn(move || {
        redis.stop_saving();
        redis
    });
    let r1 = &servers[0];
    eventually(
        Duration::from_secs(10),
        "readyz false while Redis is down",
        || async move {
            matches!(
                try_http(r1.admin_addr, "GET", "/readyz", &[], None).await,
                Ok((503, _))
            )
        },
    )
    .await;
    let mut redis = stopper.join().expect("stop redis");
    // Keep reading during the outage (what arrives before the connection drops).
    while let Ok(reply) =
        tokio::time::timeout(Duration::from_millis(300), sub.next_reply(WAIT)).await
    {
        if let Some(p) = reply.push.and_then(|p| p.r#pub) {
            record(&mut received, &p, &mut offset);
        }
    }
    redis.start_again();
    servers[0].wait_ready(Duration::from_secs(10)).await;
    servers[1].wait_ready(Duration::from_secs(10)).await;

    // The subscription is told to recover (2500); recover the way SDKs do, until the
    // publisher stopped and every accepted publication arrived.
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(2);
    let overall = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut publisher = Some(publisher);
    let mut outcome: Option<(Vec<u64>, u64)> = None;
    loop {
        assert!(
            tokio::time::Instant::now() < overall,
            "did not settle; received {} publications",
            received.len()
        );
        if tokio::time::Instant::now() >= stop_at
            && let Some(task) = publisher.take()
        {
            stop_tx.send(true).expect("stop publisher");
            outcome = Some(task.await.expect("publisher"));
        }
        if let Some((accepted, _)) = &outcome
            && accepted.last().is_none_or(|last| received.contains(last))
        {
            break;
        }
        let Ok(reply) =
            tokio::time::timeout(Duration::from_millis(200), sub.next_reply(WAIT)).await
        else {
            continue;
        };
        let Some(push) = reply.push else { continue };
        if let Some(p) = push.r#pub {
            record(&mut received, &p, &mut offset);
        } else if push.unsubscribe.as_ref().is_some_and(|u| u.code == 2500) {
            resubscribed += 1;
            loop {
                let reply = sub
                    .request(subscribe_with(SubscribeRequest {
                        channel: channel.clone(),
                        recoverable: true,
                        recover: true,
                        epoch: epoch.clone(),
                        offset,
                        ..Default::default()
                    }))
                    .await;
                if let Some(result) = reply.subscribe {
                    assert!(result.recovered, "not recovered: {result:?}");
                    for p in &result.publications {
                        record(&mut received, p, &mut offset);
                    }
                    epoch = result.epoch;
                    offset = offset.max(result.offset);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (accepted, failed) = outcome.expect("publisher result");
    assert!(
        resubscribed >= 1,
        "no insufficient-state unsubscribe after the restart"
    );
    let missing: Vec<u64> = accepted
        .iter()
        .filter(|s| !received.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?} ({} accepted, {failed} refused)",
        accepted.len()
    );
    eprintln!(
        "restart under load: {} accepted, {failed} refused during the outage",
        accepted.len()
    );
}

#[tokio::test]
async fn cluster_replicas_share_publications_and_history() {
    let cluster = RedisCluster::start();
    let lines = format!("    cluster_address: {}", cluster.addresses_yaml());
    let servers = replicas(2, &lines).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    // Several channels, so several slots (and nodes) are involved.
    let channels: Vec<String> = (0..4).map(|i| unique_channel(&format!("c{i}"))).collect();
    let mut a = r1.ws(WsOptions::json()).await;
    a.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    let mut b = r2.ws(WsOptions::json()).await;
    b.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    for channel in &channels {
        for client in [&mut a, &mut b] {
            subscribed(
                client,
                SubscribeRequest {
                    channel: channel.clone(),
                    ..Default::default()
                },
            )
            .await;
        }
    }
    for round in 0..5u64 {
        for channel in &channels {
            let server = if round % 2 == 0 { r1 } else { r2 };
            let result = call(
                server,
                "publish",
                json!({ "channel": channel, "data": { "r": round } }),
            )
            .await;
            assert_eq!(result["offset"].as_u64(), Some(round + 1));
        }
    }
    for channel in &channels {
        let expected: Vec<u64> = (1..=5).collect();
        assert_eq!(offsets_until(&mut a, channel, 5).await, expected);
        assert_eq!(offsets_until(&mut b, channel, 5).await, expected);
        let history = call(r2, "history", json!({ "channel": channel, "limit": -1 })).await;
        assert_eq!(
            history["publications"].as_array().map(Vec::len),
            Some(5),
            "{history}"
        );
    }
    eventually(Duration::from_secs(5), "presence on the cluster", || {
        let channel = channels[0].clone();
        async move { presence_count(r1, &channel).await == 2 }
    })
    .await;
}

#[tokio::test]
async fn server_api_acts_on_every_replica() {
    let redis = RedisServer::start();
    let servers = replicas(2, &single(&redis)).await;
    let (r1, r2) = (&servers[0], &servers[1]);
    let channel = unique_channel("api");
    let token = hs256_token(SECRET, "alice", 3600);
    let mut alice = r2.ws(WsOptions::json()).await;
    alice.handshake_with(connect_token(&token)).await;

    // Server-side subscribe through replica 1 reaches alice's session on replica 2.
    call(
        r1,
        "subscribe",
        json!({ "user": "alice", "channel": channel }),
    )
    .await;
    alice
        .expect_push("server-side subscribe", WAIT, |p| {
            p.channel == channel && p.subscribe.is_some()
        })
        .await;
    call(
        r1,
        "publish",
        json!({ "channel": channel, "data": {"x": 1} }),
    )
    .await;
    alice.expect_publication(&channel, 1).await;

    // Unsubscribe through replica 1.
    call(
        r1,
        "unsubscribe",
        json!({ "user": "alice", "channel": channel }),
    )
    .await;
    alice
        .expect_push("server-side unsubscribe", WAIT, |p| {
            p.channel == channel && p.unsubscribe.as_ref().is_some_and(|u| u.code == 2000)
        })
        .await;

    // info lists both nodes.
    let info = call(r1, "info", json!({})).await;
    eventually(
        Duration::from_secs(5),
        "info lists two nodes",
        || async move {
            call(r1, "info", json!({})).await["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 2)
        },
    )
    .await;
    assert!(info["nodes"][0]["uid"].is_string(), "{info}");

    // Disconnect through replica 1 closes alice's connection on replica 2.
    call(
        r1,
        "disconnect",
        json!({ "user": "alice", "disconnect": { "code": 4321, "reason": "bye" } }),
    )
    .await;
    let (code, reason) = alice.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (4321, "bye"));
}

/// Pub/sub channels Redis has subscribers for under `prefix`.
fn pubsub_channels(redis: &RedisServer, prefix: &str) -> usize {
    raw_command(redis.port, &format!("PUBSUB CHANNELS {prefix}.pub.*"))
        .map(|reply| reply.lines().filter(|l| l.starts_with('$')).count())
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn a_client_cannot_make_a_node_listen_beyond_its_limits() {
    let redis = RedisServer::start();
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let server = Server::start(&replica_yaml_with(
        &single(&redis),
        &prefix,
        "max_channels: 2",
    ))
    .await;
    server.wait_ready(Duration::from_secs(10)).await;
    let mut client = server.ws(WsOptions::json()).await;
    client
        .handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    let channels: Vec<String> = (0..3).map(|i| unique_channel(&format!("h{i}"))).collect();
    for channel in &channels[..2] {
        subscribed(
            &mut client,
            SubscribeRequest {
                channel: channel.clone(),
                ..Default::default()
            },
        )
        .await;
    }
    // The third channel is over hub.max_channels: refused before any Redis subscription.
    let reply = client.request(subscribe(&channels[2])).await;
    assert_eq!(reply.error.map(|e| e.code), Some(106), "third subscribe");
    assert_eq!(pubsub_channels(&redis, &prefix), 2);
    // Leaving the channels lets the node stop listening to them.
    for channel in &channels[..2] {
        let reply = client.request(unsubscribe(channel)).await;
        assert_eq!(reply.error, None);
    }
    let redis = &redis;
    let prefix = prefix.as_str();
    eventually(
        Duration::from_secs(10),
        "pub/sub unsubscribed",
        || async move { pubsub_channels(redis, prefix) == 0 },
    )
    .await;
}

#[tokio::test]
async fn password_and_database_come_from_the_url() {
    let redis = RedisServer::start_with_password("s3cret");
    let lines = format!(
        "    address: \"redis://:s3cret@127.0.0.1:{}/3\"",
        redis.port
    );
    let servers = replicas(2, &lines).await;
    let channel = unique_channel("auth");
    let mut a = servers[1].ws(WsOptions::json()).await;
    a.handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut a,
        SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        },
    )
    .await;
    let result = call(
        &servers[0],
        "publish",
        json!({ "channel": channel, "data": {} }),
    )
    .await;
    assert_eq!(result["offset"].as_u64(), Some(1));
    a.expect_publication(&channel, 1).await;
    // The keys live in database 3, none in database 0.
    let dbsize = |db: &str| -> u64 {
        let output = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "-a",
                "s3cret",
                "--no-auth-warning",
            ])
            .args(["-n", db, "DBSIZE"])
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DBSIZE of {db}: {output:?}"))
    };
    assert!(dbsize("3") > 0, "database 3 holds no key");
    assert_eq!(dbsize("0"), 0, "keys in database 0");
}

#[tokio::test]
async fn standalone_hubs_share_channels_through_redis() {
    let redis = RedisServer::start();
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let engine = format!(
        "engine:\n  type: redis\n  redis:\n    prefix: \"{prefix}\"\n    address: \"{}\"",
        redis.url()
    );
    let hub_lines = format!(
        "http_api:\n  key: \"{KEY}\"\nclient:\n  token:\n    hmac_secret_key: \"{SECRET}\"\nhistory_size: 100\nhistory_ttl: 300s"
    );
    let mut hubs = Vec::new();
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let hub = support::Hub::try_start_with("127.0.0.1:0".parse().unwrap(), &engine, &hub_lines)
            .await
            .unwrap_or_else(|e| panic!("sidewire hub did not start: {e}"));
        let sidecar = Server::start(&format!(
            "upstream:\n  endpoint: \"{}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\n",
            hub.endpoint()
        ))
        .await;
        sidecar.wait_ready(Duration::from_secs(10)).await;
        // The hub's API listener answers /readyz: 200 once its engine is connected.
        let api = hub.api_addr;
        eventually(Duration::from_secs(10), "hub ready", || async move {
            matches!(
                try_http(api, "GET", "/readyz", &[], None).await,
                Ok((200, _))
            )
        })
        .await;
        hubs.push(hub);
        sidecars.push(sidecar);
    }
    let channel = unique_channel("standalone");
    let mut client = sidecars[0].ws(WsOptions::json()).await;
    client
        .handshake_with(connect_token(&hs256_token(SECRET, "user", 3600)))
        .await;
    subscribed(
        &mut client,
        SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        },
    )
    .await;
    // Published through the other hub's API.
    let result = api_ok(
        hubs[1].api_addr,
        "publish",
        &json!({ "channel": channel, "data": { "x": 1 } }),
        Some(KEY),
    )
    .await;
    assert_eq!(result["offset"].as_u64(), Some(1));
    client.expect_publication(&channel, 1).await;
    let history = api_ok(
        hubs[0].api_addr,
        "history",
        &json!({ "channel": channel, "limit": -1 }),
        Some(KEY),
    )
    .await;
    assert_eq!(
        history["publications"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
}
