//! Connection and subscription tokens, Centrifugo v6 style, against the real binary: claims
//! (`info`, `channels`, `aud`, `iss`), algorithms (HS256, RS256, ES256), `$` channels with
//! subscription tokens, `sub_refresh` and subscription expiry.

mod support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sidewire::protocol::client::{Command, SubRefreshRequest, SubscribeRequest};
use support::*;

const SECRET: &str = "tokens-test-secret";
const API_KEY: &str = "tokens-api-key";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn hmac_server(extra: &str) -> Server {
    Server::start(&format!(
        "hub:\n  http_api:\n    key: \"{API_KEY}\"\n  client:\n    token:\n      hmac_secret_key: \"{SECRET}\"\n{extra}"
    ))
    .await
}

fn error_code(reply: &sidewire::protocol::client::Reply) -> Option<u32> {
    reply.error.as_ref().map(|e| e.code)
}

/// YAML block scalar lines of a PEM, indented under `hub:`.
fn pem_block(key: &str, pem: &str) -> String {
    let mut out = format!("      {key}: |\n");
    for line in pem.lines() {
        out.push_str(&format!("        {line}\n"));
    }
    out
}

fn sub_token(user: &str, channel: &str, exp_in: i64) -> String {
    hs256(json!({"sub": user, "channel": channel, "exp": now() + exp_in}))
}

fn subscribe_token(channel: &str, token: &str) -> Command {
    subscribe_with(SubscribeRequest {
        channel: channel.to_owned(),
        token: token.to_owned(),
        ..Default::default()
    })
}

fn sub_refresh(channel: &str, token: &str) -> Command {
    Command {
        sub_refresh: Some(SubRefreshRequest {
            channel: channel.to_owned(),
            token: token.to_owned(),
        }),
        ..Default::default()
    }
}

/// The token's `info` claim is the client's `conn_info`, visible to others in presence.
#[tokio::test]
async fn info_claim_is_visible_in_presence() {
    let server = hmac_server("").await;
    let mut ann = server.ws(WsOptions::json()).await;
    let token = hs256(json!({"sub": "ann", "info": {"name": "Ann"}, "exp": now() + 600}));
    ann.handshake_with(connect_token(&token)).await;
    let reply = ann.request(subscribe("room")).await;
    assert_eq!(reply.error, None, "{reply:?}");
    let reply = ann.request(presence("room")).await;
    let members = reply.presence.expect("presence result").presence;
    let info = members.values().next().expect("one member");
    assert_eq!(info.user, "ann");
    assert_eq!(json_of(&info.conn_info), json!({"name": "Ann"}));
}

/// The `channels` claim subscribes at connect: the connect result lists the channel in
/// `subs`, and a server-API publication into it reaches the client.
#[tokio::test]
async fn channels_claim_is_a_server_side_subscription() {
    let server = hmac_server("").await;
    let mut client = server.ws(WsOptions::json()).await;
    let token = hs256(json!({"sub": "u1", "channels": ["news"], "exp": now() + 600}));
    let reply = client.connect_with(connect_token(&token)).await;
    let result = reply.connect.expect("connect result");
    assert!(result.subs.contains_key("news"), "{result:?}");
    api_ok(
        server.admin_addr,
        "publish",
        &json!({"channel": "news", "data": {"n": 1}}),
        Some(API_KEY),
    )
    .await;
    let publication = client.expect_publication("news", 1).await;
    assert_eq!(json_of(&publication.data), json!({"n": 1}));
}

/// With `hub.client.token.audience` / `.issuer` set, a token with another `aud` or `iss`
/// is refused with disconnect 3500; the right ones connect.
#[tokio::test]
async fn audience_and_issuer_mismatch_is_refused_with_3500() {
    let server = hmac_server("      audience: \"app\"\n      issuer: \"auth\"\n").await;
    let mut good = server.ws(WsOptions::json()).await;
    good.handshake_with(connect_token(&hs256(
        json!({"sub": "u", "aud": "app", "iss": "auth"}),
    )))
    .await;
    for claims in [
        json!({"sub": "u", "aud": "other", "iss": "auth"}),
        json!({"sub": "u", "aud": "app", "iss": "other"}),
    ] {
        let mut bad = server.ws(WsOptions::json()).await;
        let id = bad.next_id();
        bad.send_commands(&[Command {
            id,
            connect: Some(connect_token(&hs256(claims.clone()))),
            ..Default::default()
        }])
        .await;
        let (code, _) = bad.expect_close(WAIT).await;
        assert_eq!(code, 3500, "{claims}");
    }
}

/// Centrifugo's rotation and mapping options through the real binary: a token signed with
/// `hmac_previous_secret_key` connects, its user taken from `user_id_claim`; an `aud` that
/// `audience_regex` does not match is refused with 3500.
#[tokio::test]
async fn previous_secret_user_id_claim_and_audience_regex_apply() {
    let server = hmac_server(
        "      hmac_previous_secret_key: \"old-secret\"\n      user_id_claim: \"uid\"\n      \
         audience_regex: \"^app-\"\n",
    )
    .await;
    let old = encode(
        &Header::new(Algorithm::HS256),
        &json!({"uid": "from-uid", "aud": "app-web"}),
        &EncodingKey::from_secret(b"old-secret"),
    )
    .unwrap();
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake_with(connect_token(&old)).await;
    let channel = unique_channel("rotated");
    client.request(subscribe(&channel)).await;
    let presence = api_ok(
        server.admin_addr,
        "presence",
        &json!({ "channel": channel }),
        Some(API_KEY),
    )
    .await;
    let users: Vec<&str> = presence["presence"]
        .as_object()
        .map(|m| m.values().filter_map(|c| c["user"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(users, vec!["from-uid"], "{presence}");

    let mut refused = server.ws(WsOptions::json()).await;
    let id = refused.next_id();
    refused
        .send_commands(&[Command {
            id,
            connect: Some(connect_token(&hs256(json!({"uid": "u", "aud": "web"})))),
            ..Default::default()
        }])
        .await;
    assert_eq!(refused.expect_close(WAIT).await.0, 3500);
}

/// RS256 and ES256 tokens connect with the configured public keys.
#[tokio::test]
async fn rs256_and_es256_tokens_connect() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let yaml = format!(
        "hub:\n  client:\n    token:\n{}{}",
        pem_block("ecdsa_public_key", &ec.public_key_pem()),
        pem_block("rsa_public_key", &rsa.public_key_pem())
    );
    let server = Server::start(&yaml).await;
    let es = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "ec-user", "exp": now() + 600}),
        &EncodingKey::from_ec_der(&ec.serialize_der()),
    )
    .unwrap();
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake_with(connect_token(&es)).await;

    let rs = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "rsa-user", "exp": now() + 600}),
        &EncodingKey::from_rsa_der(&pkcs1_of_pkcs8(&rsa.serialize_der())),
    )
    .unwrap();
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake_with(connect_token(&rs)).await;

    // No HMAC secret configured: an HS256 token is refused.
    let mut client = server.ws(WsOptions::json()).await;
    let id = client.next_id();
    client
        .send_commands(&[Command {
            id,
            connect: Some(connect_token(&hs256(json!({"sub": "u"})))),
            ..Default::default()
        }])
        .await;
    assert_eq!(client.expect_close(WAIT).await.0, 3500);
}

/// A `$` channel needs a subscription token for this user and this channel: none, another
/// user's, another channel's → 103; expired → 109; valid → subscribed with its expiry.
#[tokio::test]
async fn private_channel_needs_a_matching_subscription_token() {
    let server = hmac_server("").await;
    let mut client = server.ws(WsOptions::json()).await;
    client
        .handshake_with(connect_token(&hs256(json!({"sub": "alice"}))))
        .await;
    let reply = client.request(subscribe("$secret")).await;
    assert_eq!(error_code(&reply), Some(103), "no token: {reply:?}");
    let reply = client
        .request(subscribe_token(
            "$secret",
            &sub_token("bob", "$secret", 600),
        ))
        .await;
    assert_eq!(error_code(&reply), Some(103), "other user: {reply:?}");
    let reply = client
        .request(subscribe_token(
            "$secret",
            &sub_token("alice", "$other", 600),
        ))
        .await;
    assert_eq!(error_code(&reply), Some(103), "other channel: {reply:?}");
    let reply = client
        .request(subscribe_token(
            "$secret",
            &sub_token("alice", "$secret", -10),
        ))
        .await;
    assert_eq!(error_code(&reply), Some(109), "expired: {reply:?}");
    let reply = client
        .request(subscribe_token(
            "$secret",
            &sub_token("alice", "$secret", 600),
        ))
        .await;
    assert_eq!(reply.error, None, "valid: {reply:?}");
    let result = reply.subscribe.expect("subscribe result");
    assert!(result.expires && result.ttl > 500, "{result:?}");
    api_ok(
        server.admin_addr,
        "publish",
        &json!({"channel": "$secret", "data": {"k": 1}}),
        Some(API_KEY),
    )
    .await;
    client.expect_publication("$secret", 1).await;
}

/// `sub_refresh` with a fresh token prolongs a subscription (it outlives its first token);
/// a subscription whose token expires is unsubscribed with 2501 "subscription expired".
#[tokio::test]
async fn sub_refresh_prolongs_and_expiry_unsubscribes_with_2501() {
    let server = hmac_server("").await;
    let mut client = server.ws(WsOptions::json()).await;
    client
        .handshake_with(connect_token(&hs256(json!({"sub": "alice"}))))
        .await;
    for channel in ["$kept", "$lapsed"] {
        let reply = client
            .request(subscribe_token(channel, &sub_token("alice", channel, 2)))
            .await;
        assert_eq!(reply.error, None, "{reply:?}");
    }
    let reply = client
        .request(sub_refresh("$kept", &sub_token("alice", "$kept", 3600)))
        .await;
    let result = reply.sub_refresh.expect("sub_refresh result");
    assert!(result.expires && result.ttl > 3000, "{result:?}");
    let reply = client
        .request(sub_refresh("$kept", &sub_token("alice", "$kept", -5)))
        .await;
    assert_eq!(error_code(&reply), Some(109), "{reply:?}");

    let push = client
        .expect_push("unsubscribe of $lapsed", Duration::from_secs(6), |p| {
            p.channel == "$lapsed" && p.unsubscribe.is_some()
        })
        .await;
    let unsubscribe = push.unsubscribe.unwrap();
    assert_eq!(unsubscribe.code, 2501, "{unsubscribe:?}");
    assert_eq!(unsubscribe.reason, "subscription expired");

    // The refreshed one is still subscribed past its first token's exp.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for channel in ["$lapsed", "$kept"] {
        api_ok(
            server.admin_addr,
            "publish",
            &json!({"channel": channel, "data": {"c": channel}}),
            Some(API_KEY),
        )
        .await;
    }
    client.expect_publication("$kept", 1).await;
    assert!(
        client
            .take_pushes(|p| p.channel == "$lapsed" && p.r#pub.is_some())
            .is_empty(),
        "no publication after expiry"
    );

    // A sub_refresh token for another channel disconnects (3500), as Centrifugo does.
    let id = client.next_id();
    client
        .send_commands(&[Command {
            id,
            ..sub_refresh("$kept", &sub_token("alice", "$lapsed", 600))
        }])
        .await;
    assert_eq!(client.expect_close(WAIT).await.0, 3500);
}

/// The PKCS#1 RSAPrivateKey inside rcgen's PKCS#8 DER (jsonwebtoken signs RS256 with PKCS#1).
fn pkcs1_of_pkcs8(der: &[u8]) -> Vec<u8> {
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let first = input[1];
        let (length, start) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            let length = input[2..2 + count]
                .iter()
                .fold(0usize, |n, b| (n << 8) | usize::from(*b));
            (length, 2 + count)
        };
        (tag, &input[start..start + length], &input[start + length..])
    }
    let (_, info, _) = element(der);
    let (_, _, rest) = element(info);
    let (_, _, rest) = element(rest);
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey OCTET STRING");
    key.to_vec()
}

/// Tokens printed by `sidewire gentoken` work end to end: the connection token (with
/// `--info`) connects, and the `--channel` subscription token subscribes to a `$` channel.
#[tokio::test]
async fn gentoken_connection_and_subscription_tokens_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokens.yaml");
    std::fs::write(
        &config,
        format!("hub:\n  client:\n    token:\n      hmac_secret_key: \"{SECRET}\"\n"),
    )
    .unwrap();
    let connection = gentoken(&config, &["--user", "carol", "--info", r#"{"n":"C"}"#]);
    let subscription = gentoken(&config, &["--user", "carol", "--channel", "$room"]);

    let server = hmac_server("").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake_with(connect_token(&connection)).await;
    let reply = client
        .request(subscribe_token("$room", &subscription))
        .await;
    assert_eq!(reply.error, None, "{reply:?}");
    // Presence of a `$` channel through the server API (client presence there is a
    // namespace permission).
    let result = api_ok(
        server.admin_addr,
        "presence",
        &json!({"channel": "$room"}),
        Some(API_KEY),
    )
    .await;
    let members: Vec<&Value> = result["presence"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    assert_eq!(members.len(), 1, "{result}");
    assert_eq!(members[0]["user"], "carol", "{result}");
    assert_eq!(members[0]["conn_info"], json!({"n": "C"}), "{result}");
}

/// A connection token's `b64info` is the client's `conn_info`, and a subscription token's
/// `info` its `chan_info` in that channel (Centrifugo's channel info), as the server API's
/// presence shows.
#[tokio::test]
async fn b64info_and_subscription_token_info_reach_presence() {
    let server = hmac_server("").await;
    let mut client = server.ws(WsOptions::json()).await;
    // base64 of {"b":1}
    let token = hs256(json!({"sub": "alice", "b64info": "eyJiIjoxfQ=="}));
    client.handshake_with(connect_token(&token)).await;
    let channel = format!("${}", unique_channel("info"));
    let sub = hs256(json!({"sub": "alice", "channel": channel, "info": {"role": "mod"}}));
    let reply = client.request(subscribe_token(&channel, &sub)).await;
    assert_eq!(reply.error, None, "{reply:?}");
    let result = api_ok(
        server.admin_addr,
        "presence",
        &json!({"channel": channel}),
        Some(API_KEY),
    )
    .await;
    let members = result["presence"]
        .as_object()
        .expect("presence map")
        .clone();
    assert_eq!(members.len(), 1, "{result}");
    let member = members.values().next().expect("one member");
    assert_eq!(member["user"], "alice", "{member}");
    assert_eq!(member["conn_info"], json!({"b": 1}), "{member}");
    assert_eq!(member["chan_info"], json!({"role": "mod"}), "{member}");
}

/// A JWK set served over HTTP by the test; `body` can be swapped (key rotation).
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
}

impl JwksServer {
    async fn start(body: Value) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(body.to_string()));
        let served = shared.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = served.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        JwksServer { addr, body: shared }
    }

    fn serve(&self, body: Value) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

/// A P-256 key pair and its public JWK under `kid`.
fn ec_key(kid: &str) -> (rcgen::KeyPair, Value) {
    use base64::Engine as _;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    (pair, jwk)
}

fn es256_with_kid(pair: &rcgen::KeyPair, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(
        &header,
        &claims,
        &EncodingKey::from_ec_der(&pair.serialize_der()),
    )
    .unwrap()
}

/// Whether a connect with `token` is accepted (an invalid token closes the connection,
/// which fails the spawned exchange).
async fn accepted(addr: std::net::SocketAddr, token: String) -> bool {
    tokio::spawn(async move {
        let mut client = WsClient::connect(addr, WsOptions::json()).await;
        client.connect_with(connect_token(&token)).await
    })
    .await
    .is_ok_and(|reply| reply.error.is_none())
}

/// `hub.client.token.jwks_public_endpoint`: a token whose `kid` is in the served JWK set
/// connects; a rotated-in key is fetched when a token names it; a token signed by another key
/// under a served `kid`, or claiming HS256 with that `kid`, is refused.
#[tokio::test]
async fn jwks_keys_verify_tokens_by_kid_and_rotate() {
    let (key_a, jwk_a) = ec_key("a");
    let jwks = JwksServer::start(json!({"keys": [jwk_a]})).await;
    let server = Server::start(&format!(
        "hub:\n  client:\n    token:\n      jwks_public_endpoint: \"http://{}/jwks\"\n",
        jwks.addr
    ))
    .await;
    let addr = server.client_addr;
    let token_a = es256_with_kid(&key_a, "a", json!({"sub": "jw"}));
    eventually(WAIT, "token of kid a accepted", || {
        let token = token_a.clone();
        async move { accepted(addr, token).await }
    })
    .await;

    // Rotation: the set now has only `b`; a token naming `b` triggers a refetch.
    let (key_b, jwk_b) = ec_key("b");
    jwks.serve(json!({"keys": [jwk_b]}));
    let token_b = es256_with_kid(&key_b, "b", json!({"sub": "jw"}));
    eventually(WAIT, "token of rotated-in kid b accepted", || {
        let token = token_b.clone();
        async move { accepted(addr, token).await }
    })
    .await;

    let forged = es256_with_kid(&key_a, "b", json!({"sub": "jw"}));
    assert!(!accepted(addr, forged).await, "kid b signed by key a");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("b".to_owned());
    let confused = encode(
        &header,
        &json!({"sub": "jw"}),
        &EncodingKey::from_secret(b"b"),
    )
    .unwrap();
    assert!(!accepted(addr, confused).await, "HS256 under an EC kid");
}
