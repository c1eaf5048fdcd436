//! Centrifugo-compatible server API of the hub (`POST /api/<method>` with a JSON body): every
//! method of Centrifugo v6 OSS — publish, broadcast, subscribe, unsubscribe, disconnect,
//! refresh, presence, presence_stats, history, history_remove, channels, info and batch.
//!
//! Answers as Centrifugo's: `{"result":…}` on success and, for a refused call, HTTP 200 with
//! `{"error":{"code","message"}}` (107 bad request, 106 limit exceeded, 112 unrecoverable
//! position, …); a body that is not the method's JSON is HTTP 400 with 107, an unknown method
//! HTTP 404 with 104, a missing or wrong key HTTP 401. `batch` answers `{"replies":[…]}` with
//! one reply per command, in order. Publications go through the same checks as client
//! publishes ([`super::state::HubState::publish`]).

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::Hub;
use super::control::ControlOp;
use super::namespace::Operation;
use super::policy::{validate_channel, validate_disconnect_code};
use super::state::PublishOptions;
use crate::http::{Body, json as json_response};
use crate::protocol::SERVER_VERSION;
use crate::protocol::client::{HistoryRequest, StreamPosition};
use crate::protocol::{Disconnect, ErrorCode};

/// Largest API request body, bytes.
pub const MAX_API_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most commands in one `batch` call (more: error 106 for the whole call).
pub const MAX_BATCH_COMMANDS: usize = 1000;
/// Most channels listed by the `channels` method (the hub holds at most `hub.max_channels`).
pub const MAX_CHANNELS_LISTED: usize = 100_000;
/// Node name reported by the `info` method.
pub(crate) const NODE_NAME: &str = "sidewire";

/// The methods served, in Centrifugo's naming.
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
];

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The params are not the method's JSON (HTTP 400 at top level, 107 inside a batch).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Refused with a Centrifugo error code (HTTP 200 with an `error` object).
    #[error("{message}")]
    Refused {
        /// Centrifugo's code.
        code: ErrorCode,
        /// Message (Centrifugo's for the code unless more precise).
        message: Cow<'static, str>,
    },
}

impl From<ErrorCode> for CallError {
    fn from(code: ErrorCode) -> CallError {
        CallError::Refused {
            code,
            message: Cow::Borrowed(code.message()),
        }
    }
}

impl CallError {
    fn to_value(&self) -> Value {
        match self {
            CallError::Malformed(_) => error_value(ErrorCode::BadRequest),
            CallError::Refused { code, message } => {
                json!({"error": {"code": code.code(), "message": message}})
            }
        }
    }
}

fn error_body(code: ErrorCode) -> String {
    error_value(code).to_string()
}

fn error_value(code: ErrorCode) -> Value {
    json!({"error": {"code": code.code(), "message": code.message()}})
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(default)]
    channel: String,
    /// Kept as the caller's exact bytes (key order, number text), as Centrifugo does.
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: String,
}

#[derive(Deserialize)]
struct BroadcastBody {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: String,
}

#[derive(Deserialize)]
struct ChannelBody {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct HistoryBody {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: Option<i32>,
    #[serde(default)]
    since: Option<SinceBody>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct SinceBody {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// Who a per-user call addresses: `user`, optionally one connection `client` of it.
#[derive(Deserialize)]
struct TargetBody {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
}

impl TargetBody {
    /// The connection named, if any; an empty user must name one (else 107).
    fn client(&self) -> Result<Option<&str>, CallError> {
        let client = self.client.as_deref().filter(|c| !c.is_empty());
        if self.user.is_empty() && client.is_none() {
            return Err(ErrorCode::BadRequest.into());
        }
        Ok(client)
    }
}

/// Not `#[serde(flatten)]` of [`TargetBody`] as the other per-user bodies: a flattened struct
/// cannot hold a [`RawValue`].
#[derive(Deserialize)]
struct SubscribeBody {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    #[serde(flatten)]
    target: TargetBody,
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(flatten)]
    target: TargetBody,
    /// Connections of `user` to keep.
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectSpec>,
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    #[serde(flatten)]
    target: TargetBody,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<i64>,
}

#[derive(Deserialize)]
struct ChannelsBody {
    #[serde(default)]
    pattern: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default)]
    commands: Vec<Box<RawValue>>,
    /// Accepted; commands always run in order (Centrifugo allows either).
    #[serde(default)]
    #[allow(dead_code)]
    parallel: bool,
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
pub async fn respond(
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
    let name = path
        .trim_end_matches('/')
        .strip_prefix("/api/")
        .unwrap_or_default();
    if !METHODS.contains(&name) {
        return json_response(StatusCode::NOT_FOUND, error_body(ErrorCode::MethodNotFound));
    }
    let params: &RawValue = match serde_json::from_slice(body) {
        Ok(params) => params,
        Err(_) => {
            return json_response(StatusCode::BAD_REQUEST, error_body(ErrorCode::BadRequest));
        }
    };
    let answer = if name == "batch" {
        batch(hub, params).await
    } else {
        call(hub, name, params)
            .await
            .map(|result| json!({ "result": result }))
    };
    match answer {
        Ok(value) => json_response(StatusCode::OK, value.to_string()),
        Err(error @ CallError::Malformed(_)) => {
            tracing::debug!(method = name, %error, "server API: malformed call");
            json_response(StatusCode::BAD_REQUEST, error.to_value().to_string())
        }
        Err(error) => json_response(StatusCode::OK, error.to_value().to_string()),
    }
}

/// Reads a call's params from their text (never through [`Value`], which would reorder the
/// keys and round the numbers of publication data).
fn parse<T: DeserializeOwned>(params: &RawValue) -> Result<T, CallError> {
    serde_json::from_str(params.get()).map_err(|e| CallError::Malformed(e.to_string()))
}

/// `{"commands":[{"<method>":{…}}, …]}` → `{"replies":[{"<method>":{…}} | {"error":{…}}, …]}`,
/// in order; a command that is not one method with its params gets error 107, an unknown or
/// nested `batch` method 104.
async fn batch(hub: &Hub, params: &RawValue) -> Result<Value, CallError> {
    let body: BatchBody = parse(params)?;
    if body.commands.len() > MAX_BATCH_COMMANDS {
        return Err(CallError::Refused {
            code: ErrorCode::LimitExceeded,
            message: Cow::Owned(format!(
                "limit exceeded: at most {MAX_BATCH_COMMANDS} commands per batch"
            )),
        });
    }
    let mut replies: Vec<Value> = Vec::with_capacity(body.commands.len());
    for command in body.commands {
        let Ok(command) = serde_json::from_str::<HashMap<String, &RawValue>>(command.get()) else {
            replies.push(error_value(ErrorCode::BadRequest));
            continue;
        };
        let mut entries = command.into_iter();
        let (Some((name, params)), None) = (entries.next(), entries.next()) else {
            replies.push(error_value(ErrorCode::BadRequest));
            continue;
        };
        if name == "batch" || !METHODS.contains(&name.as_str()) {
            replies.push(error_value(ErrorCode::MethodNotFound));
            continue;
        }
        replies.push(match Box::pin(call(hub, &name, params)).await {
            Ok(result) => {
                let mut reply = Map::new();
                reply.insert(name, result);
                Value::Object(reply)
            }
            Err(error) => error.to_value(),
        });
    }
    Ok(json!({ "replies": replies }))
}

/// Runs one method (not `batch`) and returns its `result` object.
async fn call(hub: &Hub, method: &str, params: &RawValue) -> Result<Value, CallError> {
    match method {
        "publish" => {
            let b: PublishBody = parse(params)?;
            let data = json_data(b.data.as_deref())?;
            let options = PublishOptions {
                skip_history: b.skip_history,
                tags: b.tags,
            };
            publish(hub, &b.channel, data, options, &b.idempotency_key).await
        }
        "broadcast" => {
            let b: BroadcastBody = parse(params)?;
            let data = json_data(b.data.as_deref())?;
            if b.channels.is_empty() {
                return Err(ErrorCode::BadRequest.into());
            }
            let mut responses: Vec<Value> = Vec::with_capacity(b.channels.len());
            for channel in &b.channels {
                let options = PublishOptions {
                    skip_history: b.skip_history,
                    tags: b.tags.clone(),
                };
                responses.push(
                    match publish(hub, channel, data.clone(), options, &b.idempotency_key).await {
                        Ok(result) => json!({ "result": result }),
                        Err(error) => error.to_value(),
                    },
                );
            }
            Ok(json!({ "responses": responses }))
        }
        "subscribe" => {
            let b: SubscribeBody = parse(params)?;
            let target = TargetBody {
                user: b.user,
                client: b.client,
            };
            let client = target.client()?;
            let data = match &b.data {
                Some(value) => json_data(Some(value))?,
                None => Bytes::new(),
            };
            checked_channel(hub, &b.channel)?;
            hub.with_state(|s| s.channel_available(&b.channel, Operation::Subscribe))?;
            hub.server_subscribe(&target.user, client, &b.channel, data.clone())
                .await?;
            hub.broadcast_control(ControlOp::Subscribe {
                user: target.user.clone(),
                client: client.map(str::to_owned),
                channel: b.channel.clone(),
                data: String::from_utf8_lossy(&data).into_owned(),
            })
            .await?;
            Ok(json!({}))
        }
        "unsubscribe" => {
            let b: UnsubscribeBody = parse(params)?;
            let client = b.target.client()?;
            hub.with_state(|s| s.server_unsubscribe(&b.target.user, client, &b.channel))?;
            hub.broadcast_control(ControlOp::Unsubscribe {
                user: b.target.user.clone(),
                client: client.map(str::to_owned),
                channel: b.channel.clone(),
            })
            .await?;
            Ok(json!({}))
        }
        "disconnect" => {
            let b: DisconnectBody = parse(params)?;
            let client = b.target.client()?;
            let disconnect = match b.disconnect {
                Some(spec) => {
                    validate_disconnect_code(spec.code)?;
                    Disconnect::new(spec.code, spec.reason)
                }
                None => Disconnect::FORCE_DISCONNECT,
            };
            hub.with_state(|s| {
                s.disconnect_user(&b.target.user, client, &b.whitelist, &disconnect)
            });
            hub.broadcast_control(ControlOp::Disconnect {
                user: b.target.user.clone(),
                client: client.map(str::to_owned),
                keep: b.whitelist.clone(),
                code: disconnect.code,
                reason: disconnect.reason.to_string(),
            })
            .await?;
            Ok(json!({}))
        }
        "refresh" => {
            let b: RefreshBody = parse(params)?;
            let client = b.target.client()?;
            let expire_at = match b.expire_at {
                None | Some(0) => None,
                Some(at) => Some(u64::try_from(at).map_err(|_| ErrorCode::BadRequest)?),
            };
            hub.with_state(|s| s.refresh_sessions(&b.target.user, client, b.expired, expire_at));
            hub.broadcast_control(ControlOp::Refresh {
                user: b.target.user.clone(),
                client: client.map(str::to_owned),
                expired: b.expired,
                expire_at,
            })
            .await?;
            Ok(json!({}))
        }
        "presence" => {
            let b: ChannelBody = parse(params)?;
            checked_channel(hub, &b.channel)?;
            hub.with_state(|s| s.channel_available(&b.channel, Operation::Presence))?;
            let presence = hub.presence(&b.channel).await?;
            Ok(json!(presence))
        }
        "presence_stats" => {
            let b: ChannelBody = parse(params)?;
            checked_channel(hub, &b.channel)?;
            hub.with_state(|s| s.channel_available(&b.channel, Operation::Presence))?;
            let stats = hub.presence_stats(&b.channel).await?;
            Ok(json!(stats))
        }
        "history" => {
            let b: HistoryBody = parse(params)?;
            let request = HistoryRequest {
                channel: b.channel,
                limit: b.limit.unwrap_or(0),
                reverse: b.reverse,
                since: b.since.map(|p| StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch,
                }),
            };
            checked_channel(hub, &request.channel)?;
            hub.with_state(|s| s.channel_available(&request.channel, Operation::History))?;
            let result = hub.history(&request).await?;
            Ok(json!(result))
        }
        "history_remove" => {
            let b: ChannelBody = parse(params)?;
            hub.history_remove(&b.channel).await?;
            Ok(json!({}))
        }
        "channels" => {
            let b: ChannelsBody = parse(params)?;
            let found = hub.channels(b.pattern).await?;
            let channels: Map<String, Value> = found
                .into_iter()
                .map(|(name, clients)| (name, json!({ "num_clients": clients })))
                .collect();
            Ok(json!({ "channels": channels }))
        }
        "info" if hub.engine().is_some() => {
            let nodes = hub.nodes().await?;
            Ok(json!({ "nodes": nodes }))
        }
        "info" => {
            let (counts, uid, uptime) =
                hub.with_state(|s| (s.node_counts(), s.node_uid().to_owned(), s.uptime_secs()));
            Ok(json!({"nodes": [{
                "uid": uid,
                "name": NODE_NAME,
                "version": SERVER_VERSION,
                "num_clients": counts.num_clients,
                "num_users": counts.num_users,
                "num_channels": counts.num_channels,
                "num_subs": counts.num_subs,
                "uptime": uptime,
            }]}))
        }
        _ => Err(ErrorCode::MethodNotFound.into()),
    }
}

/// The publication payload, byte for byte as the caller wrote it: JSON data is required (107
/// when absent or null).
fn json_data(data: Option<&RawValue>) -> Result<Bytes, CallError> {
    match data.map(RawValue::get) {
        None | Some("null") => Err(ErrorCode::BadRequest.into()),
        Some(text) => Ok(Bytes::copy_from_slice(text.as_bytes())),
    }
}

fn checked_channel(hub: &Hub, channel: &str) -> Result<(), CallError> {
    let max = hub.with_state(|s| s.config().channel.max_length);
    validate_channel(channel, max)?;
    Ok(())
}

/// Publishes once per `(channel, idempotency_key)` within the cache's TTL: a repeated key
/// returns the first result without publishing again. The lookup, the publication and the
/// insert happen under the cache's lock, so concurrent duplicates publish once.
async fn publish(
    hub: &Hub,
    channel: &str,
    data: Bytes,
    options: PublishOptions,
    idempotency_key: &str,
) -> Result<Value, CallError> {
    let (offset, epoch) = if idempotency_key.is_empty() || hub.engine().is_some() {
        // Shared engine: the key and its result live in Redis, checked and saved atomically
        // with the publication, so a repeat on any node publishes once (as Centrifugo).
        hub.publish_api(channel, data, options, idempotency_key)
            .await?
    } else {
        let now = tokio::time::Instant::now();
        hub.with_state(|s| {
            s.with_idempotency(|cache| {
                if let Some(result) = cache.get(channel, idempotency_key, now) {
                    return Ok(result);
                }
                let result = s.publish_api(channel, data, options)?;
                cache.insert(channel, idempotency_key, result.clone(), now);
                Ok::<_, ErrorCode>(result)
            })
        })?
    };
    Ok(json!({"offset": offset, "epoch": epoch}))
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
