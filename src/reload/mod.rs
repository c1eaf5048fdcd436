//! Live reload: the config file (and the TLS and `*_file` secret files) are watched through their directories, so
//! a Kubernetes ConfigMap/Secret `..data` symlink swap is seen; SIGHUP and a slow poll trigger
//! the same path. Each trigger reads every input on a blocking thread ([`load`]), skips inputs
//! identical to the ones in force, and hands the candidate to [`Runtime::apply`], which runs the
//! pure [`prepare::prepare`] and then an infallible commit.
//!
//! Guarantees: an invalid config is rejected with a log line naming the field (and a metric),
//! and nothing of it is applied; the inputs count as in force only after a commit, so a
//! rejected config is tried again on the next event or poll (e.g. a certificate mounted a
//! moment after the config), quietly while its inputs stay the same.

pub mod load;
pub mod prepare;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::lifecycle::{self, PhaseWatch};
use prepare::Candidate;

/// Quiet time after a file event before reloading (editors and kubelet write in steps).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Safety-net poll, for file systems without change events.
const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file or directory changed.
    FileEvent,
    /// SIGHUP.
    Signal,
    /// The periodic poll.
    Poll,
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the directories holding `files`; each event becomes a [`Trigger::FileEvent`].
fn watch_directories(
    files: &[PathBuf],
    triggers: mpsc::Sender<Trigger>,
) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Only changes count: our own reads of the file produce access events.
        let changed = event.is_ok_and(|event| {
            matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
        });
        if changed {
            // A full queue already holds a pending trigger: nothing is lost.
            let _ = triggers.try_send(Trigger::FileEvent);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "config watch unavailable; relying on SIGHUP and polling");
            return None;
        }
    };
    let mut directories: Vec<PathBuf> = files.iter().map(|f| directory_of(f)).collect();
    directories.sort();
    directories.dedup();
    for directory in directories {
        if let Err(error) = watcher.watch(&directory, RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %directory.display(), %error, "cannot watch directory");
        }
    }
    Some(watcher)
}

/// Result of applying a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The same config as the one in force.
    Unchanged,
    /// Applied; the listed fields only take effect after a restart.
    Applied {
        /// Dotted names of fields that need a restart.
        restart_required: Vec<&'static str>,
    },
    /// Rejected; the old config stays in force.
    Rejected(String),
}

/// What the reload loop drives (the running sidecar, `app::Runtime`): reload knows nothing of
/// the app, the app implements this.
pub trait Target: Send + Sync + 'static {
    /// The config in force.
    fn config(&self) -> Arc<Config>;
    /// Prepares and commits `candidate`, or rejects it changing nothing.
    fn apply(&self, candidate: Candidate) -> ReloadOutcome;
    /// Counts one reload by `result` (`sidewire_config_reloads_total{result}`).
    fn count(&self, result: &'static str);
}

/// Runs the reload loop for the config at `path` until the process closes. `triggers`
/// carries SIGHUPs (and file events, fed by the watcher this function installs). This one
/// task serializes the reloads.
pub async fn run(
    path: PathBuf,
    runtime: Arc<impl Target>,
    triggers: mpsc::Sender<Trigger>,
    mut incoming: mpsc::Receiver<Trigger>,
    mut phase: PhaseWatch,
) {
    // The fingerprint of the inputs in force: unknown at first, since the files may have
    // changed since startup, so the first pass (below) compares them with the config in force.
    let mut in_force: Option<Vec<u8>> = None;
    // The fingerprint of the last rejected inputs: retried, but reported once.
    let mut rejected: Option<Vec<u8>> = None;
    let mut pending = Some(Trigger::Poll);
    let mut watched = vec![path.clone()];
    if let Some(tls) = &runtime.config().tls {
        watched.push(PathBuf::from(&tls.cert_file));
        watched.push(PathBuf::from(&tls.key_file));
    }
    let mut watcher = watch_directories(&watched, triggers.clone());
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.tick().await;
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    loop {
        let mut trigger = match pending.take() {
            Some(trigger) => trigger,
            None => tokio::select! {
                trigger = incoming.recv() => match trigger {
                    Some(trigger) => trigger,
                    None => break,
                },
                _ = poll.tick() => Trigger::Poll,
                _ = &mut closing => break,
            },
        };
        if trigger == Trigger::FileEvent {
            // Let the writer finish, and fold the burst of events into one reload; a SIGHUP
            // among them keeps its meaning (reload even if unchanged).
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(next) = incoming.try_recv() {
                if next == Trigger::Signal {
                    trigger = Trigger::Signal;
                }
            }
        }
        let base = runtime.config();
        let file = path.clone();
        let attempt = match tokio::task::spawn_blocking(move || load::read(&file, &base)).await {
            Ok(attempt) => attempt,
            Err(error) => {
                tracing::error!(%error, "config reload: the read task failed; keeping the current config");
                runtime.count("rejected");
                continue;
            }
        };
        // The files this config names (even a rejected one: the certificate it waits for)
        // are watched.
        if attempt.files != watched {
            watched = attempt.files;
            watcher = watch_directories(&watched, triggers.clone());
        }
        if trigger != Trigger::Signal && in_force.as_ref() == Some(&attempt.fingerprint) {
            continue;
        }
        let outcome = match attempt.candidate {
            Ok(candidate) => runtime.apply(candidate),
            Err(rejection) => ReloadOutcome::Rejected(rejection.to_string()),
        };
        if let ReloadOutcome::Rejected(reason) = &outcome {
            let repeated = rejected.as_ref() == Some(&attempt.fingerprint);
            rejected = Some(attempt.fingerprint);
            if repeated && trigger != Trigger::Signal {
                tracing::debug!(path = %path.display(), %reason, "config reload: still rejected");
                continue;
            }
        } else {
            in_force = Some(attempt.fingerprint);
            rejected = None;
        }
        report(runtime.as_ref(), &outcome);
    }
    drop(watcher);
}

/// Logs `outcome` and counts it in `sidewire_config_reloads_total{result}`.
fn report(runtime: &impl Target, outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Unchanged => {
            tracing::info!("config reload: unchanged");
            runtime.count("unchanged");
        }
        ReloadOutcome::Applied { restart_required } if restart_required.is_empty() => {
            tracing::info!("config reload: applied");
            runtime.count("applied");
        }
        ReloadOutcome::Applied { restart_required } => {
            tracing::warn!(
                fields = ?restart_required,
                "config reload: applied, but these fields need a restart to take effect"
            );
            runtime.count("restart_required");
        }
        ReloadOutcome::Rejected(reason) => {
            tracing::error!(%reason, "config reload rejected; the previous config stays in force");
            runtime.count("rejected");
        }
    }
}
