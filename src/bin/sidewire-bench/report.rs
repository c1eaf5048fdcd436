//! `report`: turns the JSON result lines of a run into Markdown tables (with the ratio of each
//! server to the floor server measured under the same parameters).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

/// Options of the `report` command.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// File of result lines (other lines are ignored).
    #[arg(long)]
    results: PathBuf,
    /// Label of the baseline server in the ratio columns.
    #[arg(long, default_value = "floor")]
    baseline: String,
}

/// Prints the tables to stdout.
pub fn run(args: ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("reading {}", args.results.display()))?;
    let rows: Vec<Value> = text
        .lines()
        .filter(|line| line.starts_with('{'))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    print!("{}", tables(&rows, &args.baseline));
    Ok(())
}

fn of<'a>(rows: &'a [Value], scenario: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|row| row["scenario"] == scenario)
        .collect()
}

fn num(row: &Value, key: &str) -> Option<f64> {
    row.get(key).and_then(Value::as_f64)
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn text(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "–".into(),
        Some(other) => other.to_string(),
    }
}

/// The baseline row with the same values for `keys`.
fn baseline<'a>(rows: &[&'a Value], row: &Value, keys: &[&str], label: &str) -> Option<&'a Value> {
    rows.iter().copied().find(|other| {
        other["label"] == label && keys.iter().all(|key| other.get(*key) == row.get(*key))
    })
}

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => Some(value / base),
        _ => None,
    }
}

/// Markdown for all scenarios present in `rows`.
pub fn tables(rows: &[Value], base_label: &str) -> String {
    let mut out = String::new();
    let idle = of(rows, "idle");
    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "### Idle connections\n\n\
             Memory is the server's `VmRSS` delta (summed over its processes) from after a \
             2-connection warm-up to after the hold, divided by the connections opened. \
             Connect rate counts sessions fully connected and subscribed per second.\n\n\
             | server | dialect | connections | ok | connect rate /s | RSS before MiB | RSS after MiB | **KiB / conn** | × {base_label} | server CPU µs / connect |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for row in &idle {
            let base = baseline(&idle, row, &["connections"], base_label);
            let kib = num(row, "kib_per_conn");
            let cpu_per_conn = num(row, "server_cpu_ms_connect")
                .zip(num(row, "ok"))
                .filter(|(_, ok)| *ok > 0.0)
                .map(|(ms, ok)| ms * 1000.0 / ok);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "connections"),
                text(row, "ok"),
                cell(num(row, "connect_rate"), 0),
                cell(num(row, "rss_before_kib").map(|k| k / 1024.0), 1),
                cell(num(row, "rss_after_kib").map(|k| k / 1024.0), 1),
                cell(kib, 2),
                cell(ratio(kib, base.and_then(|b| num(b, "kib_per_conn"))), 2),
                cell(cpu_per_conn, 0),
            );
        }
        out.push('\n');
    }
    let fanout = of(rows, "fanout");
    if !fanout.is_empty() {
        let _ = writeln!(
            out,
            "### Fan-out\n\n\
             Publications go through the server's HTTP API (one keep-alive connection per \
             publisher, one request in flight each); rate 0 = as fast as accepted. Latency is \
             from just before the publish request to the subscriber reading the message. \
             \"verified\" = every subscriber got its channel's sequence complete and in order.\n\n\
             | server | dialect | subscribers | channels | publishes | rate /s | publishes /s | **deliveries /s** | × {base_label} | p50 ms | p99 ms | max ms | lost | verified | server CPU % | client CPU % |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        );
        for row in &fanout {
            let keys = [
                "subscribers",
                "channels",
                "publishes",
                "rate",
                "payload_bytes",
            ];
            let base = baseline(&fanout, row, &keys, base_label);
            let rate = num(row, "deliveries_per_s");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "subscribers"),
                text(row, "channels"),
                text(row, "publishes"),
                cell(num(row, "rate"), 0),
                cell(num(row, "publish_rate"), 0),
                cell(rate, 0),
                cell(
                    ratio(rate, base.and_then(|b| num(b, "deliveries_per_s"))),
                    2
                ),
                cell(num(row, "latency_p50_ms"), 2),
                cell(num(row, "latency_p99_ms"), 2),
                cell(num(row, "latency_max_ms"), 2),
                text(row, "lost"),
                if row["verified"] == true {
                    "yes"
                } else {
                    "**no**"
                },
                cell(num(row, "server_cpu_pct"), 0),
                cell(num(row, "client_cpu_pct"), 0),
            );
        }
        out.push('\n');
    }
    let rpc = of(rows, "rpc");
    if !rpc.is_empty() {
        let _ = writeln!(
            out,
            "### RPC (`echo`, closed loop)\n\n\
             | server | dialect | clients | duration s | **calls /s** | p50 ms | p99 ms | max ms | errors |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for row in &rpc {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | **{}** | {} | {} | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "clients"),
                cell(num(row, "duration_s"), 1),
                cell(num(row, "calls_per_s"), 0),
                cell(num(row, "latency_p50_ms"), 3),
                cell(num(row, "latency_p99_ms"), 3),
                cell(num(row, "latency_max_ms"), 3),
                text(row, "errors"),
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_against_the_floor() {
        let rows = vec![
            json!({"scenario":"idle","label":"floor","dialect":"raw","connections":10,"ok":10,
                   "kib_per_conn":5.0}),
            json!({"scenario":"idle","label":"sidewire","dialect":"json","connections":10,"ok":10,
                   "kib_per_conn":15.0}),
        ];
        let markdown = tables(&rows, "floor");
        assert!(markdown.contains("| sidewire | json | 10 | 10 |"));
        assert!(markdown.contains("**15.00** | 3.00 |"));
    }
}
