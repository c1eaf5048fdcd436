//! Per-hook metrics: calls, errors by kind, latency. Every hook's series exist from the
//! start (at 0), so dashboards and rates find them before the first call.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The hooks, as metric labels.
pub const HOOKS: [&str; 6] = [
    "connect",
    "refresh",
    "subscribe",
    "publish",
    "sub_refresh",
    "rpc",
];
/// Kinds of hook failures, as metric labels (see `CallError::kind`).
pub const ERROR_KINDS: [&str; 5] = ["overloaded", "timeout", "transport", "status", "response"];

/// Which hook.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// One of [`HOOKS`].
    pub hook: &'static str,
}

/// Which hook failed, how.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookErrorLabels {
    /// One of [`HOOKS`].
    pub hook: &'static str,
    /// One of [`ERROR_KINDS`].
    pub kind: &'static str,
}

type HistogramMaker = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    // 1 ms … ~3.8 s.
    Histogram::new(exponential_buckets(0.001, 2.5, 10))
}

/// Hook metrics of one hub; clones share the series.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Calls started (failures included, over-limit ones too).
    pub calls: Family<HookLabels, Counter>,
    /// Calls that failed (the client got error 100), by kind.
    pub errors: Family<HookErrorLabels, Counter>,
    /// Duration of calls that reached the backend, seconds.
    pub duration: Family<HookLabels, Histogram, HistogramMaker>,
}

impl Default for ProxyMetrics {
    fn default() -> ProxyMetrics {
        let metrics = ProxyMetrics {
            calls: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as HistogramMaker),
        };
        for hook in HOOKS {
            let _ = metrics.calls.get_or_create(&HookLabels { hook });
            let _ = metrics.duration.get_or_create(&HookLabels { hook });
            for kind in ERROR_KINDS {
                let _ = metrics
                    .errors
                    .get_or_create(&HookErrorLabels { hook, kind });
            }
        }
        metrics
    }
}
