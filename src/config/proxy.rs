//! Proxy hooks of the hub, with Centrifugo v6's option names: `hub.client.proxy.connect` /
//! `.refresh`, `hub.channel.proxy.subscribe` / `.publish` / `.sub_refresh`, `hub.rpc.proxy`
//! and the RPC namespaces that enable it. The hooks themselves live in `crate::hub::proxy`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::channel::valid_namespace_name;
use super::duration::ConfigDuration;

/// Default time one hook call may take (Centrifugo's `timeout` default).
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound of hook calls in flight across the hub (`hub.proxy_max_in_flight`); calls
/// beyond it fail at once with error 100 (temporary), never wait.
pub const DEFAULT_PROXY_MAX_IN_FLIGHT: usize = 1024;

/// `http`: HTTP-specific options of one hook (Centrifugo's `ProxyCommonHTTP`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyHttpConfig {
    /// Headers added to every request of the hook (Centrifugo's `http.static_headers`).
    pub static_headers: BTreeMap<String, String>,
}

/// One channel or RPC hook (`hub.channel.proxy.subscribe`, `hub.rpc.proxy`, …): no `enabled`
/// key, it is enabled per namespace.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// `http://` or `https://` URL the hook POSTs to.
    pub endpoint: String,
    /// Time one call may take; then error 100.
    pub timeout: ConfigDuration,
    /// Headers of the client's connection request forwarded to the backend (they must also be
    /// in the sidecar's `forward_headers`). Case-insensitive.
    pub http_headers: Vec<String>,
    /// Adds the connection's `meta` (from its token or connect hook) to the request.
    pub include_connection_meta: bool,
    /// HTTP-specific options.
    pub http: ProxyHttpConfig,
}

impl Default for HookConfig {
    fn default() -> HookConfig {
        HookConfig {
            endpoint: String::new(),
            timeout: DEFAULT_PROXY_TIMEOUT.into(),
            http_headers: Vec::new(),
            include_connection_meta: false,
            http: ProxyHttpConfig::default(),
        }
    }
}

/// `hub.client.proxy.connect` / `.refresh`: a hook with an `enabled` switch.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientHookConfig {
    /// Calls the hook (connect: for clients without a token; refresh: at connection expiry).
    pub enabled: bool,
    /// `http://` or `https://` URL the hook POSTs to.
    pub endpoint: String,
    /// Time one call may take; then error 100.
    pub timeout: ConfigDuration,
    /// Headers of the client's connection request forwarded to the backend.
    pub http_headers: Vec<String>,
    /// Adds the connection's `meta` to the request (refresh only; connect sets it).
    pub include_connection_meta: bool,
    /// HTTP-specific options.
    pub http: ProxyHttpConfig,
}

impl Default for ClientHookConfig {
    fn default() -> ClientHookConfig {
        ClientHookConfig {
            enabled: false,
            endpoint: String::new(),
            timeout: DEFAULT_PROXY_TIMEOUT.into(),
            http_headers: Vec::new(),
            include_connection_meta: false,
            http: ProxyHttpConfig::default(),
        }
    }
}

impl ClientHookConfig {
    /// The hook settings without the switch.
    pub fn hook(&self) -> HookConfig {
        HookConfig {
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
            http_headers: self.http_headers.clone(),
            include_connection_meta: self.include_connection_meta,
            http: self.http.clone(),
        }
    }
}

/// `hub.client.proxy`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClientProxyConfig {
    /// Connect hook: authenticates clients that connect without a token.
    pub connect: ClientHookConfig,
    /// Refresh hook: called when a connection is about to expire.
    pub refresh: ClientHookConfig,
}

/// `hub.channel.proxy`: enabled per namespace with `*_proxy_enabled`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelProxyConfig {
    /// Subscribe hook (`subscribe_proxy_enabled`).
    pub subscribe: HookConfig,
    /// Publish hook (`publish_proxy_enabled`): it alone decides a publish.
    pub publish: HookConfig,
    /// Sub-refresh hook (`sub_refresh_proxy_enabled`): called when a subscription expires.
    pub sub_refresh: HookConfig,
}

/// Options of RPC methods without `:` (`hub.rpc.without_namespace`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RpcOptions {
    /// Methods go to `hub.rpc.proxy`.
    pub proxy_enabled: bool,
}

/// One entry of `hub.rpc.namespaces`: methods `name:…`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RpcNamespaceConfig {
    /// Namespace name: the method prefix before `:`.
    pub name: String,
    /// Methods go to `hub.rpc.proxy`.
    pub proxy_enabled: bool,
}

/// `hub.rpc`: the RPC hook and the namespaces routed to it. Methods not routed to the hook
/// keep the hub's built-in behaviour (`echo`, else 104).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// The RPC hook.
    pub proxy: HookConfig,
    /// Options of methods without `:`.
    pub without_namespace: RpcOptions,
    /// RPC namespaces.
    pub namespaces: Vec<RpcNamespaceConfig>,
}

impl RpcConfig {
    /// Whether `method` goes to the hook: its namespace (prefix before the first `:`, else
    /// `without_namespace`) has `proxy_enabled`.
    pub fn proxied(&self, method: &str) -> bool {
        match method.split_once(':') {
            None => self.without_namespace.proxy_enabled,
            Some((name, _)) => self
                .namespaces
                .iter()
                .any(|n| n.name == name && n.proxy_enabled),
        }
    }

    /// Whether any RPC namespace uses the hook.
    pub fn any_proxied(&self) -> bool {
        self.without_namespace.proxy_enabled || self.namespaces.iter().any(|n| n.proxy_enabled)
    }
}

/// Problems of one hook's settings, each naming `field.…`; `used` says whether it must have
/// an endpoint (enabled, or enabled by a namespace named in `why`).
pub fn hook_problems(field: &str, hook: &HookConfig, used: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if hook.endpoint.is_empty() {
        if let Some(why) = used {
            problems.push(format!("{field}.endpoint: required by {why}"));
        }
    } else {
        let valid = hook.endpoint.parse::<http::Uri>().ok().is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
        });
        if !valid {
            problems.push(format!(
                "{field}.endpoint: must be an http:// or https:// URL, got {:?}",
                hook.endpoint
            ));
        }
    }
    if hook.timeout.is_zero() {
        problems.push(format!("{field}.timeout: must be greater than 0s"));
    }
    for (index, name) in hook.http_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!(
                "{field}.http_headers[{index}]: not a header name: {name:?}"
            ));
        }
    }
    for (name, value) in &hook.http.static_headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            problems.push(format!(
                "{field}.http.static_headers: not a valid header: {name:?}"
            ));
        }
    }
    problems
}

/// Problems of `hub.rpc`, each naming its dotted field.
pub fn rpc_problems(rpc: &RpcConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, namespace) in rpc.namespaces.iter().enumerate() {
        let field = format!("hub.rpc.namespaces[{index}].name");
        if !valid_namespace_name(&namespace.name) {
            problems.push(format!(
                "{field}: must match ^[-a-zA-Z0-9_.]{{2,}}$, got {:?}",
                namespace.name
            ));
        } else if !seen.insert(namespace.name.as_str()) {
            problems.push(format!("{field}: duplicate namespace {:?}", namespace.name));
        }
    }
    let why = rpc
        .any_proxied()
        .then_some("an RPC namespace with proxy_enabled");
    problems.extend(hook_problems("hub.rpc.proxy", &rpc.proxy, why));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_routes_by_namespace() {
        let rpc = RpcConfig {
            without_namespace: RpcOptions {
                proxy_enabled: true,
            },
            namespaces: vec![
                RpcNamespaceConfig {
                    name: "app".into(),
                    proxy_enabled: true,
                },
                RpcNamespaceConfig {
                    name: "local".into(),
                    proxy_enabled: false,
                },
            ],
            ..Default::default()
        };
        assert!(rpc.proxied("getUser"));
        assert!(rpc.proxied("app:x"));
        assert!(!rpc.proxied("local:x"));
        assert!(!rpc.proxied("unknown:x"));
        assert!(!RpcConfig::default().proxied("echo"));
    }

    /// The commented block of configs/sidewire.yaml starting at `  # {key}:`, uncommented.
    fn documented(key: &str) -> String {
        let text = include_str!("../../configs/sidewire.yaml");
        let header = format!("  # {key}:");
        let block: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != header)
            .enumerate()
            .take_while(|(i, l)| *i == 0 || l.starts_with("  #   "))
            .map(|(_, l)| l)
            .collect();
        block.iter().map(|l| format!("  {}\n", &l[4..])).collect()
    }

    #[test]
    fn the_documented_examples_parse_and_validate() {
        let yaml = format!("hub:\n{}{}", documented("client"), documented("rpc"));
        let config =
            super::super::Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let connect = &config.hub.client.proxy.connect;
        assert!(connect.enabled, "{yaml}");
        assert_eq!(connect.http_headers, ["cookie", "authorization"]);
        assert_eq!(
            connect
                .http
                .static_headers
                .get("x-proxy-secret")
                .map(String::as_str),
            Some("change-me")
        );
        assert!(config.hub.client.proxy.refresh.enabled);
        assert!(config.hub.rpc.proxied("getUser") && config.hub.rpc.proxied("app:x"));
        assert_eq!(config.hub.proxy_max_in_flight, DEFAULT_PROXY_MAX_IN_FLIGHT);
    }

    #[test]
    fn problems_name_the_hook_field() {
        let rpc = RpcConfig {
            without_namespace: RpcOptions {
                proxy_enabled: true,
            },
            namespaces: vec![RpcNamespaceConfig {
                name: "x".into(),
                proxy_enabled: false,
            }],
            ..Default::default()
        };
        let text = rpc_problems(&rpc).join("\n");
        assert!(text.contains("hub.rpc.proxy.endpoint: required"), "{text}");
        assert!(text.contains("hub.rpc.namespaces[0].name"), "{text}");
        let bad = HookConfig {
            endpoint: "ftp://x".into(),
            timeout: Duration::ZERO.into(),
            ..Default::default()
        };
        let text = hook_problems("f", &bad, None).join("\n");
        assert!(text.contains("f.endpoint: must be an http"), "{text}");
        assert!(text.contains("f.timeout"), "{text}");
        assert!(hook_problems("f", &HookConfig::default(), None).is_empty());
    }
}
