//! Operating sidewire, against the real binary on ephemeral loopback ports: the passthrough
//! proxy, live config reload, TLS with certificate rotation, graceful drain on SIGTERM, and
//! Prometheus metrics. Each test starts its own processes (killed on drop) and bounds every
//! wait; the only polling is of scraped state (metrics, readiness, served certificate).

mod support;

#[path = "operations/drain.rs"]
mod drain;
#[path = "operations/fast_pass.rs"]
mod fast_pass;
#[path = "operations/metrics.rs"]
mod metrics;
#[path = "operations/passthrough.rs"]
mod passthrough;
#[path = "operations/reload.rs"]
mod reload;
#[path = "operations/tls.rs"]
mod tls;
