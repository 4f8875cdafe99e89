//! The stream `resilience record` listens to: every outcome record fed to a breaker, every
//! transition and, once a second, every destination's counters, as recording lines. Nothing
//! is built while nobody records: the loop asks `active()` first.

use std::sync::{Arc, OnceLock};

use resilience_common::{conn, OutcomeEvent};
use tokio::sync::broadcast;

use super::guarded::Dest;
use crate::{
    engine::Transition,
    kernel::Arrays,
    recording::{self, Counts, CountsLine, Line, OutcomeLine, TransitionLine},
    snapshot::{show_endpoint, Rejected},
};

/// Lines a slow recorder may fall behind by before it loses some (and is told how many).
const BACKLOG: usize = 1 << 16;
/// How often counters are written.
const COUNTS_EVERY_NS: u64 = 1_000_000_000;

/// The stream's sender, made when the first recorder subscribes: its backlog is room for
/// `BACKLOG` lines (2 MiB), which a daemon nobody records from need not hold.
pub type Shared = Arc<OnceLock<broadcast::Sender<Arc<Line>>>>;

/// A new recorder's end of the stream.
pub fn subscribe(shared: &Shared) -> broadcast::Receiver<Arc<Line>> {
    shared
        .get_or_init(|| broadcast::channel(BACKLOG).0)
        .subscribe()
}

#[derive(Default)]
pub struct Tap {
    tx: Shared,
    counts_at: u64,
}

impl Tap {
    pub fn sender(&self) -> Shared {
        self.tx.clone()
    }

    pub fn active(&self) -> bool {
        self.tx.get().is_some_and(|t| t.receiver_count() > 0)
    }

    fn send(&self, line: Line) {
        // No recorder is not an error.
        if let Some(t) = self.tx.get() {
            let _ = t.send(Arc::new(line));
        }
    }

    pub fn outcome(&self, d: &Dest, ev: &OutcomeEvent) {
        if !self.active() {
            return;
        }
        self.send(Line::Outcome(OutcomeLine {
            ns: ev.ts_ns,
            latency_ns: ev.latency_ns,
            destination: d.def.name.clone(),
            service: d.def.service.clone(),
            address: show_endpoint(&ev.endpoint),
            result: recording::result_name(ev.outcome).into(),
            probe: ev.flags & conn::TRACK_PROBE != 0,
            slow: ev.flags & conn::TRACK_SLOW != 0,
            established_ns: (ev.established_ns != 0).then_some(ev.established_ns),
        }));
    }

    pub fn transition(&self, d: &Dest, t: &Transition) {
        if !self.active() {
            return;
        }
        self.send(Line::Transition(TransitionLine {
            ns: t.at_ns,
            destination: d.def.name.clone(),
            service: d.def.service.clone(),
            from: t.from.as_str().into(),
            to: t.to.as_str().into(),
            reason: t.reason.clone(),
        }));
    }

    /// Every destination's counters, if a second has passed since the last time.
    pub fn counts(&mut self, now_ns: u64, dests: &[Dest], arrays: &Arrays) {
        if !self.active() || now_ns < self.counts_at.saturating_add(COUNTS_EVERY_NS) {
            return;
        }
        self.counts_at = now_ns;
        for d in dests {
            self.send(Line::Counts(CountsLine {
                ns: now_ns,
                destination: d.def.name.clone(),
                service: d.def.service.clone(),
                counts: counts(d, arrays),
            }));
        }
    }
}

/// The kernel's counters of `d` now.
pub fn counts(d: &Dest, arrays: &Arrays) -> Counts {
    let c = arrays.counters(d.slot);
    let (retry, retry_would) = arrays.retry_rejections(d.slot);
    Counts {
        attempts: c.attempts,
        rejected: Rejected::of(&c.rejected, retry),
        would_reject: Rejected::of(&c.would_reject, retry_would),
        active: arrays.active(d.slot),
    }
}
