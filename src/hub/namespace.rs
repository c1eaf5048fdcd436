//! Channel namespaces and permissions (`hub.channel`), as in Centrifugo v6.
//!
//! A channel's namespace is the prefix before the first `:` (after a leading `$`); a channel
//! without `:` takes `without_namespace`. An unknown namespace answers 102, a channel that does
//! not match the namespace's `channel_regex` 107, history or presence where they are off 108,
//! a missing grant 103. Without a `hub.channel` section every channel stays open to every
//! client (only `$` private channels are refused), as before namespaces existed.

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

#[derive(Debug)]
struct Rules {
    without_namespace: Compiled,
    named: HashMap<String, Compiled>,
}

/// The compiled `hub.channel` rules; [`Namespaces::open`] when the section is absent.
#[derive(Debug, Default)]
pub struct Namespaces {
    rules: Option<Rules>,
}

/// Channel options after resolution: `None` in open mode (no `hub.channel`).
pub type Resolved<'a> = Option<&'a ChannelOptions>;

impl Namespaces {
    /// Open mode: every channel allowed to every client except `$` private channels.
    pub fn open() -> Namespaces {
        Namespaces { rules: None }
    }

    /// Compiles `hub.channel` (open mode when `None`).
    pub fn new(config: Option<&ChannelConfig>) -> Namespaces {
        let rules = config.map(|config| Rules {
            without_namespace: Compiled::new(config.without_namespace.clone()),
            named: config
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), Compiled::new(n.options())))
                .collect(),
        });
        Namespaces { rules }
    }

    fn compiled<'a, 'b>(
        &'a self,
        channel: &'b str,
    ) -> Result<Option<(&'a Compiled, &'b str)>, ErrorCode> {
        let Some(rules) = &self.rules else {
            return Ok(None);
        };
        let bare = channel.strip_prefix(PRIVATE_PREFIX).unwrap_or(channel);
        match bare.split_once(NAMESPACE_BOUNDARY) {
            None => Ok(Some((&rules.without_namespace, bare))),
            Some((name, rest)) => rules
                .named
                .get(name)
                .map(|compiled| Some((compiled, rest)))
                .ok_or(ErrorCode::UnknownChannel),
        }
    }

    /// The options of `channel`'s namespace: 102 when the namespace is unknown, 107 when the
    /// channel does not match its `channel_regex`; `Ok(None)` in open mode.
    pub fn resolve(&self, channel: &str) -> Result<Resolved<'_>, ErrorCode> {
        match self.compiled(channel)? {
            None => Ok(None),
            Some((compiled, rest)) if compiled.name_matches(rest) => Ok(Some(&compiled.options)),
            Some(_) => Err(ErrorCode::BadRequest),
        }
    }

    /// Whether `operation` exists on `channel` at all, for the server API (which needs no
    /// grant): 102 unknown namespace, 107 regex mismatch, 108 history or presence off.
    pub fn available(&self, channel: &str, operation: Operation) -> Result<(), ErrorCode> {
        let Some(options) = self.resolve(channel)? else {
            return Ok(());
        };
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
        let Some(options) = self.resolve(channel)? else {
            return open_rule(channel);
        };
        permit(options, channel, operation, asker)
    }
}

/// The rule of open mode: everything but `$` private channels.
fn open_rule(channel: &str) -> Result<(), ErrorCode> {
    if channel.starts_with(PRIVATE_PREFIX) {
        Err(ErrorCode::PermissionDenied)
    } else {
        Ok(())
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
        Operation::History => {
            (options.allow_history_for_client
                && (authenticated || options.allow_history_for_anonymous))
                || (options.allow_history_for_subscriber && asker.subscribed)
        }
        Operation::Presence => {
            (options.allow_presence_for_client
                && (authenticated || options.allow_presence_for_anonymous))
                || (options.allow_presence_for_subscriber && asker.subscribed)
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

    fn namespaces(named: Vec<NamespaceConfig>) -> Namespaces {
        Namespaces::new(Some(&ChannelConfig {
            without_namespace: ChannelOptions::default(),
            namespaces: named,
            ..Default::default()
        }))
    }

    #[test]
    fn open_mode_allows_everything_but_private_channels() {
        let open = Namespaces::open();
        for op in [
            Operation::Subscribe,
            Operation::Publish,
            Operation::History,
            Operation::Presence,
        ] {
            assert_eq!(open.check("any:thing#1", op, ANON), Ok(()));
            assert_eq!(
                open.check("$secret", op, USER),
                Err(ErrorCode::PermissionDenied)
            );
        }
        assert_eq!(open.resolve("unknown:x"), Ok(None));
    }

    #[test]
    fn namespace_is_the_prefix_before_the_first_colon() {
        let ns = namespaces(vec![NamespaceConfig {
            name: "chat".into(),
            allow_subscribe_for_client: true,
            channel_regex: "^[a-z]+$".into(),
            ..Default::default()
        }]);
        assert!(ns.resolve("chat:room").is_ok_and(|o| o.is_some()));
        assert_eq!(ns.resolve("news:x"), Err(ErrorCode::UnknownChannel));
        assert_eq!(ns.resolve("$news:x"), Err(ErrorCode::UnknownChannel));
        assert!(ns.resolve("$chat:room").is_ok());
        // The regex sees the part after `chat:` only.
        assert_eq!(ns.resolve("chat:room:1"), Err(ErrorCode::BadRequest));
        assert_eq!(ns.resolve("chat:Room"), Err(ErrorCode::BadRequest));
        assert_eq!(
            ns.resolve("plain").map(|o| o.cloned()),
            Ok(Some(ChannelOptions::default()))
        );
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
            history_ttl: Duration::from_secs(60),
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
            Namespaces::open().available("nope:a", Operation::History),
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
