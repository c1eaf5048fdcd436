//! Results of recent server-API publications by `(channel, idempotency_key)`, so that a retried
//! publish returns the first result instead of publishing twice.
//!
//! Guarantees: an entry lives [`IDEMPOTENCY_TTL`] at most; the cache holds at most
//! [`IDEMPOTENCY_MAX_ENTRIES`] entries and [`IDEMPOTENCY_MAX_BYTES`] bytes of keys and epochs
//! (the oldest entries go first when either bound is reached). Every operation is
//! O(1) amortised plus the entries it expires.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long a publish result is remembered (Centrifugo keeps it 5 minutes).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);
/// Most remembered results.
pub const IDEMPOTENCY_MAX_ENTRIES: usize = 10_000;
/// Most bytes of channel names, keys and epochs remembered.
pub const IDEMPOTENCY_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Fixed cost counted per entry besides its strings, bytes.
const ENTRY_OVERHEAD: usize = 64;

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    at: Instant,
    offset: u64,
    epoch: String,
}

/// The bounded, TTL'd cache of publish results.
#[derive(Debug, Default)]
pub struct IdempotencyCache {
    entries: HashMap<Key, Entry>,
    /// Insertion order (= expiry order: one TTL for all).
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
}

fn size(key: &Key, epoch: &str) -> usize {
    key.0.len() + key.1.len() + epoch.len() + ENTRY_OVERHEAD
}

impl IdempotencyCache {
    /// The remembered result (offset, epoch) of `key` in `channel`, if still fresh.
    pub fn get(&mut self, channel: &str, key: &str, now: Instant) -> Option<(u64, String)> {
        self.expire(now);
        let entry = self.entries.get(&(channel.to_owned(), key.to_owned()))?;
        Some((entry.offset, entry.epoch.clone()))
    }

    /// Remembers the result of a publication (a present key is left as it was: the first
    /// result wins).
    pub fn insert(&mut self, channel: &str, key: &str, result: (u64, String), now: Instant) {
        self.expire(now);
        let key: Key = (channel.to_owned(), key.to_owned());
        let cost = size(&key, &result.1);
        if self.entries.contains_key(&key) || cost > IDEMPOTENCY_MAX_BYTES {
            return;
        }
        while self.entries.len() >= IDEMPOTENCY_MAX_ENTRIES
            || self.bytes + cost > IDEMPOTENCY_MAX_BYTES
        {
            if !self.pop_oldest() {
                break;
            }
        }
        self.bytes += cost;
        self.order.push_back((key.clone(), now));
        self.entries.insert(
            key,
            Entry {
                at: now,
                offset: result.0,
                epoch: result.1,
            },
        );
    }

    /// Number of remembered results.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= IDEMPOTENCY_TTL)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((key, at)) = self.order.pop_front() else {
            return false;
        };
        if self.entries.get(&key).is_some_and(|e| e.at == at)
            && let Some(entry) = self.entries.remove(&key)
        {
            self.bytes = self.bytes.saturating_sub(size(&key, &entry.epoch));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_result_is_returned_until_the_ttl_passes() {
        let mut cache = IdempotencyCache::default();
        let now = Instant::now();
        assert_eq!(cache.get("c", "k", now), None);
        cache.insert("c", "k", (1, "e".into()), now);
        cache.insert("c", "k", (2, "e".into()), now);
        assert_eq!(cache.get("c", "k", now), Some((1, "e".into())));
        assert_eq!(cache.get("other", "k", now), None, "keys are per channel");
        tokio::time::advance(IDEMPOTENCY_TTL - Duration::from_secs(1)).await;
        assert_eq!(cache.get("c", "k", Instant::now()), Some((1, "e".into())));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get("c", "k", Instant::now()), None);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes, 0);
    }

    #[test]
    fn entries_and_bytes_are_bounded() {
        let mut cache = IdempotencyCache::default();
        let now = Instant::now();
        for i in 0..IDEMPOTENCY_MAX_ENTRIES + 10 {
            cache.insert("c", &i.to_string(), (i as u64, "e".into()), now);
        }
        assert_eq!(cache.len(), IDEMPOTENCY_MAX_ENTRIES);
        assert_eq!(cache.get("c", "0", now), None, "oldest evicted first");
        let big = "k".repeat(IDEMPOTENCY_MAX_BYTES / 4);
        for i in 0..8 {
            cache.insert("c", &format!("{i}{big}"), (1, "e".into()), now);
        }
        assert!(cache.bytes <= IDEMPOTENCY_MAX_BYTES);
        assert!(cache.order.len() <= cache.entries.len() + 1);
    }
}
