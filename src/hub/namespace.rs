//! Channel namespaces and permissions (`hub.channel`), as in Centrifugo v6.
//!
//! A channel's namespace is the prefix before the first `:` (after a leading `$`); a channel
//! without `:` takes `without_namespace`. An unknown namespace answers 102, a channel that does
//! not match the namespace's `channel_regex` 107, history or presence where they are off 108,
//! a missing grant 103. Defaults are secure, as in Centrifugo: with nothing configured every
//! client operation is refused (103). `hub.client.insecure` grants every operation that
//! exists (Centrifugo's `client.insecure`), `$` channels still needing a subscription token.

use std::collections::HashMap;

use regex::Regex;

use super::policy::PRIVATE_PREFIX;
use crate::config::channel::{ChannelConfig, ChannelOptions};
use crate::protocol::ErrorCode;

/// Separator between a channel's namespace and the rest.
pub const NAMESPACE_BOUNDARY: char = ':';
/// Separator before the user list of a user-limited channel (`news#42`, `dialog#1,2`).
pub const USER_BOUNDARY: char = '#';
/// Separator of the users of a user-limited channel.
pub const USER_SEPARATOR: char = ',';

/// A client operation on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Subscribe.
    Subscribe,
    /// Publish.
    Publish,
    /// History.
    History,
    /// Presence and presence_stats.
    Presence,
}

/// Who asks: the user (empty when anonymous) and whether the client is subscribed to the
/// channel.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// User id; empty for an anonymous client.
    pub user: &'a str,
    /// Currently subscribed to the channel.
    pub subscribed: bool,
}

#[derive(Debug)]
struct Compiled {
    options: ChannelOptions,
    /// `None`: no regex; `Some(None)`: a regex that failed to compile (config validation
    /// refuses it; should one get here, nothing matches).
    regex: Option<Option<Regex>>,
}

impl Compiled {
    fn new(options: ChannelOptions) -> Compiled {
        let regex =
            (!options.channel_regex.is_empty()).then(|| Regex::new(&options.channel_regex).ok());
        Compiled { options, regex }
    }

    fn name_matches(&self, rest: &str) -> bool {
        match &self.regex {
            None => true,
            Some(Some(regex)) => regex.is_match(rest),
            Some(None) => false,
        }
    }
}

/// The compiled `hub.channel` rules (and `hub.client.insecure`).
#[derive(Debug)]
pub struct Namespaces {
    without_namespace: Compiled,
    named: HashMap<String, Compiled>,
    /// `hub.client.insecure`: every existing operation is granted.
    insecure: bool,
}

impl Default for Namespaces {
    fn default() -> Namespaces {
        Namespaces::new(&ChannelConfig::default(), false)
    }
}

impl Namespaces {
    /// Compiles `hub.channel`; `insecure` is `hub.client.insecure`.
    pub fn new(config: &ChannelConfig, insecure: bool) -> Namespaces {
        Namespaces {
            without_namespace: Compiled::new(config.without_namespace.clone()),
            named: config
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), Compiled::new(n.options())))
                .collect(),
            insecure,
        }
    }

    fn compiled<'a, 'b>(&'a self, channel: &'b str) -> Result<(&'a Compiled, &'b str), ErrorCode> {
        let bare = channel.strip_prefix(PRIVATE_PREFIX).unwrap_or(channel);
        match bare.split_once(NAMESPACE_BOUNDARY) {
            None => Ok((&self.without_namespace, bare)),
            Some((name, rest)) => self
                .named
                .get(name)
                .map(|compiled| (compiled, rest))
                .ok_or(ErrorCode::UnknownChannel),
        }
    }

    /// The options of `channel`'s namespace: 102 when the namespace is unknown, 107 when the
    /// channel does not match its `channel_regex`.
    pub fn resolve(&self, channel: &str) -> Result<&ChannelOptions, ErrorCode> {
        match self.compiled(channel)? {
            (compiled, rest) if compiled.name_matches(rest) => Ok(&compiled.options),
            _ => Err(ErrorCode::BadRequest),
        }
    }

    /// Whether `operation` exists on `channel` at all, for the server API (which needs no
    /// grant): 102 unknown namespace, 107 regex mismatch, 108 history or presence off.
    pub fn available(&self, channel: &str, operation: Operation) -> Result<(), ErrorCode> {
        let options = self.resolve(channel)?;
        match operation {
            Operation::History if !history_enabled(options) => Err(ErrorCode::NotAvailable),
            Operation::Presence if !options.presence => Err(ErrorCode::NotAvailable),
            _ => Ok(()),
        }
    }

    /// Whether `asker` may perform `operation` on `channel` (the channel name is assumed
    /// validated for length already).
    pub fn check(
        &self,
        channel: &str,
        operation: Operation,
        asker: Asker,
    ) -> Result<(), ErrorCode> {
        let options = self.resolve(channel)?;
        match permit(options, channel, operation, asker) {
            // Centrifugo's last resort: `client.insecure` grants what no option does, but
            // neither a feature that is off (108) nor a `$` channel without its token.
            Err(ErrorCode::PermissionDenied)
                if self.insecure && !channel.starts_with(PRIVATE_PREFIX) =>
            {
                Ok(())
            }
            outcome => outcome,
        }
    }
}

/// Whether history is available under `options` (size and TTL both set).
pub fn history_enabled(options: &ChannelOptions) -> bool {
    options.history_size > 0 && !options.history_ttl.is_zero()
}

/// Whether `user` is listed in the user-limited channel `channel` (`…#a,b`).
pub fn user_listed(channel: &str, user: &str) -> bool {
    channel
        .rsplit_once(USER_BOUNDARY)
        .is_some_and(|(_, users)| {
            !user.is_empty() && users.split(USER_SEPARATOR).any(|u| u == user)
        })
}

/// Centrifugo's permission rules for one namespace.
fn permit(
    options: &ChannelOptions,
    channel: &str,
    operation: Operation,
    asker: Asker,
) -> Result<(), ErrorCode> {
    let authenticated = !asker.user.is_empty();
    match operation {
        Operation::History if !history_enabled(options) => return Err(ErrorCode::NotAvailable),
        Operation::Presence if !options.presence => return Err(ErrorCode::NotAvailable),
        _ => {}
    }
    // Private channels need a subscription token, which the hub does not accept yet.
    if channel.starts_with(PRIVATE_PREFIX) {
        return Err(ErrorCode::PermissionDenied);
    }
    let allowed = match operation {
        Operation::Subscribe => {
            if options.subscribe_proxy_enabled {
                return Err(ErrorCode::NotAvailable);
            }
            if options.allow_user_limited_channels && channel.contains(USER_BOUNDARY) {
                if user_listed(channel, asker.user) {
                    return Ok(());
                }
                return Err(ErrorCode::PermissionDenied);
            }
            options.allow_subscribe_for_client
                && (authenticated || options.allow_subscribe_for_anonymous)
        }
        Operation::Publish => {
            if options.publish_proxy_enabled {
                return Err(ErrorCode::NotAvailable);
            }
            (authenticated || options.allow_publish_for_anonymous)
                && (options.allow_publish_for_client
                    || (options.allow_publish_for_subscriber && asker.subscribed))
        }
        // As Centrifugo: an anonymous client needs `_for_anonymous` on either path.
        Operation::History => {
            (authenticated || options.allow_history_for_anonymous)
                && (options.allow_history_for_client
                    || (options.allow_history_for_subscriber && asker.subscribed))
        }
        Operation::Presence => {
            (authenticated || options.allow_presence_for_anonymous)
                && (options.allow_presence_for_client
                    || (options.allow_presence_for_subscriber && asker.subscribed))
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ErrorCode::PermissionDenied)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::channel::NamespaceConfig;

    const ANON: Asker = Asker {
        user: "",
        subscribed: false,
    };
    const USER: Asker = Asker {
        user: "42",
        subscribed: false,
    };
    const SUBSCRIBER: Asker = Asker {
        user: "42",
        subscribed: true,
    };

    const OPERATIONS: [Operation; 4] = [
        Operation::Subscribe,
        Operation::Publish,
        Operation::History,
        Operation::Presence,
    ];

    fn namespaces(named: Vec<NamespaceConfig>) -> Namespaces {
        Namespaces::new(
            &ChannelConfig {
                without_namespace: ChannelOptions::default(),
                namespaces: named,
                ..ChannelConfig::default()
            },
            false,
        )
    }

    #[test]
    fn nothing_configured_allows_nothing() {
        let none = Namespaces::default();
        for op in OPERATIONS {
            for asker in [ANON, USER, SUBSCRIBER] {
                assert_eq!(
                    none.check("plain", op, asker).err().map(|c| c as u32),
                    Some(match op {
                        Operation::History | Operation::Presence => 108,
                        _ => 103,
                    }),
                    "{op:?}"
                );
            }
        }
        assert_eq!(
            none.resolve("unknown:x").err(),
            Some(ErrorCode::UnknownChannel)
        );
    }

    #[test]
    fn insecure_grants_what_exists_but_not_private_channels() {
        let config = ChannelConfig {
            without_namespace: ChannelOptions {
                presence: true,
                ..Default::default()
            },
            ..ChannelConfig::default()
        };
        let insecure = Namespaces::new(&config, true);
        for asker in [ANON, USER] {
            assert_eq!(insecure.check("c", Operation::Subscribe, asker), Ok(()));
            assert_eq!(insecure.check("c", Operation::Publish, asker), Ok(()));
            assert_eq!(insecure.check("c", Operation::Presence, asker), Ok(()));
            assert_eq!(
                insecure.check("c", Operation::History, asker),
                Err(ErrorCode::NotAvailable)
            );
            assert_eq!(
                insecure.check("$c", Operation::Subscribe, asker),
                Err(ErrorCode::PermissionDenied)
            );
            assert_eq!(
                insecure.check("nope:c", Operation::Subscribe, asker),
                Err(ErrorCode::UnknownChannel)
            );
        }
    }

    #[test]
    fn namespace_is_the_prefix_before_the_first_colon() {
        let ns = namespaces(vec![NamespaceConfig {
            name: "chat".into(),
            allow_subscribe_for_client: true,
            channel_regex: "^[a-z]+$".into(),
            ..Default::default()
        }]);
        assert!(ns.resolve("chat:room").is_ok());
        assert_eq!(ns.resolve("news:x"), Err(ErrorCode::UnknownChannel));
        assert_eq!(ns.resolve("$news:x"), Err(ErrorCode::UnknownChannel));
        assert!(ns.resolve("$chat:room").is_ok());
        // The regex sees the part after `chat:` only.
        assert_eq!(ns.resolve("chat:room:1"), Err(ErrorCode::BadRequest));
        assert_eq!(ns.resolve("chat:Room"), Err(ErrorCode::BadRequest));
        assert_eq!(ns.resolve("plain").cloned(), Ok(ChannelOptions::default()));
        // Secure defaults without a grant.
        assert_eq!(
            ns.check("plain", Operation::Subscribe, USER),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(ns.check("chat:room", Operation::Subscribe, USER), Ok(()));
        assert_eq!(
            ns.check("chat:room", Operation::Subscribe, ANON),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            ns.check("$chat:room", Operation::Subscribe, USER),
            Err(ErrorCode::PermissionDenied)
        );
    }

    #[test]
    fn grants_follow_client_kind() {
        let options = ChannelOptions {
            allow_publish_for_subscriber: true,
            allow_history_for_client: true,
            allow_presence_for_subscriber: true,
            presence: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60).into(),
            ..Default::default()
        };
        let check = |op, asker| permit(&options, "c", op, asker);
        assert_eq!(
            check(Operation::Publish, USER),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(check(Operation::Publish, SUBSCRIBER), Ok(()));
        assert_eq!(
            check(
                Operation::Publish,
                Asker {
                    user: "",
                    subscribed: true
                }
            ),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(check(Operation::History, USER), Ok(()));
        assert_eq!(
            check(Operation::History, ANON),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            check(Operation::Presence, USER),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(check(Operation::Presence, SUBSCRIBER), Ok(()));
        let off = ChannelOptions {
            allow_history_for_client: true,
            allow_presence_for_client: true,
            history_size: 10,
            ..Default::default()
        };
        assert_eq!(
            permit(&off, "c", Operation::History, USER),
            Err(ErrorCode::NotAvailable)
        );
        assert_eq!(
            permit(&off, "c", Operation::Presence, USER),
            Err(ErrorCode::NotAvailable)
        );
    }

    #[test]
    fn user_limited_channels_admit_listed_users_only() {
        let options = ChannelOptions {
            allow_user_limited_channels: true,
            ..Default::default()
        };
        let sub = |channel, user| {
            permit(
                &options,
                channel,
                Operation::Subscribe,
                Asker {
                    user,
                    subscribed: false,
                },
            )
        };
        assert_eq!(sub("news#42", "42"), Ok(()));
        assert_eq!(sub("news#42", "4"), Err(ErrorCode::PermissionDenied));
        assert_eq!(sub("dialog#1,2", "2"), Ok(()));
        assert_eq!(sub("dialog#1,2", "3"), Err(ErrorCode::PermissionDenied));
        assert_eq!(sub("news#", ""), Err(ErrorCode::PermissionDenied));
        assert_eq!(sub("news", "42"), Err(ErrorCode::PermissionDenied));
        assert!(!user_listed("a#b#1", "b"));
        assert!(user_listed("a#b#1", "1"));
    }

    #[test]
    fn server_api_needs_no_grant_but_the_feature() {
        let ns = namespaces(vec![NamespaceConfig {
            name: "feed".into(),
            presence: true,
            ..Default::default()
        }]);
        assert_eq!(ns.available("feed:a", Operation::Presence), Ok(()));
        assert_eq!(ns.available("feed:a", Operation::Publish), Ok(()));
        assert_eq!(
            ns.available("feed:a", Operation::History),
            Err(ErrorCode::NotAvailable)
        );
        assert_eq!(
            ns.available("nope:a", Operation::Publish),
            Err(ErrorCode::UnknownChannel)
        );
        assert_eq!(
            Namespaces::default().available("plain", Operation::History),
            Err(ErrorCode::NotAvailable)
        );
        assert_eq!(
            Namespaces::default().available("plain", Operation::Publish),
            Ok(())
        );
    }

    #[test]
    fn proxy_flags_answer_not_available() {
        let options = ChannelOptions {
            allow_subscribe_for_client: true,
            allow_publish_for_client: true,
            subscribe_proxy_enabled: true,
            publish_proxy_enabled: true,
            ..Default::default()
        };
        assert_eq!(
            permit(&options, "c", Operation::Subscribe, USER),
            Err(ErrorCode::NotAvailable)
        );
        assert_eq!(
            permit(&options, "c", Operation::Publish, USER),
            Err(ErrorCode::NotAvailable)
        );
    }
}
