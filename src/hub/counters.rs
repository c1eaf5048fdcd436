//! Counters and gauges of the hub, readable without importing the edge, and their export as
//! `sidewire_hub_*` / `sidewire_engine_*` families ([`HubCounters::register`]).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::redis::{EngineCounters, RedisEngine};

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

    /// Registers these counters (`hub_*`) and the engine's (`engine_*`; zeros and connected
    /// for the memory engine, `engine` `None`) as samples read now.
    pub fn register(&self, registry: &mut Registry, engine: Option<&RedisEngine>) {
        register_hub(registry, self);
        register_engine(registry, engine, Self::read(&self.engine_events_dropped));
    }
}

/// Kind of a hub Link-queue overflow.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Repair action after an overflow.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Registers the hub's counters as constant samples read now.
fn register_hub(registry: &mut Registry, hub: &HubCounters) {
    let read = HubCounters::read;
    let overflows = Family::<KindLabels, Counter>::default();
    overflows
        .get_or_create(&KindLabels { kind: "channel" })
        .inc_by(read(&hub.link_channel_overflows));
    overflows
        .get_or_create(&KindLabels { kind: "session" })
        .inc_by(read(&hub.link_session_overflows));
    registry.register(
        "hub_link_overflows",
        "Hub frames that did not fit a Link queue, by what pays (channel: lagging subscription; session: stalled session)",
        overflows,
    );
    let repairs = Family::<ActionLabels, Counter>::default();
    repairs
        .get_or_create(&ActionLabels {
            action: "unsubscribe",
        })
        .inc_by(read(&hub.insufficient_state_unsubscribes));
    repairs
        .get_or_create(&ActionLabels {
            action: "disconnect",
        })
        .inc_by(read(&hub.insufficient_state_disconnects));
    registry.register(
        "hub_insufficient_state",
        "Subscriptions (2500) and sessions (3010) told to recover after a Link queue overflow",
        repairs,
    );
    registry.register(
        "hub_oversized_replies",
        "Replies replaced by error 106 for exceeding hub.max_frame_bytes",
        ConstCounter::new(read(&hub.oversized_replies)),
    );
    registry.register(
        "hub_history_evictions",
        "Publications evicted from history for hub.history_max_bytes",
        ConstCounter::new(read(&hub.history_evictions)),
    );
    registry.register(
        "hub_history_bytes",
        "Bytes of history held across channels",
        ConstGauge::new(i64::try_from(read(&hub.history_bytes)).unwrap_or(i64::MAX)),
    );
    registry.register(
        "hub_channels",
        "Channels the hub knows",
        ConstGauge::new(i64::try_from(read(&hub.channels)).unwrap_or(i64::MAX)),
    );
    registry.register(
        "hub_proxy_calls",
        "Proxy hook calls to the backend, by hook",
        hub.proxy.calls.clone(),
    );
    registry.register(
        "hub_proxy_errors",
        "Proxy hook calls that failed (client got error 100), by hook and kind",
        hub.proxy.errors.clone(),
    );
    registry.register(
        "hub_proxy_duration_seconds",
        "Duration of proxy hook calls, by hook",
        hub.proxy.duration.clone(),
    );
}

/// Registers the engine's counters (zeros and connected for the memory engine).
fn register_engine(
    registry: &mut Registry,
    engine: Option<&RedisEngine>,
    engine_events_dropped: u64,
) {
    let read = |pick: fn(&EngineCounters) -> &std::sync::atomic::AtomicU64| {
        engine.map_or(0, |e| HubCounters::read(pick(e.counters())))
    };
    registry.register(
        "engine_commands",
        "Commands sent to the shared engine (Redis)",
        ConstCounter::new(read(|c| &c.commands)),
    );
    registry.register(
        "engine_errors",
        "Engine commands that failed (refused, timed out, disconnected)",
        ConstCounter::new(read(|c| &c.errors)),
    );
    let micros = read(|c| &c.latency_micros);
    registry.register(
        "engine_command_seconds",
        "Total time spent in engine commands (with engine_commands: the mean latency)",
        ConstCounter::new(micros as f64 / 1_000_000.0),
    );
    registry.register(
        "engine_pubsub_messages",
        "Pub/sub messages received from the engine",
        ConstCounter::new(read(|c| &c.messages_in)),
    );
    registry.register(
        "engine_resyncs",
        "Pub/sub resubscriptions after an engine reconnect",
        ConstCounter::new(read(|c| &c.resyncs)),
    );
    registry.register(
        "engine_events_dropped",
        "Presence / join / leave updates for the engine dropped on a full queue",
        ConstCounter::new(engine_events_dropped),
    );
    registry.register(
        "engine_connected",
        "1 while the engine is usable (always with the memory engine), else 0",
        ConstGauge::new(i64::from(engine.is_none_or(RedisEngine::connected))),
    );
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn exported(hub: &HubCounters) -> String {
        let mut registry = Registry::with_prefix("sidewire");
        hub.register(&mut registry, None);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap_or_else(|e| panic!("{e}"));
        text
    }

    #[test]
    fn hub_counters_are_exported_when_given() {
        let hub = HubCounters::default();
        HubCounters::bump(&hub.history_evictions);
        HubCounters::bump(&hub.link_channel_overflows);
        let text = exported(&hub);
        assert!(
            text.contains("sidewire_hub_history_evictions_total 1"),
            "{text}"
        );
        assert!(
            text.contains("sidewire_hub_link_overflows_total{kind=\"channel\"} 1"),
            "{text}"
        );
        assert!(text.contains("sidewire_hub_channels 0"), "{text}");
        assert!(
            text.contains("sidewire_hub_proxy_calls_total{hook=\"connect\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sidewire_hub_proxy_duration_seconds_count{hook=\"rpc\"} 0"),
            "{text}"
        );
        assert!(text.contains("sidewire_engine_connected 1"), "{text}");
    }
}
