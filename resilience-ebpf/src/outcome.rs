//! Counting an outcome once: counters, the bulkhead place, the trip fuse's streak and the record
//! for the daemon. A named destination's slot is charged only while its generation is the one
//! the connect was admitted under; a removed destination's connections are charged to nobody.

use resilience_common::{
    conn::{
        OUTCOME_ABANDONED, OUTCOME_CLOSED, OUTCOME_LOCAL, OUTCOME_REFUSED, OUTCOME_RESET,
        OUTCOME_SUCCESS, OUTCOME_TIMEOUT, OUTCOME_UNREACHABLE, SLOT_OBSERVED, TRACK_HELD,
        TRACK_PROBE, TRACK_SLOW,
    },
    dest::{
        latency_bucket, FLAG_COUNT_LOCAL, FLAG_COUNT_REFUSED, FLAG_COUNT_TIMEOUT,
        FLAG_COUNT_UNREACHABLE,
    },
    ConnTrack, DestCounters, DestPolicy, OutcomeEvent,
};

use crate::{
    atomic::{add, MINUS_ONE},
    maps::{policy, stats, ACTIVE, COUNTERS, EVENTS, OBSERVED, STREAKS},
};

/// The slot's policy if the connection still belongs to its owner; counts a stale outcome
/// otherwise.
#[inline(always)]
fn owner(c: &ConnTrack, set: u32) -> Option<DestPolicy> {
    let p = *policy(set, c.slot)?;
    if p.generation != c.generation {
        if let Some(s) = stats() {
            // SAFETY: pointer into this CPU's STATS value.
            unsafe { (*s).stale += 1 };
        }
        return None;
    }
    Some(p)
}

/// SYN_SENT -> ESTABLISHED (an active or a simultaneous open). `c` stays tracked until close.
#[inline(always)]
pub fn succeed(c: &ConnTrack, now: u64, set: u32) {
    let elapsed = now.wrapping_sub(c.start_ns);
    if c.slot == SLOT_OBSERVED {
        if let Some(counters) = OBSERVED.get_ptr_mut(c.endpoint) {
            count_success(counters, elapsed, false);
        }
        return;
    }
    let Some(p) = owner(c, set) else { return };
    if let Some(streak) = STREAKS.get_ptr_mut(c.slot) {
        // SAFETY: pointer into an array map value.
        unsafe { core::ptr::write_volatile(streak, 0) };
    }
    let mut flags = c.flags & TRACK_PROBE;
    if p.slow_ns != 0 && elapsed >= p.slow_ns {
        flags |= TRACK_SLOW;
    }
    if let Some(counters) = COUNTERS.get_ptr_mut(c.slot) {
        count_success(counters, elapsed, flags & TRACK_SLOW != 0);
    }
    // The breaker acts on probes and slow calls: wake the daemon for them.
    emit(now, elapsed, c, OUTCOME_SUCCESS, 0, flags, flags != 0);
}

#[inline(always)]
fn count_success(counters: *mut DestCounters, elapsed: u64, slow: bool) {
    // SAFETY: a pointer into a map value, valid for the program's run.
    unsafe {
        add(&raw mut (*counters).successes, 1);
        if slow {
            add(&raw mut (*counters).slow, 1);
        }
        add(&raw mut (*counters).latency_sum_ns, elapsed);
        let b = latency_bucket(elapsed);
        if b < (*counters).latency_log2_us.len() {
            add(&raw mut (*counters).latency_log2_us[b], 1);
        }
    }
}

/// The tracking entry is gone (its remover calls this, once): the connect failed, or the
/// established connection closed (`OUTCOME_CLOSED`, `OUTCOME_RESET`), or the socket went away
/// before its SYN (`OUTCOME_ABANDONED`).
#[inline(always)]
pub fn settle(c: &ConnTrack, outcome: u32, err: u32, now: u64, set: u32) {
    let elapsed = now.wrapping_sub(c.start_ns);
    if c.slot == SLOT_OBSERVED {
        if let Some(counters) = OBSERVED.get_ptr_mut(c.endpoint) {
            count_end(counters, outcome);
        }
        return;
    }
    let Some(p) = owner(c, set) else { return };
    if c.flags & TRACK_HELD != 0 {
        if let Some(active) = ACTIVE.get_ptr_mut(c.slot) {
            add(active, MINUS_ONE);
        }
    }
    let counted = match outcome {
        OUTCOME_REFUSED => p.flags & FLAG_COUNT_REFUSED != 0,
        OUTCOME_TIMEOUT => p.flags & FLAG_COUNT_TIMEOUT != 0,
        OUTCOME_UNREACHABLE => p.flags & FLAG_COUNT_UNREACHABLE != 0,
        OUTCOME_LOCAL => p.flags & FLAG_COUNT_LOCAL != 0,
        _ => false,
    };
    // A counted failure that took at least the slow threshold is a slow call as well.
    let slow = counted && p.slow_ns != 0 && elapsed >= p.slow_ns;
    if let Some(counters) = COUNTERS.get_ptr_mut(c.slot) {
        count_end(counters, outcome);
        if slow {
            add(unsafe { &raw mut (*counters).slow }, 1);
        }
    }
    // A plain close is in the counters; records are for connect outcomes and resets. A
    // failure of a named destination may trip its breaker: wake the daemon at once.
    if outcome != OUTCOME_CLOSED {
        let flags = (c.flags & TRACK_PROBE) | if slow { TRACK_SLOW } else { 0 };
        emit(now, elapsed, c, outcome, err, flags, true);
    }
    // After the record: a daemon that sees the streak has the record too.
    if counted {
        if let Some(streak) = STREAKS.get_ptr_mut(c.slot) {
            add(streak, 1);
        }
    }
}

#[inline(always)]
fn count_end(counters: *mut DestCounters, outcome: u32) {
    // SAFETY: a pointer into a map value, valid for the program's run.
    unsafe {
        let field = match outcome {
            OUTCOME_REFUSED => &raw mut (*counters).refused,
            OUTCOME_TIMEOUT => &raw mut (*counters).timeout,
            OUTCOME_UNREACHABLE => &raw mut (*counters).unreachable,
            OUTCOME_LOCAL => &raw mut (*counters).local,
            OUTCOME_ABANDONED => &raw mut (*counters).abandoned,
            _ => &raw mut (*counters).closed,
        };
        add(field, 1);
        if outcome == OUTCOME_RESET {
            add(&raw mut (*counters).reset, 1);
        }
    }
}

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query` selector.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Wake the daemon only once this much is pending; it also drains on a timer. A wakeup per
/// record would put a daemon context switch on every connect.
const WAKEUP_BYTES: u64 = 64 * 1024;

#[inline(always)]
fn emit(now: u64, elapsed: u64, c: &ConnTrack, outcome: u32, err: u32, flags: u32, urgent: bool) {
    match EVENTS.reserve::<OutcomeEvent>(0) {
        Some(mut entry) => {
            entry.write(OutcomeEvent {
                ts_ns: now,
                latency_ns: elapsed,
                endpoint: c.endpoint,
                slot: c.slot,
                outcome,
                sk_err: err,
                flags,
                generation: c.generation,
                _pad: 0,
                established_ns: if outcome == OUTCOME_RESET {
                    c.established_ns
                } else {
                    0
                },
            });
            let wake = if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(wake);
        }
        None => {
            if let Some(s) = stats() {
                // SAFETY: pointer into this CPU's STATS value.
                unsafe { (*s).ringbuf_lost += 1 };
            }
        }
    }
}
