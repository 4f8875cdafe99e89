//! The main table's rows, computed once per snapshot (not per frame): rates come from the
//! difference between two snapshots, over the daemon's own clock (its uptime).

use std::collections::HashMap;

use crate::{
    config::Mode,
    engine::State,
    snapshot::{Counts, DestinationStatus, ObservedStatus, Snapshot},
};

/// What colours a row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    Open,
    ForcedOpen,
    HalfOpen,
    Closed,
    Disabled,
    Observed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The destination's name ("name@service" for a per-service copy), or an observed address.
    pub name: String,
    /// Rows are grouped by it.
    pub service: Option<String>,
    pub tag: Tag,
    /// "CLOSED", "OPEN", "HALF-OPEN", "FORCED-OPEN", "DISABLED", "observed"; dry-run adds "~".
    pub state: String,
    pub attempts_per_s: Option<f64>,
    /// Failed connects per second (all classes).
    pub failures_per_s: Option<f64>,
    pub fail_pct: Option<f64>,
    pub slow_pct: Option<f64>,
    /// Rejected per second: breaker, rate limit, bulkhead, retry budget.
    pub rejected_per_s: Option<[f64; 4]>,
    pub tokens: Option<(u64, u32)>,
    pub active: u64,
    pub max_active: Option<u32>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Seconds in the current state; None for observed destinations.
    pub since: Option<f64>,
    /// Index into the snapshot's destinations; None for an observed destination.
    pub dest: Option<usize>,
}

/// Counters remembered from the previous snapshot, for rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prev {
    pub attempts: u64,
    pub failures: u64,
    pub rejected: [u64; 4],
}

pub fn failures(c: &Counts) -> u64 {
    let f = &c.failures;
    f.refused + f.timeout + f.unreachable + f.reset + f.local
}

pub fn prev_of(c: &Counts) -> Prev {
    Prev {
        attempts: c.attempts,
        failures: failures(c),
        rejected: [
            c.rejected.breaker,
            c.rejected.rate_limit,
            c.rejected.bulkhead,
            c.rejected.retry_budget,
        ],
    }
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}

fn state_of(d: &DestinationStatus) -> (Tag, String) {
    let (tag, mut text) = match (d.mode, d.state) {
        (Mode::ForcedOpen, _) => (Tag::ForcedOpen, "FORCED-OPEN".to_string()),
        (Mode::Disabled, _) => (Tag::Disabled, "DISABLED".to_string()),
        (_, State::Open) => (Tag::Open, "OPEN".to_string()),
        (_, State::HalfOpen) => (Tag::HalfOpen, "HALF-OPEN".to_string()),
        (_, State::Closed) => (Tag::Closed, "CLOSED".to_string()),
    };
    if d.mode == Mode::DryRun {
        // Dry-run rejects nothing: the state is what enforcing would do.
        text.push('~');
    }
    (tag, text)
}

/// Rows for a snapshot: policies first (in file order), then observed destinations.
/// `prev` and `dt` (seconds between the two snapshots) give the rates; None on the first.
pub fn build(s: &Snapshot, prev: &HashMap<String, Prev>, dt: Option<f64>) -> Vec<Row> {
    let mut rows = Vec::with_capacity(s.destinations.len() + s.observed.len());
    let rates = |key: &str, c: &Counts| {
        let (p, dt) = (prev.get(key)?, dt.filter(|d| *d > 0.0)?);
        Some((
            rate(c.attempts, p.attempts, dt),
            rate(failures(c), p.failures, dt),
            [
                rate(c.rejected.breaker, p.rejected[0], dt),
                rate(c.rejected.rate_limit, p.rejected[1], dt),
                rate(c.rejected.bulkhead, p.rejected[2], dt),
                rate(c.rejected.retry_budget, p.rejected[3], dt),
            ],
        ))
    };
    for (i, d) in s.destinations.iter().enumerate() {
        let (tag, state) = state_of(d);
        let label = d.label();
        let r = rates(&label, &d.counts);
        rows.push(Row {
            name: label,
            service: d.service.clone(),
            tag,
            state,
            attempts_per_s: r.map(|r| r.0),
            failures_per_s: r.map(|r| r.1),
            fail_pct: d.window.failure_rate,
            slow_pct: d.window.slow_rate,
            rejected_per_s: r.map(|r| r.2),
            tokens: d.tokens.zip(d.burst),
            active: d.counts.active,
            max_active: d.max_concurrent,
            p50_ms: d.counts.latency_ms.p50,
            p99_ms: d.counts.latency_ms.p99,
            since: Some(d.since),
            dest: Some(i),
        });
    }
    for o in &s.observed {
        let r = rates(&o.address, &o.counts);
        rows.push(observed(o, r.map(|r| r.0), r.map(|r| r.1)));
    }
    rows
}

fn observed(o: &ObservedStatus, attempts_per_s: Option<f64>, failures_per_s: Option<f64>) -> Row {
    let c = &o.counts;
    let ended = c.successes + failures(c);
    Row {
        name: o.address.clone(),
        service: None,
        tag: Tag::Observed,
        state: "observed".into(),
        attempts_per_s,
        failures_per_s,
        // No window for an unnamed destination: its totals since the daemon started.
        fail_pct: (ended > 0).then(|| failures(c) as f64 * 100.0 / ended as f64),
        slow_pct: None,
        rejected_per_s: None,
        tokens: None,
        active: c.active,
        max_active: None,
        p50_ms: None,
        p99_ms: None,
        since: None,
        dest: None,
    }
}

/// How the table is ordered (`s` cycles through these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Policies in file order, then observed destinations busiest first.
    Policy,
    /// Open first, then half-open, closed, disabled, observed.
    State,
    Name,
    Attempts,
    Failures,
    Rejected,
    Latency,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Policy => Sort::State,
            Sort::State => Sort::Name,
            Sort::Name => Sort::Attempts,
            Sort::Attempts => Sort::Failures,
            Sort::Failures => Sort::Rejected,
            Sort::Rejected => Sort::Latency,
            Sort::Latency => Sort::Policy,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Policy => "policy",
            Sort::State => "state",
            Sort::Name => "name",
            Sort::Attempts => "attempts/s",
            Sort::Failures => "failure %",
            Sort::Rejected => "rejected/s",
            Sort::Latency => "p99",
        }
    }
}

/// The order of `rows` to show: filtered by `filter` (a substring of the name or state,
/// case-insensitive), sorted by `sort`. Indices into `rows`.
pub fn view(rows: &[Row], sort: Sort, filter: &str) -> Vec<usize> {
    let needle = filter.to_lowercase();
    let mut idx: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            needle.is_empty()
                || rows[i].name.to_lowercase().contains(&needle)
                || rows[i].state.to_lowercase().contains(&needle)
        })
        .collect();
    let desc = |v: Option<f64>| std::cmp::Reverse(ordered(v.unwrap_or(-1.0)));
    match sort {
        Sort::Policy => {}
        Sort::State => idx.sort_by_key(|&i| rows[i].tag),
        Sort::Name => idx.sort_by(|&a, &b| rows[a].name.cmp(&rows[b].name)),
        Sort::Attempts => idx.sort_by_key(|&i| desc(rows[i].attempts_per_s)),
        Sort::Failures => idx.sort_by_key(|&i| desc(rows[i].fail_pct)),
        Sort::Rejected => {
            idx.sort_by_key(|&i| desc(rows[i].rejected_per_s.map(|r| r.iter().sum())))
        }
        Sort::Latency => idx.sort_by_key(|&i| desc(rows[i].p99_ms)),
    }
    // Grouped by service (stable: each group keeps the order chosen): destinations that guard
    // every process first, then each service's.
    idx.sort_by(|&a, &b| rows[a].service.cmp(&rows[b].service));
    idx
}

/// f64 as a sortable integer (the values here are finite and >= -1).
fn ordered(v: f64) -> i64 {
    (v * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_snapshots() {
        let s = crate::fixture::fixture();
        let first = build(&s, &HashMap::new(), None);
        assert_eq!(first[0].attempts_per_s, None);
        let prev: HashMap<String, Prev> = s
            .destinations
            .iter()
            .map(|d| {
                let mut p = prev_of(&d.counts);
                p.attempts = p.attempts.saturating_sub(20);
                p.rejected[0] = p.rejected[0].saturating_sub(4);
                (d.name.clone(), p)
            })
            .collect();
        let rows = build(&s, &prev, Some(2.0));
        assert_eq!(rows[0].attempts_per_s, Some(10.0));
        assert_eq!(rows[0].rejected_per_s.map(|r| r[0]), Some(2.0));
        assert!(rows.iter().any(|r| r.tag == Tag::Observed));
    }

    #[test]
    fn filter_and_sort() {
        let s = crate::fixture::fixture();
        let rows = build(&s, &HashMap::new(), None);
        let open = view(&rows, Sort::State, "");
        assert_eq!(rows[open[0]].tag, Tag::Open);
        let only = view(&rows, Sort::Policy, "PAY");
        assert!(!only.is_empty());
        assert!(only.iter().all(|&i| rows[i].name.contains("pay")));
        assert!(view(&rows, Sort::Name, "no such thing").is_empty());
    }
}
