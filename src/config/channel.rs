//! `hub.channel`: channel namespaces and their permissions, with Centrifugo v6's option names.
//!
//! Defaults are secure, as in Centrifugo: nothing is allowed unless enabled (with no
//! `hub.channel` at all every client subscribe, publish, history and presence is refused). The
//! rules themselves live in `crate::hub::namespace`.

use std::collections::HashSet;

use serde::Deserialize;

use super::duration::ConfigDuration;

/// Largest `history_size` of a namespace (the hub-wide limit of `hub.history_size`).
pub const MAX_NAMESPACE_HISTORY_SIZE: usize = 100_000;
/// Longest namespace name accepted, bytes.
pub const MAX_NAMESPACE_NAME_LENGTH: usize = 255;

/// Whether `name` matches Centrifugo's namespace name rule `^[-a-zA-Z0-9_.]{2,}$`.
pub fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= MAX_NAMESPACE_NAME_LENGTH
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

macro_rules! channel_options {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)?) => {
        /// Options of one namespace (or of `without_namespace`); every flag defaults to off,
        /// every size to 0 (feature off), as in Centrifugo.
        #[derive(Debug, Clone, Deserialize, PartialEq, Default)]
        #[serde(default, deny_unknown_fields)]
        pub struct ChannelOptions {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// One entry of `hub.channel.namespaces`: a `name` beside the options (flat, as in
        /// Centrifugo).
        #[derive(Debug, Clone, Deserialize, PartialEq, Default)]
        #[serde(default, deny_unknown_fields)]
        pub struct NamespaceConfig {
            /// Namespace name: the channel prefix before `:`.
            pub name: String,
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl NamespaceConfig {
            /// The options without the name.
            pub fn options(&self) -> ChannelOptions {
                ChannelOptions { $( $field: self.$field.clone(), )* }
            }
        }
    };
}

channel_options! {
    /// Presence (and presence_stats) available; else they answer 108.
    presence: bool,
    /// Join/leave pushes for subscribers that ask for them; else never sent.
    join_leave: bool,
    /// Join/leave pushes for every subscriber, asked or not.
    force_push_join_leave: bool,
    /// Publications kept per channel; with `history_ttl` > 0 enables history (else 108).
    history_size: usize,
    /// Must be > 0 for history; retention itself follows the hub-wide `hub.history_ttl`.
    history_ttl: ConfigDuration,
    /// Subscriptions are always recoverable (as if the client asked for recovery).
    force_recovery: bool,
    /// Authenticated clients may subscribe.
    allow_subscribe_for_client: bool,
    /// With `allow_subscribe_for_client`, anonymous clients may subscribe too.
    allow_subscribe_for_anonymous: bool,
    /// Subscribed clients may publish.
    allow_publish_for_subscriber: bool,
    /// Authenticated clients may publish.
    allow_publish_for_client: bool,
    /// With `allow_publish_for_client` or `_for_subscriber`, anonymous clients may publish too.
    allow_publish_for_anonymous: bool,
    /// Subscribed clients may read history.
    allow_history_for_subscriber: bool,
    /// Authenticated clients may read history.
    allow_history_for_client: bool,
    /// Anonymous clients may read history too (with `allow_history_for_client` or, when
    /// subscribed, `allow_history_for_subscriber`; as in Centrifugo).
    allow_history_for_anonymous: bool,
    /// Subscribed clients may read presence.
    allow_presence_for_subscriber: bool,
    /// Authenticated clients may read presence.
    allow_presence_for_client: bool,
    /// Anonymous clients may read presence too (with `allow_presence_for_client` or, when
    /// subscribed, `allow_presence_for_subscriber`; as in Centrifugo).
    allow_presence_for_anonymous: bool,
    /// `name#a,b` channels: the listed users may subscribe, nobody else.
    allow_user_limited_channels: bool,
    /// Regular expression the channel (without its `namespace:` prefix) must match, else 107.
    channel_regex: String,
    /// Any bytes may be published (protobuf clients only may subscribe); else data must be
    /// JSON. Sidewire's name: Centrifugo has no per-namespace binary flag.
    allow_binary_data: bool,
    /// Subscribes go to `hub.channel.proxy.subscribe` (which then decides instead of the
    /// `allow_subscribe_*` flags; tokens and user-limited channels still come first).
    subscribe_proxy_enabled: bool,
    /// Publishes go to `hub.channel.proxy.publish`, which alone decides (and may rewrite the
    /// data or skip history).
    publish_proxy_enabled: bool,
    /// Expiring proxy subscriptions are prolonged through `hub.channel.proxy.sub_refresh`.
    sub_refresh_proxy_enabled: bool,
}

/// Default longest channel name, bytes (Centrifugo's `channel.max_length`).
pub const DEFAULT_MAX_LENGTH: usize = super::MAX_CHANNEL_LENGTH;

/// `hub.channel`: the channel name limit, namespaces and permissions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// Longest channel name, bytes; longer names answer 106 (Centrifugo's
    /// `channel.max_length`).
    pub max_length: usize,
    /// Options of channels without `:`.
    pub without_namespace: ChannelOptions,
    /// Named namespaces.
    pub namespaces: Vec<NamespaceConfig>,
    /// `hub.channel.proxy`: the subscribe, publish and sub_refresh hooks.
    pub proxy: super::proxy::ChannelProxyConfig,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            max_length: DEFAULT_MAX_LENGTH,
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            proxy: super::proxy::ChannelProxyConfig::default(),
        }
    }
}

impl ChannelConfig {
    /// Every problem, each naming its dotted field (`hub.channel.namespaces[2].channel_regex`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=super::MAX_CHANNEL_LENGTH).contains(&self.max_length) {
            problems.push(format!(
                "hub.channel.max_length: must be 1..={}, got {}",
                super::MAX_CHANNEL_LENGTH,
                self.max_length
            ));
        }
        options_problems(
            "hub.channel.without_namespace",
            &self.without_namespace,
            &mut problems,
        );
        let mut seen = HashSet::new();
        for (index, namespace) in self.namespaces.iter().enumerate() {
            let field = format!("hub.channel.namespaces[{index}]");
            if !valid_namespace_name(&namespace.name) {
                problems.push(format!(
                    "{field}.name: must match ^[-a-zA-Z0-9_.]{{2,}}$, got {:?}",
                    namespace.name
                ));
            } else if !seen.insert(namespace.name.as_str()) {
                problems.push(format!(
                    "{field}.name: duplicate namespace {:?}",
                    namespace.name
                ));
            }
            options_problems(&field, &namespace.options(), &mut problems);
        }
        self.proxy_problems(&mut problems);
        problems
    }
}

impl ChannelConfig {
    /// Every option set (`without_namespace` first) with its dotted field.
    fn all_options(&self) -> Vec<(String, ChannelOptions)> {
        let mut all = vec![(
            "hub.channel.without_namespace".to_owned(),
            self.without_namespace.clone(),
        )];
        for (index, namespace) in self.namespaces.iter().enumerate() {
            all.push((
                format!("hub.channel.namespaces[{index}]"),
                namespace.options(),
            ));
        }
        all
    }

    fn proxy_problems(&self, problems: &mut Vec<String>) {
        let all = self.all_options();
        type Flag = fn(&ChannelOptions) -> bool;
        let hooks: [(&str, &super::proxy::HookConfig, &str, Flag); 3] = [
            (
                "subscribe",
                &self.proxy.subscribe,
                "subscribe_proxy_enabled",
                |o| o.subscribe_proxy_enabled,
            ),
            (
                "publish",
                &self.proxy.publish,
                "publish_proxy_enabled",
                |o| o.publish_proxy_enabled,
            ),
            (
                "sub_refresh",
                &self.proxy.sub_refresh,
                "sub_refresh_proxy_enabled",
                |o| o.sub_refresh_proxy_enabled,
            ),
        ];
        for (name, hook, flag_name, flag) in hooks {
            let user = all
                .iter()
                .find(|(_, options)| flag(options))
                .map(|(field, _)| format!("{field}.{flag_name}"));
            problems.extend(super::proxy::hook_problems(
                &format!("hub.channel.proxy.{name}"),
                hook,
                user.as_deref(),
            ));
        }
    }
}

fn options_problems(field: &str, options: &ChannelOptions, problems: &mut Vec<String>) {
    if !options.channel_regex.is_empty()
        && let Err(error) = regex::Regex::new(&options.channel_regex)
    {
        problems.push(format!(
            "{field}.channel_regex: not a valid regular expression: {error}"
        ));
    }
    if options.history_size > MAX_NAMESPACE_HISTORY_SIZE {
        problems.push(format!(
            "{field}.history_size: at most {}, got {}",
            MAX_NAMESPACE_HISTORY_SIZE, options.history_size
        ));
    }
    let sized = options.history_size > 0;
    let timed = !options.history_ttl.is_zero();
    if sized != timed {
        problems.push(format!(
            "{field}.history_size: history needs both history_size and history_ttl above 0"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_follow_centrifugo() {
        for good in ["ab", "chat", "a-b_c.d", "A9"] {
            assert!(valid_namespace_name(good), "{good}");
        }
        for bad in ["", "a", "a:b", "a b", "ä1", "a$"] {
            assert!(!valid_namespace_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_documented_example_parses() {
        // configs/sidewire.yaml with its commented `namespaces` example uncommented.
        let text = include_str!("../../configs/sidewire.yaml");
        let mut inside = false;
        let mut example = String::new();
        for line in text.lines() {
            inside = line == "    # namespaces:" || (inside && line.starts_with("    #   "));
            if inside {
                example.push_str(&format!("    {}\n", &line[6..]));
            } else {
                example.push_str(line);
                example.push('\n');
            }
        }
        assert!(example.contains("\n    namespaces:\n"), "{example}");
        let config = super::super::Config::from_yaml_with_env(&example, &[])
            .unwrap_or_else(|e| panic!("{e}\n{example}"));
        let channel = config.hub.channel;
        assert_eq!(channel.namespaces.len(), 2);
        assert_eq!(
            channel.namespaces[0].history_ttl,
            std::time::Duration::from_secs(300)
        );
        // The demo's permissive channels without a namespace.
        assert!(channel.without_namespace.allow_subscribe_for_anonymous);
        assert!(channel.without_namespace.allow_publish_for_anonymous);
        assert!(config.hub.client.allow_anonymous_connect_without_token);
    }

    #[test]
    fn problems_name_the_dotted_field() {
        let config = ChannelConfig {
            without_namespace: ChannelOptions {
                history_size: 10,
                ..Default::default()
            },
            namespaces: vec![
                NamespaceConfig {
                    name: "chat".into(),
                    ..Default::default()
                },
                NamespaceConfig {
                    name: "chat".into(),
                    ..Default::default()
                },
                NamespaceConfig {
                    name: "x".into(),
                    channel_regex: "(".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = config.problems().join("\n");
        for field in [
            "hub.channel.without_namespace.history_size",
            "hub.channel.namespaces[1].name: duplicate",
            "hub.channel.namespaces[2].name",
            "hub.channel.namespaces[2].channel_regex",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert!(ChannelConfig::default().problems().is_empty());
    }
}
