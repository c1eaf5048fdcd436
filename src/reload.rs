//! Live reload: the config file (and the TLS and `*_file` secret files) are watched through their directories, so
//! a Kubernetes ConfigMap/Secret `..data` symlink swap is seen; SIGHUP and a slow poll trigger
//! the same path. Each trigger re-reads the file, skips identical bytes, parses, validates and
//! hands the result to [`Runtime::apply`].
//!
//! Guarantee: an invalid file is rejected with a log line naming the field (and a metric); the
//! config in force stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::Runtime;
use crate::config::{Config, sources};
use crate::lifecycle::{self, PhaseWatch};
use crate::metrics::ResultLabels;

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

/// Runs the reload loop for the config at `path` until the process closes. `triggers`
/// carries SIGHUPs (and file events, fed by the watcher this function installs).
pub async fn run(
    path: PathBuf,
    runtime: Arc<Runtime>,
    triggers: mpsc::Sender<Trigger>,
    mut incoming: mpsc::Receiver<Trigger>,
    mut phase: PhaseWatch,
) {
    // Unknown at first: the file may have changed since it was loaded at startup, so the first
    // pass (below) compares it with the config in force.
    let mut last_bytes: Option<Vec<u8>> = None;
    let mut pending = Some(Trigger::Poll);
    let tls_files = |runtime: &Runtime| -> Vec<PathBuf> {
        let settings = runtime.edge().settings();
        settings
            .config
            .tls
            .as_ref()
            .map(|tls| vec![PathBuf::from(&tls.cert_file), PathBuf::from(&tls.key_file)])
            .unwrap_or_default()
    };
    let mut watched = vec![path.clone()];
    watched.extend(tls_files(&runtime));
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
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "config reload: cannot read the file; keeping the current config");
                count_rejected(&runtime);
                continue;
            }
        };
        // The secret files the config names are part of its input: a rotated Kubernetes
        // Secret reloads like an edited config.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let secret_files = sources::secret_files(&text);
        let mut bytes = bytes;
        for file in &secret_files {
            bytes.push(0);
            bytes.extend(std::fs::read(file).unwrap_or_default());
        }
        if trigger != Trigger::Signal && last_bytes.as_deref() == Some(&bytes[..]) {
            // Same config: the event may be a certificate rotation.
            if trigger == Trigger::FileEvent {
                runtime.reload_tls();
            }
            continue;
        }
        last_bytes = Some(bytes);
        match Config::from_yaml(&text) {
            Ok(config) => {
                runtime.apply(config);
                // TLS and secret files may have moved: watch their directories too.
                let mut files = vec![path.clone()];
                files.extend(tls_files(&runtime));
                files.extend(secret_files);
                if files != watched {
                    watched = files;
                    watcher = watch_directories(&watched, triggers.clone());
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), error = %error, "config reload rejected; the previous config stays in force");
                count_rejected(&runtime);
            }
        }
    }
    drop(watcher);
}

fn count_rejected(runtime: &Runtime) {
    runtime
        .edge()
        .metrics
        .config_reloads
        .get_or_create(&ResultLabels { result: "rejected" })
        .inc();
}
