//! Shared measurement helpers: latency percentiles, `/proc` readings, clocks, output lines.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// Parses `500ms`, `5s`, `2m`, `1h`: sidewire's own config syntax (the product's parser, so
/// scripts pass the same values to both).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    sidewire::config::duration::parse(text)
}

/// Nanoseconds since the Unix epoch (shared clock of publisher and subscribers).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Latency distribution of microsecond samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Number of samples.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl Latency {
    /// Sorts the samples (µs) and takes nearest-rank percentiles.
    pub fn from_micros(mut samples: Vec<u32>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let index = (q * samples.len() as f64).ceil() as usize;
            f64::from(samples[index.clamp(1, samples.len()) - 1]) / 1000.0
        };
        Latency {
            count: samples.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: rank(1.0),
        }
    }
}

/// Microseconds as a saturating `u32` sample.
pub fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// `VmRSS` of one process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_field_kib(&status, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// `VmRSS` of this process, KiB (0 if unreadable).
pub fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_field_kib(&status, "VmRSS:"))
        .unwrap_or(0)
}

fn status_field_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Summed `VmRSS` of all pids, KiB.
pub fn sum_rss_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|pid| rss_kib(*pid)).sum()
}

/// Summed user + system CPU time of all pids, milliseconds.
pub fn sum_cpu_ms(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow!("malformed {path}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |index: usize| -> Result<u64> {
            fields
                .get(index)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("malformed {path}"))
        };
        // `rest` starts at field 3, so field n is at index n - 3.
        total += (ticks(11)? + ticks(12)?) * 1000 / USER_HZ;
    }
    Ok(total)
}

/// Prints the human line, then the JSON line, and flushes stdout.
pub fn emit(human: &str, json: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{human}");
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
}

/// Rounds to two decimals for reports.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Rounds to three decimals for reports.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let latency = Latency::from_micros((1..=100).rev().map(|v| v * 1000).collect());
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
        assert_eq!(Latency::from_micros(vec![]).count, 0);
    }

    #[test]
    fn reads_own_proc_files() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        sum_cpu_ms(&[pid]).unwrap();
        assert!(self_rss_kib() > 0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
