//! `flood`: one hostile client attacks the server while a few victims call rpc `echo` at a
//! steady pace; reports the victims' latency and disconnects, and the server's memory before,
//! at the peak of, and after the attack. The attacks are the ones the safety work guards:
//! `subscribe` (many subscribe commands, batched) and `publish` (large publications into
//! distinct channels, which the server keeps as history).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{Client, ConnArgs, Dialect, Incoming};
use crate::idle::drain;
use crate::stats::{Latency, emit, micros, parse_duration, round2, round3, sum_rss_kib};
use sidewire::protocol::client::{Command, PublishRequest, RpcRequest, SubscribeRequest};

/// Bound on one victim call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Period of the server memory sampling.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

/// The attack.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Attack {
    /// Subscribe to `count` distinct channels, `batch` commands per message.
    Subscribe,
    /// Publish `count` payloads of `payload-bytes` into distinct channels.
    Publish,
}

/// Options of the `flood` scenario.
#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// What the attacker does.
    #[arg(long, value_enum)]
    attack: Attack,
    /// Commands the attacker sends.
    #[arg(long, default_value_t = 70_000)]
    count: usize,
    /// Commands per WebSocket message of the attacker.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Length of each attacked channel's name, bytes (long names cost the server most).
    #[arg(long, default_value_t = 240)]
    channel_bytes: usize,
    /// Size of each published payload (publish attack), bytes.
    #[arg(long, default_value_t = 60_000)]
    payload_bytes: usize,
    /// Victim clients, each calling rpc `echo` every `pace`.
    #[arg(long, default_value_t = 5)]
    victims: usize,
    /// Pause between two calls of one victim.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pace: Duration,
    /// How long victims keep calling (the attack starts with them).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Server process ids for the memory reading.
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

#[derive(Debug, Default)]
struct VictimResult {
    calls: usize,
    disconnected: bool,
    error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Runs the scenario and prints its result lines.
pub async fn run(args: FloodArgs) -> Result<()> {
    if args.batch == 0 || args.count == 0 {
        bail!("--count and --batch must be positive");
    }
    let target = args.conn.target()?;
    if matches!(target.dialect, Dialect::Raw { .. }) {
        bail!("flood needs the client protocol (no --raw)");
    }
    let mut victims = Vec::with_capacity(args.victims);
    for _ in 0..args.victims {
        victims.push(Client::open_connected(&target).await?);
    }
    let mut attacker = Client::open_connected(&target).await?;
    let rss_before = sum_rss_kib(&args.pids).ok();

    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = JoinSet::new();
    for mut victim in victims {
        let pace = args.pace;
        tasks.spawn(async move {
            let mut result = VictimResult::default();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let command = Command {
                    rpc: Some(RpcRequest {
                        method: "echo".into(),
                        data: Bytes::from(format!("{{\"n\":{n}}}")),
                    }),
                    ..Default::default()
                };
                let sent = Instant::now();
                match tokio::time::timeout(CALL_TIMEOUT, victim.request(command)).await {
                    Ok(Ok(_)) => {
                        result.calls += 1;
                        result.latencies_us.push(micros(sent.elapsed()));
                    }
                    Ok(Err(error)) => {
                        result.disconnected = true;
                        result.error = Some(format!("{error:#}"));
                        break;
                    }
                    Err(_) => {
                        result.error = Some("call timed out".into());
                        break;
                    }
                }
                tokio::time::sleep(pace).await;
            }
            victim.close(Duration::from_secs(2)).await;
            result
        });
    }

    let attack = args.attack;
    let (count, batch, payload_bytes) = (args.count, args.batch, args.payload_bytes);
    let padding = "x".repeat(args.channel_bytes.saturating_sub(16));
    let attacker_task = tokio::spawn(async move {
        let payload = Bytes::from(format!(
            "\"{}\"",
            "x".repeat(payload_bytes.saturating_sub(2))
        ));
        let mut sent = 0usize;
        let mut id = 1_000u32;
        while sent < count {
            let commands: Vec<Command> = (sent..(sent + batch).min(count))
                .map(|n| {
                    id += 1;
                    let channel = format!("flood-{n}-{padding}");
                    match attack {
                        Attack::Subscribe => Command {
                            id,
                            subscribe: Some(SubscribeRequest {
                                channel,
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Attack::Publish => Command {
                            id,
                            publish: Some(PublishRequest {
                                channel,
                                data: payload.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    }
                })
                .collect();
            match tokio::time::timeout(Duration::from_secs(5), attacker.send_batch(&commands)).await
            {
                Ok(Ok(())) => sent += commands.len(),
                Ok(Err(error)) => return (sent, format!("closed: {error:#}")),
                Err(_) => return (sent, "send stalled (server stopped reading)".to_owned()),
            }
            // Read and discard what came back, so the server keeps serving this client (one
            // that never reads is simply disconnected as slow): the attack at full strength.
            loop {
                match tokio::time::timeout(Duration::from_millis(1), attacker.next()).await {
                    Ok(Ok(Incoming::Closed)) => return (sent, "closed by the server".to_owned()),
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => return (sent, format!("closed: {error:#}")),
                    Err(_) => break,
                }
            }
        }
        (sent, "all sent".to_owned())
    });

    let mut rss_peak = rss_before.unwrap_or(0);
    let mut results = Vec::new();
    let mut sampler = tokio::time::interval(RSS_SAMPLE);
    let collect_deadline = tokio::time::Instant::now() + args.duration + CALL_TIMEOUT * 2;
    while !tasks.is_empty() {
        tokio::select! {
            _ = sampler.tick() => {
                if let Ok(rss) = sum_rss_kib(&args.pids) {
                    rss_peak = rss_peak.max(rss);
                }
            }
            joined = tasks.join_next() => match joined {
                Some(Ok(result)) => results.push(result),
                Some(Err(_)) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(collect_deadline) => break,
        }
    }
    drain(&mut tasks, Duration::from_secs(2)).await;
    let (attacker_sent, attacker_outcome) =
        match tokio::time::timeout(Duration::from_secs(2), attacker_task).await {
            Ok(Ok(outcome)) => outcome,
            _ => (0, "still sending at the end".to_owned()),
        };
    let rss_after = sum_rss_kib(&args.pids).ok();

    let calls: usize = results.iter().map(|r| r.calls).sum();
    let disconnected = results.iter().filter(|r| r.disconnected).count();
    let first_error = results.iter().find_map(|r| r.error.clone());
    let mut samples = Vec::with_capacity(calls);
    for result in &mut results {
        samples.append(&mut result.latencies_us);
    }
    let latency = Latency::from_micros(samples);
    let mib = |kib: Option<u64>| kib.map(|k| round2(k as f64 / 1024.0));
    let json = json!({
        "scenario": "flood",
        "label": args.conn.label,
        "attack": format!("{:?}", args.attack).to_lowercase(),
        "count": args.count,
        "batch": args.batch,
        "payload_bytes": args.payload_bytes,
        "attacker_sent": attacker_sent,
        "attacker_outcome": attacker_outcome,
        "victims": args.victims,
        "victims_disconnected": disconnected,
        "victim_calls": calls,
        "victim_p50_ms": round3(latency.p50_ms),
        "victim_p99_ms": round3(latency.p99_ms),
        "victim_max_ms": round3(latency.max_ms),
        "server_rss_before_mib": mib(rss_before),
        "server_rss_peak_mib": mib(Some(rss_peak).filter(|_| rss_before.is_some())),
        "server_rss_after_mib": mib(rss_after),
        "first_error": first_error,
    });
    emit(
        &format!(
            "flood {} [{:?}]: attacker sent {attacker_sent}/{} ({attacker_outcome}); victims \
             {calls} calls, {disconnected}/{} disconnected, p50 {:.3} ms p99 {:.3} ms max \
             {:.3} ms; server RSS {:?} -> peak {:?} -> {:?} MiB",
            args.conn.label,
            args.attack,
            args.count,
            args.victims,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
            mib(rss_before),
            mib(Some(rss_peak)),
            mib(rss_after),
        ),
        &json,
    );
    Ok(())
}
