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
    - name: hist_anon
      history_size: 10
      history_ttl: 60s
      allow_history_for_client: true
      allow_history_for_anonymous: true
    - name: hist_sub_anon
      history_size: 10
      history_ttl: 60s
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_history_for_subscriber: true
      allow_history_for_anonymous: true
    - name: pres_anon
      presence: true
      allow_presence_for_client: true
      allow_presence_for_anonymous: true
    - name: pres_sub_anon
      presence: true
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_presence_for_subscriber: true
      allow_presence_for_anonymous: true
    - name: pub_sub_anon
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_publish_for_subscriber: true
      allow_publish_for_anonymous: true
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
    /// No token at all (`hub.client.allow_anonymous_connect_without_token`).
    NoToken,
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
    ("plain{}", Anonymous, Subscribe, PERMISSION_DENIED),
    ("plain{}", NoToken, Publish, PERMISSION_DENIED),
    ("closed:{}", Anonymous, Subscribe, PERMISSION_DENIED),
    ("closed:{}", NoToken, Subscribe, PERMISSION_DENIED),
    ("closed:{}", Anonymous, Publish, PERMISSION_DENIED),
    ("closed:{}", Anonymous, History, PERMISSION_DENIED),
    ("closed:{}", Anonymous, Presence, PERMISSION_DENIED),
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
    ("sub_anon:{}", NoToken, Subscribe, OK),
    ("sub_anon:{}", Client, Subscribe, OK),
    ("sub_anon:{}", Client, Publish, PERMISSION_DENIED),
    ("sub_anon:{}", Subscriber, Publish, PERMISSION_DENIED),
    ("sub_anon:{}", Subscriber, History, NOT_AVAILABLE),
    ("sub_anon:{}", Subscriber, Presence, NOT_AVAILABLE),
    // Publish.
    ("pub_client:{}", Client, Publish, OK),
    ("pub_client:{}", Anonymous, Publish, PERMISSION_DENIED),
    ("pub_client:{}", Client, Subscribe, PERMISSION_DENIED),
    ("pub_anon:{}", Anonymous, Publish, OK),
    ("pub_anon:{}", NoToken, Publish, OK),
    ("pub_anon:{}", Client, Publish, OK),
    ("pub_sub:{}", Client, Publish, PERMISSION_DENIED),
    ("pub_sub:{}", Subscriber, Publish, OK),
    (
        "pub_sub:{}",
        AnonymousSubscriber,
        Publish,
        PERMISSION_DENIED,
    ),
    ("pub_sub_anon:{}", AnonymousSubscriber, Publish, OK),
    ("pub_sub_anon:{}", Anonymous, Publish, PERMISSION_DENIED),
    // History.
    ("hist_client:{}", Client, History, OK),
    ("hist_client:{}", Anonymous, History, PERMISSION_DENIED),
    ("hist_sub:{}", Client, History, PERMISSION_DENIED),
    ("hist_sub:{}", Subscriber, History, OK),
    // As Centrifugo: an anonymous subscriber also needs allow_history_for_anonymous.
    (
        "hist_sub:{}",
        AnonymousSubscriber,
        History,
        PERMISSION_DENIED,
    ),
    ("hist_sub_anon:{}", AnonymousSubscriber, History, OK),
    ("hist_sub_anon:{}", Anonymous, History, PERMISSION_DENIED),
    ("hist_anon:{}", Anonymous, History, OK),
    ("hist_anon:{}", NoToken, History, OK),
    ("hist_anon:{}", Client, History, OK),
    ("hist_off:{}", Client, History, NOT_AVAILABLE),
    // Presence.
    ("pres_client:{}", Client, Presence, OK),
    ("pres_client:{}", Anonymous, Presence, PERMISSION_DENIED),
    ("pres_sub:{}", Client, Presence, PERMISSION_DENIED),
    ("pres_sub:{}", Subscriber, Presence, OK),
    (
        "pres_sub:{}",
        AnonymousSubscriber,
        Presence,
        PERMISSION_DENIED,
    ),
    ("pres_sub_anon:{}", AnonymousSubscriber, Presence, OK),
    ("pres_sub_anon:{}", Anonymous, Presence, PERMISSION_DENIED),
    ("pres_anon:{}", Anonymous, Presence, OK),
    ("pres_anon:{}", NoToken, Presence, OK),
    ("pres_anon:{}", Client, Presence, OK),
    ("pres_off:{}", Client, Presence, NOT_AVAILABLE),
    // User-limited channels: listed users only.
    ("personal:{}#u1", Client, Subscribe, OK),
    ("personal:{}#u0,u1", Client, Subscribe, OK),
    ("personal:{}#u2", Client, Subscribe, PERMISSION_DENIED),
    ("personal:{}#u1", Anonymous, Subscribe, PERMISSION_DENIED),
    ("personal:{}", Client, Subscribe, PERMISSION_DENIED),
    // Private channels need a subscription token (tests/tokens.rs grants them).
    ("$sub_anon:{}", Client, Subscribe, PERMISSION_DENIED),
    ("$pub_client:{}", Client, Publish, PERMISSION_DENIED),
    ("$hist_client:{}", Client, History, PERMISSION_DENIED),
    ("$pres_client:{}", Client, Presence, PERMISSION_DENIED),
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
        Anonymous | AnonymousSubscriber | NoToken => "",
        Client | Subscriber => "u1",
    };
    let mut client = server.ws(WsOptions::json()).await;
    if kind == NoToken {
        client.handshake().await;
    } else {
        client
            .handshake_with(connect_token(&hs256_token(SECRET, user, 3600)))
            .await;
    }
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

/// A connection token with `sub` and server-side subscriptions (`channels`).
fn token_with_channels(user: &str, channels: &[&str]) -> String {
    let claims = json!({"sub": user, "channels": channels});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// Secure defaults, as Centrifugo: no `hub.channel` section at all refuses every client
/// operation, for every client kind (a subscriber gets there through the token's
/// server-side `channels`, which need no grant).
#[tokio::test]
async fn without_hub_channel_nothing_is_allowed() {
    let server = Server::start_exact(&format!(
        "hub:\n  client:\n    allow_anonymous_connect_without_token: true\n    token:\n      hmac_secret_key: \"{SECRET}\"\n"
    ))
    .await;
    let mut failures = Vec::new();
    for kind in [NoToken, Anonymous, Client, Subscriber, AnonymousSubscriber] {
        for op in [Subscribe, Publish, History, Presence] {
            let channel = unique_channel("secure");
            let mut client = server.ws(WsOptions::json()).await;
            match kind {
                NoToken => {
                    client.handshake().await;
                }
                Anonymous | Client => {
                    let user = if kind == Client { "u1" } else { "" };
                    client
                        .handshake_with(connect_token(&hs256_token(SECRET, user, 3600)))
                        .await;
                }
                Subscriber | AnonymousSubscriber => {
                    let user = if kind == Subscriber { "u1" } else { "" };
                    let reply = client
                        .connect_with(connect_token(&token_with_channels(user, &[&channel])))
                        .await;
                    let subs = reply.connect.map(|c| c.subs).unwrap_or_default();
                    assert!(
                        subs.contains_key(&channel),
                        "server-side subscription {subs:?}"
                    );
                }
            }
            let expected = match (kind, op) {
                // Already subscribed through the token.
                (Subscriber | AnonymousSubscriber, Subscribe) => 105,
                (_, Subscribe | Publish) => PERMISSION_DENIED,
                // History and presence are off without a namespace that enables them.
                (_, History | Presence) => NOT_AVAILABLE,
            };
            let got = code(&client.request(command(op, &channel)).await);
            if got != expected {
                failures.push(format!("{kind:?} {op:?}: expected {expected}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The server API needs no grant.
    api_publish(server.admin_addr, "plain", &json!({})).await;
}

/// Anonymous connections, as Centrifugo: without a token and without
/// `allow_anonymous_connect_without_token` the connect is refused with 3501; with no key
/// configured every token is invalid (3500).
#[tokio::test]
async fn connect_without_token_is_refused_by_default() {
    let server = Server::start_exact("").await;
    let mut client = server.ws(WsOptions::json()).await;
    let id = client.next_id();
    client
        .send_commands(&[Command {
            id,
            connect: Some(Default::default()),
            ..Default::default()
        }])
        .await;
    let (close, _) = client.expect_close(WAIT).await;
    assert_eq!(close, 3501, "no token, no anonymous connects");
    let mut client = server.ws(WsOptions::json()).await;
    let id = client.next_id();
    client
        .send_commands(&[Command {
            id,
            connect: Some(connect_token(&hs256_token(SECRET, "u1", 3600))),
            ..Default::default()
        }])
        .await;
    let (close, _) = client.expect_close(WAIT).await;
    assert_eq!(close, 3500, "a token with no key configured is invalid");
}

/// `hub.client.insecure` (Centrifugo's `client.insecure`): connects without a token, grants
/// every operation that exists; features that are off, unknown namespaces and `$` channels
/// are still refused.
#[tokio::test]
async fn insecure_grants_what_exists() {
    let server = Server::start_exact(
        "hub:\n  client:\n    insecure: true\n  channel:\n    without_namespace:\n      presence: true\n",
    )
    .await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    let channel = unique_channel("insecure");
    for (op, channel, expected) in [
        (Subscribe, channel.as_str(), OK),
        (Publish, channel.as_str(), OK),
        (Presence, channel.as_str(), OK),
        (History, channel.as_str(), NOT_AVAILABLE),
        (Subscribe, "$private", PERMISSION_DENIED),
        (Subscribe, "unknown:a", UNKNOWN_CHANNEL),
    ] {
        let reply = client.request(command(op, channel)).await;
        assert_eq!(code(&reply), expected, "{op:?} {channel}: {reply:?}");
    }
}

#[tokio::test]
async fn check_names_bad_namespace_fields() {
    let yaml = hub_section(
        "channel:\n  without_namespace:\n    history_size: 5\n  namespaces:\n    - name: ok\n    - name: ok\n    - name: x\n      channel_regex: \"(\"",
    );
    let (ok, text) = sidewire_check(&yaml);
    assert!(!ok);
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
