//! The dashboard's rows as the daemon builds them: a light stand-in per named destination for
//! ordering, filtering and the tally, and the whole row only for the rows on the page.

use std::borrow::Cow;

use super::{guarded::Dest, view};
use crate::{
    config::Mode,
    engine::{State, Totals},
    kernel::Arrays,
    table::{self, Keys, Prev, Rates, Row, Tag},
};

/// The counters a row's rates come from, read in place (not the whole entry).
pub fn prev_now(arrays: &Arrays, slot: u32) -> Prev {
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

pub fn attempts_now(arrays: &Arrays, slot: u32) -> u64 {
    // SAFETY: an aligned field of a mapped entry.
    arrays.counters.ptr(slot).map_or(0, |c| unsafe {
        std::ptr::read_volatile(&raw const (*c).attempts)
    })
}

/// A named destination's row as far as ordering, filtering and the tally read it; the whole
/// row (strings, tokens, percentiles) is built for the rows on the page only.
pub struct Light<'a> {
    /// Index in the destinations.
    pub i: usize,
    pub label: Cow<'a, str>,
    pub service: Option<&'a str>,
    pub tag: Tag,
    pub mode: Mode,
    pub state: State,
    pub totals: Totals,
    /// In the rate book (a copy would be half of the row: 10k rows are built a page).
    pub rates: Option<&'a Rates>,
    /// Only when the rows are sorted by it.
    pub p99_ms: Option<f64>,
}

pub enum Line<'a> {
    Named(Light<'a>),
    /// (Boxed: a whole row is twice a light one, and most rows are light.)
    Observed(Box<Row>),
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
            Line::Observed(r) => Keys::rejected_per_s(&**r),
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
pub fn named_row(d: &Dest, l: &Light<'_>, arrays: &Arrays, now: u64) -> Row {
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

/// A named destination's latency quantile (`Samples::quantile_or_ms`).
pub fn percentile(d: &Dest, arrays: &Arrays, q: f64) -> Option<f64> {
    d.samples
        .quantile_or_ms(q, || arrays.counters(d.slot).latency_log2_us)
}
