//! The one OpenMetrics parser of the tests ([`parse_openmetrics`]), a scrape of `/metrics`
//! ([`scrape`], checked for content type and `# EOF`) and bounded polling of a scraped value
//! ([`wait_metric`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{Payload, fetch, header_value, request};

/// One OpenMetrics sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name with suffix (`_total`, ...).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses OpenMetrics text: `# ...` lines are skipped, every other line must be
/// `name{label="value",...} value` or `name value` (panics otherwise, naming the line).
pub fn parse_openmetrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        samples
            .push(parse_sample(line).unwrap_or_else(|e| panic!("bad sample line {line:?}: {e}")));
    }
    samples
}

/// One sample line (`name{labels} value [timestamp]`), or why it is not one.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // label name
            let start = match chars.peek() {
                Some((i, '}')) => break *i,
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let eq = eq.ok_or("label without '='")?;
            let label = inner[start..eq].to_owned();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.insert(label, value);
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected ',' or '}' after a label".into()),
            }
        };
        rest = &inner[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value
        .parse()
        .map_err(|e| format!("bad value {value:?}: {e}"))?;
    // An optional timestamp may follow; nothing else.
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|e| format!("bad timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Raw text (for failure messages).
    pub text: String,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include all of `labels` (0 if none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// `GET /metrics` on the admin listener: checks the content type and the final `# EOF`, and
/// parses every sample.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let fetched = fetch(
        admin,
        request(admin, "GET", "/metrics", &[], Payload::Empty),
    )
    .await;
    assert_eq!(fetched.status, 200, "/metrics: {}", fetched.text());
    let content_type = header_value(&fetched.headers, "content-type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "/metrics content-type {content_type:?}"
    );
    let text = fetched.text();
    assert!(
        text.ends_with("# EOF\n"),
        "/metrics does not end with '# EOF': {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    Scrape {
        samples: parse_openmetrics(&text),
        text,
    }
}

/// Scrapes until `check` holds for the sample sum of `name`/`labels` (bounded polling of a
/// scraped value: the only polling the style guide allows). Returns the last scrape.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    check: impl Fn(f64) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let scraped = scrape(admin).await;
        if check(scraped.value(name, labels)) {
            return scraped;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name}{labels:?} = {} did not reach the expected value within {timeout:?}; scrape:\n{}",
                scraped.value(name, labels),
                scraped.text
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
