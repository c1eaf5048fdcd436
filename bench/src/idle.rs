//! `idle`: open N connections (connect + subscribe each), measure the connect rate, then the
//! server's resident memory per idle connection (`VmRSS` delta of the given pids / N).
//! `--transport http-stream|sse` opens streaming sessions instead (connect only, JSON), held
//! the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{ConnArgs, Incoming, Target, open_gated};
use crate::stats::{emit, parse_duration, round2, self_rss_kib, sum_cpu_ms, sum_rss_kib};
use crate::stream::{StreamClient, StreamKind, StreamTarget};

/// Connections opened before the baseline reading (warms allocator arenas and the server's
/// lazily built structures).
const WARM_UP_CONNECTIONS: usize = 2;

/// Options of the `idle` scenario.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Transport to open: WebSocket (connect + subscribe, `ws://` URL), or a streaming session
    /// (connect only, JSON, `http://` URL of the http_stream / sse path).
    #[arg(long, value_enum, default_value = "websocket")]
    transport: TransportArg,
    /// Connections to open.
    #[arg(long)]
    connections: usize,
    /// Server process ids whose `VmRSS` is summed (repeat for multi-process servers).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// How long to hold the connections open after they are all up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Pause after the last connection before the first reading.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Bound on opening all connections.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Transport chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TransportArg {
    /// WebSocket (any dialect).
    Websocket,
    /// HTTP-streaming session.
    HttpStream,
    /// Server-sent events session.
    Sse,
}

/// What each holder opens.
enum Peer {
    Ws(Target),
    Stream(StreamTarget),
}

impl Peer {
    fn new(conn: &ConnArgs, transport: TransportArg) -> Result<Peer> {
        let stream =
            |kind| StreamTarget::new(&conn.url, kind, conn.setup_timeout).map(Peer::Stream);
        match transport {
            TransportArg::Websocket => conn.target().map(Peer::Ws),
            TransportArg::HttpStream => stream(StreamKind::HttpStream),
            TransportArg::Sse => stream(StreamKind::Sse),
        }
    }

    fn dialect_name(&self) -> &'static str {
        match self {
            Peer::Ws(target) => target.dialect.name(),
            Peer::Stream(_) => "json",
        }
    }

    fn transport_name(&self) -> &'static str {
        match self {
            Peer::Ws(_) => "websocket",
            Peer::Stream(target) => target.kind().name(),
        }
    }
}

/// Runs the scenario and prints its result lines.
pub async fn run(args: IdleArgs) -> Result<()> {
    if args.connections == 0 || args.conn.concurrency == 0 {
        bail!("--connections and --concurrency must be positive");
    }
    let target = Arc::new(Peer::new(&args.conn, args.transport)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();

    // Warm-up connections stay open through the whole run.
    let warm = open_all(
        &target,
        WARM_UP_CONNECTIONS,
        args.conn.concurrency,
        "idle-warm",
        &shutdown_rx,
        &dropped,
        &mut tasks,
        args.timeout,
    )
    .await;
    if warm.ok < WARM_UP_CONNECTIONS {
        bail!(
            "warm-up failed: {}",
            warm.first_error.unwrap_or_else(|| "unknown".into())
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = read_rss(&args.pids)?;
    let split_before = per_pid_rss(&args.pids)?;
    let cpu_before = read_cpu(&args.pids)?;

    let opened = open_all(
        &target,
        args.connections,
        args.conn.concurrency,
        "idle-",
        &shutdown_rx,
        &dropped,
        &mut tasks,
        args.timeout,
    )
    .await;
    let cpu_connected = read_cpu(&args.pids)?;
    tokio::time::sleep(args.settle).await;
    let rss_connected = read_rss(&args.pids)?;
    let cpu_hold_start = read_cpu(&args.pids)?;
    tokio::time::sleep(args.hold).await;
    let rss_after = read_rss(&args.pids)?;
    let split_after = per_pid_rss(&args.pids)?;
    let cpu_after = read_cpu(&args.pids)?;
    let client_rss = self_rss_kib();
    let dropped_during = dropped.load(Ordering::Relaxed);

    let _ = shutdown_tx.send(true);
    drain(&mut tasks, Duration::from_secs(15)).await;

    let ok = opened.ok.max(1) as f64;
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) => Some(round2((after as f64 - before as f64) / ok)),
        _ => None,
    };
    let connect_rate = opened.ok as f64 / opened.elapsed.as_secs_f64().max(1e-9);
    let cpu_delta = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let json = json!({
        "scenario": "idle",
        "label": args.conn.label,
        "dialect": target.dialect_name(),
        "transport": target.transport_name(),
        "connections": args.connections,
        "ok": opened.ok,
        "failed": opened.failed,
        "dropped": dropped_during,
        "connect_s": round2(opened.elapsed.as_secs_f64()),
        "connect_rate": round2(connect_rate),
        "rss_before_kib": rss_before,
        "per_process": split_before
            .iter()
            .zip(&split_after)
            .map(|((pid, name, before), (_, _, after))| json!({
                "pid": pid,
                "name": name,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_conn": round2((*after as f64 - *before as f64) / ok),
            }))
            .collect::<Vec<_>>(),
        "rss_connected_kib": rss_connected,
        "rss_after_kib": rss_after,
        "kib_per_conn": per_conn(rss_after),
        "kib_per_conn_connected": per_conn(rss_connected),
        "server_cpu_ms_connect": cpu_delta(cpu_before, cpu_connected),
        "server_cpu_ms_hold": cpu_delta(cpu_hold_start, cpu_after),
        "hold_s": args.hold.as_secs_f64(),
        "client_rss_kib": client_rss,
        "pids": args.pids,
        "first_error": opened.first_error,
    });
    let kib = per_conn(rss_after).map_or("n/a (no --pid)".to_owned(), |v| format!("{v} KiB"));
    emit(
        &format!(
            "idle {} [{} {}]: {}/{} connected in {:.2}s ({:.0}/s), {} failed, {} dropped; \
             server RSS {} -> {} KiB, {} per connection",
            args.conn.label,
            target.transport_name(),
            target.dialect_name(),
            opened.ok,
            args.connections,
            opened.elapsed.as_secs_f64(),
            connect_rate,
            opened.failed,
            dropped_during,
            rss_before.map_or("?".into(), |v| v.to_string()),
            rss_after.map_or("?".into(), |v| v.to_string()),
            kib,
        ),
        &json,
    );
    Ok(())
}

/// `(pid, process name, VmRSS KiB)` of each pid.
fn per_pid_rss(pids: &[u32]) -> Result<Vec<(u32, String, u64)>> {
    pids.iter()
        .map(|pid| Ok((*pid, process_name(*pid), sum_rss_kib(&[*pid])?)))
        .collect()
}

/// Program file name plus its subcommand, if any (`sidewire hub`, `condure`), from
/// `/proc/<pid>/cmdline`.
fn process_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let program = args.next().unwrap_or_default();
    let mut name = program.rsplit('/').next().unwrap_or_default().to_owned();
    if let Some(sub) = args
        .next()
        .filter(|arg| !arg.is_empty() && !arg.starts_with('-'))
    {
        name.push(' ');
        name.push_str(&sub);
    }
    name
}

fn read_rss(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    sum_rss_kib(pids).map(Some)
}

fn read_cpu(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    sum_cpu_ms(pids).map(Some)
}

/// Outcome of opening a batch of connections.
struct Opened {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    first_error: Option<String>,
}

/// Spawns `count` holder tasks and waits (bounded by `timeout`) until each reported its setup.
#[allow(clippy::too_many_arguments)]
async fn open_all(
    target: &Arc<Peer>,
    count: usize,
    concurrency: usize,
    channel_prefix: &str,
    shutdown: &watch::Receiver<bool>,
    dropped: &Arc<AtomicUsize>,
    tasks: &mut JoinSet<()>,
    timeout: Duration,
) -> Opened {
    let gate = Arc::new(Semaphore::new(concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let start = Instant::now();
    for i in 0..count {
        let channel = if channel_prefix.ends_with('-') {
            format!("{channel_prefix}{}", i % 100)
        } else {
            channel_prefix.to_owned()
        };
        tasks.spawn(hold(
            Arc::clone(target),
            channel,
            Arc::clone(&gate),
            ready_tx.clone(),
            shutdown.clone(),
            Arc::clone(dropped),
        ));
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut opened = Opened {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        first_error: None,
    };
    while opened.ok + opened.failed < count {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => opened.ok += 1,
            Ok(Some(Err(error))) => {
                opened.failed += 1;
                opened.first_error.get_or_insert(error);
            }
            Ok(None) => break,
            Err(_) => {
                opened.failed = count - opened.ok;
                opened
                    .first_error
                    .get_or_insert_with(|| format!("not all connected within {timeout:?}"));
                break;
            }
        }
    }
    opened.elapsed = start.elapsed();
    opened
}

/// One idle connection: set up (gated), report, then answer pings until shutdown.
async fn hold(
    target: Arc<Peer>,
    channel: String,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<bool>,
    dropped: Arc<AtomicUsize>,
) {
    let target = match &*target {
        Peer::Ws(target) => target,
        Peer::Stream(target) => {
            return hold_stream(target, &gate, ready, &mut shutdown, &dropped).await;
        }
    };
    let Some(mut client) = open_gated(target, &channel, &gate, ready, &mut shutdown).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            incoming = client.next() => match incoming {
                Ok(Incoming::Replies(_) | Incoming::Publications(_) | Incoming::Raw(_)) => {}
                Ok(Incoming::Closed) | Err(_) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
    client.close(Duration::from_secs(2)).await;
}

/// One idle streaming session: connect (gated), report, then drain the response until shutdown.
async fn hold_stream(
    target: &StreamTarget,
    gate: &Semaphore,
    ready: mpsc::Sender<Result<(), String>>,
    shutdown: &mut watch::Receiver<bool>,
    dropped: &AtomicUsize,
) {
    let setup = async {
        let _permit = gate.acquire().await?;
        StreamClient::open_connected(target).await
    };
    let mut client = tokio::select! {
        result = setup => match result {
            Ok(client) => {
                let _ = ready.send(Ok(())).await;
                client
            }
            Err(error) => {
                let _ = ready.send(Err(format!("{error:#}"))).await;
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            more = client.next() => if !matches!(more, Ok(true)) {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            },
        }
    }
}

/// Waits for every task, aborting what is left after `timeout`.
pub async fn drain<T: 'static>(tasks: &mut JoinSet<T>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !tasks.is_empty() {
        if tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_err()
        {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_process() {
        let name = process_name(std::process::id());
        assert!(name.starts_with("sidewire_bench"), "{name}");
        assert_eq!(per_pid_rss(&[std::process::id()]).unwrap().len(), 1);
    }
}
