//! Prometheus metrics (OpenMetrics text at `/metrics` on the admin listener). One `Metrics`
//! value is created at startup and passed by handle; there is no global registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::engine::redis::RedisEngine;
use crate::hub::counters::HubCounters;

/// Transport and encoding of a connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `websocket`, `http_stream`, `sse`.
    pub transport: &'static str,
    /// `json`, `protobuf`.
    pub encoding: &'static str,
}

/// Disconnect code of an ended session.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// Disconnect code (3000 when the client just left).
    pub code: u32,
}

/// Client command type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `connect`, `subscribe`, `publish`, ...
    pub command: &'static str,
}

/// Outcome of an emulation POST.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `delivered`, `unknown_session`, `unknown_node`, `bad_request`, `too_large`, `busy`.
    pub outcome: &'static str,
}

/// HTTP status of a passthrough response.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Status code.
    pub status: u16,
}

/// Result of a config reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `applied`, `rejected`, `unchanged`, `restart_required`.
    pub result: &'static str,
}

/// Why something was dropped, refused or closed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Link frames: `unknown_session`, `unsolicited_reply`, `channel_mismatch`, `not_json`,
    /// `unexpected_welcome`. Connections: `max_connections`, `max_connections_per_ip`
    /// (refusals); `handshake`, `idle` (timeouts).
    pub reason: &'static str,
}

/// Every `reason` of `sidewire_link_frames_dropped_total`.
pub const LINK_DROP_REASONS: [&str; 5] = [
    "unknown_session",
    "unsolicited_reply",
    "channel_mismatch",
    "not_json",
    "unexpected_welcome",
];

/// Every metric sidewire exports. Counters are cheap atomics; clones share them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live client sessions, all transports (drain waits for it to reach 0).
    pub sessions_live: Gauge,
    /// Live client connections.
    pub connections: Family<TransportLabels, Gauge>,
    /// Sessions opened.
    pub sessions_opened: Family<TransportLabels, Counter>,
    /// Sessions closed, by disconnect code.
    pub sessions_closed: Family<CodeLabels, Counter>,
    /// Client commands, by type.
    pub commands: Family<CommandLabels, Counter>,
    /// Bytes received from clients (frames and emulation data).
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Sessions disconnected because their outbound queue overflowed (3008).
    pub queue_overflows: Counter,
    /// 1 while the current Link is up.
    pub link_up: Gauge,
    /// Link streams opened after the first.
    pub link_reconnects: Counter,
    /// Emulation POSTs, by outcome.
    pub emulation_requests: Family<OutcomeLabels, Counter>,
    /// Requests refused because of their Origin.
    pub origin_rejections: Counter,
    /// Passthrough responses, by status.
    pub passthrough_requests: Family<StatusLabels, Counter>,
    /// Config reloads, by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Downstream Link frames (or deliveries) dropped by the sidecar, by reason.
    pub link_frames_dropped: Family<ReasonLabels, Counter>,
    /// Session sends that found the uplink full past its deadline (the session ended, 3004).
    pub uplink_send_timeouts: Counter,
    /// Open client TCP connections (what `max_connections` counts).
    pub tcp_connections: Gauge,
    /// Client connections closed at once after accept, by cap.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Failed accepts on the client listener (e.g. out of file descriptors).
    pub accept_errors: Counter,
    /// Client connections closed by the edge's timers, by reason.
    pub connection_timeouts: Family<ReasonLabels, Counter>,
    /// Request bodies abandoned because they made no progress (408).
    pub request_body_timeouts: Counter,
    /// Commands the upstream did not answer within `command_timeout` (the client got error 100).
    pub link_command_timeouts: Counter,
}

impl Metrics {
    /// Encodes every metric as OpenMetrics text.
    pub fn encode(&self) -> String {
        self.encode_with_hub(None)
    }

    /// Encodes every metric, plus the embedded hub's `sidewire_hub_*` counters when given.
    pub fn encode_with_hub(&self, hub: Option<&HubCounters>) -> String {
        self.encode_with_engine(hub, None)
    }

    /// Encodes every metric, plus the embedded hub's `sidewire_hub_*` counters and its
    /// engine's `sidewire_engine_*` ones when a hub is given (the memory engine reports no
    /// commands and `engine_connected` 1).
    pub fn encode_with_engine(
        &self,
        hub: Option<&HubCounters>,
        engine: Option<&RedisEngine>,
    ) -> String {
        let mut registry = Registry::with_prefix("sidewire");
        // Known reasons are exported from the start (at 0), so rates work from the first
        // drop and dashboards find the family.
        for reason in LINK_DROP_REASONS {
            let _ = self
                .link_frames_dropped
                .get_or_create(&ReasonLabels { reason });
        }
        if let Some(hub) = hub {
            register_hub(&mut registry, hub);
            register_engine(
                &mut registry,
                engine,
                HubCounters::read(&hub.engine_events_dropped),
            );
        }
        registry.register(
            "connections",
            "Live client connections",
            self.connections.clone(),
        );
        registry.register(
            "sessions_live",
            "Live client sessions, all transports",
            self.sessions_live.clone(),
        );
        registry.register(
            "sessions_opened",
            "Client sessions opened",
            self.sessions_opened.clone(),
        );
        registry.register(
            "sessions_closed",
            "Client sessions closed, by disconnect code",
            self.sessions_closed.clone(),
        );
        registry.register(
            "commands",
            "Client commands, by type",
            self.commands.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received from clients",
            self.bytes_in.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes written to clients",
            self.bytes_out.clone(),
        );
        registry.register(
            "queue_overflows",
            "Sessions disconnected with 3008 slow (outbound queue full)",
            self.queue_overflows.clone(),
        );
        registry.register(
            "link_up",
            "1 while the upstream Link is up",
            self.link_up.clone(),
        );
        registry.register(
            "link_reconnects",
            "Link streams re-established",
            self.link_reconnects.clone(),
        );
        registry.register(
            "emulation_requests",
            "Emulation POSTs, by outcome",
            self.emulation_requests.clone(),
        );
        registry.register(
            "origin_rejections",
            "Requests refused by allowed_origins",
            self.origin_rejections.clone(),
        );
        registry.register(
            "passthrough_requests",
            "Requests proxied to the backend, by response status",
            self.passthrough_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result",
            self.config_reloads.clone(),
        );
        registry.register(
            "link_frames_dropped",
            "Downstream Link frames or deliveries dropped by the sidecar, by reason",
            self.link_frames_dropped.clone(),
        );
        registry.register(
            "uplink_send_timeouts",
            "Session sends that found the uplink full past its deadline",
            self.uplink_send_timeouts.clone(),
        );
        registry.register(
            "tcp_connections",
            "Open client TCP connections (counted against max_connections)",
            self.tcp_connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once after accept, by cap",
            self.connections_refused.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts on the client listener",
            self.accept_errors.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Client connections closed by the handshake or idle timeout",
            self.connection_timeouts.clone(),
        );
        registry.register(
            "request_body_timeouts",
            "Request bodies abandoned after request_body_timeout without progress",
            self.request_body_timeouts.clone(),
        );
        registry.register(
            "link_command_timeouts",
            "Commands the upstream did not answer within command_timeout",
            self.link_command_timeouts.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    /// Counts a closed session by close code; `queue_overflow` (the session ended with
    /// `Disconnect::SLOW`) also counts a queue overflow. The caller tells, so that metrics
    /// knows no protocol code.
    pub fn session_closed(&self, code: u32, queue_overflow: bool) {
        self.sessions_closed
            .get_or_create(&CodeLabels { code })
            .inc();
        if queue_overflow {
            self.queue_overflows.inc();
        }
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
    let read =
        |pick: fn(&crate::engine::redis::EngineCounters) -> &std::sync::atomic::AtomicU64| {
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
    use super::*;

    #[test]
    fn encodes_openmetrics_with_moved_counters() {
        let metrics = Metrics::default();
        metrics.session_closed(3008, true);
        metrics
            .commands
            .get_or_create(&CommandLabels { command: "publish" })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains("sidewire_sessions_closed_total{code=\"3008\"} 1"),
            "{text}"
        );
        assert!(text.contains("sidewire_queue_overflows_total 1"), "{text}");
        assert!(
            text.contains("sidewire_commands_total{command=\"publish\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn hub_counters_are_exported_when_given() {
        let metrics = Metrics::default();
        let hub = HubCounters::default();
        HubCounters::bump(&hub.history_evictions);
        HubCounters::bump(&hub.link_channel_overflows);
        let text = metrics.encode_with_hub(Some(&hub));
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
        assert!(!metrics.encode().contains("sidewire_hub_"));
    }
}
