//! Channel namespaces and permissions (`hub.channel`, Centrifugo v6 rules) on the real binary:
//! a table of namespace option × client kind × operation with the expected answer code, plus
//! the open rules kept when `hub.channel` is absent and `sidewire check` naming bad fields.

mod support;

use std::time::Duration;

use serde_json::json;
use sidewire::protocol::client::{Command, Reply};
use support::*;

const SECRET: &str = "permissions-secret";

/// One namespace per option under test; `without_namespace` keeps the secure defaults.
const NAMESPACES: &str = r#"
client:
  token:
    hmac_secret_key: "permissions-secret"
channel:
  namespaces:
    - name: closed
      presence: true
      history_size: 10
      history_ttl: 60s
    - name: sub_client
      allow_subscribe_for_client: true
    - name: sub_anon
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
    - name: pub_client
      allow_publish_for_client: true
    - name: pub_anon
      allow_publish_for_client: true
      allow_publish_for_anonymous: true
    - name: pub_sub
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_publish_for_subscriber: true
    - name: hist_client
      history_size: 10
      history_ttl: 60s
      allow_history_for_client: true
    - name: hist_sub
      history_size: 10
      history_ttl: 60s
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_history_for_subscriber: true
    - name: hist_off
      allow_history_for_client: true
    - name: pres_client
      presence: true
      allow_presence_for_client: true
    - name: pres_sub
      presence: true
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_presence_for_subscriber: true
    - name: pres_off
      allow_presence_for_client: true
    - name: personal
      allow_user_limited_channels: true
    - name: digits
      allow_subscribe_for_client: true
      channel_regex: "^[0-9]+$"
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Token without `sub`.
    Anonymous,
    /// Token with `sub: u1`, not subscribed.
    Client,
    /// `u1`, subscribed to the channel first.
    Subscriber,
    /// Anonymous, subscribed to the channel first.
    AnonymousSubscriber,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Subscribe,
    Publish,
    History,
    Presence,
}

use Kind::*;
use Op::*;

const OK: u32 = 0;
const UNKNOWN_CHANNEL: u32 = 102;
const PERMISSION_DENIED: u32 = 103;
const BAD_REQUEST: u32 = 107;
const NOT_AVAILABLE: u32 = 108;

/// (channel — `{}` is replaced by a unique suffix, kind, operation, expected code; 0 = ok).
const MATRIX: &[(&str, Kind, Op, u32)] = &[
    // Secure defaults: nothing is allowed unless enabled.
    ("plain{}", Client, Subscribe, PERMISSION_DENIED),
    ("plain{}", Client, Publish, PERMISSION_DENIED),
    ("plain{}", Client, History, NOT_AVAILABLE),
    ("plain{}", Client, Presence, NOT_AVAILABLE),
    ("closed:{}", Anonymous, Subscribe, PERMISSION_DENIED),
    ("closed:{}", Client, Subscribe, PERMISSION_DENIED),
    ("closed:{}", Client, Publish, PERMISSION_DENIED),
    ("closed:{}", Client, History, PERMISSION_DENIED),
    ("closed:{}", Client, Presence, PERMISSION_DENIED),
    ("unknown:{}", Client, Subscribe, UNKNOWN_CHANNEL),
    ("unknown:{}", Client, Publish, UNKNOWN_CHANNEL),
    ("unknown:{}", Client, History, UNKNOWN_CHANNEL),
    ("unknown:{}", Client, Presence, UNKNOWN_CHANNEL),
    // Subscribe.
    ("sub_client:{}", Client, Subscribe, OK),
    ("sub_client:{}", Anonymous, Subscribe, PERMISSION_DENIED),
    ("sub_client:{}", Client, Publish, PERMISSION_DENIED),
    ("sub_anon:{}", Anonymous, Subscribe, OK),
    ("sub_anon:{}", Client, Subscribe, OK),
    // Publish.
    ("pub_client:{}", Client, Publish, OK),
    ("pub_client:{}", Anonymous, Publish, PERMISSION_DENIED),
    ("pub_client:{}", Client, Subscribe, PERMISSION_DENIED),
    ("pub_anon:{}", Anonymous, Publish, OK),
    ("pub_sub:{}", Client, Publish, PERMISSION_DENIED),
    ("pub_sub:{}", Subscriber, Publish, OK),
    (
        "pub_sub:{}",
        AnonymousSubscriber,
        Publish,
        PERMISSION_DENIED,
    ),
    // History.
    ("hist_client:{}", Client, History, OK),
    ("hist_client:{}", Anonymous, History, PERMISSION_DENIED),
    ("hist_sub:{}", Client, History, PERMISSION_DENIED),
    ("hist_sub:{}", Subscriber, History, OK),
    ("hist_sub:{}", AnonymousSubscriber, History, OK),
    ("hist_off:{}", Client, History, NOT_AVAILABLE),
    // Presence.
    ("pres_client:{}", Client, Presence, OK),
    ("pres_client:{}", Anonymous, Presence, PERMISSION_DENIED),
    ("pres_sub:{}", Client, Presence, PERMISSION_DENIED),
    ("pres_sub:{}", Subscriber, Presence, OK),
    ("pres_sub:{}", AnonymousSubscriber, Presence, OK),
    ("pres_off:{}", Client, Presence, NOT_AVAILABLE),
    // User-limited channels: listed users only.
    ("personal:{}#u1", Client, Subscribe, OK),
    ("personal:{}#u0,u1", Client, Subscribe, OK),
    ("personal:{}#u2", Client, Subscribe, PERMISSION_DENIED),
    ("personal:{}#u1", Anonymous, Subscribe, PERMISSION_DENIED),
    ("personal:{}", Client, Subscribe, PERMISSION_DENIED),
    // Private channels need a subscription token (not accepted yet).
    ("$sub_anon:{}", Client, Subscribe, PERMISSION_DENIED),
    // Channel regex (applied after `namespace:`).
    ("digits:1{}", Client, Subscribe, BAD_REQUEST),
];

fn command(op: Op, channel: &str) -> Command {
    match op {
        Subscribe => subscribe(channel),
        Publish => publish(channel, &json!({"n": 1})),
        History => history(channel, 10, None, false),
        Presence => presence(channel),
    }
}

fn code(reply: &Reply) -> u32 {
    reply.error.as_ref().map_or(OK, |e| e.code)
}

async fn client(server: &Server, kind: Kind) -> WsClient {
    let user = match kind {
        Anonymous | AnonymousSubscriber => "",
        Client | Subscriber => "u1",
    };
    let mut client = server.ws(WsOptions::json()).await;
    client
        .handshake_with(connect_token(&hs256_token(SECRET, user, 3600)))
        .await;
    client
}

#[tokio::test]
async fn namespace_options_client_kinds_and_operations_answer_centrifugo_codes() {
    let server = Server::start(&hub_section(NAMESPACES)).await;
    let mut failures = Vec::new();
    for (index, &(pattern, kind, op, expected)) in MATRIX.iter().enumerate() {
        // The suffix is digits only where the row tests the regex refusing letters.
        let channel = pattern.replace("{}", &format!("r{index}"));
        let mut client = client(&server, kind).await;
        if matches!(kind, Subscriber | AnonymousSubscriber) {
            let reply = client.request(subscribe(&channel)).await;
            assert_eq!(code(&reply), OK, "subscribe first to {channel}: {reply:?}");
        }
        let reply = client.request(command(op, &channel)).await;
        let got = code(&reply);
        if got != expected {
            failures.push(format!(
                "{channel} {kind:?} {op:?}: expected {expected}, got {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn channel_regex_admits_matching_names() {
    let server = Server::start(&hub_section(NAMESPACES)).await;
    let mut client = client(&server, Client).await;
    let reply = client.request(subscribe("digits:12345")).await;
    assert_eq!(code(&reply), OK, "{reply:?}");
}

#[tokio::test]
async fn namespace_history_size_bounds_what_is_kept() {
    let server = Server::start(&hub_section(
        "channel:\n  namespaces:\n    - name: feed\n      history_size: 2\n      history_ttl: 60s\n      allow_publish_for_client: true\n      allow_publish_for_anonymous: true\n      allow_history_for_client: true\n      allow_history_for_anonymous: true",
    ))
    .await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    for n in 0..3 {
        let reply = client.request(publish("feed:a", &json!({ "n": n }))).await;
        assert_eq!(code(&reply), OK, "{reply:?}");
    }
    let reply = client.request(history("feed:a", -1, None, false)).await;
    let result = reply.history.expect("history result");
    assert_eq!(result.offset, 3);
    assert_eq!(result.publications.len(), 2, "{result:?}");
}

#[tokio::test]
async fn without_hub_channel_every_channel_stays_open() {
    let server = Server::start("").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    for op in [Subscribe, Publish, History, Presence] {
        let reply = client.request(command(op, "any:channel#u9")).await;
        assert_eq!(code(&reply), OK, "{op:?}: {reply:?}");
    }
    let reply = client.request(subscribe("$private")).await;
    assert_eq!(code(&reply), PERMISSION_DENIED);
}

#[tokio::test]
async fn check_names_bad_namespace_fields() {
    let yaml = hub_section(
        "channel:\n  without_namespace:\n    history_size: 5\n  namespaces:\n    - name: ok\n    - name: ok\n    - name: x\n      channel_regex: \"(\"",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidewire.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut child = std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sidewire check");
    // Bounded: `check` must not start serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sidewire check did not exit within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    for field in [
        "hub.channel.without_namespace.history_size",
        "hub.channel.namespaces[1].name",
        "hub.channel.namespaces[2].name",
        "hub.channel.namespaces[2].channel_regex",
    ] {
        assert!(text.contains(field), "{field} missing in {text}");
    }
}

#[tokio::test]
async fn unknown_namespace_keys_are_refused() {
    let yaml = hub_section("channel:\n  namespaces:\n    - name: ok\n      allow_everything: true");
    let error = Server::try_start(&yaml).await.err().unwrap_or_default();
    assert!(error.contains("allow_everything"), "{error}");
}

#[tokio::test]
async fn server_api_answers_unknown_namespace_and_disabled_features() {
    let yaml = hub_section(&format!("http_api: {{key: \"k\"}}\n{NAMESPACES}"));
    let server = Server::start(&yaml).await;
    let cases = [
        ("publish", json!({"channel": "unknown:a", "data": {}}), 102),
        ("history", json!({"channel": "unknown:a"}), 102),
        (
            "subscribe",
            json!({"user": "u1", "channel": "unknown:a"}),
            102,
        ),
        (
            "subscribe",
            json!({"user": "u1", "channel": "digits:abc"}),
            107,
        ),
        ("history", json!({"channel": "hist_off:a"}), 108),
        ("presence", json!({"channel": "pres_off:a"}), 108),
        ("presence_stats", json!({"channel": "pres_off:a"}), 108),
    ];
    for (method, body, expected) in cases {
        let (_, answer) = api(server.admin_addr, method, &body, Some("k")).await;
        assert_eq!(
            answer["error"]["code"], expected,
            "{method} {body}: {answer}"
        );
    }
    // The server API needs no grant: `closed` has history and presence but no allow_*.
    for method in ["history", "presence", "presence_stats"] {
        api_ok(
            server.admin_addr,
            method,
            &json!({"channel": "closed:a"}),
            Some("k"),
        )
        .await;
    }
    api_ok(
        server.admin_addr,
        "publish",
        &json!({"channel": "closed:a", "data": {}}),
        Some("k"),
    )
    .await;
}

#[tokio::test]
async fn namespace_join_leave_and_recovery_options_override_the_client() {
    let server = Server::start(&hub_section(
        "channel:\n  namespaces:\n    - name: forced\n      force_push_join_leave: true\n      force_recovery: true\n      history_size: 5\n      history_ttl: 60s\n      allow_subscribe_for_client: true\n      allow_subscribe_for_anonymous: true\n    - name: quiet\n      join_leave: false\n      allow_subscribe_for_client: true\n      allow_subscribe_for_anonymous: true\n      allow_publish_for_client: true\n      allow_publish_for_anonymous: true",
    ))
    .await;
    let mut watcher = server.ws(WsOptions::json()).await;
    watcher.handshake().await;
    let mut joiner = server.ws(WsOptions::json()).await;
    let joiner_id = joiner.handshake().await;

    // force_push_join_leave: a join push although the watcher did not ask; force_recovery:
    // recoverable although the watcher did not ask.
    let reply = watcher.request(subscribe("forced:a")).await;
    assert_eq!(code(&reply), OK, "{reply:?}");
    let result = reply.subscribe.expect("subscribe result");
    assert!(result.recoverable && result.positioned, "{result:?}");
    let reply = joiner.request(subscribe("forced:a")).await;
    assert_eq!(code(&reply), OK, "{reply:?}");
    watcher
        .expect_push("join of the joiner", Duration::from_secs(5), |p| {
            p.channel == "forced:a"
                && p.join
                    .as_ref()
                    .and_then(|j| j.info.as_ref())
                    .is_some_and(|i| i.client == joiner_id)
        })
        .await;

    // join_leave: false drops the watcher's request: the joiner's publication arrives (after
    // where its join would have been, pushes are ordered per channel) and no join came.
    let reply = watcher
        .request(subscribe_with(
            sidewire::protocol::client::SubscribeRequest {
                channel: "quiet:a".into(),
                join_leave: true,
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(&reply), OK, "{reply:?}");
    let reply = joiner.request(subscribe("quiet:a")).await;
    assert_eq!(code(&reply), OK, "{reply:?}");
    let reply = joiner.request(publish("quiet:a", &json!({"n": 1}))).await;
    assert_eq!(code(&reply), OK, "{reply:?}");
    watcher.expect_publication("quiet:a", 1).await;
    let joins = watcher.take_pushes(|p| p.channel == "quiet:a" && p.join.is_some());
    assert!(joins.is_empty(), "{joins:?}");
}
