//! `report`: turns the JSON result lines of a run into Markdown tables. Repeated runs with the
//! same parameters are collapsed into their median (by the table's main metric) with the
//! range, and each server is compared with the baseline (floor) server under the same
//! parameters.

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

/// Runs with identical parameters, represented by the median run.
struct Group<'a> {
    /// The median run by the metric (lower middle for an even count).
    row: &'a Value,
    /// Number of runs.
    runs: usize,
    /// Smallest and largest metric value over the runs.
    range: Option<(f64, f64)>,
}

/// Groups the scenario's rows by `keys` (first appearance order), median by `metric`.
fn groups<'a>(rows: &'a [Value], scenario: &str, keys: &[&str], metric: &str) -> Vec<Group<'a>> {
    let mut buckets: Vec<Vec<&'a Value>> = Vec::new();
    for row in rows.iter().filter(|row| row["scenario"] == scenario) {
        let same = |other: &&Value| keys.iter().all(|key| other.get(*key) == row.get(*key));
        match buckets
            .iter_mut()
            .find(|bucket| bucket.first().is_some_and(same))
        {
            Some(bucket) => bucket.push(row),
            None => buckets.push(vec![row]),
        }
    }
    buckets
        .into_iter()
        .filter_map(|mut bucket| {
            bucket.sort_by(|a, b| {
                let (a, b) = (num(a, metric), num(b, metric));
                a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
            });
            let values: Vec<f64> = bucket.iter().filter_map(|row| num(row, metric)).collect();
            let range = values.first().copied().zip(values.last().copied());
            let row = *bucket.get((bucket.len().saturating_sub(1)) / 2)?;
            Some(Group {
                row,
                runs: bucket.len(),
                range,
            })
        })
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

/// `runs: min–max` of a group's metric.
fn spread(group: &Group<'_>, decimals: usize) -> String {
    match group.range {
        Some((low, high)) if group.runs > 1 => {
            format!("{}: {low:.decimals$}–{high:.decimals$}", group.runs)
        }
        _ => group.runs.to_string(),
    }
}

/// The baseline group with the same values for `keys`.
fn baseline<'a>(
    groups: &[Group<'a>],
    row: &Value,
    keys: &[&str],
    label: &str,
) -> Option<&'a Value> {
    groups.iter().map(|group| group.row).find(|other| {
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
    let idle_keys = ["label", "dialect", "connections", "hold_s"];
    let idle = groups(rows, "idle", &idle_keys, "kib_per_conn");
    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "### Idle connections\n\n\
             Memory is the server's `VmRSS` delta (summed over its processes) from after a \
             2-connection warm-up to after the hold, divided by the connections opened. \
             Connect rate counts sessions fully connected and subscribed per second. With \
             several runs the median run (by KiB / conn) is shown; \"runs\" gives the range.\n\n\
             | server | dialect | connections | ok | connect rate /s | RSS before MiB | RSS after MiB | **KiB / conn** | runs: KiB range | × {base_label} | server CPU µs / connect |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut splits = Vec::new();
        for group in &idle {
            let row = group.row;
            if let Some(parts) = row["per_process"]
                .as_array()
                .filter(|parts| parts.len() > 1)
            {
                let parts: Vec<String> = parts
                    .iter()
                    .map(|part| {
                        format!(
                            "{} {}",
                            text(part, "name"),
                            cell(num(part, "kib_per_conn"), 2)
                        )
                    })
                    .collect();
                splits.push(format!(
                    "- {} at {} connections: {} (KiB / conn)",
                    text(row, "label"),
                    text(row, "connections"),
                    parts.join(", ")
                ));
            }
            let base = baseline(&idle, row, &["dialect", "connections"], base_label)
                .or_else(|| baseline(&idle, row, &["connections"], base_label));
            let kib = num(row, "kib_per_conn");
            let cpu_per_conn = num(row, "server_cpu_ms_connect")
                .zip(num(row, "ok"))
                .filter(|(_, ok)| *ok > 0.0)
                .map(|(ms, ok)| ms * 1000.0 / ok);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "connections"),
                text(row, "ok"),
                cell(num(row, "connect_rate"), 0),
                cell(num(row, "rss_before_kib").map(|k| k / 1024.0), 1),
                cell(num(row, "rss_after_kib").map(|k| k / 1024.0), 1),
                cell(kib, 2),
                spread(group, 2),
                cell(ratio(kib, base.and_then(|b| num(b, "kib_per_conn"))), 2),
                cell(cpu_per_conn, 0),
            );
        }
        if !splits.is_empty() {
            let _ = writeln!(out, "\nPer-process split of the median runs:\n");
            for split in splits {
                let _ = writeln!(out, "{split}");
            }
        }
        out.push('\n');
    }
    let fanout_params = [
        "subscribers",
        "channels",
        "publishes",
        "rate",
        "payload_bytes",
        "publishers",
    ];
    let fanout_keys: Vec<&str> = ["label", "dialect"]
        .into_iter()
        .chain(fanout_params)
        .collect();
    let comparable: Vec<&str> = fanout_params
        .iter()
        .copied()
        .filter(|key| *key != "publishes")
        .collect();
    let fanout = groups(rows, "fanout", &fanout_keys, "deliveries_per_s");
    if !fanout.is_empty() {
        let _ = writeln!(
            out,
            "### Fan-out\n\n\
             Publications go through the server's HTTP API (one keep-alive connection per \
             publisher, one request in flight each); rate 0 = as fast as accepted. Latency is \
             from just before the publish request to the subscriber reading the message. \
             \"verified\" = every subscribed client got every publisher's sequence on its \
             channel complete and in order (\"subscribed\" < \"subscribers\" = handshakes that \
             failed). With several runs the median run (by deliveries/s) is \
             shown; \"runs\" gives the range. \"per CPU-s\" = deliveries per second of server CPU \
             time (user + system, all its processes): efficiency, robust to CPU stolen by other \
             work on the machine.\n\n\
             | server | dialect | subscribers | subscribed | channels | publishes | publishers | rate /s | publishes /s | **deliveries /s** | runs: range | × {base_label} | p50 ms | p99 ms | max ms | lost | verified | server CPU % | client CPU % | per CPU-s | × {base_label} per CPU-s |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
        );
        for group in &fanout {
            let row = group.row;
            // Saturated throughput does not depend on the publication count, so peers may run
            // fewer publications and still be compared.
            let base = baseline(&fanout, row, &fanout_params[..], base_label)
                .or_else(|| baseline(&fanout, row, &comparable, base_label));
            let rate = num(row, "deliveries_per_s");
            let efficiency = |row: &Value| {
                num(row, "received")
                    .zip(num(row, "server_cpu_ms"))
                    .filter(|(_, ms)| *ms > 0.0)
                    .map(|(received, ms)| received / (ms / 1000.0))
            };
            let all_verified = rows
                .iter()
                .filter(|other| {
                    other["scenario"] == "fanout"
                        && fanout_keys
                            .iter()
                            .all(|key| other.get(*key) == row.get(*key))
                })
                .all(|other| {
                    // Older result lines also counted failed subscriptions in `verified`.
                    [
                        "incomplete_subscribers",
                        "gaps",
                        "reordered",
                        "bad_payloads",
                    ]
                    .iter()
                    .all(|key| num(other, key) == Some(0.0))
                });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "subscribers"),
                text(row, "subscribed"),
                text(row, "channels"),
                text(row, "publishes"),
                text(row, "publishers"),
                cell(num(row, "rate"), 0),
                cell(num(row, "publish_rate"), 0),
                cell(rate, 0),
                spread(group, 0),
                cell(
                    ratio(rate, base.and_then(|b| num(b, "deliveries_per_s"))),
                    2
                ),
                cell(num(row, "latency_p50_ms"), 2),
                cell(num(row, "latency_p99_ms"), 2),
                cell(num(row, "latency_max_ms"), 2),
                text(row, "lost"),
                if all_verified { "yes" } else { "**no**" },
                cell(num(row, "server_cpu_pct"), 0),
                cell(num(row, "client_cpu_pct"), 0),
                cell(efficiency(row), 0),
                cell(ratio(efficiency(row), base.and_then(efficiency)), 2),
            );
        }
        out.push('\n');
    }
    let rpc = groups(rows, "rpc", &["label", "dialect", "clients"], "calls_per_s");
    if !rpc.is_empty() {
        let _ = writeln!(
            out,
            "### RPC (`echo`, closed loop)\n\n\
             | server | dialect | clients | duration s | **calls /s** | runs: range | p50 ms | p99 ms | max ms | errors | server CPU % | client CPU % |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for group in &rpc {
            let row = group.row;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
                text(row, "label"),
                text(row, "dialect"),
                text(row, "clients"),
                cell(num(row, "duration_s"), 1),
                cell(num(row, "calls_per_s"), 0),
                spread(group, 0),
                cell(num(row, "latency_p50_ms"), 3),
                cell(num(row, "latency_p99_ms"), 3),
                cell(num(row, "latency_max_ms"), 3),
                text(row, "errors"),
                cell(num(row, "server_cpu_pct"), 0),
                cell(num(row, "client_cpu_pct"), 0),
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
    fn medians_and_ratios_against_the_floor() {
        let idle = |label: &str, dialect: &str, kib: f64| {
            json!({"scenario":"idle","label":label,"dialect":dialect,"connections":10,"ok":10,
                   "hold_s":5.0,"kib_per_conn":kib})
        };
        let rows = vec![
            idle("floor", "raw", 5.0),
            idle("sidewire", "json", 16.0),
            idle("sidewire", "json", 14.0),
            idle("sidewire", "json", 15.0),
        ];
        let markdown = tables(&rows, "floor");
        assert!(
            markdown.contains("| sidewire | json | 10 | 10 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("**15.00** | 3: 14.00–16.00 | 3.00 |"),
            "{markdown}"
        );
        assert!(markdown.contains("**5.00** | 1 | 1.00 |"), "{markdown}");
    }
}
