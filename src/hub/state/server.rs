//! Server-API operations on sessions and channels (server-side subscribe and unsubscribe,
//! refresh, history removal, channel listing, node counts). They keep the lock order of
//! [`HubState`] (sessions → shard → ledger) and hold at most one shard lock at a time.

use std::sync::Arc;

use bytes::Bytes;
use wildmatch::WildMatch;

use super::{HubState, SessionKey, Sessions, client_readable, lock, ttl_of, unix_now};
use crate::hub::channel::Subscriber;
use crate::hub::policy::{check_data, validate_channel};
use crate::linkproto::{SessionReply, upstream_frame};
use crate::protocol::client::{
    Push, Refresh as RefreshPush, Reply, Subscribe as SubscribePush, Unsubscribe,
};
use crate::protocol::{Disconnect, ErrorCode};

/// Unsubscribe code of a server-side unsubscribe (Centrifugo's "server unsubscribe").
pub const UNSUBSCRIBE_SERVER: u32 = 2000;
/// Disconnect of a connection the server API declared expired.
pub const CONNECTION_EXPIRED: Disconnect = Disconnect::CONNECTION_EXPIRED;

/// Counts of the hub for the `info` method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Live sessions.
    pub num_clients: usize,
    /// Distinct users among them (the anonymous user counts once).
    pub num_users: usize,
    /// Channels with at least one subscriber.
    pub num_channels: usize,
    /// Subscriptions across channels.
    pub num_subs: usize,
}

/// The sessions of `user`, or only its connection `client` when given (an empty `user` with a
/// `client` names one anonymous connection).
pub(super) fn matching_sessions(
    sessions: &Sessions,
    user: &str,
    client: Option<&str>,
    keep: &[String],
) -> Vec<SessionKey> {
    sessions
        .users
        .get(user)
        .map(|keys| {
            keys.iter()
                .copied()
                .filter(|key| {
                    sessions.get(*key).is_some_and(|s| {
                        client.is_none_or(|c| s.client == c) && !keep.contains(&s.client)
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

impl HubState {
    fn push_to_session(&self, key: SessionKey, push: Push) {
        self.emit_session(
            key,
            upstream_frame::Frame::Reply(SessionReply {
                session: key.1,
                reply: Some(Reply {
                    push: Some(push),
                    ..Default::default()
                }),
            }),
        );
    }

    /// Server-side subscribe: every matching session not yet in `channel` is subscribed (the
    /// sidecar gets a Membership frame, the client a `push.subscribe` carrying `data`).
    /// Sessions at `hub.client.channel_limit`, or JSON sessions on a binary-only channel, are
    /// skipped. Returns how many sessions were subscribed; 107 for a bad channel or data, 106
    /// when the channel would exceed `hub.max_channels`.
    pub fn server_subscribe(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        data: Bytes,
    ) -> Result<usize, ErrorCode> {
        let settings = self.settings();
        validate_channel(channel, settings.config.channel.max_length)?;
        if !data.is_empty() {
            check_data(&data, false)?;
        }
        self.enforce_history();
        let mut sessions = self.sessions();
        let keys = matching_sessions(&sessions, user, client, &[]);
        let mut subscribed = 0;
        for key in keys {
            let Some(session) = sessions.get_mut(key) else {
                continue;
            };
            if !session.usable || session.channels.contains(channel) {
                continue;
            }
            if session.channels.len() >= settings.config.client.channel_limit
                || client_readable(&settings, session.protobuf, channel).is_err()
            {
                tracing::debug!(
                    user,
                    channel,
                    "hub: server-side subscribe skipped a session"
                );
                continue;
            }
            let info = session.info();
            let mut shard = self.shard(channel);
            let name: Arc<str> = match shard.get_key_value(channel) {
                Some((name, _)) => name.clone(),
                None => {
                    self.reserve_channel(&settings)?;
                    Arc::from(channel)
                }
            };
            session.channels.insert(name.clone());
            let state = shard.entry(name).or_default();
            state.add_subscriber(
                key,
                Subscriber {
                    info: info.clone(),
                    join_leave: false,
                },
            );
            let push = Push {
                channel: channel.to_owned(),
                subscribe: Some(SubscribePush {
                    epoch: state.epoch.clone(),
                    offset: state.top,
                    data: data.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            // The push, then the membership, under the shard lock: in order with the
            // channel's publications.
            self.push_to_session(key, push);
            self.membership(key, channel, true, false);
            let name: Arc<str> = Arc::from(channel);
            self.joined(state, &name, &info, true, false);
            subscribed += 1;
        }
        Ok(subscribed)
    }

    /// Server-side unsubscribe: matching sessions subscribed to `channel` leave it (Membership
    /// removed, `push.unsubscribe` 2000 "server unsubscribe"). Returns how many left.
    pub fn server_unsubscribe(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
    ) -> Result<usize, ErrorCode> {
        validate_channel(channel, self.settings().config.channel.max_length)?;
        let mut sessions = self.sessions();
        let keys = matching_sessions(&sessions, user, client, &[]);
        let mut left = 0;
        for key in keys {
            let subscribed = sessions
                .get_mut(key)
                .is_some_and(|s| s.channels.remove(channel));
            if !subscribed {
                continue;
            }
            self.membership(key, channel, false, false);
            self.push_to_session(
                key,
                Push {
                    channel: channel.to_owned(),
                    unsubscribe: Some(Unsubscribe {
                        code: UNSUBSCRIBE_SERVER,
                        reason: "server unsubscribe".to_owned(),
                    }),
                    ..Default::default()
                },
            );
            self.remove_subscriber(channel, key);
            left += 1;
        }
        Ok(left)
    }

    /// Server-side refresh of matching sessions: `expired` (or an `expire_at` already past)
    /// disconnects them with 3005; otherwise their expiry becomes `expire_at` (none when
    /// absent) and the client gets a refresh push with the new ttl. Returns how many.
    pub fn refresh_sessions(
        &self,
        user: &str,
        client: Option<&str>,
        expired: bool,
        expire_at: Option<u64>,
    ) -> usize {
        let expired = expired || expire_at.is_some_and(|at| at <= unix_now());
        let mut sessions = self.sessions();
        let keys = matching_sessions(&sessions, user, client, &[]);
        for key in &keys {
            if expired {
                self.disconnect(*key, &CONNECTION_EXPIRED);
                self.remove_session(&mut sessions, *key);
                continue;
            }
            let Some(session) = sessions.get_mut(*key) else {
                continue;
            };
            session.expires_at = expire_at;
            if let Some(at) = expire_at {
                sessions.schedule_expiry(at, *key);
            }
            self.push_to_session(
                *key,
                Push {
                    refresh: Some(RefreshPush {
                        expires: expire_at.is_some(),
                        ttl: ttl_of(expire_at),
                    }),
                    ..Default::default()
                },
            );
        }
        keys.len()
    }

    /// Removes a channel's history. Its position (offset, epoch) stays while the channel is
    /// known, i.e. while it has subscribers; a channel left with neither is forgotten.
    pub fn history_remove(&self, channel: &str) -> Result<(), ErrorCode> {
        validate_channel(channel, self.settings().config.channel.max_length)?;
        {
            let mut shard = self.shard(channel);
            if let Some(state) = shard.get_mut(channel) {
                let mut ledger = self.ledger();
                while state.pop_front(&mut ledger).is_some() {}
                drop(ledger);
                self.forget_if_idle(&mut shard, channel);
            }
        }
        self.enforce_history();
        Ok(())
    }

    /// Channels with subscribers (name, number of subscribers) whose name matches `pattern`,
    /// at most `max` of them; one shard lock at a time.
    pub fn active_channels(&self, pattern: Option<&WildMatch>, max: usize) -> Vec<(String, usize)> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (name, state) in shard.iter() {
                if found.len() >= max {
                    return found;
                }
                if state.subscribers.is_empty() || pattern.is_some_and(|p| !p.matches(name)) {
                    continue;
                }
                found.push((name.to_string(), state.subscribers.len()));
            }
        }
        found
    }

    /// Session, user, channel and subscription counts (one shard lock at a time).
    pub fn node_counts(&self) -> NodeCounts {
        let (num_clients, num_users) = {
            let sessions = self.sessions();
            (sessions.count, sessions.users.len())
        };
        let mut counts = NodeCounts {
            num_clients,
            num_users,
            ..NodeCounts::default()
        };
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for state in shard.values() {
                if !state.subscribers.is_empty() {
                    counts.num_channels += 1;
                    counts.num_subs += state.subscribers.len();
                }
            }
        }
        counts
    }
}
