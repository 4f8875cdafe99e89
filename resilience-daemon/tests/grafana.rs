//! deploy/grafana/resilience.json queries only what the daemon exports: every metric name in
//! every panel's expression is a series `/metrics` serves, and every label it filters or
//! groups by is one those series carry.

use std::collections::{BTreeMap, BTreeSet};

use resilience_daemon::{fixture, metrics};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/resilience.json");

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Series name -> label names, from a rendering of the fixture (one destination given a
/// service, so that the per-service label shows).
fn served() -> BTreeMap<String, BTreeSet<String>> {
    let mut snap = fixture::fixture();
    snap.destinations[0].service = Some("checkout".into());
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics::render(&snap).lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let (Some(a), Some(b)) = (line.find('{'), line.rfind('}')) {
            for pair in line[a + 1..b].split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn idents(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Label names an expression uses: in `by (...)` and before `=`, `=~`, `!=` in selectors.
fn labels_used(e: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = e;
    while let Some(i) = rest.find("by (") {
        let after = &rest[i + 4..];
        let end = after.find(')').unwrap_or(after.len());
        out.extend(idents(&after[..end]));
        rest = &after[end..];
    }
    let mut rest = e;
    while let Some(a) = rest.find('{') {
        let after = &rest[a + 1..];
        let end = after.find('}').unwrap_or(after.len());
        for m in after[..end].split(',') {
            if let Some(k) = m.split(['=', '!']).next() {
                out.insert(k.trim().to_string());
            }
        }
        rest = &after[end..];
    }
    out
}

#[test]
fn every_query_uses_only_exported_metrics_and_labels() {
    let dash: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let served = served();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 15, "{all:?}");
    let mut used_metrics = BTreeSet::new();
    for e in &all {
        let names: Vec<String> = idents(e)
            .into_iter()
            .filter(|w| w.starts_with("resilience_"))
            .collect();
        assert!(!names.is_empty(), "no resilience metric in {e}");
        for n in &names {
            assert!(
                served.contains_key(n),
                "{n} (in {e}) is not served by /metrics"
            );
            used_metrics.insert(n.clone());
        }
        let carried: BTreeSet<&String> = names.iter().flat_map(|n| &served[n]).collect();
        for l in labels_used(e) {
            assert!(
                TARGET_LABELS.contains(&l.as_str()) || carried.contains(&l),
                "label {l:?} (in {e}) is on none of {names:?}"
            );
        }
    }
    // What the issue asks the panels to show.
    for m in [
        "resilience_breaker_state",
        "resilience_connect_attempts_total",
        "resilience_connect_failures_total",
        "resilience_connect_rejected_total",
        "resilience_rate_limit_tokens",
        "resilience_active_connections",
        "resilience_bulkhead_max_concurrent",
        "resilience_connect_duration_seconds_bucket",
        "resilience_fail_open_total",
        "resilience_ringbuf_lost_total",
    ] {
        assert!(used_metrics.contains(m), "no panel shows {m}");
    }
    let heatmap = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == "heatmap");
    assert!(heatmap, "a latency heatmap");
}

#[test]
fn the_checker_catches_a_metric_or_label_that_is_not_exported() {
    let served = served();
    assert!(!served.contains_key("resilience_connect_errors_total"));
    let labels =
        labels_used("sum by (destination, zone) (rate(x{pool=~\"a\",instance!=\"b\"}[1m]))");
    assert_eq!(
        labels,
        ["destination", "instance", "pool", "zone"]
            .map(String::from)
            .into()
    );
    assert!(served["resilience_connect_attempts_total"].contains("service"));
    assert!(!served["resilience_fail_open_total"].contains("destination"));
}
