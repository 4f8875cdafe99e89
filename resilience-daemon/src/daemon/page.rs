//! The `table` request: one page of the dashboard's rows, built from the daemon's own state.
//! Every row is light (numbers the kernel and the breaker keep running totals of); only the
//! rows on the page get their latency percentiles, and only the destination shown in detail
//! gets its whole status. A refresh then costs the daemon a pass over plain numbers, not a
//! whole snapshot.

use std::{borrow::Cow, collections::HashMap};

use anyhow::Result;
use resilience_common::Endpoint;

use super::{
    journal::Journal,
    rows::{attempts_now, named_row, percentile, prev_now, Light, Line},
    view, Daemon,
};
use crate::{
    engine::Totals,
    kernel::{monotonic_ns, Arrays},
    snapshot::{self, ObservedStatus, Snapshot},
    table::{self, Page, Prev, Query, Rates, Row, Sort, Tally},
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

/// `look` for the named destinations, by slot, in place: a slot's rates hold while its owner's
/// generation does (an entry of a slot nobody owns now is never read: a new owner has another
/// generation).
fn look_named(
    book: &mut Vec<Option<(u32, Prev, Option<Rates>)>>,
    dests: &[super::guarded::Dest],
    arrays: &Arrays,
    dt: Option<f64>,
) {
    let Some(dt) = dt else {
        return;
    };
    for d in dests {
        let i = d.slot as usize;
        if i >= book.len() {
            book.resize(i + 1, None);
        }
        let p = prev_now(arrays, d.slot);
        let rates = match &book[i] {
            Some((g, b, _)) if *g == d.generation && dt > 0.0 => Some(b.rates(&p, dt)),
            _ => None,
        };
        book[i] = Some((d.generation, p, rates));
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
        crate::memory::give_back();
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
            tag: table::tag_of(def.mode, state),
            mode: def.mode,
            state,
            totals: t,
            rates: book
                .named
                .get(d.slot as usize)
                .and_then(|e| e.as_ref().filter(|e| e.0 == d.generation))
                .and_then(|e| e.2.as_ref()),
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
        lines.push(Line::Observed(Box::new(table::observed_row(
            &o,
            book.observed.get(ep).and_then(|e| e.1),
        ))));
    }

    let order = table::view(&lines, q.sort, &q.filter);
    let (offset, range) = table::window(&order, q);
    let page_rows: Vec<Row> = order[range]
        .iter()
        .map(|&i| match &lines[i] {
            Line::Named(l) => named_row(&dests[l.i], l, &arrays, now),
            Line::Observed(r) => (**r).clone(),
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
