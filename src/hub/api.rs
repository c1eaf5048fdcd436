//! Centrifugo-compatible server API of the hub (`POST /api/<method>` with a JSON body):
//! publish, broadcast, presence, history, disconnect. Errors come back as
//! `{"error":{"code","message"}}` with Centrifugo's codes. Publications go through the same
//! checks as client publishes ([`super::state::HubState::publish`]); disconnect refuses an
//! empty user (unless one `client` is named) and any code outside 3000-4999 with 400 + 107.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::Hub;
use super::policy::validate_disconnect_code;
use crate::http::{Body, json as json_response};
use crate::protocol::client::HistoryRequest;
use crate::protocol::{Disconnect, ErrorCode};

/// Largest API request body, bytes.
pub const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
    #[serde(default)]
    limit: Option<i32>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    /// Only this connection of `user` (Centrifugo's `client`); required when `user` is empty.
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    disconnect: Option<DisconnectSpec>,
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u32,
    #[serde(default)]
    reason: String,
}

fn error_body(code: ErrorCode) -> String {
    json!({"error": {"code": code.code(), "message": code.message()}}).to_string()
}

/// Whether the request carries the API key (`X-API-Key: KEY` or `Authorization: apikey KEY`).
/// Reads headers only; the comparison takes the same time wherever the keys differ.
pub fn authorized(headers: &HeaderMap, api_key: Option<&str>) -> bool {
    let Some(key) = api_key else { return true };
    let key = key.as_bytes();
    let by_header = headers
        .get("x-api-key")
        .is_some_and(|v| constant_time_eq(v.as_bytes(), key));
    let by_authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"apikey "))
        .is_some_and(|v| constant_time_eq(v.trim_ascii(), key));
    by_header | by_authorization
}

/// Compares two byte strings in time that depends only on their lengths, not on where they
/// differ (the length of a key is not a secret worth the complexity of hiding it).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// Answers one API call; `path` is the request path (`/api/publish`, ...).
pub fn respond(
    hub: &Hub,
    api_key: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> http::Response<Body> {
    if method != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body(ErrorCode::BadRequest),
        );
    }
    if !authorized(headers, api_key) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            error_body(ErrorCode::Unauthorized),
        );
    }
    let result = match path.trim_end_matches('/') {
        "/api/publish" => parse(body).map(|b: PublishBody| publish(hub, &b.channel, &b.data)),
        "/api/broadcast" => parse(body).map(|b: BroadcastBody| {
            let responses: Vec<serde_json::Value> = b
                .channels
                .iter()
                .map(|channel| publish(hub, channel, &b.data))
                .collect();
            json!({"result": {"responses": responses}})
        }),
        "/api/presence" => parse(body).map(|b: ChannelBody| {
            let presence = hub.with_state(|state| state.presence(&b.channel));
            json!({"result": presence})
        }),
        "/api/history" => parse(body).map(|b: ChannelBody| {
            let request = HistoryRequest {
                channel: b.channel,
                limit: b.limit.unwrap_or(0),
                reverse: b.reverse,
                ..Default::default()
            };
            match hub.with_state(|state| state.history(&request)) {
                Ok(result) => json!({"result": result}),
                Err(code) => error_value(code),
            }
        }),
        "/api/disconnect" => parse(body).and_then(|b: DisconnectBody| {
            let client = b.client.as_deref().filter(|c| !c.is_empty());
            if b.user.is_empty() && client.is_none() {
                return Err(());
            }
            let disconnect = match b.disconnect {
                Some(spec) => {
                    validate_disconnect_code(spec.code).map_err(|_| ())?;
                    Disconnect::new(spec.code, spec.reason)
                }
                None => Disconnect::FORCE_DISCONNECT,
            };
            hub.with_state(|state| state.disconnect_user(&b.user, client, &disconnect));
            Ok(json!({"result": {}}))
        }),
        _ => return json_response(StatusCode::NOT_FOUND, error_body(ErrorCode::MethodNotFound)),
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, value.to_string()),
        Err(()) => json_response(StatusCode::BAD_REQUEST, error_body(ErrorCode::BadRequest)),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ()> {
    serde_json::from_slice(body).map_err(|_| ())
}

fn error_value(code: ErrorCode) -> serde_json::Value {
    json!({"error": {"code": code.code(), "message": code.message()}})
}

fn publish(hub: &Hub, channel: &str, data: &RawValue) -> serde_json::Value {
    let data = Bytes::copy_from_slice(data.get().as_bytes());
    match hub.with_state(|state| state.publish(channel, data, None)) {
        Ok((offset, epoch)) => json!({"result": {"offset": offset, "epoch": epoch}}),
        Err(code) => error_value(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_forms() {
        let mut headers = HeaderMap::new();
        assert!(authorized(&headers, None));
        assert!(!authorized(&headers, Some("k")));
        headers.insert("x-api-key", "k".parse().unwrap());
        assert!(authorized(&headers, Some("k")));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "apikey k".parse().unwrap());
        assert!(authorized(&headers, Some("k")));
        assert!(!authorized(&headers, Some("other")));
        assert!(!authorized(&headers, Some("kk")));
        assert!(!authorized(&headers, Some("")));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
