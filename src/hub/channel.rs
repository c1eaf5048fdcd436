//! One channel of the hub: offsets and epoch, history, subscribers indexed by Link; and the
//! global history ledger that bounds history across channels in bytes and in time.
//!
//! Guarantee: the ledger's `held_bytes` is the sum of the encoded sizes of the publications
//! kept in every channel's history (every removal goes through [`Channel::pop_front`] or
//! [`Channel::pop_evicted`]); the ledger's order holds at most `2 × held + LEDGER_SLACK`
//! entries (stale entries are remembered by sequence and compacted away in bulk).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;

use crate::protocol::ErrorCode;
use crate::protocol::client::{ClientInfo, HistoryResult, Publication};

/// A session as the hub knows it: Link id plus the sidecar's session id.
pub type SessionKey = (u64, u64);

/// Stale ledger entries tolerated before the order is compacted.
const LEDGER_SLACK: usize = 1024;

/// One kept publication. History replies clone the `Publication`, whose payload is a
/// reference-counted `Bytes`: the data itself is shared, not copied.
#[derive(Debug)]
pub struct Stored {
    /// The publication as sent.
    pub publication: Publication,
    /// Encoded size, bytes (what the ledger accounts).
    pub size: usize,
    /// Ledger sequence number, unique across channels.
    pub seq: u64,
}

/// A subscriber's presence info and join/leave wish.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Presence info.
    pub info: ClientInfo,
    /// Whether it receives join/leave pushes.
    pub join_leave: bool,
}

/// One channel.
#[derive(Debug)]
pub struct Channel {
    /// Stream epoch.
    pub epoch: String,
    /// Offset of the last publication.
    pub top: u64,
    /// Kept publications, oldest first.
    pub history: VecDeque<Stored>,
    /// Subscribers with their presence info.
    pub subscribers: HashMap<SessionKey, Subscriber>,
    /// Subscribed sessions per Link, so a publication goes once to each Link that has any.
    pub links: HashMap<u64, HashSet<u64>>,
    /// Subscribers that asked for join/leave pushes.
    pub join_leave_subscribers: usize,
    /// Subscriptions under way through a shared engine (they keep the channel, and its
    /// engine pub/sub, alive until they commit or fail).
    pub pending: u32,
}

impl Channel {
    /// A fresh channel with a new epoch.
    pub fn new() -> Channel {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Channel {
            epoch: id[..8].to_owned(),
            top: 0,
            history: VecDeque::new(),
            subscribers: HashMap::new(),
            links: HashMap::new(),
            join_leave_subscribers: 0,
            pending: 0,
        }
    }

    /// Adds a subscriber (replacing none: the caller checked it is new).
    pub fn add_subscriber(&mut self, key: SessionKey, subscriber: Subscriber) {
        if subscriber.join_leave {
            self.join_leave_subscribers += 1;
        }
        self.links.entry(key.0).or_default().insert(key.1);
        self.subscribers.insert(key, subscriber);
    }

    /// Removes a subscriber; its entry if it was one.
    pub fn remove_subscriber(&mut self, key: SessionKey) -> Option<Subscriber> {
        let subscriber = self.subscribers.remove(&key)?;
        if subscriber.join_leave {
            self.join_leave_subscribers = self.join_leave_subscribers.saturating_sub(1);
        }
        if let Some(sessions) = self.links.get_mut(&key.0) {
            sessions.remove(&key.1);
            if sessions.is_empty() {
                self.links.remove(&key.0);
            }
        }
        Some(subscriber)
    }

    /// Whether the channel can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty() && self.pending == 0
    }

    /// Removes the oldest kept publication (a trim by `history_size`), keeping the ledger's
    /// accounting; its ledger entry becomes stale.
    pub fn pop_front(&mut self, ledger: &mut Ledger) -> Option<Stored> {
        let stored = self.history.pop_front()?;
        ledger.forget(stored.size, Some(stored.seq));
        Some(stored)
    }

    /// Removes the oldest kept publication whose ledger entry the ledger already handed out
    /// ([`Ledger::next_to_drop`]).
    pub fn pop_evicted(&mut self, ledger: &mut Ledger) -> Option<Stored> {
        let stored = self.history.pop_front()?;
        ledger.forget(stored.size, None);
        Some(stored)
    }

    /// Publications after `offset` when the client's position (`epoch`, `offset`) is still
    /// covered by the history; `None` when it is not (the stream cannot be recovered).
    pub fn since(&self, epoch: &str, offset: u64) -> Option<Vec<Publication>> {
        let first_kept = self
            .history
            .front()
            .map_or(self.top + 1, |s| s.publication.offset);
        if epoch != self.epoch || offset > self.top || offset + 1 < first_kept {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|s| s.publication.offset > offset)
                .map(|s| s.publication.clone())
                .collect(),
        )
    }

    /// History reply: `limit` (> 0 at most that many, < 0 all, 0 none), `since` a position
    /// (error 112 when it is gone), `reverse` newest first.
    pub fn history(
        &self,
        limit: i32,
        since: Option<(&str, u64)>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        let mut publications: Vec<&Publication> =
            self.history.iter().map(|s| &s.publication).collect();
        if let Some((epoch, offset)) = since {
            let first_kept = publications.first().map_or(self.top + 1, |p| p.offset);
            if epoch != self.epoch || offset > self.top || offset + 1 < first_kept {
                return Err(ErrorCode::UnrecoverablePosition);
            }
            publications.retain(|p| p.offset > offset);
        }
        if reverse {
            publications.reverse();
        }
        let limit = match limit {
            0 => 0,
            n if n < 0 => publications.len(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        publications.truncate(limit);
        Ok(HistoryResult {
            publications: publications.into_iter().cloned().collect(),
            epoch: self.epoch.clone(),
            offset: self.top,
        })
    }
}

impl Default for Channel {
    fn default() -> Channel {
        Channel::new()
    }
}

#[derive(Debug)]
struct Entry {
    channel: Arc<str>,
    seq: u64,
    at: Instant,
}

/// Global order of every kept publication (oldest first) with the bytes they hold, so
/// eviction (byte cap) and expiry (TTL) take the oldest first across channels in O(evicted).
#[derive(Debug, Default)]
pub struct Ledger {
    order: VecDeque<Entry>,
    /// Sequences of entries still in `order` whose publication is gone.
    stale: HashSet<u64>,
    next_seq: u64,
    held: usize,
    held_bytes: usize,
}

/// What the ledger says about its oldest entry.
pub enum Oldest {
    /// Nothing to do.
    Keep,
    /// Remove this channel's front publication if its sequence is `seq` (`evicted`: for the
    /// byte cap rather than the TTL).
    Drop {
        /// Channel of the entry.
        channel: Arc<str>,
        /// Sequence of the entry.
        seq: u64,
        /// Whether it goes for the byte cap.
        evicted: bool,
    },
}

impl Ledger {
    /// Stores `publication` at the end of `channel`'s history; returns its size.
    pub fn store(
        &mut self,
        name: &Arc<str>,
        channel: &mut Channel,
        publication: Publication,
        now: Instant,
    ) -> usize {
        let size = publication.encoded_len();
        let seq = self.next_seq;
        self.next_seq += 1;
        channel.history.push_back(Stored {
            publication,
            size,
            seq,
        });
        self.order.push_back(Entry {
            channel: name.clone(),
            seq,
            at: now,
        });
        self.held += 1;
        self.held_bytes += size;
        size
    }

    fn forget(&mut self, size: usize, stale: Option<u64>) {
        self.held = self.held.saturating_sub(1);
        self.held_bytes = self.held_bytes.saturating_sub(size);
        if let Some(seq) = stale {
            self.stale.insert(seq);
            if self.stale.len() > self.held + LEDGER_SLACK {
                let stale = std::mem::take(&mut self.stale);
                self.order.retain(|entry| !stale.contains(&entry.seq));
            }
        }
    }

    /// Pops the oldest live entry if it is over the byte cap or the TTL (stale entries on the
    /// way are discarded).
    pub fn next_to_drop(&mut self, max_bytes: usize, ttl: Duration, now: Instant) -> Oldest {
        loop {
            let Some(front) = self.order.front() else {
                return Oldest::Keep;
            };
            if self.stale.remove(&front.seq) {
                self.order.pop_front();
                continue;
            }
            let expired = now.saturating_duration_since(front.at) > ttl;
            let over = self.held_bytes > max_bytes;
            if !expired && !over {
                return Oldest::Keep;
            }
            return match self.order.pop_front() {
                Some(entry) => Oldest::Drop {
                    channel: entry.channel,
                    seq: entry.seq,
                    evicted: !expired,
                },
                None => Oldest::Keep,
            };
        }
    }

    /// Bytes of history held across channels.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publication(offset: u64, size: usize) -> Publication {
        Publication {
            data: Bytes::from(vec![b'1'; size]),
            offset,
            ..Default::default()
        }
    }

    fn drain(ledger: &mut Ledger, channels: &mut HashMap<Arc<str>, Channel>, max: usize) {
        while let Oldest::Drop { channel, seq, .. } =
            ledger.next_to_drop(max, Duration::from_secs(300), Instant::now())
        {
            if let Some(state) = channels.get_mut(&channel)
                && state.history.front().is_some_and(|s| s.seq == seq)
            {
                state.pop_evicted(ledger);
            }
        }
    }

    #[test]
    fn byte_cap_evicts_oldest_first_across_channels() {
        let mut ledger = Ledger::default();
        let mut channels: HashMap<Arc<str>, Channel> = HashMap::new();
        for (i, name) in ["a", "b", "a", "c"].iter().enumerate() {
            let name: Arc<str> = Arc::from(*name);
            let channel = channels.entry(name.clone()).or_default();
            channel.top += 1;
            let top = channel.top;
            ledger.store(&name, channel, publication(top, 1000), Instant::now());
            assert_eq!(ledger.held, i + 1);
        }
        let one = ledger.held_bytes() / 4;
        drain(&mut ledger, &mut channels, 2 * one);
        assert_eq!(ledger.held_bytes(), 2 * one);
        // The first "a" and "b" went; the second "a" and "c" stay.
        assert_eq!(channels["a"].history.len(), 1);
        assert_eq!(channels["a"].history[0].publication.offset, 2);
        assert!(channels["b"].history.is_empty());
        assert_eq!(channels["c"].history.len(), 1);
    }

    #[test]
    fn stale_entries_are_compacted_and_accounting_follows_trims() {
        let mut ledger = Ledger::default();
        let mut channels: HashMap<Arc<str>, Channel> = HashMap::new();
        let name: Arc<str> = Arc::from("a");
        for offset in 1..=5000 {
            let channel = channels.entry(name.clone()).or_default();
            ledger.store(&name, channel, publication(offset, 10), Instant::now());
            // history_size 3: trim by size, leaving stale ledger entries behind.
            while channel.history.len() > 3 {
                channel.pop_front(&mut ledger);
            }
        }
        assert_eq!(ledger.held, 3);
        assert!(ledger.order.len() <= 2 * 3 + LEDGER_SLACK + 1);
        // Stale entries are skipped: the byte cap evicts the live ones, oldest first.
        drain(&mut ledger, &mut channels, 0);
        assert_eq!(ledger.held, 0);
        assert_eq!(ledger.held_bytes(), 0);
        assert!(channels["a"].history.is_empty());
        let sizes: usize = channels["a"].history.iter().map(|s| s.size).sum();
        assert_eq!(ledger.held_bytes(), sizes);
    }

    #[test]
    fn since_and_history_follow_positions() {
        let mut ledger = Ledger::default();
        let name: Arc<str> = Arc::from("a");
        let mut channel = Channel::new();
        for offset in 1..=3 {
            channel.top = offset;
            ledger.store(&name, &mut channel, publication(offset, 1), Instant::now());
        }
        let epoch = channel.epoch.clone();
        assert_eq!(channel.since(&epoch, 1).map(|p| p.len()), Some(2));
        assert!(channel.since("other", 1).is_none());
        channel.pop_front(&mut ledger);
        assert!(channel.since(&epoch, 0).is_none());
        assert_eq!(
            channel
                .history(-1, None, true)
                .map(|h| h.publications[0].offset),
            Ok(3)
        );
        assert_eq!(
            channel.history(-1, Some(("x", 1)), false).map(|_| ()),
            Err(ErrorCode::UnrecoverablePosition)
        );
    }
}
