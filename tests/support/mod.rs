//! The one harness of the integration tests: runs the real `sidewire` binary (and the
//! standalone `sidewire hub`, Redis, a balancer, a scripted Link upstream, a fake backend) on
//! ephemeral ports, speaks WebSocket client protocol v2 and the streaming transports to it in
//! both encodings, calls its HTTP endpoints and parses its metrics.
//!
//! One submodule per duty, every item re-exported here (`use crate::support::*`):
//! [`process`] children, [`ws`] WebSocket client and command builders, [`http`] raw HTTP and
//! the server API, [`stream`] HTTP-stream/SSE sessions, [`metrics`] OpenMetrics, [`backend`] a
//! fake passthrough backend, [`redis`] Redis servers, [`balancer`] the Node balancer;
//! [`scripted_upstream`] (a misbehaving Link upstream) stays a named module.
//!
//! Rules kept here so that every test file gets them for free:
//! - no fixed ports: every listener is `127.0.0.1:0`, addresses come from the "listening" line;
//! - no sleeping to wait for startup: we await that line (bounded by [`STARTUP_TIMEOUT`]);
//! - every wait is bounded, and a failed wait panics with what was received meanwhile;
//! - child processes are killed on drop; their stderr is copied to the test's stderr (shown by
//!   `cargo test` for failing tests) and its tail is quoted in startup errors.
//!
//! Test binaries use only parts of it: `dead_code` is allowed for the whole tree.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

mod backend;
mod balancer;
mod http;
mod metrics;
mod process;
mod redis;
pub mod scripted_upstream;
mod stream;
mod ws;

// Each binary uses only some of these.
#[allow(unused_imports)]
pub use self::backend::*;
#[allow(unused_imports)]
pub use self::balancer::*;
#[allow(unused_imports)]
pub use self::http::*;
#[allow(unused_imports)]
pub use self::metrics::*;
#[allow(unused_imports)]
pub use self::process::*;
#[allow(unused_imports)]
pub use self::redis::*;
#[allow(unused_imports)]
pub use self::stream::*;
#[allow(unused_imports)]
pub use self::ws::*;

/// Bound for "the new config / certificate is in force" (scraped or polled state).
pub const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Time allowed for a process to print its "listening" line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time allowed for one expected reply, push or close.
pub const WAIT: Duration = Duration::from_secs(5);
/// Time allowed for one HTTP exchange with the admin or API listener.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidewire")
}

// === waiting ===

/// Polls `check` every 50 ms until it returns true; panics after `timeout`. Only for values
/// that cannot be awaited as events (readiness, HTTP-visible state).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("condition not reached within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
