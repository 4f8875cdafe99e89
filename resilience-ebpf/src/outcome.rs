//! Counting an outcome once: counters, the bulkhead place, the trip fuse's streak and the record
//! for the daemon. A named destination's slot is charged only while its generation is the one
//! the connect was admitted under; a removed destination's connections are charged to nobody.

use resilience_common::{
    conn::{
        CONN_CONNECTING, OUTCOME_ABANDONED, OUTCOME_CLOSED, OUTCOME_LOCAL, OUTCOME_REFUSED,
        OUTCOME_RESET, OUTCOME_SUCCESS, OUTCOME_TIMEOUT, OUTCOME_UNREACHABLE, PENDING_BUCKET_MASK,
        PENDING_SHIFT, SAMPLE_ONE_IN, SLOT_OBSERVED, TRACK_HELD, TRACK_PENDING, TRACK_PROBE,
        TRACK_ROOM, TRACK_SAMPLE, TRACK_SLOW,
    },
    dest::{
        latency_bucket, quiet_stamp, FLAG_COUNT_LOCAL, FLAG_COUNT_REFUSED, FLAG_COUNT_TIMEOUT,
        FLAG_COUNT_UNREACHABLE, FLAG_RECORD_SUCCESSES, FLAG_RETRY_BUDGET, PENDING_BUCKETS, TRIPPED,
    },
    ConnTrack, DestCounters, DestPolicy, OutcomeEvent, WindowCounts,
};

use crate::{
    atomic::{add, add32, fetch_add, MINUS_ONE},
    maps::{
        policy, record_all, stats, ACTIVE, COUNTERS, EVENTS, OBSERVED, OBS_LIVE, PENDING, QUIET,
        RETRY, STREAKS, WINDOWS,
    },
};
use aya_ebpf::helpers::bpf_get_prandom_u32;

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

/// The connect phase of `c` ended (it succeeded, failed, or was given up): it is no longer
/// pending. Whatever the slot's owner now: the count is the slot's own.
#[inline(always)]
pub fn unpend(c: &ConnTrack) {
    if c.flags & TRACK_PENDING == 0 || c.state != CONN_CONNECTING {
        return;
    }
    let b = ((c.flags >> PENDING_SHIFT) & PENDING_BUCKET_MASK) as usize;
    if b >= PENDING_BUCKETS {
        return;
    }
    if let Some(ages) = PENDING.get_ptr_mut(c.slot) {
        // SAFETY: pointer into an array map value; `b` is in bounds.
        add32(unsafe { &raw mut (*ages).counts[b] }, u32::MAX);
    }
}

/// SYN_SENT -> ESTABLISHED (an active or a simultaneous open). `c` stays tracked until close.
/// A plain success of a named destination (no probe, not slow, no trip) is counted in
/// `QUIET` without a record, unless it is a latency sample or every success must have one:
/// then its `quiet_stamp` is returned, for the entry's `established_ns`.
#[inline(always)]
pub fn succeed(c: &ConnTrack, now: u64, set: u32) -> Option<u64> {
    let elapsed = now.wrapping_sub(c.start_ns);
    unpend(c);
    if c.slot == SLOT_OBSERVED {
        if let Some(counters) = OBSERVED.get_ptr_mut(c.endpoint) {
            count_success(counters, elapsed, false);
        }
        return None;
    }
    let p = owner(c, set)?;
    let mut flags = c.flags & TRACK_PROBE;
    let slow = p.slow_ns != 0 && elapsed >= p.slow_ns;
    if slow {
        flags |= TRACK_SLOW;
    }
    // A success can complete a trip too: the window reaching its minimum with the failure
    // rate already over, or a slow call crossing the slow-call rate.
    let tripped = judge_window(&p, c.slot, false, slow, now);
    if let Some(streak) = STREAKS.get_ptr_mut(c.slot) {
        // SAFETY: pointer into an array map value. A success ends the streak, but never
        // undoes a trip (the daemon does, if it disagrees).
        unsafe {
            if tripped {
                core::ptr::write_volatile(streak, TRIPPED);
            } else if core::ptr::read_volatile(streak) < TRIPPED {
                core::ptr::write_volatile(streak, 0);
            }
        }
    }
    if let Some(counters) = COUNTERS.get_ptr_mut(c.slot) {
        count_success(counters, elapsed, slow);
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_get_prandom_u32() } & (SAMPLE_ONE_IN - 1) == 0 {
        flags |= TRACK_SAMPLE;
    }
    let plain = flags == 0 && !tripped && p.flags & FLAG_RECORD_SUCCESSES == 0 && !record_all();
    if plain {
        if let Some(stamp) = count_quiet(c.slot, p.window_epoch) {
            return Some(stamp);
        }
    }
    let quiet = quiet_now(c.slot, p.window_epoch);
    // The breaker acts on probes, slow calls and trips: wake the daemon for them.
    emit(
        now,
        elapsed,
        c,
        OUTCOME_SUCCESS,
        0,
        flags,
        flags & !TRACK_SAMPLE != 0 || tripped,
        p.window_epoch,
        quiet,
    );
    None
}

/// Count a call in the slot's window, as the kernel keeps it since the breaker's last state
/// change, and judge it as the breaker would: true if this call trips it. Only while the
/// window has dropped nothing (so that its counts are the breaker's exactly) and only in the
/// epoch the daemon set up.
#[inline(always)]
fn judge_window(p: &DestPolicy, slot: u32, failure: bool, slow: bool, now: u64) -> bool {
    if p.window_min == 0 || now >= p.window_until_ns {
        return false;
    }
    let Some(w) = WINDOWS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: pointer into an array map value, valid for the program's run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*w).epoch) != u64::from(p.window_epoch) {
            return false;
        }
        let f = WindowCounts::CALL + if failure { WindowCounts::MARK } else { 0 };
        let s = WindowCounts::CALL + if slow { WindowCounts::MARK } else { 0 };
        let fw = fetch_add(&raw mut (*w).failures, f).wrapping_add(f);
        let sw = fetch_add(&raw mut (*w).slow, s).wrapping_add(s);
        let calls = WindowCounts::calls(fw);
        if calls > u64::from(p.window_max_calls) || calls < u64::from(p.window_min) {
            return false;
        }
        WindowCounts::marked(fw) * 100_000 >= u64::from(p.failure_milli) * calls
            || WindowCounts::marked(sw) * 100_000
                >= u64::from(p.slow_milli) * WindowCounts::calls(sw)
    }
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
    unpend(c);
    if c.slot == SLOT_OBSERVED {
        if c.flags & TRACK_ROOM != 0 {
            give_obs_room();
        }
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
    // A connect that failed: the next connects to the slot within `retry_after_failure` are
    // retries.
    if p.flags & FLAG_RETRY_BUDGET != 0
        && matches!(
            outcome,
            OUTCOME_REFUSED | OUTCOME_TIMEOUT | OUTCOME_UNREACHABLE
        )
    {
        if let Some(rb) = RETRY.get_ptr_mut(c.slot) {
            // SAFETY: pointer into an array map value.
            unsafe { core::ptr::write_volatile(&raw mut (*rb).last_failure_ns, now) };
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
    let tripped = counted && judge_window(&p, c.slot, true, slow, now);
    // A plain close is in the counters; records are for connect outcomes and resets. A
    // failure of a named destination may trip its breaker: wake the daemon at once.
    if outcome != OUTCOME_CLOSED {
        let flags = (c.flags & TRACK_PROBE) | if slow { TRACK_SLOW } else { 0 };
        let quiet = quiet_now(c.slot, p.window_epoch);
        emit(
            now,
            elapsed,
            c,
            outcome,
            err,
            flags,
            true,
            p.window_epoch,
            quiet,
        );
    }
    // After the record: a daemon that sees the streak has the record too.
    if counted {
        if let Some(streak) = STREAKS.get_ptr_mut(c.slot) {
            if tripped {
                // SAFETY: pointer into an array map value.
                unsafe { core::ptr::write_volatile(streak, TRIPPED) };
            } else {
                add(streak, 1);
            }
        }
    }
}

/// Count a success of the slot in `QUIET`, if its count is of `epoch` (else the success needs
/// a record): its `quiet_stamp`.
#[inline(always)]
fn count_quiet(slot: u32, epoch: u32) -> Option<u64> {
    let q = QUIET.get_ptr_mut(slot)?;
    // SAFETY: pointer into an array map value, valid for the program's run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*q).epoch) != u64::from(epoch) {
            return None;
        }
        let n = fetch_add(&raw mut (*q).successes, 1).wrapping_add(1);
        Some(quiet_stamp(epoch, n as u32))
    }
}

/// The slot's successes counted without a record in `epoch` so far (0 in another epoch).
#[inline(always)]
fn quiet_now(slot: u32, epoch: u32) -> u32 {
    let Some(q) = QUIET.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: pointer into an array map value, valid for the program's run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*q).epoch) != u64::from(epoch) {
            return 0;
        }
        core::ptr::read_volatile(&raw const (*q).successes) as u32
    }
}

/// An observed connect's entry left CONNS: its room goes back.
#[inline(always)]
pub fn give_obs_room() {
    if let Some(live) = OBS_LIVE.get_ptr_mut(0) {
        add(live, MINUS_ONE);
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
#[allow(clippy::too_many_arguments)]
fn emit(
    now: u64,
    elapsed: u64,
    c: &ConnTrack,
    outcome: u32,
    err: u32,
    flags: u32,
    urgent: bool,
    epoch: u32,
    quiet: u32,
) {
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
                epoch,
                quiet,
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
