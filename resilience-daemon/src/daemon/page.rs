//! The `table` request: one page of the dashboard's rows, built from the daemon's own state.
//! Every row is light (numbers the kernel and the breaker keep running totals of); only the
//! rows on the page get their latency percentiles, and only the destination shown in detail
//! gets its whole status. A refresh then costs the daemon a pass over plain numbers, not a
//! whole snapshot.

use std::collections::HashMap;

use anyhow::Result;
use resilience_common::Endpoint;

use std::borrow::Cow;

use super::{journal::Journal, view, Daemon};
use crate::{
    config::Mode,
    engine::{State, Totals},
    kernel::{monotonic_ns, Arrays},
    snapshot::{self, ObservedStatus, Snapshot},
    table::{self, Keys, Page, Prev, Query, Rates, Row, Sort, Tag, Tally},
};

/// Rates are taken over at least this long: two dashboards refreshing at once share them.
const RATE_SPAN_NS: u64 = 900_000_000;

/// Counters as last looked at, for rates: per slot (with its owner's generation) and per
/// observed address.
#[derive(Default)]
pub struct RateBook {
    at_ns: u64,
    named: Vec<Option<(u32, Prev, Option<Rates>)>>,
    observed: HashMap<Endpoint, (Prev, Option<Rates>)>,
}

/// Look again if the last look is old enough; the rates of the last span otherwise.
fn look<K: std::hash::Hash + Eq + Copy>(
    book: &mut HashMap<K, (Prev, Option<Rates>)>,
    now: &[(K, Prev)],
    dt: Option<f64>,
) {
    let Some(dt) = dt else {
        return;
    };
    let mut next = HashMap::with_capacity(now.len());
    for &(k, p) in now {
        let rates = book
            .get(&k)
            .filter(|_| dt > 0.0)
            .map(|(b, _)| b.rates(&p, dt));
        next.insert(k, (p, rates));
    }
    *book = next;
}

/// `look` for the named destinations, by slot: a slot's rates hold while its owner's
/// generation does.
fn look_named(
    book: &mut Vec<Option<(u32, Prev, Option<Rates>)>>,
    dests: &[super::guarded::Dest],
    arrays: &Arrays,
    dt: Option<f64>,
) {
    let Some(dt) = dt else {
        return;
    };
    let mut next = vec![None; book.len()];
    for d in dests {
        let i = d.slot as usize;
        if i >= next.len() {
            next.resize(i + 1, None);
        }
        let p = prev_now(arrays, d.slot);
        let rates = match book.get(i) {
            Some(Some((g, b, _))) if *g == d.generation && dt > 0.0 => Some(b.rates(&p, dt)),
            _ => None,
        };
        next[i] = Some((d.generation, p, rates));
    }
    *book = next;
}

/// The counters a row's rates come from, read in place (not the whole entry).
fn prev_now(arrays: &Arrays, slot: u32) -> Prev {
    use resilience_common::dest::{REJECT_BREAKER, REJECT_BULKHEAD, REJECT_RATE_LIMIT};
    let retry = arrays.retry_rejections(slot).0;
    let Some(c) = arrays.counters.ptr(slot) else {
        return Prev::default();
    };
    // SAFETY: aligned fields of a mapped entry, each read on its own.
    let read = |p: *const u64| unsafe { std::ptr::read_volatile(p) };
    unsafe {
        Prev {
            attempts: read(&raw const (*c).attempts),
            failures: read(&raw const (*c).refused)
                + read(&raw const (*c).timeout)
                + read(&raw const (*c).unreachable)
                + read(&raw const (*c).reset)
                + read(&raw const (*c).local),
            rejected: [
                read(&raw const (*c).rejected[REJECT_BREAKER]),
                read(&raw const (*c).rejected[REJECT_RATE_LIMIT]),
                read(&raw const (*c).rejected[REJECT_BULKHEAD]),
                retry,
            ],
        }
    }
}

fn attempts_now(arrays: &Arrays, slot: u32) -> u64 {
    // SAFETY: an aligned field of a mapped entry.
    arrays.counters.ptr(slot).map_or(0, |c| unsafe {
        std::ptr::read_volatile(&raw const (*c).attempts)
    })
}

/// A named destination's row as far as ordering, filtering and the tally read it; the whole
/// row (strings, tokens, percentiles) is built for the rows on the page only.
struct Light<'a> {
    /// Index in the destinations.
    i: usize,
    label: Cow<'a, str>,
    service: Option<&'a str>,
    tag: Tag,
    mode: Mode,
    state: State,
    totals: Totals,
    rates: Option<Rates>,
    /// Only when the rows are sorted by it.
    p99_ms: Option<f64>,
}

enum Line<'a> {
    Named(Light<'a>),
    Observed(Row),
}

impl Keys for Line<'_> {
    fn name(&self) -> &str {
        match self {
            Line::Named(l) => &l.label,
            Line::Observed(r) => &r.name,
        }
    }

    fn state(&self) -> Cow<'_, str> {
        match self {
            Line::Named(l) => Cow::Owned(table::state_of(l.mode, l.state).1),
            Line::Observed(r) => Cow::Borrowed(&r.state),
        }
    }

    fn tag(&self) -> Tag {
        match self {
            Line::Named(l) => l.tag,
            Line::Observed(r) => r.tag,
        }
    }

    fn service(&self) -> Option<&str> {
        match self {
            Line::Named(l) => l.service,
            Line::Observed(r) => r.service.as_deref(),
        }
    }

    fn attempts_per_s(&self) -> Option<f64> {
        match self {
            Line::Named(l) => l.rates.map(|r| r.attempts),
            Line::Observed(r) => r.attempts_per_s,
        }
    }

    fn fail_pct(&self) -> Option<f64> {
        match self {
            Line::Named(l) => l.totals.pct(l.totals.failures),
            Line::Observed(r) => r.fail_pct,
        }
    }

    fn rejected_per_s(&self) -> Option<f64> {
        match self {
            Line::Named(l) => l.rates.map(|r| r.rejected.iter().sum()),
            Line::Observed(r) => Keys::rejected_per_s(r),
        }
    }

    fn p99_ms(&self) -> Option<f64> {
        match self {
            Line::Named(l) => l.p99_ms,
            Line::Observed(r) => r.p99_ms,
        }
    }

    fn named(&self) -> bool {
        matches!(self, Line::Named(_))
    }
}

/// The whole row of a named destination.
fn named_row(d: &super::guarded::Dest, l: &Light<'_>, arrays: &Arrays, now: u64) -> Row {
    let def = &d.def;
    let (tag, state) = table::state_of(l.mode, l.state);
    Row {
        name: l.label.to_string(),
        service: def.service.clone(),
        tag,
        state,
        attempts_per_s: l.rates.map(|r| r.attempts),
        failures_per_s: l.rates.map(|r| r.failures),
        fail_pct: l.totals.pct(l.totals.failures),
        slow_pct: l.totals.pct(l.totals.slow),
        rejected_per_s: l.rates.map(|r| r.rejected),
        tokens: view::tokens(d, arrays, now).zip(def.rate_limit.map(|r| r.burst)),
        active: arrays.active(d.slot),
        max_active: def.bulkhead.map(|b| b.max_concurrent),
        p50_ms: percentile(d, arrays, 0.5),
        p99_ms: l.p99_ms.or_else(|| percentile(d, arrays, 0.99)),
        since: Some(now.saturating_sub(d.breaker.since_ns()) as f64 / 1e9),
        destination: Some(def.name.clone()),
        operator_disabled: d.override_mode == Some(Mode::Disabled),
    }
}

pub fn table(
    daemon: &mut Daemon,
    book: &mut RateBook,
    journal: &Journal,
    info: &view::Info<'_>,
    instance: u64,
    q: &Query,
) -> Result<Snapshot> {
    let now = monotonic_ns();
    let arrays = daemon.tables.arrays.clone();

    let observed = daemon.tables.observed();
    // None: keep the last span's rates. Some(0): a first look, no rates yet.
    let span = now.saturating_sub(book.at_ns);
    let dt = if book.at_ns == 0 {
        Some(0.0)
    } else {
        (span >= RATE_SPAN_NS).then_some(span as f64 / 1e9)
    };
    if dt.is_some() {
        book.at_ns = now;
    }
    if dt.is_some_and(|d| d > 0.0) {
        // Once a span: what the last pages and outcome batches freed goes back to the kernel.
        super::lifecycle::give_back_memory();
    }
    // Window totals move expired seconds out: the one pass that needs the breakers mutable.
    let totals: Vec<Totals> = daemon
        .guarded
        .dests
        .iter_mut()
        .map(|d| d.breaker.window_totals(now))
        .collect();
    let dests = &daemon.guarded.dests;
    look_named(&mut book.named, dests, &arrays, dt);
    let observed_now: Vec<(Endpoint, Prev)> = observed
        .iter()
        .map(|(ep, c)| (*ep, table::prev_of_kernel(c)))
        .collect();
    look(&mut book.observed, &observed_now, dt);

    let latency = q.sort == Sort::Latency;
    let mut lines: Vec<Line<'_>> = Vec::with_capacity(dests.len() + observed.len());
    for (i, (d, t)) in dests.iter().zip(totals).enumerate() {
        let def = &d.def;
        let state = view::shown_state(d);
        lines.push(Line::Named(Light {
            i,
            label: match &def.service {
                None => Cow::Borrowed(def.name.as_str()),
                Some(_) => Cow::Owned(def.label()),
            },
            service: def.service.as_deref(),
            tag: table::state_of(def.mode, state).0,
            mode: def.mode,
            state,
            totals: t,
            rates: book
                .named
                .get(d.slot as usize)
                .and_then(|e| e.filter(|e| e.0 == d.generation))
                .and_then(|e| e.2),
            // Percentiles cost a selection over the samples: the page's rows only, unless
            // they are what the rows are sorted by.
            p99_ms: latency.then(|| percentile(d, &arrays, 0.99)).flatten(),
        }));
    }
    let mut by_address: Vec<(Endpoint, _)> = observed;
    // Busiest first, as in the snapshot.
    by_address.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    for (ep, c) in &by_address {
        let o = ObservedStatus {
            address: snapshot::show_endpoint(ep),
            counts: snapshot::Counts::new(c, None, c.active(), (0, 0)),
        };
        lines.push(Line::Observed(table::observed_row(
            &o,
            book.observed.get(ep).and_then(|e| e.1),
        )));
    }

    let order = table::view(&lines, q.sort, &q.filter);
    let (offset, range) = table::window(&order, q);
    let page_rows: Vec<Row> = order[range]
        .iter()
        .map(|&i| match &lines[i] {
            Line::Named(l) => named_row(&dests[l.i], l, &arrays, now),
            Line::Observed(r) => r.clone(),
        })
        .collect();
    let mut tally = Tally::of(&lines);
    drop(lines);
    tally.attempts = dests.iter().map(|d| attempts_now(&arrays, d.slot)).sum();

    let mut s = view::header(daemon, info, instance)?;
    if let Some(label) = &q.detail {
        if let Some(d) = daemon
            .guarded
            .dests
            .iter_mut()
            .find(|d| d.def.label() == *label)
        {
            let c = arrays.counters(d.slot);
            s.destinations
                .push(view::destination(d, &arrays, &c, now, true, true));
        }
    }
    let recent = journal.last(view::SNAPSHOT_EVENTS);
    s.events = match q.events_after {
        Some((after, inst)) if inst == instance => {
            recent.into_iter().filter(|e| e.seq > after).collect()
        }
        _ => recent,
    };
    s.table = Some(Page {
        sort: q.sort,
        filter: q.filter.clone(),
        detail: q.detail.clone(),
        offset,
        matched: order.len(),
        tally,
        rows: page_rows,
    });
    Ok(s)
}

/// A named destination's latency quantile: its samples', or before the first of them the
/// kernel histogram's.
fn percentile(d: &super::guarded::Dest, arrays: &crate::kernel::Arrays, q: f64) -> Option<f64> {
    d.samples
        .quantile_ms(q)
        .or_else(|| snapshot::histogram_quantile_ms(&arrays.counters(d.slot).latency_log2_us, q))
}
