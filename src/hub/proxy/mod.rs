//! Centrifugo-compatible HTTP proxy hooks from the hub to the backend: connect, refresh,
//! subscribe, publish, sub_refresh and rpc.
//!
//! [`Proxies`] holds the configured hooks; each `async` method builds Centrifugo's request
//! body, POSTs it ([`client`]) and turns the answer into a grant or a [`Refusal`]. A failed
//! call (transport error, timeout, non-200 status, oversized or malformed body) is a
//! [`Refusal`] with error 100 (temporary), as in Centrifugo. The hub bounds the calls in
//! flight with [`Proxies::permit`]: past `hub.proxy_max_in_flight` a call is refused at once.

mod calls;
pub mod client;
pub mod metrics;
pub mod types;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::ConnectionClaims;
use crate::config::HubConfig;
use crate::config::proxy::RpcConfig;
use crate::protocol::client::ConnectRequest as ClientConnect;
use crate::protocol::{Disconnect, ErrorCode, client as proto};
use client::{CallError, Endpoint, HookClient, SetupError};
use metrics::{HookErrorLabels, HookLabels, ProxyMetrics};
use types::{Base, Payload, Response, bytes_of, expiry};

/// The connection a hook call is about.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Client id.
    pub client: String,
    /// Transport name.
    pub transport: Cow<'static, str>,
    /// Protobuf client.
    pub protobuf: bool,
    /// User id (empty: anonymous, or not known yet on connect).
    pub user: String,
    /// Connection meta.
    pub meta: Option<serde_json::Value>,
    /// Connection-request headers kept for hooks (lower-case names).
    pub headers: Arc<[(String, String)]>,
}

impl Subject {
    fn base(&self) -> Base {
        Base {
            client: self.client.clone(),
            transport: self.transport.clone(),
            protocol: if self.protobuf { "protobuf" } else { "json" },
            encoding: "json",
        }
    }
}

/// A hook's "no": an error reply, or a disconnect.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Error reply to the command (custom code from the backend, or 100 on failure).
    Error(proto::Error),
    /// The connection is closed with this code.
    Disconnect(Disconnect),
}

impl Refusal {
    /// Error 100, temporary: what a failed hook call answers.
    pub fn internal() -> Refusal {
        Refusal::Error(ErrorCode::Internal.to_error())
    }

    /// A refusal with a built-in error code.
    pub fn code(code: ErrorCode) -> Refusal {
        Refusal::Error(code.to_error())
    }
}

/// What the connect hook granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectGrant {
    /// User, expiry, info, server-side channels and meta.
    pub claims: ConnectionClaims,
    /// Data for the connect reply.
    pub data: Bytes,
}

/// What the refresh hook answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefreshGrant {
    /// The connection expired: close with 3005.
    pub expired: bool,
    /// New expiry (unix seconds).
    pub expires_at: Option<u64>,
    /// New connection info, when given.
    pub info: Option<Bytes>,
    /// New meta, when given.
    pub meta: Option<serde_json::Value>,
}

/// What the subscribe hook granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeGrant {
    /// Data for the subscribe reply.
    pub data: Bytes,
    /// Channel info of the subscriber.
    pub info: Bytes,
    /// Subscription expiry (unix seconds).
    pub expires_at: Option<u64>,
}

/// What the publish hook granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishGrant {
    /// Data to publish (the backend's when it returned some, else the client's).
    pub data: Bytes,
    /// Not kept in history.
    pub skip_history: bool,
}

/// What the sub_refresh hook answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubRefreshGrant {
    /// The subscription expired: unsubscribe.
    pub expired: bool,
    /// New expiry (unix seconds).
    pub expires_at: Option<u64>,
}

/// The hooks configured for one hub config; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Proxies {
    client: Option<HookClient>,
    in_flight: Arc<Semaphore>,
    metrics: ProxyMetrics,
    connect: Option<Endpoint>,
    refresh: Option<Endpoint>,
    subscribe: Option<Endpoint>,
    publish: Option<Endpoint>,
    sub_refresh: Option<Endpoint>,
    rpc: Option<Endpoint>,
    rpc_routes: RpcConfig,
    /// Union of every hook's `http_headers`: the connection headers a session keeps.
    header_names: Vec<String>,
    /// Shared by every session that keeps no header (no allocation per session).
    no_headers: Arc<[(String, String)]>,
}

impl Proxies {
    /// No hook at all.
    pub fn none(metrics: ProxyMetrics) -> Proxies {
        Proxies {
            client: None,
            in_flight: Arc::new(Semaphore::new(1)),
            metrics,
            connect: None,
            refresh: None,
            subscribe: None,
            publish: None,
            sub_refresh: None,
            rpc: None,
            rpc_routes: RpcConfig::default(),
            header_names: Vec::new(),
            no_headers: Arc::from(Vec::new()),
        }
    }

    /// The hooks of `config` (a hook without endpoint is off).
    pub fn new(config: &HubConfig, metrics: ProxyMetrics) -> Result<Proxies, SetupError> {
        let endpoint = |field: &str, hook: &crate::config::proxy::HookConfig, on: bool| {
            if on && !hook.endpoint.is_empty() {
                Endpoint::new(field, hook).map(Some)
            } else {
                Ok(None)
            }
        };
        let client_proxy = &config.client.proxy;
        let channel_proxy = &config.channel.proxy;
        let connect = endpoint(
            "hub.client.proxy.connect",
            &client_proxy.connect.hook(),
            client_proxy.connect.enabled,
        )?;
        let refresh = endpoint(
            "hub.client.proxy.refresh",
            &client_proxy.refresh.hook(),
            client_proxy.refresh.enabled,
        )?;
        let subscribe = endpoint(
            "hub.channel.proxy.subscribe",
            &channel_proxy.subscribe,
            true,
        )?;
        let publish = endpoint("hub.channel.proxy.publish", &channel_proxy.publish, true)?;
        let sub_refresh = endpoint(
            "hub.channel.proxy.sub_refresh",
            &channel_proxy.sub_refresh,
            true,
        )?;
        let rpc = endpoint("hub.rpc.proxy", &config.rpc.proxy, config.rpc.any_proxied())?;
        let hooks = [&connect, &refresh, &subscribe, &publish, &sub_refresh, &rpc];
        let any = hooks.iter().any(|h| h.is_some());
        let mut header_names: Vec<String> = hooks
            .iter()
            .filter_map(|h| h.as_ref())
            .flat_map(|h| h.http_headers.iter().cloned())
            .collect();
        header_names.sort();
        header_names.dedup();
        Ok(Proxies {
            client: if any { Some(HookClient::new()?) } else { None },
            in_flight: Arc::new(Semaphore::new(config.proxy_max_in_flight.max(1))),
            metrics,
            connect,
            refresh,
            subscribe,
            publish,
            sub_refresh,
            rpc,
            rpc_routes: config.rpc.clone(),
            header_names,
            no_headers: Arc::from(Vec::new()),
        })
    }

    /// The connect hook is on.
    pub fn connect_enabled(&self) -> bool {
        self.connect.is_some()
    }

    /// The refresh hook is on (connections expire server-side: `expires: false`).
    pub fn refresh_enabled(&self) -> bool {
        self.refresh.is_some()
    }

    /// The subscribe hook is configured.
    pub fn subscribe_enabled(&self) -> bool {
        self.subscribe.is_some()
    }

    /// The publish hook is configured.
    pub fn publish_enabled(&self) -> bool {
        self.publish.is_some()
    }

    /// The sub_refresh hook is configured.
    pub fn sub_refresh_enabled(&self) -> bool {
        self.sub_refresh.is_some()
    }

    /// `method` goes to the RPC hook.
    pub fn rpc_proxied(&self, method: &str) -> bool {
        self.rpc.is_some() && self.rpc_routes.proxied(method)
    }

    /// The connection-request headers a session keeps for its hooks (only those some hook
    /// forwards; none when no hook forwards any).
    pub fn keep_headers(&self, headers: &HashMap<String, String>) -> Arc<[(String, String)]> {
        if self.header_names.is_empty() {
            return self.no_headers.clone();
        }
        self.header_names
            .iter()
            .filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone())))
            .collect()
    }

    /// A place among the calls in flight, or `None` at `hub.proxy_max_in_flight` (the call is
    /// then refused with error 100 and counted as `overloaded`).
    pub fn permit(&self, hook: &'static str) -> Option<OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.metrics.calls.get_or_create(&HookLabels { hook }).inc();
            self.count_error(hook, &CallError::Overloaded);
        }
        permit
    }

    fn count_error(&self, hook: &'static str, error: &CallError) {
        self.metrics
            .errors
            .get_or_create(&HookErrorLabels {
                hook,
                kind: error.kind(),
            })
            .inc();
    }

    async fn call<Req: Serialize, Res: DeserializeOwned + Default>(
        &self,
        hook: &'static str,
        endpoint: Option<&Endpoint>,
        subject: &Subject,
        request: &Req,
    ) -> Result<Res, Refusal> {
        self.metrics.calls.get_or_create(&HookLabels { hook }).inc();
        let started = Instant::now();
        let outcome = match (endpoint, &self.client) {
            (Some(endpoint), Some(client)) => match serde_json::to_vec(request) {
                Ok(body) => client.post(endpoint, &subject.headers, body).await,
                Err(e) => Err(CallError::Decode(e.to_string())),
            },
            _ => Err(CallError::Transport("hook not configured".to_owned())),
        };
        self.metrics
            .duration
            .get_or_create(&HookLabels { hook })
            .observe(started.elapsed().as_secs_f64());
        let parsed = outcome.and_then(|body| {
            serde_json::from_slice::<Response<Res>>(&body)
                .map_err(|e| CallError::Decode(e.to_string()))
        });
        let response = match parsed {
            Ok(response) => response,
            Err(error) => {
                self.count_error(hook, &error);
                tracing::warn!(hook, client = %subject.client, %error, "hub: proxy hook failed");
                return Err(Refusal::internal());
            }
        };
        if let Some(disconnect) = response.disconnect {
            return Err(Refusal::Disconnect(Disconnect::new(
                disconnect.code,
                disconnect.reason,
            )));
        }
        if let Some(error) = response.error {
            return Err(Refusal::Error(proto::Error {
                code: error.code,
                message: error.message,
                temporary: error.temporary,
            }));
        }
        Ok(response.result.unwrap_or_default())
    }

    fn meta(&self, endpoint: Option<&Endpoint>, subject: &Subject) -> Option<serde_json::Value> {
        endpoint
            .filter(|e| e.include_connection_meta)
            .and(subject.meta.clone())
    }

    /// Asks the connect hook who `subject` is. No `result` is refused with 3501.
    pub async fn connect(
        &self,
        subject: &Subject,
        request: &ClientConnect,
    ) -> Result<ConnectGrant, Refusal> {
        let mut channels: Vec<String> = request.subs.keys().cloned().collect();
        channels.sort();
        let body = types::ConnectRequest {
            base: subject.base(),
            name: request.name.clone(),
            version: request.version.clone(),
            payload: Payload::of(&request.data),
            channels,
        };
        let result: Option<types::ConnectResult> = self
            .call("connect", self.connect.as_ref(), subject, &body)
            .await
            .map(|r: OptionalConnect| r.0)?;
        let Some(result) = result else {
            return Err(Refusal::Disconnect(Disconnect::BAD_REQUEST));
        };
        let info = bytes_of(result.info.as_deref(), &result.b64info);
        let data = bytes_of(result.data.as_deref(), &result.b64data);
        let (Some(info), Some(data)) = (info, data) else {
            tracing::warn!(client = %subject.client, "hub: connect hook sent bad base64");
            return Err(Refusal::internal());
        };
        let mut channels = result.channels;
        let mut subs: Vec<String> = result.subs.into_keys().collect();
        subs.sort();
        for channel in subs {
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        Ok(ConnectGrant {
            claims: ConnectionClaims {
                user: result.user,
                expires_at: expiry(result.expire_at),
                info,
                channels,
                meta: result.meta,
            },
            data,
        })
    }

    /// Asks the refresh hook whether `subject`'s connection lives on.
    pub async fn refresh(&self, subject: &Subject) -> Result<RefreshGrant, Refusal> {
        let body = types::RefreshRequest {
            base: subject.base(),
            user: subject.user.clone(),
            meta: self.meta(self.refresh.as_ref(), subject),
        };
        let result: types::RefreshResult = self
            .call("refresh", self.refresh.as_ref(), subject, &body)
            .await?;
        let info = match (&result.info, result.b64info.is_empty()) {
            (None, true) => None,
            _ => Some(
                bytes_of(result.info.as_deref(), &result.b64info).ok_or_else(Refusal::internal)?,
            ),
        };
        Ok(RefreshGrant {
            expired: result.expired,
            expires_at: expiry(result.expire_at),
            info,
            meta: result.meta,
        })
    }

    /// Asks the subscribe hook whether `subject` may subscribe to `channel`.
    pub async fn subscribe(
        &self,
        subject: &Subject,
        channel: &str,
        data: &[u8],
        token: &str,
    ) -> Result<SubscribeGrant, Refusal> {
        let body = types::ChannelRequest {
            base: subject.base(),
            user: subject.user.clone(),
            channel: channel.to_owned(),
            token: token.to_owned(),
            payload: Payload::of(data),
            meta: self.meta(self.subscribe.as_ref(), subject),
        };
        let result: types::SubscribeResult = self
            .call("subscribe", self.subscribe.as_ref(), subject, &body)
            .await?;
        let data = bytes_of(result.data.as_deref(), &result.b64data);
        let info = bytes_of(result.info.as_deref(), &result.b64info);
        let (Some(data), Some(info)) = (data, info) else {
            return Err(Refusal::internal());
        };
        Ok(SubscribeGrant {
            data,
            info,
            expires_at: expiry(result.expire_at),
        })
    }

    /// Asks the publish hook whether `subject` may publish `data` to `channel` (and what).
    pub async fn publish(
        &self,
        subject: &Subject,
        channel: &str,
        data: Bytes,
    ) -> Result<PublishGrant, Refusal> {
        let body = types::ChannelRequest {
            base: subject.base(),
            user: subject.user.clone(),
            channel: channel.to_owned(),
            token: String::new(),
            payload: Payload::of(&data),
            meta: self.meta(self.publish.as_ref(), subject),
        };
        let result: types::PublishResult = self
            .call("publish", self.publish.as_ref(), subject, &body)
            .await?;
        let replaced = result.data.is_some() || !result.b64data.is_empty();
        let data = if replaced {
            bytes_of(result.data.as_deref(), &result.b64data).ok_or_else(Refusal::internal)?
        } else {
            data
        };
        Ok(PublishGrant {
            data,
            skip_history: result.skip_history,
        })
    }

    /// Asks the sub_refresh hook whether `subject`'s subscription to `channel` lives on.
    pub async fn sub_refresh(
        &self,
        subject: &Subject,
        channel: &str,
    ) -> Result<SubRefreshGrant, Refusal> {
        let body = types::ChannelRequest {
            base: subject.base(),
            user: subject.user.clone(),
            channel: channel.to_owned(),
            token: String::new(),
            payload: Payload::default(),
            meta: self.meta(self.sub_refresh.as_ref(), subject),
        };
        let result: types::SubRefreshResult = self
            .call("sub_refresh", self.sub_refresh.as_ref(), subject, &body)
            .await?;
        Ok(SubRefreshGrant {
            expired: result.expired,
            expires_at: expiry(result.expire_at),
        })
    }

    /// Calls the RPC hook with `method` and `data`; the reply data.
    pub async fn rpc(
        &self,
        subject: &Subject,
        method: &str,
        data: &[u8],
    ) -> Result<Bytes, Refusal> {
        let body = types::RpcRequest {
            base: subject.base(),
            user: subject.user.clone(),
            method: method.to_owned(),
            payload: Payload::of(data),
            meta: self.meta(self.rpc.as_ref(), subject),
        };
        let result: types::RpcResult = self.call("rpc", self.rpc.as_ref(), subject, &body).await?;
        bytes_of(result.data.as_deref(), &result.b64data).ok_or_else(Refusal::internal)
    }
}

/// A connect `result` that may be absent (Centrifugo then has no credentials).
#[derive(Debug, Default)]
struct OptionalConnect(Option<types::ConnectResult>);

impl<'de> serde::Deserialize<'de> for OptionalConnect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        types::ConnectResult::deserialize(deserializer).map(|r| OptionalConnect(Some(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::{ClientHookConfig, HookConfig, RpcNamespaceConfig};

    fn hook(endpoint: &str, headers: &[&str]) -> HookConfig {
        HookConfig {
            endpoint: endpoint.to_owned(),
            http_headers: headers.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hooks_are_on_only_when_enabled_and_routed() {
        let mut config = HubConfig::default();
        let none = Proxies::new(&config, ProxyMetrics::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!none.connect_enabled() && !none.refresh_enabled() && !none.rpc_proxied("x"));
        assert!(none.client.is_none(), "no client without a hook");

        config.client.proxy.connect = ClientHookConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:1/connect".into(),
            ..Default::default()
        };
        config.rpc.proxy = hook("http://127.0.0.1:1/rpc", &["Authorization"]);
        config.rpc.namespaces = vec![RpcNamespaceConfig {
            name: "app".into(),
            proxy_enabled: true,
        }];
        let proxies =
            Proxies::new(&config, ProxyMetrics::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!proxies.connect_enabled(), "endpoint without enabled");
        assert!(proxies.rpc_proxied("app:m") && !proxies.rpc_proxied("m"));

        config.client.proxy.connect.enabled = true;
        config.client.proxy.connect.http_headers = vec!["cookie".into()];
        let proxies =
            Proxies::new(&config, ProxyMetrics::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(proxies.connect_enabled());
        let headers: HashMap<String, String> = [
            ("cookie", "a=1"),
            ("authorization", "Bearer x"),
            ("user-agent", "ua"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let kept = proxies.keep_headers(&headers);
        assert_eq!(
            &kept[..],
            &[
                ("authorization".to_owned(), "Bearer x".to_owned()),
                ("cookie".to_owned(), "a=1".to_owned()),
            ]
        );
    }

    #[test]
    fn permits_are_bounded_and_come_back() {
        let config = HubConfig {
            proxy_max_in_flight: 2,
            ..Default::default()
        };
        let metrics = ProxyMetrics::default();
        let proxies = Proxies::new(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
        let first = proxies.permit("rpc");
        let second = proxies.permit("rpc");
        assert!(first.is_some() && second.is_some());
        assert!(proxies.permit("rpc").is_none());
        let overloaded = HookErrorLabels {
            hook: "rpc",
            kind: "overloaded",
        };
        assert_eq!(metrics.errors.get_or_create(&overloaded).get(), 1);
        drop(first);
        assert!(proxies.permit("rpc").is_some());
    }
}
