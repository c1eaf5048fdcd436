//! `rpc`: K clients calling rpc `echo` in a closed loop (one call in flight per client) for a
//! fixed duration; reports calls per second and call latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{Client, ConnArgs, Dialect};
use crate::idle::drain;
use crate::stats::{Latency, emit, micros, parse_duration, round2, round3, sum_cpu_ms};
use sidewire::protocol::client::{Command, RpcRequest};

/// Bound on one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the `rpc` scenario.
#[derive(Debug, clap::Args)]
pub struct RpcArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Concurrent clients (each one call in flight).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// How long the clients call.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Server process ids for a CPU reading (optional).
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

/// What one client measured.
#[derive(Debug, Default)]
struct ClientResult {
    calls: usize,
    errors: usize,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Runs the scenario and prints its result lines.
pub async fn run(args: RpcArgs) -> Result<()> {
    if args.clients == 0 || args.conn.concurrency == 0 {
        bail!("--clients and --concurrency must be positive");
    }
    let target = Arc::new(args.conn.target()?);
    if matches!(target.dialect, Dialect::Raw { .. }) {
        bail!("rpc needs the client protocol (no --raw)");
    }
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(args.clients);
    let gate = Arc::new(Semaphore::new(args.conn.concurrency));
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients {
        let target = Arc::clone(&target);
        let gate = Arc::clone(&gate);
        let ready = ready_tx.clone();
        let mut go = go_rx.clone();
        let duration = args.duration;
        tasks.spawn(async move {
            let mut result = ClientResult::default();
            let setup = async {
                let _permit = gate.acquire().await?;
                Client::open_connected(&target).await
            };
            let mut client = match setup.await {
                Ok(client) => {
                    let _ = ready.send(Ok(())).await;
                    client
                }
                Err(error) => {
                    let _ = ready.send(Err(format!("{error:#}"))).await;
                    return result;
                }
            };
            drop(ready);
            // Wait for the common start (or give up when the sender is gone).
            let start = loop {
                if let Some(start) = *go.borrow_and_update() {
                    break start;
                }
                if go.changed().await.is_err() {
                    return result;
                }
            };
            let end = start + duration;
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
                match tokio::time::timeout(CALL_TIMEOUT, client.request(command)).await {
                    Ok(Ok(_)) => {
                        result.calls += 1;
                        result.latencies_us.push(micros(sent.elapsed()));
                    }
                    Ok(Err(error)) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(format!("{error:#}"));
                        break;
                    }
                    Err(_) => {
                        result.errors += 1;
                        result.first_error.get_or_insert("call timed out".into());
                        break;
                    }
                }
            }
            client.close(Duration::from_secs(2)).await;
            result
        });
    }
    drop(ready_tx);
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None::<String>);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ok + failed < args.clients {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(error))) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let cpu_before = read_cpu(&args.pids);
    let client_cpu_before = read_cpu(&[std::process::id()]);
    let start = Instant::now();
    let _ = go_tx.send(Some(start));
    let mut results = Vec::new();
    let collect_deadline = tokio::time::Instant::now() + args.duration + CALL_TIMEOUT * 2;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(collect_deadline, tasks.join_next()).await {
            Ok(Some(Ok(result))) => results.push(result),
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = start.elapsed().min(args.duration).as_secs_f64();
    let cpu_after = read_cpu(&args.pids);
    let client_cpu_after = read_cpu(&[std::process::id()]);
    drop(go_tx);
    drain(&mut tasks, Duration::from_secs(5)).await;

    let calls: usize = results.iter().map(|r| r.calls).sum();
    let errors: usize = results.iter().map(|r| r.errors).sum();
    if first_error.is_none() {
        first_error = results.iter_mut().find_map(|r| r.first_error.take());
    }
    let mut samples = Vec::with_capacity(calls);
    for result in &mut results {
        samples.append(&mut result.latencies_us);
    }
    let latency = Latency::from_micros(samples);
    let rate = calls as f64 / elapsed.max(1e-9);
    let json = json!({
        "scenario": "rpc",
        "label": args.conn.label,
        "dialect": target.dialect.name(),
        "clients": args.clients,
        "connected": ok,
        "failed": failed,
        "duration_s": round2(elapsed),
        "calls": calls,
        "errors": errors,
        "calls_per_s": round2(rate),
        "latency_samples": latency.count,
        "latency_p50_ms": round3(latency.p50_ms),
        "latency_p99_ms": round3(latency.p99_ms),
        "latency_max_ms": round3(latency.max_ms),
        "server_cpu_ms": cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a)),
        "server_cpu_pct": cpu_before.zip(cpu_after)
            .map(|(a, b)| round2(b.saturating_sub(a) as f64 / 10.0 / elapsed.max(1e-9))),
        "client_cpu_pct": client_cpu_before.zip(client_cpu_after)
            .map(|(a, b)| round2(b.saturating_sub(a) as f64 / 10.0 / elapsed.max(1e-9))),
        "first_error": first_error,
    });
    emit(
        &format!(
            "rpc {} [{}]: {ok}/{} clients, {calls} calls in {elapsed:.2}s = {rate:.0}/s, \
             latency p50 {:.3} ms p99 {:.3} ms max {:.3} ms, {errors} errors",
            args.conn.label,
            target.dialect.name(),
            args.clients,
            latency.p50_ms,
            latency.p99_ms,
            latency.max_ms,
        ),
        &json,
    );
    Ok(())
}

fn read_cpu(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        None
    } else {
        sum_cpu_ms(pids).ok()
    }
}
