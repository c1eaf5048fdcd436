//! Request and response bodies of the HTTP hooks, field for field Centrifugo v6's JSON
//! (`internal/proxyproto`): every request carries `client`, `transport`, `protocol` and
//! `encoding`; every response is one of `result`, `error` or `disconnect`.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Fields every hook request starts with.
#[derive(Debug, Clone, Serialize)]
pub struct Base {
    /// Client id (UUID) of the connection.
    pub client: String,
    /// `websocket`, `http_stream`, `sse`, ….
    pub transport: Cow<'static, str>,
    /// `json` or `protobuf`: the client's protocol.
    pub protocol: &'static str,
    /// Encoding of `data` in the request: always `json` (Centrifugo's default, without
    /// `binary_encoding`); data that is not JSON goes in `b64data` instead.
    pub encoding: &'static str,
}

/// Client data for a request: raw JSON in `data` when it is JSON, else base64 in `b64data`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Payload {
    /// The data as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// The data as base64, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64data: Option<String>,
}

impl Payload {
    /// `data` as JSON when it parses, else `b64data`; nothing when empty.
    pub fn of(data: &[u8]) -> Payload {
        if data.is_empty() {
            return Payload::default();
        }
        match std::str::from_utf8(data)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        {
            Some(raw) => Payload {
                data: Some(raw),
                b64data: None,
            },
            None => Payload {
                data: None,
                b64data: Some(STANDARD.encode(data)),
            },
        }
    }
}

/// `POST` body of the connect hook (no `user`: that is what it asks for).
#[derive(Debug, Serialize)]
pub struct ConnectRequest {
    /// Common fields.
    #[serde(flatten)]
    pub base: Base,
    /// SDK name (`js`, `python`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// SDK version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Connect data of the client.
    #[serde(flatten)]
    pub payload: Payload,
    /// Channels the client asked for in `subs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// `POST` body of the refresh hook.
#[derive(Debug, Serialize)]
pub struct RefreshRequest {
    /// Common fields.
    #[serde(flatten)]
    pub base: Base,
    /// User id of the connection.
    pub user: String,
    /// Connection meta (`include_connection_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// `POST` body of the subscribe, publish and sub_refresh hooks.
#[derive(Debug, Serialize)]
pub struct ChannelRequest {
    /// Common fields.
    #[serde(flatten)]
    pub base: Base,
    /// User id of the connection (empty: anonymous).
    pub user: String,
    /// Channel.
    pub channel: String,
    /// Subscription token the client sent (subscribe).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Subscribe data or published data.
    #[serde(flatten)]
    pub payload: Payload,
    /// Connection meta (`include_connection_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// `POST` body of the RPC hook.
#[derive(Debug, Serialize)]
pub struct RpcRequest {
    /// Common fields.
    #[serde(flatten)]
    pub base: Base,
    /// User id of the connection.
    pub user: String,
    /// RPC method.
    pub method: String,
    /// RPC data.
    #[serde(flatten)]
    pub payload: Payload,
    /// Connection meta (`include_connection_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// A custom error from the backend, passed to the client as is.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct HookError {
    /// Error code (Centrifugo's custom range is 400–1999).
    pub code: u32,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// The client may retry.
    #[serde(default)]
    pub temporary: bool,
}

/// A custom disconnect from the backend.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct HookDisconnect {
    /// Close code (Centrifugo's custom range is 4000–4999).
    pub code: u32,
    /// Reason.
    #[serde(default)]
    pub reason: String,
}

/// Any hook response: at most one of the three is used (`disconnect` first, then `error`).
#[derive(Debug, Deserialize)]
#[serde(bound = "R: Deserialize<'de>")]
pub struct Response<R> {
    /// Success.
    #[serde(default = "none")]
    pub result: Option<R>,
    /// Refusal with an error.
    #[serde(default)]
    pub error: Option<HookError>,
    /// Refusal with a disconnect.
    #[serde(default)]
    pub disconnect: Option<HookDisconnect>,
}

fn none<R>() -> Option<R> {
    None
}

/// Options of one server-side subscription in `subs` of a connect result.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SubOptions {
    /// Channel info.
    pub info: Option<Box<RawValue>>,
    /// Channel info, base64.
    pub b64info: String,
    /// Data sent in the subscribe result.
    pub data: Option<Box<RawValue>>,
    /// Data, base64.
    pub b64data: String,
}

/// `result` of the connect hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// User id (empty: anonymous).
    pub user: String,
    /// Unix seconds the connection expires at (0: never).
    pub expire_at: i64,
    /// Connection info (JSON).
    pub info: Option<Box<RawValue>>,
    /// Connection info, base64.
    pub b64info: String,
    /// Data sent to the client in the connect reply.
    pub data: Option<Box<RawValue>>,
    /// Data, base64.
    pub b64data: String,
    /// Server-side subscriptions.
    pub channels: Vec<String>,
    /// Server-side subscriptions with options.
    pub subs: HashMap<String, SubOptions>,
    /// Connection meta, never sent to the client.
    pub meta: Option<serde_json::Value>,
}

/// `result` of the refresh hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// The connection has expired: it is closed with 3005.
    pub expired: bool,
    /// New expiry, unix seconds (0: never).
    pub expire_at: i64,
    /// New connection info.
    pub info: Option<Box<RawValue>>,
    /// New connection info, base64.
    pub b64info: String,
    /// New connection meta.
    pub meta: Option<serde_json::Value>,
}

/// `result` of the subscribe hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// Channel info of this subscriber (presence, join/leave).
    pub info: Option<Box<RawValue>>,
    /// Channel info, base64.
    pub b64info: String,
    /// Data sent to the client in the subscribe reply.
    pub data: Option<Box<RawValue>>,
    /// Data, base64.
    pub b64data: String,
    /// Unix seconds the subscription expires at (0: never).
    pub expire_at: i64,
}

/// `result` of the publish hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// Data published instead of the client's.
    pub data: Option<Box<RawValue>>,
    /// Data, base64.
    pub b64data: String,
    /// Not kept in history.
    pub skip_history: bool,
}

/// `result` of the RPC hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    /// Data of the RPC reply.
    pub data: Option<Box<RawValue>>,
    /// Data, base64.
    pub b64data: String,
}

/// `result` of the sub_refresh hook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    /// The subscription has expired: the client is unsubscribed.
    pub expired: bool,
    /// New expiry, unix seconds (0: never).
    pub expire_at: i64,
    /// New channel info (ignored).
    pub info: Option<Box<RawValue>>,
    /// New channel info, base64 (ignored).
    pub b64info: String,
}

/// Bytes of a `data`/`b64data` (or `info`/`b64info`) pair: `b64…` wins when set; `None` when
/// it is not valid base64.
pub fn bytes_of(raw: Option<&RawValue>, b64: &str) -> Option<Bytes> {
    if !b64.is_empty() {
        return STANDARD.decode(b64).ok().map(Bytes::from);
    }
    Some(match raw {
        Some(raw) if raw.get() != "null" => Bytes::copy_from_slice(raw.get().as_bytes()),
        _ => Bytes::new(),
    })
}

/// Unix seconds from an `expire_at` (0 or negative: never).
pub fn expiry(expire_at: i64) -> Option<u64> {
    u64::try_from(expire_at).ok().filter(|at| *at > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_centrifugo_json() {
        let request = ChannelRequest {
            base: Base {
                client: "c".into(),
                transport: "websocket".into(),
                protocol: "json",
                encoding: "json",
            },
            user: "42".into(),
            channel: "chat:1".into(),
            token: String::new(),
            payload: Payload::of(br#"{"a":1}"#),
            meta: None,
        };
        let text = serde_json::to_string(&request).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"client":"c","transport":"websocket","protocol":"json","encoding":"json","user":"42","channel":"chat:1","data":{"a":1}}"#
        );
        let binary = Payload::of(&[0xff, 0x00]);
        assert_eq!(binary.b64data.as_deref(), Some("/wA="));
        assert!(Payload::of(b"").data.is_none());
    }

    #[test]
    fn responses_parse_every_form() {
        let ok: Response<ConnectResult> = serde_json::from_str(
            r#"{"result":{"user":"1","expire_at":5,"info":{"n":1},"channels":["a"],"subs":{"b":{"data":{}}},"meta":{"m":1}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let result = ok.result.unwrap_or_default();
        assert_eq!(result.user, "1");
        assert_eq!(expiry(result.expire_at), Some(5));
        assert_eq!(
            bytes_of(result.info.as_deref(), &result.b64info).as_deref(),
            Some(&br#"{"n":1}"#[..])
        );
        let error: Response<RpcResult> =
            serde_json::from_str(r#"{"error":{"code":1000,"message":"no"}}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(error.error.map(|e| e.code), Some(1000));
        let disconnect: Response<RpcResult> =
            serde_json::from_str(r#"{"disconnect":{"code":4500,"reason":"bye"}}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(disconnect.disconnect.map(|d| d.code), Some(4500));
        assert_eq!(bytes_of(None, "!!"), None);
        assert_eq!(expiry(0), None);
        assert_eq!(expiry(-3), None);
    }
}
