//! The dashboard's table, pure: rows (one per destination, light: no window, no policy),
//! their order (sort and filter), and the page of them a client asks for with the `table`
//! request. The daemon builds the rows from its own state and answers with the page only, so
//! a dashboard's refresh costs the daemon the rows on screen, not a whole snapshot; `Server`
//! does the same from whole snapshots (tests, the dashboard benchmark).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    config::Mode,
    engine::State,
    snapshot::{Counts, DestinationStatus, ObservedStatus, Snapshot},
};

/// What colours a row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Open,
    ForcedOpen,
    HalfOpen,
    Closed,
    Disabled,
    Observed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The policy's destination name (without the service); None for an observed address.
    pub destination: Option<String>,
    /// The operator disabled it (`resilience disable`): `d` enables it again.
    #[serde(default)]
    pub operator_disabled: bool,
}

impl Row {
    /// A named destination: one with a breaker to act on.
    pub fn named(&self) -> bool {
        self.destination.is_some()
    }
}

/// Counters remembered from an earlier look, for rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prev {
    pub attempts: u64,
    pub failures: u64,
    pub rejected: [u64; 4],
}

/// Per second, between two looks at the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub attempts: f64,
    pub failures: f64,
    pub rejected: [f64; 4],
}

impl Prev {
    /// The rates from `self` (earlier) to `now`, `dt` seconds later.
    pub fn rates(&self, now: &Prev, dt: f64) -> Rates {
        let rate = |n: u64, b: u64| n.saturating_sub(b) as f64 / dt;
        Rates {
            attempts: rate(now.attempts, self.attempts),
            failures: rate(now.failures, self.failures),
            rejected: std::array::from_fn(|i| rate(now.rejected[i], self.rejected[i])),
        }
    }
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

/// The same from the kernel's counters (what the daemon holds).
pub fn prev_of_kernel(c: &resilience_common::DestCounters) -> Prev {
    use resilience_common::dest::{REJECT_BREAKER, REJECT_BULKHEAD, REJECT_RATE_LIMIT};
    Prev {
        attempts: c.attempts,
        failures: c.refused + c.timeout + c.unreachable + c.reset + c.local,
        rejected: [
            c.rejected[REJECT_BREAKER],
            c.rejected[REJECT_RATE_LIMIT],
            c.rejected[REJECT_BULKHEAD],
            // Retry-budget rejections live in their own map: the caller adds them.
            0,
        ],
    }
}

/// A destination's tag.
pub fn tag_of(mode: Mode, state: State) -> Tag {
    match (mode, state) {
        (Mode::ForcedOpen, _) => Tag::ForcedOpen,
        (Mode::Disabled, _) => Tag::Disabled,
        (_, State::Open) => Tag::Open,
        (_, State::HalfOpen) => Tag::HalfOpen,
        (_, State::Closed) => Tag::Closed,
    }
}

/// A destination's tag and state text.
pub fn state_of(mode: Mode, state: State) -> (Tag, String) {
    let tag = tag_of(mode, state);
    let mut text = match tag {
        Tag::ForcedOpen => "FORCED-OPEN",
        Tag::Disabled => "DISABLED",
        Tag::Open => "OPEN",
        Tag::HalfOpen => "HALF-OPEN",
        Tag::Closed | Tag::Observed => "CLOSED",
    }
    .to_string();
    if mode == Mode::DryRun {
        // Dry-run rejects nothing: the state is what enforcing would do.
        text.push('~');
    }
    (tag, text)
}

/// A named destination's row from its status.
pub fn destination_row(d: &DestinationStatus, r: Option<Rates>) -> Row {
    let (tag, state) = state_of(d.mode, d.state);
    Row {
        name: d.label(),
        service: d.service.clone(),
        tag,
        state,
        attempts_per_s: r.map(|r| r.attempts),
        failures_per_s: r.map(|r| r.failures),
        fail_pct: d.window.failure_rate,
        slow_pct: d.window.slow_rate,
        rejected_per_s: r.map(|r| r.rejected),
        tokens: d.tokens.zip(d.burst),
        active: d.counts.active,
        max_active: d.max_concurrent,
        p50_ms: d.counts.latency_ms.p50,
        p99_ms: d.counts.latency_ms.p99,
        since: Some(d.since),
        destination: Some(d.name.clone()),
        operator_disabled: d.override_mode == Some(Mode::Disabled),
    }
}

/// An observed address's row.
pub fn observed_row(o: &ObservedStatus, r: Option<Rates>) -> Row {
    let c = &o.counts;
    let ended = c.successes + failures(c);
    Row {
        name: o.address.clone(),
        service: None,
        tag: Tag::Observed,
        state: "observed".into(),
        attempts_per_s: r.map(|r| r.attempts),
        failures_per_s: r.map(|r| r.failures),
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
        destination: None,
        operator_disabled: false,
    }
}

/// How the table is ordered (`s` cycles through these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Policies in file order, then observed destinations busiest first.
    #[default]
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

    /// The wire name (the `sort` field of a `table` request).
    pub fn key(self) -> &'static str {
        match self {
            Sort::Policy => "policy",
            Sort::State => "state",
            Sort::Name => "name",
            Sort::Attempts => "attempts",
            Sort::Failures => "failures",
            Sort::Rejected => "rejected",
            Sort::Latency => "latency",
        }
    }

    pub fn from_key(k: &str) -> Option<Sort> {
        let mut s = Sort::Policy;
        for _ in 0..7 {
            if s.key() == k {
                return Some(s);
            }
            s = s.next();
        }
        None
    }
}

/// What ordering, filtering and the tally read of a row: a whole `Row`, or a stand-in that
/// builds the rest only for the rows on the page (the daemon's, with 10k destinations).
pub trait Keys {
    fn name(&self) -> &str;
    /// The state text (only read to filter).
    fn state(&self) -> std::borrow::Cow<'_, str>;
    fn tag(&self) -> Tag;
    fn service(&self) -> Option<&str>;
    fn attempts_per_s(&self) -> Option<f64>;
    fn fail_pct(&self) -> Option<f64>;
    /// All rejections per second.
    fn rejected_per_s(&self) -> Option<f64>;
    fn p99_ms(&self) -> Option<f64>;
    fn named(&self) -> bool;
}

impl Keys for Row {
    fn name(&self) -> &str {
        &self.name
    }

    fn state(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.state)
    }

    fn tag(&self) -> Tag {
        self.tag
    }

    fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    fn attempts_per_s(&self) -> Option<f64> {
        self.attempts_per_s
    }

    fn fail_pct(&self) -> Option<f64> {
        self.fail_pct
    }

    fn rejected_per_s(&self) -> Option<f64> {
        self.rejected_per_s.map(|r| r.iter().sum())
    }

    fn p99_ms(&self) -> Option<f64> {
        self.p99_ms
    }

    fn named(&self) -> bool {
        Row::named(self)
    }
}

/// The order of `rows` to show: filtered by `filter` (a substring of the name or state,
/// case-insensitive), sorted by `sort`. Indices into `rows`.
pub fn view<R: Keys>(rows: &[R], sort: Sort, filter: &str) -> Vec<usize> {
    let needle = filter.to_lowercase();
    let mut idx: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            needle.is_empty()
                || rows[i].name().to_lowercase().contains(&needle)
                || rows[i].state().to_lowercase().contains(&needle)
        })
        .collect();
    let desc = |v: Option<f64>| std::cmp::Reverse(ordered(v.unwrap_or(-1.0)));
    match sort {
        Sort::Policy => {}
        Sort::State => idx.sort_by_key(|&i| rows[i].tag()),
        Sort::Name => idx.sort_by(|&a, &b| rows[a].name().cmp(rows[b].name())),
        Sort::Attempts => idx.sort_by_key(|&i| desc(rows[i].attempts_per_s())),
        Sort::Failures => idx.sort_by_key(|&i| desc(rows[i].fail_pct())),
        Sort::Rejected => idx.sort_by_key(|&i| desc(rows[i].rejected_per_s())),
        Sort::Latency => idx.sort_by_key(|&i| desc(rows[i].p99_ms())),
    }
    // Grouped by service (stable: each group keeps the order chosen): destinations that guard
    // every process first, then each service's.
    if idx.iter().any(|&i| rows[i].service().is_some()) {
        idx.sort_by(|&a, &b| rows[a].service().cmp(&rows[b].service()));
    }
    idx
}

/// f64 as a sortable integer (the values here are finite and >= -1).
fn ordered(v: f64) -> i64 {
    (v * 1000.0) as i64
}

/// What a `table` request asks for: the order, and which part of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub sort: Sort,
    pub filter: String,
    /// The first row wanted, in the filtered and sorted order.
    pub offset: usize,
    pub limit: usize,
    /// A destination (label) whose whole status the answer carries in `destinations`.
    pub detail: Option<String>,
    /// Events after this `seq` of the daemon `instance` (all recent ones otherwise).
    pub events_after: Option<(u64, u64)>,
}

/// At most this many rows in one answer.
pub const MAX_LIMIT: usize = 1000;

/// Counts over every row, whatever the filter: the dashboard's header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub named: usize,
    pub observed: usize,
    pub open: usize,
    pub half_open: usize,
    pub forced_open: usize,
    /// Sum of every named destination's `attempts` counter.
    pub attempts: u64,
}

impl Tally {
    pub fn of<R: Keys>(rows: &[R]) -> Tally {
        let count = |t: Tag| rows.iter().filter(|r| r.tag() == t).count();
        Tally {
            named: rows.iter().filter(|r| r.named()).count(),
            observed: count(Tag::Observed),
            open: count(Tag::Open),
            half_open: count(Tag::HalfOpen),
            forced_open: count(Tag::ForcedOpen),
            attempts: 0,
        }
    }
}

/// The answer to a `table` request (under `table` in the snapshot it rides on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub sort: Sort,
    pub filter: String,
    /// The destination asked for in detail (its status is in the snapshot's `destinations`).
    #[serde(default)]
    pub detail: Option<String>,
    /// Where `rows` start in the filtered, sorted order (the request's, within `matched`).
    pub offset: usize,
    /// Rows that pass the filter.
    pub matched: usize,
    pub tally: Tally,
    pub rows: Vec<Row>,
}

/// The part of `order` (the filtered, sorted row indices) a query asks for, and its offset.
pub fn window(order: &[usize], q: &Query) -> (usize, std::ops::Range<usize>) {
    let limit = q.limit.min(MAX_LIMIT);
    let offset = q.offset.min(order.len().saturating_sub(limit));
    (offset, offset..(offset + limit).min(order.len()))
}

/// Pages from whole snapshots, as the daemon pages from its own state: rates from the
/// previous snapshot served (by its uptime). For tests and the dashboard benchmark.
#[derive(Default)]
pub struct Server {
    prev: HashMap<String, Prev>,
    rates: HashMap<String, Rates>,
    uptime: Option<f64>,
}

impl Server {
    pub fn serve(&mut self, full: &Snapshot, q: &Query) -> Snapshot {
        let uptime = full.daemon.uptime;
        let dt = self.uptime.map(|p| uptime - p).filter(|d| *d > 0.0);
        let now: HashMap<String, Prev> = full
            .destinations
            .iter()
            .map(|d| (d.label(), prev_of(&d.counts)))
            .chain(
                full.observed
                    .iter()
                    .map(|o| (o.address.clone(), prev_of(&o.counts))),
            )
            .collect();
        if let Some(dt) = dt {
            self.rates = now
                .iter()
                .filter_map(|(k, n)| Some((k.clone(), self.prev.get(k)?.rates(n, dt))))
                .collect();
            self.prev = now;
            self.uptime = Some(uptime);
        } else if self.uptime.is_none() {
            self.prev = now;
            self.uptime = Some(uptime);
        }
        let rows = build(full, &self.rates);
        let order = view(&rows, q.sort, &q.filter);
        let (offset, range) = window(&order, q);
        let mut tally = Tally::of(&rows);
        tally.attempts = full.destinations.iter().map(|d| d.counts.attempts).sum();
        let mut out = full.clone();
        out.delta = false;
        out.destinations
            .retain(|d| q.detail.as_deref() == Some(d.label().as_str()));
        out.observed.clear();
        if let Some((after, instance)) = q.events_after {
            if instance == full.instance {
                out.events.retain(|e| e.seq > after);
            }
        }
        out.table = Some(Page {
            sort: q.sort,
            filter: q.filter.clone(),
            detail: q.detail.clone(),
            offset,
            matched: order.len(),
            tally,
            rows: order[range].iter().map(|&i| rows[i].clone()).collect(),
        });
        out
    }
}

/// Rows for a whole snapshot: policies first (in file order), then observed destinations,
/// with the rates known by label.
pub fn build(s: &Snapshot, rates: &HashMap<String, Rates>) -> Vec<Row> {
    let mut rows = Vec::with_capacity(s.destinations.len() + s.observed.len());
    for d in &s.destinations {
        rows.push(destination_row(d, rates.get(&d.label()).copied()));
    }
    for o in &s.observed {
        rows.push(observed_row(o, rates.get(&o.address).copied()));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sort: Sort, filter: &str) -> Query {
        Query {
            sort,
            filter: filter.into(),
            limit: 100,
            ..Query::default()
        }
    }

    #[test]
    fn rates_come_from_two_snapshots() {
        let mut s = crate::fixture::fixture();
        let mut server = Server::default();
        let first = server.serve(&s, &query(Sort::Policy, ""));
        let page = first.table.as_ref().expect("a page");
        assert_eq!(page.rows[0].attempts_per_s, None);
        s.daemon.uptime += 2.0;
        s.destinations[0].counts.attempts += 20;
        s.destinations[0].counts.rejected.breaker += 4;
        let second = server.serve(&s, &query(Sort::Policy, ""));
        let page = second.table.expect("a page");
        assert_eq!(page.rows[0].attempts_per_s, Some(10.0));
        assert_eq!(page.rows[0].rejected_per_s.map(|r| r[0]), Some(2.0));
        assert!(page.rows.iter().any(|r| r.tag == Tag::Observed));
        assert!(second.destinations.is_empty(), "no detail asked for");
    }

    #[test]
    fn filter_and_sort() {
        let s = crate::fixture::fixture();
        let rows = build(&s, &HashMap::new());
        let open = view(&rows, Sort::State, "");
        assert_eq!(rows[open[0]].tag, Tag::Open);
        let only = view(&rows, Sort::Policy, "PAY");
        assert!(!only.is_empty());
        assert!(only.iter().all(|&i| rows[i].name.contains("pay")));
        assert!(view(&rows, Sort::Name, "no such thing").is_empty());
    }

    #[test]
    fn a_page_is_a_window_of_the_order_with_a_tally_of_all() {
        let s = crate::fixture::fixture_many(500);
        let mut q = query(Sort::Name, "");
        q.offset = 590;
        q.limit = 20;
        q.detail = Some(s.destinations[3].label());
        let got = Server::default().serve(&s, &q);
        let page = got.table.expect("a page");
        let all = s.destinations.len() + s.observed.len();
        assert_eq!(page.matched, all);
        // The window is moved back to end at the last row.
        assert_eq!(page.offset, all - 20);
        assert_eq!(page.rows.len(), 20);
        let mut names: Vec<&str> = page.rows.iter().map(|r| r.name.as_str()).collect();
        let sorted = names.clone();
        names.sort();
        assert_eq!(names, sorted);
        assert_eq!(page.tally.named, s.destinations.len());
        assert_eq!(page.tally.observed, s.observed.len());
        assert_eq!(got.destinations.len(), 1, "the detail destination, whole");
        assert_eq!(got.destinations[0].label(), s.destinations[3].label());
    }

    #[test]
    fn sort_keys_round_trip() {
        let mut s = Sort::Policy;
        for _ in 0..7 {
            assert_eq!(Sort::from_key(s.key()), Some(s));
            s = s.next();
        }
        assert_eq!(Sort::from_key("p99"), None);
    }
}
