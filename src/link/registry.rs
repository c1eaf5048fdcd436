//! The sidecar's local index: live sessions of the current Link stream and the channels their
//! members belong to. Fan-out encodes a push once per encoding and hands the same bytes to
//! every member.
//!
//! Guarantee: owned by the Link's owner task (no lock); membership changes are O(1); a member
//! whose outbox overflows is ended (3008) without affecting the others, and nobody is ended
//! because of someone else's payload.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::member::{Delivery, Member as LinkMember};
use crate::protocol::client::{Push, Reply};
use crate::protocol::{Disconnect, Encoding, encode_reply};

/// A registered session: one `Arc` made when it opened, shared by its memberships.
type Handle = Arc<dyn LinkMember>;

struct Member {
    handle: Handle,
    join_leave: bool,
}

struct Entry {
    handle: Handle,
    /// Channels this session is a member of (for cleanup when it ends).
    channels: ChannelSet,
}

/// The channels of one session: nothing allocated for none or one (the common case: a hash set
/// of one channel is a ~100-byte allocation per session), a hash set from the second on, so
/// that a session in many channels still leaves each in O(1).
#[derive(Debug, Default)]
enum ChannelSet {
    #[default]
    Empty,
    One(Arc<str>),
    Many(HashSet<Arc<str>>),
}

impl ChannelSet {
    fn insert(&mut self, channel: Arc<str>) {
        match self {
            ChannelSet::Empty => *self = ChannelSet::One(channel),
            ChannelSet::One(existing) if *existing == channel => {}
            ChannelSet::One(existing) => {
                let existing = existing.clone();
                *self = ChannelSet::Many(HashSet::from([existing, channel]));
            }
            ChannelSet::Many(set) => {
                set.insert(channel);
            }
        }
    }

    /// Removes `channel`; an emptied set gives its memory back (idle sessions hold nothing).
    fn remove(&mut self, channel: &str) {
        match self {
            ChannelSet::One(existing) if &**existing == channel => *self = ChannelSet::Empty,
            ChannelSet::Many(set) => {
                set.remove(channel);
                if set.is_empty() {
                    *self = ChannelSet::Empty;
                }
            }
            ChannelSet::Empty | ChannelSet::One(_) => {}
        }
    }

    /// Every channel, once, consuming the set.
    fn into_vec(self) -> Vec<Arc<str>> {
        match self {
            ChannelSet::Empty => Vec::new(),
            ChannelSet::One(channel) => vec![channel],
            ChannelSet::Many(set) => set.into_iter().collect(),
        }
    }
}

/// Counters of one fan-out, for metrics and benches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Messages queued.
    pub delivered: usize,
    /// Members disconnected because their queue overflowed.
    pub overflowed: usize,
    /// JSON members skipped because the payload is not valid JSON (an upstream that breaks
    /// the contract); they stay connected.
    pub skipped_not_json: usize,
}

/// Sessions and channel membership of one Link.
#[derive(Default)]
pub struct Registry {
    sessions: HashMap<u64, Entry>,
    channels: HashMap<Arc<str>, HashMap<u64, Member>>,
}

impl Registry {
    /// Adds a live session.
    pub fn insert(&mut self, handle: Handle) {
        self.sessions.insert(
            handle.id(),
            Entry {
                handle,
                channels: ChannelSet::Empty,
            },
        );
    }

    /// The handle of a live session.
    pub fn get(&self, session: u64) -> Option<&Handle> {
        self.sessions.get(&session).map(|entry| &entry.handle)
    }

    /// Removes a session and all its memberships.
    pub fn remove(&mut self, session: u64) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        for channel in entry.channels.into_vec() {
            self.leave(&channel, session);
        }
    }

    fn leave(&mut self, channel: &str, session: u64) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remove(&session);
            if members.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// Applies a membership change from the upstream; returns false (and changes nothing)
    /// for an unknown session.
    pub fn set_membership(
        &mut self,
        session: u64,
        channel: &str,
        subscribed: bool,
        join_leave: bool,
    ) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return false;
        };
        if subscribed {
            let key: Arc<str> = match self.channels.get_key_value(channel) {
                Some((key, _)) => key.clone(),
                None => Arc::from(channel),
            };
            entry.channels.insert(key.clone());
            self.channels.entry(key).or_default().insert(
                session,
                Member {
                    handle: entry.handle.clone(),
                    join_leave,
                },
            );
        } else {
            entry.channels.remove(channel);
            self.leave(channel, session);
        }
        true
    }

    /// Delivers one push to every member of `channel`, encoded once per encoding. Join and
    /// leave pushes only reach members that asked for them.
    pub fn fan_out(&self, channel: &str, push: Push) -> FanOut {
        let mut counts = FanOut::default();
        let Some(members) = self.channels.get(channel) else {
            return counts;
        };
        let join_leave_only = push.join.is_some() || push.leave.is_some();
        let reply = Reply {
            push: Some(push),
            ..Default::default()
        };
        // Encoded lazily: a channel with only Protobuf members never pays for JSON.
        let mut encoded: [Option<Result<Bytes, ()>>; 2] = [None, None];
        for member in members.values() {
            if join_leave_only && !member.join_leave {
                continue;
            }
            let encoding: Encoding = member.handle.encoding();
            let slot = &mut encoded[encoding.index()];
            let bytes = slot.get_or_insert_with(|| encode_reply(encoding, &reply).map_err(|_| ()));
            match bytes {
                Ok(bytes) => match member.handle.deliver_push(bytes.clone()) {
                    Delivery::Queued => counts.delivered += 1,
                    Delivery::Overflow => counts.overflowed += 1,
                    Delivery::Ended => {}
                },
                // Not representable in this member's encoding (non-JSON bytes for a JSON
                // client): skipped, counted; the member is not punished for it.
                Err(()) => counts.skipped_not_json += 1,
            }
        }
        counts
    }

    /// Ends every session (the Link was lost) and forgets them all.
    pub fn end_all(&mut self, disconnect: &Disconnect) -> usize {
        let count = self.sessions.len();
        for entry in self.sessions.values() {
            entry.handle.end(disconnect.clone());
        }
        self.sessions.clear();
        self.channels.clear();
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::member::fake::FakeMember;
    use crate::protocol::client::{Join, Publication};

    fn session(id: u64, encoding: Encoding, limit: usize) -> Arc<FakeMember> {
        Arc::new(FakeMember::new(id, encoding, limit))
    }

    fn publication(data: &'static [u8]) -> Push {
        Push {
            channel: "c".into(),
            r#pub: Some(Publication {
                data: Bytes::from_static(data),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fan_out_shares_bytes_per_encoding() {
        let mut registry = Registry::default();
        let a = session(1, Encoding::Json, 1024);
        let b = session(2, Encoding::Json, 1024);
        let c = session(3, Encoding::Protobuf, 1024);
        for handle in [&a, &b, &c] {
            registry.insert(handle.clone());
            registry.set_membership(handle.id, "c", true, false);
        }
        let counts = registry.fan_out("c", publication(b"{}"));
        assert_eq!(counts.delivered, 3);
        let take = |h: &FakeMember| match h.take().as_slice() {
            [one] => one.clone(),
            other => panic!("{other:?}"),
        };
        let (ja, jb, pc) = (take(&a), take(&b), take(&c));
        assert_eq!(
            ja.as_ptr(),
            jb.as_ptr(),
            "JSON bytes are shared, not re-encoded"
        );
        assert_ne!(ja, pc);
    }

    #[test]
    fn join_leave_reaches_only_those_who_asked() {
        let mut registry = Registry::default();
        let a = session(1, Encoding::Json, 1024);
        let b = session(2, Encoding::Json, 1024);
        registry.insert(a.clone());
        registry.insert(b.clone());
        registry.set_membership(1, "c", true, true);
        registry.set_membership(2, "c", true, false);
        let push = Push {
            channel: "c".into(),
            join: Some(Join::default()),
            ..Default::default()
        };
        assert_eq!(registry.fan_out("c", push).delivered, 1);
        assert!(b.take().is_empty());
    }

    #[test]
    fn overflow_ends_only_the_slow_member() {
        let mut registry = Registry::default();
        let slow = session(1, Encoding::Json, 40);
        let fast = session(2, Encoding::Json, 1 << 20);
        for handle in [&slow, &fast] {
            registry.insert(handle.clone());
            registry.set_membership(handle.id, "c", true, false);
        }
        let mut overflowed = 0;
        for _ in 0..5 {
            overflowed += registry.fan_out("c", publication(b"[1,2,3]")).overflowed;
        }
        assert_eq!(overflowed, 1);
        assert!(slow.is_ended());
        assert!(!fast.is_ended());
    }

    #[test]
    fn binary_payload_skips_json_members_without_ending_them() {
        let mut registry = Registry::default();
        let json = session(1, Encoding::Json, 1024);
        let proto = session(2, Encoding::Protobuf, 1024);
        for handle in [&json, &proto] {
            registry.insert(handle.clone());
            registry.set_membership(handle.id, "c", true, false);
        }
        let counts = registry.fan_out("c", publication(&[0xff, 0xfe]));
        assert_eq!(counts.skipped_not_json, 1);
        assert_eq!(counts.delivered, 1);
        assert!(json.take().is_empty());
        assert!(!json.is_ended());
        assert_eq!(proto.take().len(), 1);
    }

    #[test]
    fn channel_set_holds_one_without_a_table_and_many_in_one() {
        let mut set = ChannelSet::default();
        set.insert(Arc::from("a"));
        set.insert(Arc::from("a"));
        assert!(matches!(&set, ChannelSet::One(c) if &**c == "a"));
        set.remove("b");
        assert!(matches!(set, ChannelSet::One(_)));
        set.insert(Arc::from("b"));
        set.insert(Arc::from("c"));
        let mut all = set.into_vec();
        all.sort();
        assert_eq!(all, [Arc::from("a"), Arc::from("b"), Arc::from("c")]);

        let mut set = ChannelSet::default();
        set.insert(Arc::from("a"));
        set.insert(Arc::from("b"));
        set.remove("a");
        set.remove("b");
        assert!(matches!(set, ChannelSet::Empty));
        set.insert(Arc::from("a"));
        set.remove("a");
        assert!(matches!(set, ChannelSet::Empty));
        assert!(set.into_vec().is_empty());
    }

    #[test]
    fn remove_cleans_every_channel_of_a_session() {
        let mut registry = Registry::default();
        let a = session(1, Encoding::Json, 1024);
        let b = session(2, Encoding::Json, 1024);
        registry.insert(a.clone());
        registry.insert(b.clone());
        for channel in ["x", "y", "z"] {
            registry.set_membership(a.id, channel, true, false);
        }
        registry.set_membership(b.id, "y", true, false);
        registry.set_membership(a.id, "z", false, false);
        registry.remove(a.id);
        assert_eq!(registry.channels.len(), 1);
        assert_eq!(registry.channels["y"].len(), 1);
        registry.remove(b.id);
        assert!(registry.channels.is_empty());
    }

    #[test]
    fn remove_cleans_channels() {
        let mut registry = Registry::default();
        registry.insert(session(1, Encoding::Json, 1024));
        registry.set_membership(1, "a", true, false);
        registry.set_membership(1, "b", true, false);
        registry.set_membership(1, "b", false, false);
        assert!(
            !registry.set_membership(9, "a", true, false),
            "unknown session"
        );
        registry.remove(1);
        assert!(registry.channels.is_empty());
        assert!(registry.sessions.is_empty());
    }
}
