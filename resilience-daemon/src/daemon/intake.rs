//! Kernel records in, breaker outcomes out: decode each outcome record, charge it to the
//! destination that owns its slot under the same generation, feed the breaker.

use resilience_common::{conn, OutcomeEvent};

use super::{
    guarded::Guarded,
    journal::Journal,
    publish,
    quiet::{self, QuietBook},
};
use crate::{
    config::FailureClass,
    engine::{Jitter, Outcome},
    kernel::Arrays,
};

/// Counts of what the intake read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Intake {
    pub records: u64,
    /// Records of a previous owner of the slot (or of a removed destination): dropped.
    pub stale: u64,
}

pub fn parse_event(bytes: &[u8]) -> Option<OutcomeEvent> {
    if bytes.len() < std::mem::size_of::<OutcomeEvent>() {
        return None;
    }
    // SAFETY: OutcomeEvent is plain old data and the length is checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OutcomeEvent>()) })
}

/// The outcome a record reports, if it is one the breaker takes.
pub fn outcome(ev: &OutcomeEvent, failures: crate::config::FailureClasses) -> Option<Outcome> {
    let probe = ev.flags & conn::TRACK_PROBE != 0;
    let failure = |class: FailureClass| Outcome::Failure {
        class,
        counted: failures.counts(class),
        probe,
        replaces: (class == FailureClass::Reset && ev.established_ns != 0)
            .then_some(ev.established_ns),
        // A reset's time is the connection's life, not its connect's.
        latency_ns: if class == FailureClass::Reset {
            0
        } else {
            ev.latency_ns
        },
    };
    Some(match ev.outcome {
        conn::OUTCOME_SUCCESS => Outcome::Success {
            latency_ns: ev.latency_ns,
            probe,
        },
        conn::OUTCOME_REFUSED => failure(FailureClass::Refused),
        conn::OUTCOME_TIMEOUT => failure(FailureClass::Timeout),
        conn::OUTCOME_UNREACHABLE => failure(FailureClass::Unreachable),
        conn::OUTCOME_LOCAL => failure(FailureClass::Local),
        conn::OUTCOME_RESET => failure(FailureClass::Reset),
        _ => return None,
    })
}

/// Feed `records` to the breakers, each after the successes the kernel counted without a
/// record before it; publish what changed.
#[allow(clippy::too_many_arguments)]
pub fn feed(
    records: &[OutcomeEvent],
    guarded: &mut Guarded,
    book: &mut QuietBook,
    arrays: &Arrays,
    journal: &mut Journal,
    jitter: &mut impl Jitter,
    counts: &mut Intake,
) {
    // Destinations that got records (each once after the sort below: no hashing per record).
    let mut touched = Vec::with_capacity(records.len());
    for ev in records {
        counts.records += 1;
        let Some(i) = guarded.by_slot(ev.slot) else {
            counts.stale += 1;
            continue;
        };
        let d = &mut guarded.dests[i];
        if d.generation != ev.generation {
            counts.stale += 1;
            continue;
        }
        touched.push(i);
        quiet::fold(
            book, guarded, i, ev.epoch, ev.quiet, ev.ts_ns, arrays, journal, jitter,
        );
        let d = &mut guarded.dests[i];
        journal.tap.outcome(d, ev);
        let o = outcome(ev, d.def.breaker.failures);
        let judged = matches!(
            o,
            Some(Outcome::Success { .. } | Outcome::Failure { counted: true, .. })
        );
        // A reset is a second record of a connect already judged by its first.
        if ev.flags & conn::TRACK_PROBE != 0
            && !judged
            && ev.outcome != conn::OUTCOME_RESET
            && d.breaker
                .returns_probe(ev.ts_ns.saturating_sub(ev.latency_ns))
        {
            arrays.give_back_probe(d.slot);
        }
        let Some(o) = o else {
            continue;
        };
        // One success in `SAMPLE_ONE_IN`, picked by the kernel whatever else it is.
        if let Outcome::Success { latency_ns, .. } = o {
            if ev.flags & conn::TRACK_SAMPLE != 0 {
                d.samples.push(latency_ns);
            }
        }
        // A closed breaker's window takes the outcomes of its own epoch only, so that it
        // holds exactly what the kernel judges (outcomes that ended before the window was
        // published belong to the state before). Probes and resets are matched otherwise.
        if d.breaker.state() == crate::engine::State::Closed
            && ev.epoch != d.breaker.epoch()
            && ev.flags & conn::TRACK_PROBE == 0
            && ev.outcome != conn::OUTCOME_RESET
        {
            continue;
        }
        if let Some(t) = d.breaker.on_outcome(ev.ts_ns, o, jitter) {
            publish::transition(arrays, journal, d, &t);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    let now = crate::kernel::monotonic_ns();
    for i in touched {
        if let Err(e) = publish::refresh_fuse(arrays, &mut guarded.dests[i], now) {
            tracing::error!(error = %format!("{e:#}"), "cannot move a trip fuse");
        }
    }
}
