//! The `table` request: one page of the dashboard's rows, built from the daemon's own state.
//! Every row is light (numbers the kernel and the breaker keep running totals of); only the
//! rows on the page get their latency percentiles, and only the destination shown in detail
//! gets its whole status. A refresh then costs the daemon a pass over plain numbers, not a
//! whole snapshot.

use std::collections::HashMap;

use anyhow::Result;
use resilience_common::Endpoint;

use super::{journal::Journal, view, Daemon};
use crate::{
    config::Mode,
    kernel::monotonic_ns,
    snapshot::{self, ObservedStatus, Snapshot},
    table::{self, Page, Prev, Query, Rates, Row, Sort, Tally},
};

/// Rates are taken over at least this long: two dashboards refreshing at once share them.
const RATE_SPAN_NS: u64 = 900_000_000;

/// Counters as last looked at, for rates: per (slot, generation) and per observed address.
#[derive(Default)]
pub struct RateBook {
    at_ns: u64,
    named: HashMap<(u32, u32), (Prev, Option<Rates>)>,
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
    let dests = &mut daemon.guarded.dests;

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
    // The counters every row needs, read once (from the mapped array, no copy of it all).
    let named_now: Vec<((u32, u32), Prev)> = dests
        .iter()
        .map(|d| {
            let mut p = table::prev_of_kernel(&arrays.counters(d.slot));
            p.rejected[3] = arrays.retry_rejections(d.slot).0;
            ((d.slot, d.generation), p)
        })
        .collect();
    look(&mut book.named, &named_now, dt);
    let observed_now: Vec<(Endpoint, Prev)> = observed
        .iter()
        .map(|(ep, c)| (*ep, table::prev_of_kernel(c)))
        .collect();
    look(&mut book.observed, &observed_now, dt);

    let latency = q.sort == Sort::Latency;
    let mut rows: Vec<Row> = Vec::with_capacity(dests.len() + observed.len());
    for d in dests.iter_mut() {
        let def = &d.def;
        let (tag, state) = table::state_of(def.mode, view::shown_state(d));
        let t = d.breaker.window_totals(now);
        let r = book.named.get(&(d.slot, d.generation)).and_then(|e| e.1);
        rows.push(Row {
            name: def.label(),
            service: def.service.clone(),
            tag,
            state,
            attempts_per_s: r.map(|r| r.attempts),
            failures_per_s: r.map(|r| r.failures),
            fail_pct: t.pct(t.failures),
            slow_pct: t.pct(t.slow),
            rejected_per_s: r.map(|r| r.rejected),
            tokens: view::tokens(d, &arrays, now).zip(def.rate_limit.map(|r| r.burst)),
            active: arrays.active(d.slot),
            max_active: def.bulkhead.map(|b| b.max_concurrent),
            // Percentiles cost a selection over the samples: the page's rows only, unless
            // they are what the rows are sorted by.
            p50_ms: latency.then(|| percentile(d, &arrays, 0.5)).flatten(),
            p99_ms: latency.then(|| percentile(d, &arrays, 0.99)).flatten(),
            since: Some(now.saturating_sub(d.breaker.since_ns()) as f64 / 1e9),
            destination: Some(def.name.clone()),
            operator_disabled: d.override_mode == Some(Mode::Disabled),
        });
    }
    let mut by_address: Vec<(Endpoint, _)> = observed;
    // Busiest first, as in the snapshot.
    by_address.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    for (ep, c) in &by_address {
        let o = ObservedStatus {
            address: snapshot::show_endpoint(ep),
            counts: snapshot::Counts::new(c, None, c.active(), (0, 0)),
        };
        rows.push(table::observed_row(
            &o,
            book.observed.get(ep).and_then(|e| e.1),
        ));
    }

    let order = table::view(&rows, q.sort, &q.filter);
    let (offset, range) = table::window(&order, q);
    let mut page_rows = Vec::with_capacity(range.len());
    for &i in &order[range] {
        let mut r = rows[i].clone();
        if let Some(d) = dests.get(i).filter(|_| !latency) {
            r.p50_ms = percentile(d, &arrays, 0.5);
            r.p99_ms = percentile(d, &arrays, 0.99);
        }
        page_rows.push(r);
    }
    let mut tally = Tally::of(&rows);
    tally.attempts = named_now.iter().map(|(_, p)| p.attempts).sum();

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
