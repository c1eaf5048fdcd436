//! JWKS: public keys for tokens fetched over HTTP(S) from
//! `hub.client.token.jwks_public_endpoint` (Centrifugo v6's `client.token.jwks_public_endpoint`),
//! looked up by the token header's `kid`.
//!
//! Guarantees: the key set is bounded ([`JWKS_MAX_KEYS`] keys, a body of at most
//! [`JWKS_MAX_BYTES`]); a background task refetches it every [`JWKS_REFRESH_INTERVAL`] and,
//! when a token names an unknown `kid`, at most once per [`JWKS_MIN_REFETCH`] (so clients
//! sending random `kid`s cannot make the hub hammer the endpoint); verification never waits
//! for the network: an unknown `kid` is an invalid token until a refetch brings it. Only
//! RSA and EC keys are taken (never a symmetric key from the network). A failed fetch keeps
//! the previous keys. The task ends once the keys are dropped (a reload builds new ones).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use thiserror::Error;
use tokio::sync::Notify;

/// Period of the background refetch.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest gap between two fetches (an unknown `kid` asks for one).
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);
/// Time allowed for one fetch (connect, headers and body).
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS body read, bytes.
pub const JWKS_MAX_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
pub const JWKS_MAX_KEYS: usize = 64;

/// Why a fetch failed (the previous keys stay).
#[derive(Debug, Error)]
pub enum JwksError {
    /// The endpoint is not an http(s) URL.
    #[error("not an http(s) URL")]
    Url,
    /// Connecting or reading failed, or took longer than [`JWKS_FETCH_TIMEOUT`].
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The answer was not 200.
    #[error("status {0}")]
    Status(u16),
    /// The body is larger than [`JWKS_MAX_BYTES`] or not a JWK set.
    #[error("bad body: {0}")]
    Body(String),
}

type KeyMap = HashMap<String, (Algorithm, Arc<DecodingKey>)>;

/// The keys of one JWKS endpoint, refreshed in the background once [`Jwks::start`]ed.
pub struct Jwks {
    url: String,
    keys: RwLock<Arc<KeyMap>>,
    wanted: Arc<Notify>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

impl Jwks {
    /// Keys of `url`, empty until the first fetch.
    pub fn new(url: &str) -> Jwks {
        Jwks {
            url: url.to_owned(),
            keys: RwLock::new(Arc::new(HashMap::new())),
            wanted: Arc::new(Notify::new()),
        }
    }

    /// The key named `kid` and its algorithm; on a miss, asks the task for a refetch.
    pub fn key(&self, kid: &str) -> Option<(Algorithm, Arc<DecodingKey>)> {
        let keys = crate::sync::read(&self.keys).clone();
        let found = keys.get(kid).cloned();
        if found.is_none() {
            self.wanted.notify_one();
        }
        found
    }

    /// Starts the background fetcher on the current tokio runtime (none: nothing happens,
    /// e.g. `sidewire check`).
    pub fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(refresher(weak));
    }

    fn replace(&self, keys: KeyMap) {
        *crate::sync::write(&self.keys) = Arc::new(keys);
    }
}

async fn refresher(weak: Weak<Jwks>) {
    let client = match client() {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "hub: JWKS client unavailable");
            return;
        }
    };
    loop {
        let Some(jwks) = weak.upgrade() else { return };
        match fetch(&client, &jwks.url).await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), url = %jwks.url, "hub: JWKS fetched");
                jwks.replace(keys);
            }
            Err(error) => tracing::warn!(%error, url = %jwks.url, "hub: JWKS fetch failed"),
        }
        // Hold only a weak reference while waiting, so a dropped key set ends the task.
        let wanted = jwks.wanted.clone();
        drop(jwks);
        tokio::time::sleep(JWKS_MIN_REFETCH).await;
        let _ = tokio::time::timeout(JWKS_REFRESH_INTERVAL, wanted.notified()).await;
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn client() -> Result<Client, JwksError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| JwksError::Fetch(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

async fn fetch(client: &Client, url: &str) -> Result<KeyMap, JwksError> {
    let uri: http::Uri = url.parse().map_err(|_| JwksError::Url)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(JwksError::Url);
    }
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| JwksError::Fetch(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if response.status() != http::StatusCode::OK {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        // The whole exchange is under JWKS_FETCH_TIMEOUT: no progress deadline of its own.
        crate::body::read_bounded(response.into_body(), JWKS_MAX_BYTES, None)
            .await
            .map_err(|e| JwksError::Body(e.to_string()))
    };
    let body = tokio::time::timeout(JWKS_FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| JwksError::Fetch("timed out".to_owned()))??;
    parse(&body)
}

/// The RSA and EC keys of a JWK set with a `kid`, at most [`JWKS_MAX_KEYS`].
pub fn parse(body: &[u8]) -> Result<KeyMap, JwksError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| JwksError::Body(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if keys.len() >= JWKS_MAX_KEYS {
            break;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            _ => continue,
        };
        let algorithm = match jwk.common.key_algorithm {
            Some(declared) => match Algorithm::try_from(declared) {
                Ok(algorithm) if same_family(algorithm, inferred) => algorithm,
                _ => continue,
            },
            None => inferred,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, (algorithm, Arc::new(key)));
        }
    }
    Ok(keys)
}

/// Whether a declared algorithm fits the key type (RSA or EC), never HMAC.
fn same_family(declared: Algorithm, inferred: Algorithm) -> bool {
    use Algorithm::*;
    match inferred {
        RS256 => matches!(declared, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        _ => declared == inferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn ec_jwk(kid: &str, alg: Option<&str>) -> serde_json::Value {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }

    #[test]
    fn keeps_asymmetric_keys_with_a_kid_only_and_is_bounded() {
        let set = serde_json::json!({"keys": [
            ec_jwk("a", None),
            ec_jwk("b", Some("ES256")),
            ec_jwk("c", Some("HS256")),
            {"kty": "oct", "kid": "d", "k": "c2VjcmV0"},
            ec_jwk("", None).as_object().map(|o| { let mut o = o.clone(); o.remove("kid"); o }).unwrap(),
        ]});
        let keys = parse(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
        assert_eq!(keys["a"].0, Algorithm::ES256);
        let many: Vec<serde_json::Value> = (0..JWKS_MAX_KEYS + 5)
            .map(|i| ec_jwk(&i.to_string(), None))
            .collect();
        let keys = parse(serde_json::json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), JWKS_MAX_KEYS);
        assert!(parse(b"not json").is_err());
    }

    #[tokio::test]
    async fn a_miss_asks_for_a_refetch() {
        let jwks = Jwks::new("http://127.0.0.1:1/jwks");
        assert!(jwks.key("nope").is_none());
        // The notification is stored for the fetcher.
        tokio::time::timeout(Duration::from_secs(1), jwks.wanted.notified())
            .await
            .expect("refetch requested");
    }
}
