//! The nodes this process has heard announce themselves recently (Centrifugo's node
//! registry): an emulation POST naming a node not in it gets 404.
//!
//! Guarantee: bounded to `MAX_KNOWN_NODES` entries; an entry not refreshed within `NODE_TTL`
//! is forgotten (a killed replica stops being routed to).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Most nodes remembered at once; announcements of further nodes are ignored until some
/// expire (a stray publisher cannot grow the table).
pub const MAX_KNOWN_NODES: usize = 1_024;
/// Period of a node's announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);
/// A node silent for this long is forgotten (Centrifugo: about 7 s).
pub const NODE_TTL: Duration = Duration::from_secs(7);

/// Known nodes and when each was last heard.
#[derive(Debug, Default)]
pub struct KnownNodes {
    seen: HashMap<Box<str>, Instant>,
}

impl KnownNodes {
    /// Records an announcement; returns whether the node was new.
    pub fn see(&mut self, node: &str, now: Instant) -> bool {
        if let Some(last) = self.seen.get_mut(node) {
            let fresh = now.duration_since(*last) <= NODE_TTL;
            *last = now;
            return !fresh;
        }
        if self.seen.len() >= MAX_KNOWN_NODES {
            self.prune(now);
            if self.seen.len() >= MAX_KNOWN_NODES {
                return false;
            }
        }
        self.seen.insert(node.into(), now);
        true
    }

    /// Whether `node` announced itself within `NODE_TTL`.
    pub fn knows(&self, node: &str, now: Instant) -> bool {
        self.seen
            .get(node)
            .is_some_and(|last| now.duration_since(*last) <= NODE_TTL)
    }

    /// Forgets every node silent for longer than `NODE_TTL`.
    pub fn prune(&mut self, now: Instant) {
        self.seen
            .retain(|_, last| now.duration_since(*last) <= NODE_TTL);
    }

    /// Number of nodes remembered (expired ones included until pruned).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no node is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nodes_expire_after_the_ttl_and_refresh_on_announce() {
        let mut nodes = KnownNodes::default();
        assert!(!nodes.knows("a", Instant::now()));
        assert!(nodes.see("a", Instant::now()));
        assert!(!nodes.see("a", Instant::now()));
        tokio::time::advance(NODE_TTL - Duration::from_millis(1)).await;
        assert!(nodes.knows("a", Instant::now()));
        assert!(!nodes.see("a", Instant::now()));
        tokio::time::advance(NODE_TTL).await;
        assert!(nodes.knows("a", Instant::now()));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!nodes.knows("a", Instant::now()));
        nodes.prune(Instant::now());
        assert!(nodes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_makes_room_as_nodes_expire() {
        let mut nodes = KnownNodes::default();
        for i in 0..MAX_KNOWN_NODES {
            assert!(nodes.see(&format!("n{i}"), Instant::now()));
        }
        assert!(!nodes.see("extra", Instant::now()));
        assert!(!nodes.knows("extra", Instant::now()));
        assert_eq!(nodes.len(), MAX_KNOWN_NODES);
        tokio::time::advance(NODE_TTL + Duration::from_secs(1)).await;
        assert!(nodes.see("extra", Instant::now()));
        assert!(nodes.knows("extra", Instant::now()));
        assert_eq!(nodes.len(), 1);
    }
}
