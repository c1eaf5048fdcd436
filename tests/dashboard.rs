//! The Grafana dashboard (`deploy/grafana/sidewire.json`) against a running sidewire's
//! `/metrics`: every metric a panel queries is one sidewire exports, under the name Prometheus
//! stores it (counters with `_total`, gauges without), grouped only by labels the metric has;
//! and every exported family has a panel.
//!
//! prometheus-client writes a labelled family (its `# TYPE` line included) only once it has a
//! sample, so the test first uses two sidecars until every family has one: WebSocket sessions
//! in both encodings (connections, sessions, commands, a dropped non-JSON delivery), a
//! passthrough request to a dead backend, a bad emulation POST, a connection over
//! `max_connections` and a silent socket past `client_handshake_timeout`. Names are then
//! checked against the `# TYPE` lines (counters stored as `<name>_total`), labels against the
//! samples.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use support::*;

const DASHBOARD: &str = include_str!("../deploy/grafana/sidewire.json");

/// Prometheus adds these to every scraped series; they are never in `/metrics`.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// A metric family from `/metrics`: its type and the label names seen on its samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    sample_labels: BTreeSet<String>,
    samples: usize,
}

/// Families by name (as in `# TYPE`), from OpenMetrics text.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.entry(name.to_owned()).or_default().kind = kind.to_owned();
            }
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        // A sample belongs to the family whose name it extends (`x_total` of counter `x`).
        let family = out
            .iter_mut()
            .filter(|(name, _)| sample.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len());
        if let Some((_, family)) = family {
            family.samples += 1;
            if let Some(labels) = line[name_end..].strip_prefix('{') {
                let labels = labels.split('}').next().unwrap_or("");
                for pair in labels.split(',') {
                    if let Some((key, _)) = pair.split_once('=') {
                        family.sample_labels.insert(key.trim().to_owned());
                    }
                }
            }
        }
    }
    out
}

/// Every PromQL expression in the dashboard (panels nested in rows included).
fn expressions(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_owned());
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `sidewire_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sidewire_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Label names in the expression's `by (...)` clauses.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let end = tail.find(')').unwrap_or(tail.len());
        for label in tail[..end].split(',') {
            let label = label.trim();
            if !label.is_empty() && !SCRAPE_LABELS.contains(&label) {
                labels.insert(label.to_owned());
            }
        }
        rest = &tail[end..];
    }
    labels
}

/// The family a queried name reads, if it is stored under that name: a gauge by its own
/// name, a counter by its name plus `_total`, a histogram by its name plus `_bucket`, `_sum`
/// or `_count`.
fn family_of<'a>(name: &str, families: &'a BTreeMap<String, Family>) -> Result<&'a Family, String> {
    if let Some(family) = families.get(name) {
        return match family.kind.as_str() {
            "counter" => Err(format!("{name} is a counter: query {name}_total")),
            "histogram" => Err(format!("{name} is a histogram: query {name}_bucket")),
            _ => Ok(family),
        };
    }
    let histogram = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| families.get(name.strip_suffix(suffix)?))
        .filter(|family| family.kind == "histogram");
    if let Some(family) = histogram {
        return Ok(family);
    }
    match name
        .strip_suffix("_total")
        .and_then(|base| families.get(base))
    {
        Some(family) if family.kind == "counter" => Ok(family),
        Some(family) => Err(format!(
            "{name}: the family is a {}, not a counter",
            family.kind
        )),
        None => Err(format!("{name} is not exported by /metrics")),
    }
}

/// The `/metrics` text of `server`.
async fn metrics_text(server: &Server) -> String {
    scrape(server.admin_addr).await.text
}

/// Waits until `/metrics` of `server` has a sample of every family in `wanted`.
async fn wait_for_samples(server: &Server, wanted: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(server).await;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|name| !text.lines().any(|l| l.starts_with(&format!("{name}{{"))))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no samples of {missing:?} in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts sidecars and uses them until every labelled family has samples (prometheus-client
/// writes a family, `# TYPE` line included, only once it has a sample); returns the `/metrics`
/// texts and the servers (kept alive by the caller).
async fn exercised_metrics() -> (Vec<Server>, String) {
    // A backend address nothing listens on: passthrough answers 502 and counts it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let server = Server::start(&format!(
        "http_stream: true\nbackend:\n  url: \"http://{dead_addr}\"\n  connect_timeout: \"1s\"\n"
    ))
    .await;
    server.wait_ready(Duration::from_secs(10)).await;

    // Sessions, commands, connections, in both encodings. (`link_frames_dropped` is exported
    // with every reason at 0 from the start, so it needs no exercise.)
    let mut json_client = server.ws(WsOptions::json()).await;
    json_client.handshake().await;
    let reply = json_client.request(subscribe("dashboard")).await;
    assert!(reply.error.is_none(), "subscribe: {reply:?}");
    let mut proto_client = server.ws(WsOptions::protobuf()).await;
    proto_client.handshake().await;
    let reply = proto_client.request(subscribe("dashboard")).await;
    assert!(reply.error.is_none(), "subscribe: {reply:?}");
    drop(proto_client); // a closed session, by code

    // Passthrough (502) and an emulation POST that is not a valid command (bad_request).
    let (status, _) = http_get(server.client_addr, "/some/page").await;
    assert_eq!(status, 502, "passthrough to a dead backend");
    let (status, _) = http(
        server.client_addr,
        "POST",
        "/emulation",
        &[],
        Some("not json"),
    )
    .await;
    assert_eq!(status, 400, "emulation POST with garbage");
    let first = wait_for_samples(
        &server,
        &[
            "sidewire_connections",
            "sidewire_sessions_opened_total",
            "sidewire_sessions_closed_total",
            "sidewire_commands_total",
            "sidewire_passthrough_requests_total",
            "sidewire_emulation_requests_total",
            "sidewire_link_frames_dropped_total",
            "sidewire_config_reloads_total",
        ],
    )
    .await;

    // Caps and timers: one connection allowed; a silent socket holds it, the next one is
    // refused by the cap, then the silent one times out in its handshake.
    let limited = Server::start("max_connections: 1\nclient_handshake_timeout: \"300ms\"\n").await;
    let silent = tokio::net::TcpStream::connect(limited.client_addr)
        .await
        .expect("connect");
    eventually(
        Duration::from_secs(5),
        "a connection refused by max_connections",
        || {
            let addr = limited.admin_addr;
            let client = limited.client_addr;
            async move {
                // Closed at once after accept by the cap (or refused while the cap is full).
                let _extra = tokio::net::TcpStream::connect(client).await;
                let (_, text) = http_get(addr, "/metrics").await;
                text.contains("sidewire_connections_refused_total{")
            }
        },
    )
    .await;
    let second = wait_for_samples(
        &limited,
        &[
            "sidewire_connections_refused_total",
            "sidewire_connection_timeouts_total",
        ],
    )
    .await;
    drop(silent);
    (vec![server, limited], format!("{first}\n{second}"))
}

#[test]
fn dashboard_is_valid_grafana_json() {
    let dashboard: Value =
        serde_json::from_str(DASHBOARD).expect("deploy/grafana/sidewire.json is JSON");
    assert_eq!(dashboard["uid"], "sidewire");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "schemaVersion"
    );
    let exprs = expressions(&dashboard);
    assert!(
        exprs.len() >= 15,
        "expected a panel per metric, found {} queries",
        exprs.len()
    );
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id: {panel}"
        );
    }
}

#[tokio::test]
async fn dashboard_queries_only_exported_metrics_and_labels() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let (_server, text) = exercised_metrics().await;
    let families = families(&text);
    assert!(families.len() >= 10, "few families in /metrics:\n{text}");
    let mut problems = Vec::new();
    let mut labels_checked = 0;
    for expr in expressions(&dashboard) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "query without a sidewire metric: {expr}");
        for name in &names {
            match family_of(name, &families) {
                Err(problem) => problems.push(format!("{problem} (in `{expr}`)")),
                // Single-metric queries only: a `by` of a combined query may concern another.
                Ok(family) if family.samples > 0 && names.len() == 1 => {
                    for label in grouping_labels(&expr) {
                        labels_checked += 1;
                        if !family.sample_labels.contains(&label) {
                            problems.push(format!(
                                "{name} has no label `{label}` (has {:?}) (in `{expr}`)",
                                family.sample_labels
                            ));
                        }
                    }
                }
                Ok(_) => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );
    assert!(
        labels_checked >= 4,
        "the exercised families should have had their labels checked ({labels_checked})"
    );
}

#[tokio::test]
async fn dashboard_covers_every_exported_metric() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let (_server, text) = exercised_metrics().await;
    let queried: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    let missing: Vec<_> = families(&text)
        .into_iter()
        .filter(|(name, _)| name.starts_with("sidewire_"))
        .filter(|(name, family)| {
            let stored = match family.kind.as_str() {
                "counter" => format!("{name}_total"),
                "histogram" => format!("{name}_bucket"),
                _ => name.clone(),
            };
            !queried.contains(&stored)
        })
        .map(|(name, family)| format!("{name} ({})", family.kind))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics exported but on no panel of deploy/grafana/sidewire.json: {missing:?}"
    );
}

#[test]
fn parsers_read_names_labels_and_types() {
    let text = "# HELP sidewire_commands Client commands.\n# TYPE sidewire_commands counter\n\
                sidewire_commands_total{command=\"publish\"} 1\n# TYPE sidewire_link_up gauge\n\
                sidewire_link_up 1\n# TYPE sidewire_link_reconnects counter\n# EOF\n";
    let families = families(text);
    assert_eq!(families["sidewire_commands"].samples, 1);
    assert!(
        families["sidewire_commands"]
            .sample_labels
            .contains("command")
    );
    assert!(family_of("sidewire_commands_total", &families).is_ok());
    assert!(
        family_of("sidewire_commands", &families).is_err(),
        "a counter needs _total"
    );
    assert!(family_of("sidewire_link_up", &families).is_ok());
    assert!(family_of("sidewire_link_up_total", &families).is_err());
    assert!(
        family_of("sidewire_link_reconnects_total", &families).is_ok(),
        "declared, no samples yet"
    );
    assert!(family_of("sidewire_nope_total", &families).is_err());
    assert_eq!(
        metric_names(
            "sum by (reason, instance) (rate(sidewire_a_total{x=\"1\"}[5m])) / sidewire_b"
        ),
        BTreeSet::from(["sidewire_a_total".to_owned(), "sidewire_b".to_owned()])
    );
    assert_eq!(
        grouping_labels("sum by (reason, instance) (rate(sidewire_a_total[5m]))"),
        BTreeSet::from(["reason".to_owned()])
    );
}
