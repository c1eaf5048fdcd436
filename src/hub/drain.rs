//! Graceful drain of the standalone hub (`sidewire hub`): when the process phase reaches
//! `Closing { window }`, every session of every Link is told to reconnect (3001 shutdown, a
//! reconnect code) at a random moment within `window`, so sidecars' clients come back spread
//! out instead of all at once.
//!
//! It works on the Link's wire contract only: [`LinkSessions`] follows the sessions a Link
//! opened and closed (`SessionOpen` / `SessionClose` up, `SessionDisconnect` down), and the
//! disconnects are sent as ordinary `SessionDisconnect` frames on that Link. The sidecar then
//! closes the client with 3001 and answers `SessionClose`, which removes the session from the
//! hub's state through the hub's normal path. No hub state is read or locked here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::lifecycle::{self, PhaseWatch};
use crate::linkproto::{SessionDisconnect, UpstreamFrame, upstream_frame};
use crate::protocol::Disconnect;

/// How often a draining Link looks for sessions opened after the drain began.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Tracked {
    open: HashSet<u64>,
    draining: bool,
    /// Sessions opened since the drain began (only filled while draining).
    fresh: Vec<u64>,
}

/// The sessions open on one Link, as seen on the wire. Every operation is O(1) except the
/// one snapshot taken when the drain begins.
#[derive(Default)]
pub struct LinkSessions {
    tracked: Mutex<Tracked>,
}

impl LinkSessions {
    fn lock(&self) -> MutexGuard<'_, Tracked> {
        crate::sync::lock(&self.tracked)
    }

    /// A `SessionOpen` went up.
    pub fn opened(&self, session: u64) {
        let mut tracked = self.lock();
        if tracked.open.insert(session) && tracked.draining {
            tracked.fresh.push(session);
        }
    }

    /// The session ended (`SessionClose` up or `SessionDisconnect` down).
    pub fn closed(&self, session: u64) {
        self.lock().open.remove(&session);
    }

    fn is_open(&self, session: u64) -> bool {
        self.lock().open.contains(&session)
    }

    /// Starts draining; returns the sessions open now.
    fn begin_drain(&self) -> Vec<u64> {
        let mut tracked = self.lock();
        tracked.draining = true;
        tracked.open.iter().copied().collect()
    }

    fn take_fresh(&self) -> Vec<u64> {
        std::mem::take(&mut self.lock().fresh)
    }
}

/// A random moment between now and `end` (now when `end` has passed).
fn spread_until(end: Instant) -> Instant {
    let now = Instant::now();
    let span = end.saturating_duration_since(now);
    let millis = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return now;
    }
    now + Duration::from_millis(rand::rng().random_range(0..=millis))
}

fn shutdown_frame(session: u64) -> UpstreamFrame {
    let disconnect = Disconnect::SHUTDOWN;
    UpstreamFrame {
        frame: Some(upstream_frame::Frame::Disconnect(SessionDisconnect {
            session,
            code: disconnect.code,
            reason: disconnect.reason.to_string(),
        })),
    }
}

/// Runs for one Link: waits for `Closing { window }`, then sends 3001 to each of its sessions
/// at a random moment within the window (sessions opened later: within what is left of it).
/// Ends when the Link's outbound stream is gone.
pub async fn drain_link(
    sessions: Arc<LinkSessions>,
    out: mpsc::Sender<UpstreamFrame>,
    mut phase: PhaseWatch,
) {
    let window = tokio::select! {
        window = lifecycle::closing(&mut phase) => window,
        _ = out.closed() => return,
    };
    let end = Instant::now() + window;
    let mut pending: BinaryHeap<Reverse<(Instant, u64)>> = sessions
        .begin_drain()
        .into_iter()
        .map(|session| Reverse((spread_until(end), session)))
        .collect();
    tracing::info!(sessions = pending.len(), ?window, "hub: draining a link");
    loop {
        for session in sessions.take_fresh() {
            pending.push(Reverse((spread_until(end), session)));
        }
        let rescan = Instant::now() + RESCAN_INTERVAL;
        let wake = pending
            .peek()
            .map_or(rescan, |Reverse((at, _))| (*at).min(rescan));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = out.closed() => return,
        }
        let now = Instant::now();
        while let Some(Reverse((at, session))) = pending.peek().copied() {
            if at > now {
                break;
            }
            pending.pop();
            if sessions.is_open(session) {
                // A full queue means the Link is overloaded; the session then ends with the
                // Link (the sidecar reconnects it anyway).
                let _ = out.try_send(shutdown_frame(session));
                sessions.closed(session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_get_3001_spread_within_the_window() {
        let sessions = Arc::new(LinkSessions::default());
        for id in 1..=20 {
            sessions.opened(id);
        }
        sessions.closed(20);
        let (out, mut frames) = mpsc::channel(64);
        let (phase_tx, phase) = lifecycle::channel();
        let task = tokio::spawn(drain_link(sessions.clone(), out, phase));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(frames.try_recv().is_err(), "nothing before Closing");
        let started = Instant::now();
        phase_tx.send_replace(crate::lifecycle::RunPhase::Closing {
            window: Duration::from_secs(10),
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        sessions.opened(21);
        let mut seen = Vec::new();
        let mut moments = Vec::new();
        while seen.len() < 20 {
            let frame = tokio::time::timeout(Duration::from_secs(20), frames.recv())
                .await
                .expect("all within the window")
                .expect("open channel");
            let Some(upstream_frame::Frame::Disconnect(d)) = frame.frame else {
                panic!("not a disconnect");
            };
            assert_eq!(d.code, 3001);
            seen.push(d.session);
            moments.push(Instant::now() - started);
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=19).chain([21]).collect::<Vec<_>>());
        assert!(moments.iter().all(|m| *m <= Duration::from_millis(10_200)));
        let first = moments.iter().min().copied().unwrap_or_default();
        let last = moments.iter().max().copied().unwrap_or_default();
        assert!(
            last - first >= Duration::from_secs(2),
            "spread: {moments:?}"
        );
        drop(frames);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends with its link")
            .unwrap();
    }
}
