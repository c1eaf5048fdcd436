use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn keys(config: TokenConfig) -> TokenKeys {
    TokenKeys::from_token(&config, "hub.client.token").unwrap()
}

fn hmac_keys(secret: &str) -> TokenKeys {
    keys(TokenConfig {
        hmac_secret_key: Some(secret.to_owned()),
        ..TokenConfig::default()
    })
}

fn valid(check: TokenCheck) -> ConnectionClaims {
    match check {
        TokenCheck::Valid(claims) => claims,
        other => panic!("expected valid, got {other:?}"),
    }
}

/// The PKCS#1 RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (what `from_rsa_der` signs with).
fn pkcs1_of_pkcs8(der: &[u8]) -> Vec<u8> {
    let (_, info, _) = pem_element(der);
    let (_, _, rest) = pem_element(info); // version
    let (_, _, rest) = pem_element(rest); // algorithm
    let (tag, key, _) = pem_element(rest);
    assert_eq!(tag, 0x04);
    key.to_vec()
}

fn pem_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    crate::config::pem::tests_element(input).unwrap()
}

#[test]
fn valid_expired_invalid() {
    let exp = now() + 60;
    let claims = valid(check_token(
        &hs(Algorithm::HS256, "s", json!({"sub": "u1", "exp": exp})),
        "s",
    ));
    assert_eq!(claims.user, "u1");
    assert_eq!(claims.expires_at, Some(exp));
    assert_eq!(
        valid(check_token(
            &hs(Algorithm::HS256, "s", json!({"sub": "u1"})),
            "s"
        ))
        .expires_at,
        None
    );
    assert_eq!(
        check_token(
            &hs(
                Algorithm::HS256,
                "s",
                json!({"sub": "u1", "exp": now() - 10})
            ),
            "s"
        ),
        TokenCheck::Expired
    );
    assert_eq!(
        check_token(&hs(Algorithm::HS256, "other", json!({"sub": "u1"})), "s"),
        TokenCheck::Invalid
    );
    assert_eq!(check_token("garbage", "s"), TokenCheck::Invalid);
    assert_eq!(check_token("", "s"), TokenCheck::Invalid);
}

#[test]
fn future_nbf_is_invalid_past_nbf_is_fine() {
    let future = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u1", "nbf": now() + 60}),
    );
    assert_eq!(check_token(&future, "s"), TokenCheck::Invalid);
    let past = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u1", "nbf": now() - 60}),
    );
    assert_eq!(valid(check_token(&past, "s")).user, "u1");
}

#[test]
fn hs384_and_hs512_are_accepted() {
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = hs(alg, "s", json!({"sub": "u2"}));
        assert_eq!(valid(hmac_keys("s").check_connection(&token)).user, "u2");
    }
}

#[test]
fn info_b64info_channels_subs_and_meta_are_read() {
    let keys = hmac_keys("s");
    let token = hs(
        Algorithm::HS256,
        "s",
        json!({
            "sub": "u", "iat": now(), "info": {"name": "Ann"},
            "channels": ["a", "b", "a"], "subs": {"c": {}, "b": {}},
            "meta": {"secret": 1}
        }),
    );
    let claims = valid(keys.check_connection(&token));
    assert_eq!(&claims.info[..], br#"{"name":"Ann"}"#);
    assert_eq!(claims.channels, ["a", "b", "c"]);
    assert_eq!(claims.meta, Some(json!({"secret": 1})));

    let token = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "b64info": "aGk="}),
    );
    assert_eq!(&valid(keys.check_connection(&token)).info[..], b"hi");
    let token = hs(Algorithm::HS256, "s", json!({"sub": "u", "b64info": "!!"}));
    assert_eq!(keys.check_connection(&token), TokenCheck::Invalid);
}

#[test]
fn audience_and_issuer_are_enforced_when_set() {
    let keys = keys(TokenConfig {
        hmac_secret_key: Some("s".into()),
        audience: Some("aud1".into()),
        issuer: Some("iss1".into()),
        ..TokenConfig::default()
    });
    let ok = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "aud": "aud1", "iss": "iss1"}),
    );
    assert_eq!(valid(keys.check_connection(&ok)).user, "u");
    for claims in [
        json!({"sub": "u", "aud": "other", "iss": "iss1"}),
        json!({"sub": "u", "aud": "aud1", "iss": "other"}),
        json!({"sub": "u", "iss": "iss1"}),
        json!({"sub": "u", "aud": "aud1"}),
    ] {
        let token = hs(Algorithm::HS256, "s", claims.clone());
        assert_eq!(
            keys.check_connection(&token),
            TokenCheck::Invalid,
            "{claims}"
        );
    }
    // Unset: aud and iss are ignored.
    let any = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "aud": "x", "iss": "y"}),
    );
    assert_eq!(valid(hmac_keys("s").check_connection(&any)).user, "u");
}

#[test]
fn es256_verifies_with_the_ecdsa_public_key_only() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let keys = keys(TokenConfig {
        ecdsa_public_key: Some(pair.public_key_pem()),
        ..TokenConfig::default()
    });
    let token = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "ec-user"}),
        &EncodingKey::from_ec_der(&pair.serialize_der()),
    )
    .unwrap();
    assert_eq!(valid(keys.check_connection(&token)).user, "ec-user");
    // HS256 is refused when no HMAC secret is configured (no algorithm confusion).
    let hs_token = hs(Algorithm::HS256, "s", json!({"sub": "u"}));
    assert_eq!(keys.check_connection(&hs_token), TokenCheck::Invalid);
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "ec-user"}),
        &EncodingKey::from_ec_der(&other.serialize_der()),
    )
    .unwrap();
    assert_eq!(keys.check_connection(&forged), TokenCheck::Invalid);
}

#[test]
fn rs256_verifies_with_the_rsa_public_key() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let keys = keys(TokenConfig {
        rsa_public_key: Some(pair.public_key_pem()),
        ..TokenConfig::default()
    });
    let token = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "rsa-user"}),
        &EncodingKey::from_rsa_der(&pkcs1_of_pkcs8(&pair.serialize_der())),
    )
    .unwrap();
    assert_eq!(valid(keys.check_connection(&token)).user, "rsa-user");
}

#[test]
fn bad_public_keys_name_their_field() {
    let error = TokenKeys::from_token(
        &TokenConfig {
            rsa_public_key: Some("not a key".into()),
            ..TokenConfig::default()
        },
        "hub.client.token",
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("hub.client.token.rsa_public_key")
    );
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let error = TokenKeys::from_token(
        &TokenConfig {
            ecdsa_public_key: Some(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into(),
            ),
            rsa_public_key: Some(rsa.public_key_pem()),
            ..TokenConfig::default()
        },
        "hub.client.subscription_token",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("hub.client.subscription_token."),
        "{error}"
    );
}

#[test]
fn subscription_tokens_need_a_channel_and_honour_exp() {
    let keys = hmac_keys("s");
    let exp = now() + 60;
    let token = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "exp": exp}),
    );
    assert_eq!(
        keys.check_subscription(&token),
        SubTokenCheck::Valid {
            user: "u".into(),
            channel: "$c".into(),
            expires_at: Some(exp),
            info: Bytes::new(),
        }
    );
    // `info` / `b64info` become the subscriber's channel info; bad base64 is invalid.
    let with_info = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "info": {"role": "mod"}}),
    );
    assert!(matches!(
        keys.check_subscription(&with_info),
        SubTokenCheck::Valid { info, .. } if &info[..] == br#"{"role":"mod"}"#
    ));
    let b64 = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "b64info": "aGk="}),
    );
    assert!(matches!(
        keys.check_subscription(&b64),
        SubTokenCheck::Valid { info, .. } if &info[..] == b"hi"
    ));
    let bad = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "b64info": "!!"}),
    );
    assert_eq!(keys.check_subscription(&bad), SubTokenCheck::Invalid);
    let expired = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "exp": now() - 5}),
    );
    assert_eq!(keys.check_subscription(&expired), SubTokenCheck::Expired);
    let no_channel = hs(Algorithm::HS256, "s", json!({"sub": "u"}));
    assert_eq!(keys.check_subscription(&no_channel), SubTokenCheck::Invalid);
    let forged = hs(Algorithm::HS256, "x", json!({"sub": "u", "channel": "$c"}));
    assert_eq!(keys.check_subscription(&forged), SubTokenCheck::Invalid);
    assert_eq!(keys.check_subscription(""), SubTokenCheck::Invalid);
    assert_eq!(
        TokenKeys::default().check_subscription(&token),
        SubTokenCheck::Invalid
    );
}

#[test]
fn subscription_tokens_take_their_own_keys_only_when_enabled() {
    let mut client = ClientConfig::default();
    client.token.hmac_secret_key = Some("conn".into());
    client.subscription_token.hmac_secret_key = Some("sub".into());
    let by_conn = hs(
        Algorithm::HS256,
        "conn",
        json!({"sub": "u", "channel": "$c"}),
    );
    let by_sub = hs(
        Algorithm::HS256,
        "sub",
        json!({"sub": "u", "channel": "$c"}),
    );
    let keys = TokenKeys::for_subscriptions(&client).unwrap();
    assert!(matches!(
        keys.check_subscription(&by_conn),
        SubTokenCheck::Valid { .. }
    ));
    assert_eq!(keys.check_subscription(&by_sub), SubTokenCheck::Invalid);
    client.subscription_token.enabled = true;
    let keys = TokenKeys::for_subscriptions(&client).unwrap();
    assert!(matches!(
        keys.check_subscription(&by_sub),
        SubTokenCheck::Valid { .. }
    ));
    assert_eq!(keys.check_subscription(&by_conn), SubTokenCheck::Invalid);
    // Connection tokens keep the connection keys.
    let conn = TokenKeys::from_config(&client).unwrap();
    let token = hs(Algorithm::HS256, "conn", json!({"sub": "u"}));
    assert_eq!(valid(conn.check_connection(&token)).user, "u");
}

#[test]
fn audience_and_issuer_regexes_match_any_aud_and_the_iss() {
    let keys = keys(TokenConfig {
        hmac_secret_key: Some("s".into()),
        audience_regex: Some("^app-[a-z]+$".into()),
        issuer_regex: Some("^https://id\\.example\\.com/".into()),
        ..TokenConfig::default()
    });
    for claims in [
        json!({"sub": "u", "aud": "app-web", "iss": "https://id.example.com/t1"}),
        json!({"sub": "u", "aud": ["other", "app-ios"], "iss": "https://id.example.com/"}),
    ] {
        let token = hs(Algorithm::HS256, "s", claims.clone());
        assert_eq!(valid(keys.check_connection(&token)).user, "u", "{claims}");
    }
    for claims in [
        json!({"sub": "u", "aud": "app-1", "iss": "https://id.example.com/"}),
        json!({"sub": "u", "aud": ["x", "y"], "iss": "https://id.example.com/"}),
        json!({"sub": "u", "aud": "app-web", "iss": "https://evil.example.com/"}),
        json!({"sub": "u", "iss": "https://id.example.com/"}),
        json!({"sub": "u", "aud": "app-web"}),
    ] {
        let token = hs(Algorithm::HS256, "s", claims.clone());
        assert_eq!(
            keys.check_connection(&token),
            TokenCheck::Invalid,
            "{claims}"
        );
    }
    // Subscription tokens are held to the same rules.
    let sub = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "aud": "app-web", "iss": "https://id.example.com/"}),
    );
    assert!(matches!(
        keys.check_subscription(&sub),
        SubTokenCheck::Valid { .. }
    ));
    let sub = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "u", "channel": "$c", "aud": "app-web"}),
    );
    assert_eq!(keys.check_subscription(&sub), SubTokenCheck::Invalid);
}

#[test]
fn the_previous_hmac_secret_is_accepted_until_its_end() {
    let rotating = |valid_until: i64| {
        keys(TokenConfig {
            hmac_secret_key: Some("new".into()),
            hmac_previous_secret_key: Some("old".into()),
            hmac_previous_secret_key_valid_until: valid_until,
            ..TokenConfig::default()
        })
    };
    let old = hs(Algorithm::HS384, "old", json!({"sub": "u"}));
    let new = hs(Algorithm::HS256, "new", json!({"sub": "u"}));
    let stranger = hs(Algorithm::HS256, "other", json!({"sub": "u"}));
    let open_ended = rotating(0);
    assert_eq!(valid(open_ended.check_connection(&old)).user, "u");
    assert_eq!(valid(open_ended.check_connection(&new)).user, "u");
    assert_eq!(open_ended.check_connection(&stranger), TokenCheck::Invalid);
    let later = i64::try_from(now()).unwrap() + 600;
    assert_eq!(valid(rotating(later).check_connection(&old)).user, "u");
    let ended = i64::try_from(now()).unwrap() - 1;
    assert_eq!(rotating(ended).check_connection(&old), TokenCheck::Invalid);
    assert_eq!(valid(rotating(ended).check_connection(&new)).user, "u");
    // Expiry is still expiry under the previous key.
    let expired = hs(
        Algorithm::HS256,
        "old",
        json!({"sub": "u", "exp": now() - 10}),
    );
    assert_eq!(open_ended.check_connection(&expired), TokenCheck::Expired);
}

#[test]
fn user_id_claim_takes_the_user_from_another_claim() {
    let keys = keys(TokenConfig {
        hmac_secret_key: Some("s".into()),
        user_id_claim: Some("user.id".into()),
        ..TokenConfig::default()
    });
    let token = hs(
        Algorithm::HS256,
        "s",
        json!({"sub": "ignored", "user": {"id": "u42"}}),
    );
    assert_eq!(valid(keys.check_connection(&token)).user, "u42");
    let numeric = hs(Algorithm::HS256, "s", json!({"user": {"id": 7}}));
    assert_eq!(valid(keys.check_connection(&numeric)).user, "7");
    // Missing at that path: anonymous, as Centrifugo (an empty user id).
    let missing = hs(Algorithm::HS256, "s", json!({"sub": "u"}));
    assert_eq!(valid(keys.check_connection(&missing)).user, "");
    let sub = hs(
        Algorithm::HS256,
        "s",
        json!({"user": {"id": "u42"}, "channel": "$c"}),
    );
    match keys.check_subscription(&sub) {
        SubTokenCheck::Valid { user, .. } => assert_eq!(user, "u42"),
        other => panic!("expected valid, got {other:?}"),
    }
}
