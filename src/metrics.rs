//! Prometheus metrics (OpenMetrics text at `/metrics` on the admin listener). One `Metrics`
//! value is created at startup and passed by handle; there is no global registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// The lowest and highest status with a cached counter (every valid HTTP status).
const CACHED_STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// One slot per status in [`CACHED_STATUSES`], each filled on first use with the counter of
/// its family member (a clone shares the count), so a hot path increments without hashing
/// labels or taking the family's lock.
#[derive(Debug)]
struct StatusCounterCache(Box<[std::sync::OnceLock<Counter>]>);

impl Default for StatusCounterCache {
    fn default() -> Self {
        let slots = usize::from(CACHED_STATUSES.end() - CACHED_STATUSES.start()) + 1;
        StatusCounterCache((0..slots).map(|_| std::sync::OnceLock::new()).collect())
    }
}

impl Metrics {
    /// Counts one passthrough response with `status` in `passthrough_requests`.
    pub fn count_passthrough(&self, status: u16) {
        let slot = status
            .checked_sub(*CACHED_STATUSES.start())
            .and_then(|index| self.passthrough_by_status.0.get(usize::from(index)));
        let family = &self.passthrough_requests;
        match slot {
            Some(slot) => slot
                .get_or_init(|| family.get_or_create(&StatusLabels { status }).clone())
                .inc(),
            None => family.get_or_create(&StatusLabels { status }).inc(),
        };
    }
}

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
    /// `passthrough_requests`' counters by status, found without the family's hashed lookup.
    passthrough_by_status: StatusCounterCache,
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
        self.encode_with(|_| {})
    }

    /// Encodes every metric, after the families `extra` registers first (the embedded hub's
    /// `sidewire_hub_*` and `sidewire_engine_*` ones; this module knows nothing of their
    /// owners). The registry's prefix is `sidewire`.
    pub fn encode_with(&self, extra: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::with_prefix("sidewire");
        // Known reasons are exported from the start (at 0), so rates work from the first
        // drop and dashboards find the family.
        for reason in LINK_DROP_REASONS {
            let _ = self
                .link_frames_dropped
                .get_or_create(&ReasonLabels { reason });
        }
        extra(&mut registry);
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
    fn passthrough_statuses_count_through_the_cache_into_the_family() {
        let metrics = Metrics::default();
        for status in [200, 200, 599, 100, 99, 600, 200] {
            metrics.count_passthrough(status);
        }
        let text = metrics.encode();
        for (status, count) in [(200, 3), (599, 1), (100, 1), (99, 1), (600, 1)] {
            let line =
                format!("sidewire_passthrough_requests_total{{status=\"{status}\"}} {count}");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn families_registered_by_the_caller_are_encoded() {
        let metrics = Metrics::default();
        let extra = Counter::<u64>::default();
        extra.inc();
        let text = metrics.encode_with(|registry| {
            registry.register("hub_extra", "A family from outside", extra.clone());
        });
        assert!(text.contains("sidewire_hub_extra_total 1"), "{text}");
        assert!(!metrics.encode().contains("sidewire_hub_"));
    }
}
