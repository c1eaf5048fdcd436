//! `fanout`: N subscribers over C channels; publishes go through the server's HTTP API, each
//! payload carrying `{"ts": <unix nanos>, "seq": n, "p": publisher}`. Reports deliveries per
//! second, delivery latency, and verifies that every subscriber got each publisher's sequence
//! on its channel complete and in order.
//!
//! Publication i goes to channel `i % C`; the k-th publication of a channel (`k = i / C`) is
//! sent by publisher `k % publishers` with `seq = k / publishers`. A publisher waits for each
//! response before the next request, so its stream per channel has a defined order the server
//! must keep; several publishers give several requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{ConnArgs, Incoming, Target, open_gated};
use crate::http::Poster;
use crate::idle::drain;
use crate::stats::{
    Latency, emit, parse_duration, round2, self_rss_kib, sum_cpu_ms, sum_rss_kib, unix_nanos,
};

/// How publications are sent to the server's HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishFormat {
    /// `sidewire` normally, `floor` with --raw.
    Auto,
    /// sidewire / Centrifugo server API: `{"channel": C, "data": PAYLOAD}`.
    Sidewire,
    /// Floor server: the payload as the body, `?channel=C` in the URL.
    Floor,
    /// Pushpin `/publish/`: `{"items":[{"channel": C, "formats":{"ws-message":{"content": ..}}}]}`.
    Pushpin,
}

/// Options of the `fanout` scenario.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Subscriber connections (subscriber i listens on channel i % channels).
    #[arg(long)]
    subscribers: usize,
    /// Channels the subscribers (and publications) are spread over.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Publications in total (publication i goes to channel i % channels).
    #[arg(long)]
    publishes: usize,
    /// Publications per second over all publishers; 0 publishes as fast as they are accepted.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Size of each payload (JSON padded with a `pad` string).
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Server API URL to publish to, e.g. http://127.0.0.1:9100/api/publish.
    #[arg(long)]
    publish_url: String,
    /// Body format of the publish requests.
    #[arg(long, value_enum, default_value = "auto")]
    publish_format: PublishFormat,
    /// Publisher connections, one request in flight each (publications of a channel are dealt
    /// round-robin to them; order is checked per publisher).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Channel name prefix (`<prefix>-<c>`).
    #[arg(long, default_value = "fan")]
    channel_prefix: String,
    /// More replicas' WebSocket URLs (same dialect): subscriber i connects to replica
    /// i % (1 + these), `--url` being replica 0; publications still go to `--publish-url`.
    #[arg(long = "replica-url")]
    replica_urls: Vec<String>,
    /// Server process ids for CPU and RSS readings (optional).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Bound on subscribing everyone.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    setup_deadline: Duration,
    /// Bound on publishing and delivering everything, from the first publish.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Subscriber processes: N > 1 spawns N children of this program, each holding every
    /// N-th subscriber, so that reading deliveries is not limited to one process; this
    /// process publishes and merges their results (latency samples included).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Once everyone is subscribed, print `subscribed` on stderr and wait (bounded by
    /// --setup-deadline) until this file exists before publishing: lets a profiler count only
    /// the publish phase (`bench/fanout-instructions.sh`). Single-process mode only.
    #[arg(long)]
    start_file: Option<std::path::PathBuf>,
    /// With --start-file: once everything is delivered (before the subscribers disconnect),
    /// print `delivered` on stderr and wait (bounded by --setup-deadline) until this file
    /// exists, so that the profiler's count can stop before the teardown.
    #[arg(long, requires = "start_file")]
    done_file: Option<std::path::PathBuf>,
    /// Internal: run as child I of --procs (subscribe, report over stdout, wait for stdin).
    #[arg(long, hide = true)]
    child_slice: Option<usize>,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubResult {
    expected: usize,
    received: usize,
    gaps: usize,
    reordered: usize,
    bad: usize,
    closed_early: bool,
    latencies_us: Vec<u32>,
    /// Unix nanos of the last delivery (a clock shared by processes).
    last_ns: Option<u64>,
}

/// Runs the scenario and prints its result lines.
/// Announces a phase's end (`what`) on stderr, then polls for `path` for at most `limit`.
async fn wait_for_file(path: &std::path::Path, what: &str, limit: Duration) -> Result<()> {
    eprintln!("{what}");
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn run(args: FanoutArgs) -> Result<()> {
    if args.subscribers == 0 || args.channels == 0 || args.publishers == 0 {
        bail!("--subscribers, --channels and --publishers must be positive");
    }
    if args.conn.concurrency == 0 || !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--concurrency must be positive and --rate a non-negative number");
    }
    let format = match (args.publish_format, args.conn.raw) {
        (PublishFormat::Auto, false) => PublishFormat::Sidewire,
        (PublishFormat::Auto, true) => PublishFormat::Floor,
        (format, _) => format,
    };
    // Check the URL before opening thousands of connections.
    Poster::new(&args.publish_url)?;
    let target = Arc::new(args.conn.target()?);
    if let Some(slice) = args.child_slice {
        return child(&args, target, slice).await;
    }
    if args.procs > 1 {
        if args.start_file.is_some() {
            bail!("--start-file needs --procs 1");
        }
        return parent(&args, target, format).await;
    }

    // Subscribe everyone.
    let mut subs = subscribe_all(&args, target.clone(), 0, 1).await?;
    if subs.ok == 0 {
        subs.stop().await;
        bail!(
            "no subscriber connected: {}",
            subs.first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(path) = &args.start_file {
        wait_for_file(path, "subscribed", args.setup_deadline).await?;
    }

    // Publish.
    let cpu_before = read_cpu(&args.pids);
    let own = [std::process::id()];
    let client_cpu_before = read_cpu(&own);
    let publish_start = Instant::now();
    let publish_start_ns = unix_nanos();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut publisher_tasks = spawn_publishers(&args, format, publish_start, deadline);

    // Collect: finished subscribers report as soon as they have everything.
    let mut results = subs.collect(deadline).await;
    let published = join_publishers(&mut publisher_tasks).await;
    if let Some(path) = &args.done_file {
        wait_for_file(path, "delivered", args.setup_deadline).await?;
    }
    let cpu_after = read_cpu(&args.pids);
    let client_cpu_after = read_cpu(&own);
    let publish_phase_s = publish_start.elapsed().as_secs_f64();
    let rss_after = if args.pids.is_empty() {
        None
    } else {
        sum_rss_kib(&args.pids).ok()
    };
    let client_rss = self_rss_kib();
    let totals = subs.finish(&mut results).await;
    subs.drain().await;
    report(
        &args,
        &target,
        Report {
            ok: subs.ok,
            failed: subs.failed,
            setup_s: subs.setup_s,
            first_error: subs.first_error.clone(),
            published,
            totals,
            publish_start_ns,
            publish_phase_s,
            server_cpu: (cpu_before, cpu_after),
            client_cpu: (client_cpu_before, client_cpu_after),
            server_rss: rss_after,
            client_rss,
        },
    );
    Ok(())
}

/// The subscribers of this process once set up.
struct Subscribed {
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    done: mpsc::Receiver<SubResult>,
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    setup_s: f64,
    extra: Arc<AtomicUsize>,
}

/// Opens and subscribes subscribers `first, first + step, ...` (the others belong to other
/// processes), waiting for all of them up to `--setup-deadline`.
async fn subscribe_all(
    args: &FanoutArgs,
    target: Arc<Target>,
    first: usize,
    step: usize,
) -> Result<Subscribed> {
    // Subscriber i connects to replica i % (1 + --replica-url count), `--url` being replica 0.
    let mut replicas = vec![Arc::clone(&target)];
    for url in &args.replica_urls {
        replicas.push(Arc::new(crate::client::Target::new(
            url,
            target.dialect,
            target.setup_timeout,
            args.conn.ca_file.as_deref(),
        )?));
    }
    let publishers = args.publishers;
    let per_channel =
        |c: usize| args.publishes / args.channels + usize::from(c < args.publishes % args.channels);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let (done_tx, done_rx) = mpsc::channel::<SubResult>(1024);
    let extra = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.conn.concurrency));
    let mut tasks = JoinSet::new();
    let setup_start = Instant::now();
    let mut mine = 0usize;
    for i in (first..args.subscribers).step_by(step.max(1)) {
        let c = i % args.channels;
        mine += 1;
        tasks.spawn(subscriber(
            Arc::clone(&replicas[i % replicas.len()]),
            format!("{}-{c}", args.channel_prefix),
            per_channel(c),
            publishers,
            Arc::clone(&gate),
            ready_tx.clone(),
            done_tx.clone(),
            shutdown_rx.clone(),
            Arc::clone(&extra),
        ));
    }
    drop((ready_tx, done_tx));
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None::<String>);
    let setup_deadline = tokio::time::Instant::now() + args.setup_deadline;
    while ok + failed < mine {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(error))) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Ok(None) => break,
            Err(_) => {
                failed = mine - ok;
                first_error.get_or_insert_with(|| "subscribe deadline passed".into());
                break;
            }
        }
    }
    Ok(Subscribed {
        tasks,
        shutdown: shutdown_tx,
        done: done_rx,
        ok,
        failed,
        first_error,
        setup_s: setup_start.elapsed().as_secs_f64(),
        extra,
    })
}

impl Subscribed {
    /// Results of subscribers that got everything, until all have or `deadline`.
    async fn collect(&mut self, deadline: tokio::time::Instant) -> Vec<SubResult> {
        let mut results = Vec::with_capacity(self.ok);
        while results.len() < self.ok {
            match tokio::time::timeout_at(deadline, self.done.recv()).await {
                Ok(Some(result)) => results.push(result),
                Ok(None) | Err(_) => break,
            }
        }
        results
    }

    /// Stops every subscriber, takes the partial results of those still waiting, and sums up.
    async fn finish(&mut self, results: &mut Vec<SubResult>) -> Totals {
        let _ = self.shutdown.send(true);
        let late_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while results.len() < self.ok {
            match tokio::time::timeout_at(late_deadline, self.done.recv()).await {
                Ok(Some(result)) => results.push(result),
                Ok(None) | Err(_) => break,
            }
        }
        Totals::sum(
            std::mem::take(results),
            self.ok,
            self.extra.load(Ordering::Relaxed),
        )
    }

    /// Waits for the stopped subscribers to close their connections.
    async fn drain(&mut self) {
        drain(&mut self.tasks, Duration::from_secs(15)).await;
    }

    /// Stops every subscriber without collecting.
    async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        drain(&mut self.tasks, Duration::from_secs(5)).await;
    }
}

/// What a set of subscribers saw, summed (per process, then over processes).
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    expected: usize,
    received: usize,
    gaps: usize,
    reordered: usize,
    bad: usize,
    closed_early: usize,
    incomplete: usize,
    unreported: usize,
    extra: usize,
    last_ns: Option<u64>,
    latencies_us: Vec<u32>,
}

impl Totals {
    /// Sums the results of `ok` subscribed subscribers (missing ones count as unreported).
    fn sum(mut results: Vec<SubResult>, ok: usize, extra: usize) -> Totals {
        let unreported = ok.saturating_sub(results.len());
        let mut totals = Totals {
            unreported,
            incomplete: unreported,
            extra,
            ..Totals::default()
        };
        totals.latencies_us = Vec::with_capacity(results.iter().map(|r| r.received).sum());
        for result in &mut results {
            totals.expected += result.expected;
            totals.received += result.received;
            totals.gaps += result.gaps;
            totals.reordered += result.reordered;
            totals.bad += result.bad;
            totals.closed_early += usize::from(result.closed_early);
            totals.incomplete += usize::from(result.received < result.expected);
            totals.last_ns = totals.last_ns.max(result.last_ns);
            totals.latencies_us.append(&mut result.latencies_us);
        }
        totals
    }

    fn merge(&mut self, mut other: Totals) {
        self.expected += other.expected;
        self.received += other.received;
        self.gaps += other.gaps;
        self.reordered += other.reordered;
        self.bad += other.bad;
        self.closed_early += other.closed_early;
        self.incomplete += other.incomplete;
        self.unreported += other.unreported;
        self.extra += other.extra;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.latencies_us.append(&mut other.latencies_us);
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "expected": self.expected, "received": self.received, "gaps": self.gaps,
            "reordered": self.reordered, "bad": self.bad, "closed_early": self.closed_early,
            "incomplete": self.incomplete, "unreported": self.unreported, "extra": self.extra,
            "last_ns": self.last_ns, "latencies_us": self.latencies_us,
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<Totals> {
        let count = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
        };
        Some(Totals {
            expected: count("expected")?,
            received: count("received")?,
            gaps: count("gaps")?,
            reordered: count("reordered")?,
            bad: count("bad")?,
            closed_early: count("closed_early")?,
            incomplete: count("incomplete")?,
            unreported: count("unreported")?,
            extra: count("extra")?,
            last_ns: value.get("last_ns").and_then(serde_json::Value::as_u64),
            latencies_us: value
                .get("latencies_us")?
                .as_array()?
                .iter()
                .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect::<Option<Vec<u32>>>()?,
        })
    }
}

/// Everything the result lines report.
struct Report {
    ok: usize,
    failed: usize,
    setup_s: f64,
    first_error: Option<String>,
    published: PublishStats,
    totals: Totals,
    publish_start_ns: u64,
    publish_phase_s: f64,
    server_cpu: (Option<u64>, Option<u64>),
    client_cpu: (Option<u64>, Option<u64>),
    server_rss: Option<u64>,
    client_rss: u64,
}

fn spawn_publishers(
    args: &FanoutArgs,
    format: PublishFormat,
    start: Instant,
    deadline: tokio::time::Instant,
) -> JoinSet<PublishStats> {
    let mut publisher_tasks = JoinSet::new();
    for index in 0..args.publishers {
        publisher_tasks.spawn(publisher(PublisherPlan {
            index,
            publishers: args.publishers,
            channels: args.channels,
            publishes: args.publishes,
            rate: args.rate,
            payload_bytes: args.payload_bytes,
            url: args.publish_url.clone(),
            prefix: args.channel_prefix.clone(),
            format,
            start,
            deadline,
        }));
    }
    publisher_tasks
}

async fn join_publishers(tasks: &mut JoinSet<PublishStats>) -> PublishStats {
    let mut published = PublishStats::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(stats) = joined {
            published.merge(stats);
        }
    }
    published
}

/// Prints the human and JSON result lines.
fn report(args: &FanoutArgs, target: &Target, r: Report) {
    let Report {
        ok,
        failed,
        setup_s,
        first_error,
        published,
        totals,
        publish_start_ns,
        publish_phase_s,
        server_cpu: (cpu_before, cpu_after),
        client_cpu: (client_cpu_before, client_cpu_after),
        server_rss: rss_after,
        client_rss,
    } = r;
    let Totals {
        expected,
        received,
        gaps,
        reordered,
        bad,
        closed_early,
        incomplete,
        unreported,
        extra,
        last_ns,
        latencies_us,
    } = totals;
    let delivery_s = last_ns.map_or(0.0, |last| {
        last.saturating_sub(publish_start_ns) as f64 / 1e9
    });
    let latency = Latency::from_micros(latencies_us);
    let deliveries_per_s = received as f64 / delivery_s.max(1e-9);
    let publish_rate = published.sent as f64 / published.elapsed_s.max(1e-9);
    let lost = expected.saturating_sub(received);
    // Delivery correctness for the subscribers that got subscribed (`failed` is reported apart).
    let verified = incomplete == 0 && gaps == 0 && reordered == 0 && bad == 0;
    let json = json!({
        "scenario": "fanout",
        "label": args.conn.label,
        "dialect": target.dialect.name(),
        "subscribers": args.subscribers,
        "replicas": 1 + args.replica_urls.len(),
        "channels": args.channels,
        "publishes": args.publishes,
        "rate": args.rate,
        "payload_bytes": args.payload_bytes,
        "publishers": args.publishers,
        "subscribed": ok,
        "failed": failed,
        "setup_s": round2(setup_s),
        "published": published.sent,
        "publish_errors": published.errors,
        "publish_rate": round2(publish_rate),
        "expected": expected,
        "received": received,
        "lost": lost,
        "gaps": gaps,
        "reordered": reordered,
        "bad_payloads": bad,
        "extra": extra,
        "procs": args.procs,
        "incomplete_subscribers": incomplete,
        "unreported_subscribers": unreported,
        "closed_early": closed_early,
        "delivery_s": round2(delivery_s),
        "deliveries_per_s": round2(deliveries_per_s),
        "latency_samples": latency.count,
        "latency_p50_ms": round2(latency.p50_ms),
        "latency_p99_ms": round2(latency.p99_ms),
        "latency_max_ms": round2(latency.max_ms),
        "server_cpu_ms": cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a)),
        "server_cpu_pct": busy_pct(cpu_before, cpu_after, publish_phase_s),
        "client_cpu_pct": busy_pct(client_cpu_before, client_cpu_after, publish_phase_s),
        "server_rss_kib": rss_after,
        "client_rss_kib": client_rss,
        "verified": verified,
        "first_error": first_error.or(published.first_error),
    });
    emit(
        &format!(
            "fanout {} [{}]: {} subs / {} ch, {} publishes ({:.0}/s accepted, {} errors): \
             {}/{} delivered in {:.2}s = {:.0}/s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; \
             lost {lost}, gaps {gaps}, reordered {reordered}; cpu% server {} client {}{}",
            args.conn.label,
            target.dialect.name(),
            ok,
            args.channels,
            published.sent,
            publish_rate,
            published.errors,
            received,
            expected,
            delivery_s,
            deliveries_per_s,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
            busy_pct(cpu_before, cpu_after, publish_phase_s)
                .map_or("?".into(), |v| format!("{v:.0}")),
            busy_pct(client_cpu_before, client_cpu_after, publish_phase_s)
                .map_or("?".into(), |v| format!("{v:.0}")),
            if verified {
                "; verified"
            } else {
                "; NOT verified"
            },
        ),
        &json,
    );
}

/// A child's first line: its subscribers are set up.
const CHILD_READY: &str = "child_ready";
/// A child's second line: what its subscribers saw.
const CHILD_TOTALS: &str = "child_totals";

/// Child `slice` of `--procs`: subscribes every procs-th subscriber, reports on stdout, starts
/// its delivery deadline on `go` from stdin, and reports its totals.
async fn child(args: &FanoutArgs, target: Arc<Target>, slice: usize) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    if slice >= args.procs {
        bail!("--child-slice must be below --procs");
    }
    let mut subs = subscribe_all(args, target, slice, args.procs).await?;
    let mut stdout = tokio::io::stdout();
    let ready = json!({
        CHILD_READY: true, "ok": subs.ok, "failed": subs.failed,
        "setup_s": subs.setup_s, "first_error": subs.first_error, "pid": std::process::id(),
    });
    stdout.write_all(format!("{ready}\n").as_bytes()).await?;
    stdout.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // `go` starts the publish phase; end of input (the parent is gone) stops.
    if stdin.next_line().await?.is_none() {
        subs.stop().await;
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut results = subs.collect(deadline).await;
    let totals = subs.finish(&mut results).await;
    let mut line = totals.to_json();
    line[CHILD_TOTALS] = json!(true);
    stdout.write_all(format!("{line}\n").as_bytes()).await?;
    stdout.flush().await?;
    // Stay (for the parent's CPU and RSS readings) until it closes our input.
    while stdin.next_line().await.ok().flatten().is_some() {}
    subs.drain().await;
    Ok(())
}

/// One child process and its output lines.
struct Child {
    process: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    /// The next JSON line carrying `key` (other output is skipped), until `deadline`.
    async fn line_with(
        &mut self,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<serde_json::Value> {
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("child: no {key} line in time"))??
                .ok_or_else(|| anyhow::anyhow!("child: output ended before {key}"))?;
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value.get(key).is_some()
            {
                return Ok(value);
            }
        }
    }
}

/// `--procs N`: N children hold the subscribers, this process publishes and merges.
async fn parent(args: &FanoutArgs, target: Arc<Target>, format: PublishFormat) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(args.procs);
    for slice in 0..args.procs {
        let mut process = tokio::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .arg("--child-slice")
            .arg(slice.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = process.stdin.take();
        let stdout = process
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("child without stdout"))?;
        children.push(Child {
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    let setup_deadline =
        tokio::time::Instant::now() + args.setup_deadline + Duration::from_secs(10);
    let (mut ok, mut failed, mut setup_s, mut first_error) = (0usize, 0usize, 0f64, None);
    let mut client_pids = vec![std::process::id()];
    for child in &mut children {
        let ready = child.line_with(CHILD_READY, setup_deadline).await?;
        let count = |key: &str| {
            ready
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(0)
        };
        ok += count("ok");
        failed += count("failed");
        setup_s = setup_s.max(
            ready
                .get("setup_s")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0),
        );
        if first_error.is_none() {
            first_error = ready
                .get("first_error")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
        }
        if let Some(pid) = child.process.id() {
            client_pids.push(pid);
        }
    }
    if ok == 0 {
        bail!(
            "no subscriber connected: {}",
            first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cpu_before = read_cpu(&args.pids);
    let client_cpu_before = read_cpu(&client_pids);
    let publish_start = Instant::now();
    let publish_start_ns = unix_nanos();
    let deadline = tokio::time::Instant::now() + args.timeout;
    for child in &mut children {
        if let Some(stdin) = &mut child.stdin {
            stdin.write_all(b"go\n").await?;
            stdin.flush().await?;
        }
    }
    let mut publisher_tasks = spawn_publishers(args, format, publish_start, deadline);
    let published = join_publishers(&mut publisher_tasks).await;
    // Children report when all their subscribers have everything, or at the deadline.
    let collect_deadline = deadline + Duration::from_secs(30);
    let mut totals = Totals::default();
    for child in &mut children {
        let line = child.line_with(CHILD_TOTALS, collect_deadline).await?;
        let child_totals =
            Totals::from_json(&line).ok_or_else(|| anyhow::anyhow!("bad child totals line"))?;
        totals.merge(child_totals);
    }
    // All children reported (they stay until their input closes): the phase is over.
    let cpu_after = read_cpu(&args.pids);
    let client_cpu_after = read_cpu(&client_pids);
    let publish_phase_s = publish_start.elapsed().as_secs_f64();
    let rss_after = if args.pids.is_empty() {
        None
    } else {
        sum_rss_kib(&args.pids).ok()
    };
    let child_rss = sum_rss_kib(&client_pids[1..]).unwrap_or(0);
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(20), child.process.wait()).await;
    }
    report(
        args,
        &target,
        Report {
            ok,
            failed,
            setup_s,
            first_error,
            published,
            totals,
            publish_start_ns,
            publish_phase_s,
            server_cpu: (cpu_before, cpu_after),
            client_cpu: (client_cpu_before, client_cpu_after),
            server_rss: rss_after,
            client_rss: self_rss_kib() + child_rss,
        },
    );
    Ok(())
}

/// CPU time between two readings as a percentage of one core over `seconds`.
fn busy_pct(before: Option<u64>, after: Option<u64>, seconds: f64) -> Option<f64> {
    let ms = after?.saturating_sub(before?);
    Some(round2(ms as f64 / 10.0 / seconds.max(1e-9)))
}

fn read_cpu(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        None
    } else {
        sum_cpu_ms(pids).ok()
    }
}

/// One subscriber: set up (gated), then count and check deliveries until it has them all
/// (reported on `done` at once) or shutdown (partial result reported then).
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    target: Arc<Target>,
    channel: String,
    expected: usize,
    publishers: usize,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    done: mpsc::Sender<SubResult>,
    mut shutdown: watch::Receiver<bool>,
    extra: Arc<AtomicUsize>,
) {
    let Some(mut client) = open_gated(&target, &channel, &gate, ready, &mut shutdown).await else {
        return;
    };
    let mut result = SubResult {
        expected,
        latencies_us: Vec::with_capacity(expected),
        ..SubResult::default()
    };
    // Next expected seq per publisher stream.
    let mut next_seq = vec![0u64; publishers];
    let mut reported = false;
    if expected == 0 {
        let _ = done.send(std::mem::take(&mut result)).await;
        reported = true;
    }
    loop {
        let incoming = tokio::select! {
            _ = shutdown.changed() => break,
            incoming = client.next() => incoming,
        };
        let mut payloads: Vec<Bytes> = Vec::new();
        match incoming {
            Ok(Incoming::Replies(replies)) => {
                for reply in replies {
                    let publication = reply
                        .push
                        .and_then(|push| (push.channel == channel).then_some(push.r#pub).flatten());
                    if let Some(publication) = publication {
                        payloads.push(publication.data);
                    }
                }
            }
            Ok(Incoming::Publications(publications)) => payloads.extend(
                publications
                    .into_iter()
                    .filter(|(name, _)| name[..] == *channel.as_bytes())
                    .map(|(_, data)| data),
            ),
            Ok(Incoming::Raw(payload)) => payloads.push(payload),
            Ok(Incoming::Closed) | Err(_) => {
                result.closed_early = !reported;
                break;
            }
        }
        if payloads.is_empty() {
            continue;
        }
        let now_nanos = unix_nanos();
        for payload in payloads {
            if reported {
                extra.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let parsed = parse_payload(&payload);
            let Some((ts, seq, next)) = parsed.and_then(|(ts, seq, stream)| {
                let next = next_seq.get_mut(usize::try_from(stream).ok()?)?;
                Some((ts, seq, next))
            }) else {
                result.bad += 1;
                continue;
            };
            result.received += 1;
            result.last_ns = Some(now_nanos);
            result
                .latencies_us
                .push(u32::try_from(now_nanos.saturating_sub(ts) / 1000).unwrap_or(u32::MAX));
            if seq == *next {
                *next += 1;
            } else if seq > *next {
                result.gaps += usize::try_from(seq - *next).unwrap_or(usize::MAX);
                *next = seq + 1;
            } else {
                result.reordered += 1;
            }
        }
        if !reported && result.received >= expected {
            let _ = done.send(std::mem::take(&mut result)).await;
            reported = true;
        }
    }
    if !reported {
        let _ = done.send(result).await;
    }
    client.close(Duration::from_secs(2)).await;
}

/// Payload `{"ts":T,"seq":S,"p":P,"pad":"..."}` padded to `size` bytes.
fn make_payload(ts: u64, seq: u64, stream: usize, size: usize) -> String {
    let head = format!("{{\"ts\":{ts},\"seq\":{seq},\"p\":{stream},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = String::with_capacity(head.len() + pad + 2);
    text.push_str(&head);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}

/// `(ts, seq, publisher)` of a payload: a fast path for [`make_payload`]'s layout, else any
/// JSON object (`p` defaults to 0).
fn parse_payload(payload: &[u8]) -> Option<(u64, u64, u64)> {
    fn number(text: &[u8]) -> Option<(u64, &[u8])> {
        let end = text.iter().position(|b| !b.is_ascii_digit())?;
        let value = std::str::from_utf8(&text[..end]).ok()?.parse().ok()?;
        Some((value, &text[end..]))
    }
    let fast = || {
        let rest = payload.strip_prefix(b"{\"ts\":")?;
        let (ts, rest) = number(rest)?;
        let rest = rest.strip_prefix(b",\"seq\":")?;
        let (seq, rest) = number(rest)?;
        let rest = rest.strip_prefix(b",\"p\":")?;
        let (stream, _) = number(rest)?;
        Some((ts, seq, stream))
    };
    fast().or_else(|| {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let stream = value.get("p").map_or(Some(0), serde_json::Value::as_u64)?;
        Some((
            value.get("ts")?.as_u64()?,
            value.get("seq")?.as_u64()?,
            stream,
        ))
    })
}

/// What one publisher does.
struct PublisherPlan {
    index: usize,
    publishers: usize,
    channels: usize,
    publishes: usize,
    rate: f64,
    payload_bytes: usize,
    url: String,
    prefix: String,
    format: PublishFormat,
    start: Instant,
    deadline: tokio::time::Instant,
}

/// Publisher counters.
#[derive(Debug, Default)]
struct PublishStats {
    sent: usize,
    errors: usize,
    elapsed_s: f64,
    first_error: Option<String>,
}

impl PublishStats {
    fn merge(&mut self, other: PublishStats) {
        self.sent += other.sent;
        self.errors += other.errors;
        self.elapsed_s = self.elapsed_s.max(other.elapsed_s);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Publishes this publisher's share in global order, one request at a time (keep-alive).
async fn publisher(plan: PublisherPlan) -> PublishStats {
    let mut stats = PublishStats::default();
    let mut poster = match Poster::new(&plan.url) {
        Ok(poster) => poster,
        Err(error) => {
            stats.first_error = Some(format!("{error:#}"));
            return stats;
        }
    };
    for i in 0..plan.publishes {
        let c = i % plan.channels;
        let k = i / plan.channels;
        if k % plan.publishers != plan.index {
            continue;
        }
        if tokio::time::Instant::now() >= plan.deadline {
            stats
                .first_error
                .get_or_insert("publish deadline passed".into());
            break;
        }
        if plan.rate > 0.0 {
            let at = plan.start + Duration::from_secs_f64(i as f64 / plan.rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let seq = (k / plan.publishers) as u64;
        let channel = format!("{}-{c}", plan.prefix);
        let payload = make_payload(unix_nanos(), seq, plan.index, plan.payload_bytes);
        let (path, body) = match plan.format {
            PublishFormat::Floor => (
                format!("{}?channel={channel}", poster.path()),
                Bytes::from(payload),
            ),
            PublishFormat::Pushpin => (
                poster.path().to_owned(),
                Bytes::from(
                    json!({"items": [{"channel": channel,
                        "formats": {"ws-message": {"content": payload}}}]})
                    .to_string(),
                ),
            ),
            PublishFormat::Sidewire | PublishFormat::Auto => {
                let mut body = String::with_capacity(payload.len() + channel.len() + 32);
                body.push_str("{\"channel\":");
                body.push_str(&serde_json::Value::String(channel).to_string());
                body.push_str(",\"data\":");
                body.push_str(&payload);
                body.push('}');
                (poster.path().to_owned(), Bytes::from(body))
            }
        };
        match poster.post(&path, body).await {
            Ok((status, body))
                if status.is_success()
                    && !(plan.format == PublishFormat::Sidewire
                        && body.starts_with(b"{\"error\"")) =>
            {
                stats.sent += 1;
            }
            Ok((status, body)) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| {
                    format!("publish: {status} {}", String::from_utf8_lossy(&body))
                });
            }
            Err(error) => {
                stats.errors += 1;
                stats
                    .first_error
                    .get_or_insert_with(|| format!("publish: {error:#}"));
            }
        }
    }
    stats.elapsed_s = plan.start.elapsed().as_secs_f64();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_and_parses() {
        let payload = make_payload(1_700_000_000_123_456_789, 42, 3, 200);
        assert_eq!(payload.len(), 200);
        assert_eq!(
            parse_payload(payload.as_bytes()),
            Some((1_700_000_000_123_456_789, 42, 3))
        );
        let small = make_payload(5, 6, 0, 0);
        assert_eq!(parse_payload(small.as_bytes()), Some((5, 6, 0)));
        assert_eq!(parse_payload(br#"{"seq":2, "ts":1}"#), Some((1, 2, 0)));
        assert_eq!(
            parse_payload(br#"{"p":1,"seq":2, "ts":1}"#),
            Some((1, 2, 1))
        );
        assert_eq!(parse_payload(b"nope"), None);
    }

    #[test]
    fn totals_cross_the_process_boundary_and_merge() {
        let results = vec![
            SubResult {
                expected: 3,
                received: 3,
                latencies_us: vec![10, 20, 30],
                last_ns: Some(5),
                ..SubResult::default()
            },
            SubResult {
                expected: 3,
                received: 1,
                gaps: 2,
                closed_early: true,
                latencies_us: vec![40],
                last_ns: Some(9),
                ..SubResult::default()
            },
        ];
        // Three subscribed, two reported.
        let totals = Totals::sum(results, 3, 1);
        assert_eq!(totals.received, 4);
        assert_eq!(totals.incomplete, 2);
        assert_eq!(totals.unreported, 1);
        assert_eq!(totals.closed_early, 1);
        assert_eq!(totals.last_ns, Some(9));
        let back = Totals::from_json(&totals.to_json()).unwrap();
        assert_eq!(back, totals);
        let mut merged = back.clone();
        merged.merge(totals);
        assert_eq!(merged.received, 8);
        assert_eq!(merged.latencies_us.len(), 8);
        assert_eq!(merged.last_ns, Some(9));
        assert_eq!(Totals::from_json(&json!({"expected": 1})), None);
    }
}
