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
    last_at: Option<Instant>,
}

/// Runs the scenario and prints its result lines.
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
    let mut replicas = vec![Arc::clone(&target)];
    for url in &args.replica_urls {
        replicas.push(Arc::new(crate::client::Target::new(
            url,
            target.dialect,
            target.setup_timeout,
        )?));
    }
    let publishers = args.publishers;
    let per_channel =
        |c: usize| args.publishes / args.channels + usize::from(c < args.publishes % args.channels);

    // Subscribe everyone.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let (done_tx, mut done_rx) = mpsc::channel::<SubResult>(1024);
    let extra = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.conn.concurrency));
    let mut tasks = JoinSet::new();
    let setup_start = Instant::now();
    for i in 0..args.subscribers {
        let c = i % args.channels;
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
    while ok + failed < args.subscribers {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(error))) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Ok(None) => break,
            Err(_) => {
                failed = args.subscribers - ok;
                first_error.get_or_insert_with(|| "subscribe deadline passed".into());
                break;
            }
        }
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    if ok == 0 {
        let _ = shutdown_tx.send(true);
        drain(&mut tasks, Duration::from_secs(5)).await;
        bail!(
            "no subscriber connected: {}",
            first_error.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Publish.
    let cpu_before = read_cpu(&args.pids);
    let client_cpu_before = read_cpu(&[std::process::id()]);
    let publish_start = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
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
            start: publish_start,
            deadline,
        }));
    }

    // Collect: finished subscribers report as soon as they have everything.
    let mut results = Vec::with_capacity(ok);
    while results.len() < ok {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(result)) => results.push(result),
            Ok(None) | Err(_) => break,
        }
    }
    let mut published = PublishStats::default();
    while let Some(joined) = publisher_tasks.join_next().await {
        if let Ok(stats) = joined {
            published.merge(stats);
        }
    }
    let cpu_after = read_cpu(&args.pids);
    let client_cpu_after = read_cpu(&[std::process::id()]);
    let publish_phase_s = publish_start.elapsed().as_secs_f64();
    let rss_after = if args.pids.is_empty() {
        None
    } else {
        sum_rss_kib(&args.pids).ok()
    };
    let client_rss = self_rss_kib();
    let _ = shutdown_tx.send(true);
    let late_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while results.len() < ok {
        match tokio::time::timeout_at(late_deadline, done_rx.recv()).await {
            Ok(Some(result)) => results.push(result),
            Ok(None) | Err(_) => break,
        }
    }
    drain(&mut tasks, Duration::from_secs(15)).await;

    // Aggregate.
    let unreported = ok - results.len();
    let expected: usize = results.iter().map(|r| r.expected).sum();
    let received: usize = results.iter().map(|r| r.received).sum();
    let gaps: usize = results.iter().map(|r| r.gaps).sum();
    let reordered: usize = results.iter().map(|r| r.reordered).sum();
    let bad: usize = results.iter().map(|r| r.bad).sum();
    let closed_early = results.iter().filter(|r| r.closed_early).count();
    let incomplete = results.iter().filter(|r| r.received < r.expected).count() + unreported;
    let last = results.iter().filter_map(|r| r.last_at).max();
    let delivery_s = last.map_or(0.0, |last| {
        last.saturating_duration_since(publish_start).as_secs_f64()
    });
    let mut samples = Vec::with_capacity(received);
    for result in &mut results {
        samples.append(&mut result.latencies_us);
    }
    let latency = Latency::from_micros(samples);
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
        "replicas": replicas.len(),
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
        "extra": extra.load(Ordering::Relaxed),
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
        let now = Instant::now();
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
            result.last_at = Some(now);
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
}
