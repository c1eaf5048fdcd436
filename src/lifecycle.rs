//! Run phases of the process, published on a watch channel that every long-lived task holds
//! (listeners, sessions, the Link, the hub's upkeep). Readiness and tests read the same signal.

use std::time::Duration;

use tokio::sync::watch;

/// Where the process is in its life. Phases only move forward:
/// `Running → Draining → Closing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Serving normally.
    Running,
    /// Shutdown requested: readiness is false so load balancers deregister the pod; listeners
    /// still accept for `shutdown.delay`.
    Draining,
    /// Listeners stopped; live sessions are disconnected with 3001, each at a random moment
    /// within `window`.
    Closing {
        /// Spread of the disconnects.
        window: Duration,
    },
}

impl RunPhase {
    /// Whether shutdown has been requested (readiness false).
    pub fn is_shutting_down(self) -> bool {
        self != RunPhase::Running
    }
}

/// Receiving side held by tasks.
pub type PhaseWatch = watch::Receiver<RunPhase>;

/// A phase channel starting at `Running`.
pub fn channel() -> (watch::Sender<RunPhase>, PhaseWatch) {
    watch::channel(RunPhase::Running)
}

/// Resolves once the phase is `Closing` (or the sender is gone).
pub async fn closing(phase: &mut PhaseWatch) -> Duration {
    loop {
        if let RunPhase::Closing { window } = *phase.borrow_and_update() {
            return window;
        }
        if phase.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}
