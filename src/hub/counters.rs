//! Counters and gauges of the hub, readable without importing the edge (the lead wires the
//! export as `sidewire_hub_*`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Hub counters; every field only grows except the gauges (`history_bytes`, `channels`).
#[derive(Debug, Default)]
pub struct HubCounters {
    /// Channel pushes that did not fit a Link queue (each marks a channel lagging on a Link).
    pub link_channel_overflows: AtomicU64,
    /// Session frames that did not fit a Link queue (each marks a session stalled).
    pub link_session_overflows: AtomicU64,
    /// Subscriptions ended with unsubscribe 2500 "insufficient state" by a repair.
    pub insufficient_state_unsubscribes: AtomicU64,
    /// Sessions disconnected with 3010 "insufficient state" by a repair.
    pub insufficient_state_disconnects: AtomicU64,
    /// Replies replaced by error 106 because they exceeded `hub.max_frame_bytes`.
    pub oversized_replies: AtomicU64,
    /// Publications evicted from history for `hub.history_max_bytes`.
    pub history_evictions: AtomicU64,
    /// Gauge: bytes of history held across channels.
    pub history_bytes: AtomicU64,
    /// Gauge: channels known.
    pub channels: AtomicU64,
    /// Proxy hook calls, errors and latency, by hook.
    pub proxy: super::proxy::metrics::ProxyMetrics,
    /// Presence / join / leave events for the shared engine dropped on a full queue.
    pub engine_events_dropped: AtomicU64,
}

impl HubCounters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
