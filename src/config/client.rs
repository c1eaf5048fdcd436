//! `hub.client`: client connection options with Centrifugo v6's names (today the connect and
//! refresh proxy hooks).

use serde::Deserialize;

use super::proxy::ClientProxyConfig;

/// `hub.client`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// `hub.client.proxy`: the connect and refresh hooks.
    pub proxy: ClientProxyConfig,
}

impl ClientConfig {
    /// Problems of `hub.client`, each naming its dotted field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, hook) in [
            ("connect", &self.proxy.connect),
            ("refresh", &self.proxy.refresh),
        ] {
            let field = format!("hub.client.proxy.{name}");
            let why = format!("{field}.enabled");
            problems.extend(super::proxy::hook_problems(
                &field,
                &hook.hook(),
                hook.enabled.then_some(why.as_str()),
            ));
        }
        problems
    }
}
