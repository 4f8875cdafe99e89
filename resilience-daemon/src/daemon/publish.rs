//! Publishing a breaker's verdict into the active policy set, in an order the hooks can never
//! catch half-done, and saving the breaker for a restarted daemon.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use resilience_common::{
    dest::{ACTION_ALLOW, ACTION_PROBE, ACTION_REJECT, TRIPPED},
    saved::{OVERRIDE_DISABLED, OVERRIDE_NONE, SAVED_CLOSED, SAVED_HALF_OPEN, SAVED_OPEN},
    DestPolicy, SavedBreaker,
};

use super::{guarded::Dest, journal::Journal};
use crate::{
    config::Mode,
    engine::{KernelVerdict, State, Transition, Verdict},
    kernel::{mmap, monotonic_ns, Arrays},
    slots,
    snapshot::EventRecord,
};

pub fn action(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => ACTION_ALLOW,
        Verdict::Reject => ACTION_REJECT,
        Verdict::Probe(_) => ACTION_PROBE,
    }
}

/// Publish `d`'s verdict and trip fuse into the active set. The probe budget goes in before
/// the PROBE action (the hook never sees PROBE with last time's budget); the fuse before the
/// action; each one a single-word store.
pub fn verdict(arrays: &Arrays, d: &mut Dest) -> Result<()> {
    let kv = d.breaker.kernel_verdict(monotonic_ns());
    publish_verdict(arrays, d, kv)
}

/// `verdict` with the breaker's kernel verdict already computed.
fn publish_verdict(arrays: &Arrays, d: &mut Dest, kv: KernelVerdict) -> Result<()> {
    let set = arrays.active_set();
    let p = arrays
        .policy_ptr(set, d.slot)
        .with_context(|| format!("POLICY[{set}][{}] out of range", d.slot))?;
    // SAFETY: aligned u32 fields of a mapped entry; the loop is their only writer.
    let (action_word, fuse_word) = unsafe {
        (
            mmap::atomic_u32(&raw mut (*p).action),
            mmap::atomic_u32(&raw mut (*p).trip_after),
        )
    };
    publish_window(arrays, d.slot, p, &kv);
    d.window = kv.window;
    if let Verdict::Probe(n) = kv.verdict {
        if action_word.load(Ordering::Acquire) != ACTION_PROBE {
            arrays.set_probes(d.slot, n);
        }
    }
    fuse_word.store(kv.trip_after, Ordering::Release);
    action_word.store(action(kv.verdict), Ordering::Release);
    d.trip_after = kv.trip_after;
    Ok(())
}

/// The window the kernel judges: a new epoch's counts start from zero before the epoch is
/// published; the kernel stops judging (min 0) while the other fields change, and starts again
/// with the last store.
fn publish_window(arrays: &Arrays, slot: u32, p: *mut DestPolicy, kv: &KernelVerdict) {
    if arrays.window_epoch(slot) != u64::from(kv.epoch) {
        arrays.reset_window(slot, kv.epoch);
    }
    let w = kv.window;
    // SAFETY: aligned fields of a mapped entry; the loop is their only writer.
    unsafe {
        let min = mmap::atomic_u32(&raw mut (*p).window_min);
        min.store(0, Ordering::Release);
        mmap::atomic_u32(&raw mut (*p).window_max_calls)
            .store(w.map_or(0, |w| w.max_calls), Ordering::Release);
        mmap::atomic_u32(&raw mut (*p).failure_milli)
            .store(w.map_or(0, |w| w.failure_milli), Ordering::Release);
        mmap::atomic_u32(&raw mut (*p).slow_milli)
            .store(w.map_or(0, |w| w.slow_milli), Ordering::Release);
        mmap::atomic_u64(&raw mut (*p).window_until_ns)
            .store(w.map_or(0, |w| w.until_ns), Ordering::Release);
        mmap::atomic_u32(&raw mut (*p).window_epoch).store(kv.epoch, Ordering::Release);
        min.store(w.map_or(0, |w| w.min), Ordering::Release);
    }
}

/// A breaker changed state: publish, record, save. A new state starts a new streak, and order
/// matters: a breaker that opens must be rejecting before the streak that tripped it is
/// cleared (else one connect slips through); one that closes must have its streak cleared
/// before the fuse is armed (else an old streak trips it).
pub fn transition(arrays: &Arrays, journal: &mut Journal, d: &mut Dest, t: &Transition) {
    // The new state has its own timers: the tick looks again.
    d.tick_due_ns = 0;
    journal.transitions += 1;
    let name = d.def.label();
    let result = if t.to == State::Closed {
        arrays.reset_streak(d.slot);
        verdict(arrays, d)
    } else {
        let r = verdict(arrays, d);
        arrays.reset_streak(d.slot);
        r
    };
    if let Err(e) = result {
        journal.fault(&format!("{name}: cannot publish the verdict"), &e);
    }
    d.transitions.count(t.to);
    save(arrays, d);
    tracing::info!(
        "{name}: {} -> {}: {}",
        t.from.as_str(),
        t.to.as_str(),
        t.reason
    );
    journal.tap.transition(d, t);
    journal.push(EventRecord::transition(&name, t));
}

/// After records for `d` were read: move its trip fuse, and undo a kernel trip the breaker
/// does not agree with (a time window's old failures expired under a stale fuse).
pub fn refresh_fuse(arrays: &Arrays, d: &mut Dest, now: u64) -> Result<()> {
    let kv = d.breaker.kernel_verdict(now);
    let closed = kv.verdict == Verdict::Allow;
    // Stale only if the breaker itself has seen the whole streak and did not trip; a kernel
    // streak ahead of the breaker's means records still on their way.
    if closed
        && d.trip_after != 0
        && d.breaker.streak() >= d.trip_after
        && arrays.streak(d.slot) >= u64::from(d.trip_after)
        && arrays.streak(d.slot) < TRIPPED
    {
        tracing::debug!(destination = %d.def.label(), "stale trip fuse undone");
        arrays.reset_streak(d.slot);
    }
    // The kernel judged the window tripped, the breaker has seen every call it counted and
    // does not agree (outcomes that raced at the threshold): the breaker's word stands.
    if closed && arrays.streak(d.slot) >= TRIPPED {
        let seen = u64::from(d.breaker.window_calls(now));
        let counted = arrays.window_calls(d.slot);
        let size = kv.window.map_or(u64::MAX, |w| u64::from(w.max_calls));
        if seen >= counted.min(size) {
            tracing::debug!(destination = %d.def.label(), "kernel window trip undone");
            arrays.reset_streak(d.slot);
        }
    }
    if kv.trip_after != d.trip_after || kv.window != d.window {
        publish_verdict(arrays, d, kv)?;
    }
    Ok(())
}

/// Keep `d`'s breaker, override and transition counts where a restarted daemon finds them.
pub fn save(arrays: &Arrays, d: &Dest) {
    let r = d.breaker.resume_point();
    arrays.save(
        d.slot,
        SavedBreaker {
            name_id: slots::name_id(&d.def.slot_key()),
            config_id: d.def.breaker.id(),
            since_ns: r.since_ns,
            open_until_ns: r.open_until_ns,
            transitions: [
                d.transitions.open,
                d.transitions.half_open,
                d.transitions.closed,
            ],
            generation: d.generation,
            state: match r.state {
                State::Closed => SAVED_CLOSED,
                State::Open => SAVED_OPEN,
                State::HalfOpen => SAVED_HALF_OPEN,
            },
            trips: r.trips,
            probes_ok: r.probes_ok,
            override_mode: match d.override_mode {
                Some(Mode::Disabled) => OVERRIDE_DISABLED,
                _ => OVERRIDE_NONE,
            },
            probes_failed: r.probes_failed.min(u32::from(u16::MAX)) as u16,
            probes_slow: r.probes_slow.min(u32::from(u16::MAX)) as u16,
        },
    );
}
