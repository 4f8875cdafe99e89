//! The connect hook's decision: find the destination, apply breaker, bulkhead and token bucket
//! in that order, count, track. A connect rejected by one step takes nothing from the next.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use resilience_common::{
    conn::{CONN_CONNECTING, SLOT_OBSERVED, TRACK_HELD, TRACK_PROBE},
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    dest::{
        ACTION_PROBE, ACTION_REJECT, FLAG_BULKHEAD, FLAG_DRY_RUN, FLAG_RATE_LIMIT, REJECT_BREAKER,
        REJECT_BULKHEAD, REJECT_RATE_LIMIT,
    },
    endpoint::CIDR_PORT_BITS,
    Bucket, CidrData, ConnTrack, DestCounters, DestPolicy, Endpoint,
};

use crate::{
    atomic::{add, cas, fetch_add},
    maps::{
        stats, ACTIVE, BUCKETS, CIDR, CONNS, CONTROL, COUNTERS, EXACT, OBSERVED, POLICY, PROBES,
        STREAKS,
    },
    ALLOW,
};

/// Returned with `bpf_set_retval(-errno)` already called: the connect fails with that errno.
const REJECT: i32 = 0;
/// Prefix length of a CIDR key that matches every address on one port.
const FULL_PREFIX: u32 = CIDR_PORT_BITS + 128;
/// Two's complement of 1, for atomic decrements.
const MINUS_ONE: u64 = u64::MAX;

pub fn on_connect(ctx: &SockAddrContext, ep: Endpoint) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let (lookup, lease_valid) = match CONTROL.get(0) {
        Some(c) => (
            c.lookup_flags,
            now.wrapping_sub(c.heartbeat_ns) <= c.lease_ns,
        ),
        // Cannot happen for an array; if it did, the guard fails open.
        None => (0, false),
    };

    let Some(slot) = find_slot(&ep, lookup) else {
        observe(ctx, &ep, now);
        return ALLOW;
    };
    let (Some(counters), Some(policy)) = (COUNTERS.get_ptr_mut(slot), POLICY.get(slot)) else {
        count_hook_error();
        return ALLOW;
    };
    // SAFETY (all derefs of `counters`): a pointer into an array map value, valid for the run.
    unsafe { add(&raw mut (*counters).attempts, 1) };

    let mut flags = 0;
    let reason = admit(slot, policy, now, &mut flags);
    if let Some(reason) = reason {
        if policy.flags & FLAG_DRY_RUN != 0 {
            unsafe { add(&raw mut (*counters).would_reject[reason], 1) };
        } else if !lease_valid {
            // Fail-open: a daemon that stopped renewing its lease may hold stale verdicts.
            unsafe { add(&raw mut (*counters).fail_open, 1) };
            if let Some(s) = stats() {
                unsafe { (*s).fail_open += 1 };
            }
        } else {
            give_back(slot, flags);
            unsafe {
                add(&raw mut (*counters).rejected[reason], 1);
                aya_ebpf::helpers::generated::bpf_set_retval(-(policy.errno as i32));
            }
            return REJECT;
        }
    }
    track(ctx, &ep, slot, policy.generation, flags, now);
    ALLOW
}

/// Breaker, then bulkhead, then token bucket. Returns the first step that says no; `flags`
/// gets what the connect took (a probe, a bulkhead place), whatever the answer.
#[inline(always)]
fn admit(slot: u32, policy: &DestPolicy, now: u64, flags: &mut u32) -> Option<usize> {
    match policy.action {
        ACTION_REJECT => return Some(REJECT_BREAKER),
        ACTION_PROBE => {
            let probes = PROBES.get_ptr_mut(slot)?;
            // Exactly `budget` tickets are positive, whatever the number of CPUs racing.
            let ticket = fetch_add(probes, MINUS_ONE) as i64;
            if ticket <= 0 {
                return Some(REJECT_BREAKER);
            }
            *flags |= TRACK_PROBE;
        }
        _ => {
            // The trip fuse: the failure that crosses the breaker's threshold closes the door
            // here and now, before the daemon has read it.
            if policy.trip_after != 0 {
                let streak = STREAKS.get(slot).copied().unwrap_or(0);
                if streak >= u64::from(policy.trip_after) {
                    return Some(REJECT_BREAKER);
                }
            }
        }
    }
    // Every admitted connect to a named destination holds a place until it closes, so that the
    // active count is known with or without a bulkhead.
    let active = ACTIVE.get_ptr_mut(slot)?;
    let ticket = fetch_add(active, 1);
    if policy.flags & FLAG_BULKHEAD != 0 && ticket >= u64::from(policy.max_concurrent) {
        add(active, MINUS_ONE);
        return Some(REJECT_BULKHEAD);
    }
    *flags |= TRACK_HELD;
    if policy.flags & FLAG_RATE_LIMIT != 0 {
        let bucket = BUCKETS.get_ptr_mut(slot)?;
        if !take_token(bucket, policy, now) {
            return Some(REJECT_RATE_LIMIT);
        }
    }
    None
}

/// GCRA (the token bucket as one timestamp): see `resilience_common::Bucket` for why this is
/// exact.
#[inline(always)]
fn take_token(b: *mut Bucket, policy: &DestPolicy, now: u64) -> bool {
    let t = if policy.ns_per_token == 0 {
        1
    } else {
        policy.ns_per_token
    };
    // Up to `burst - 1` emission intervals early is within the bucket.
    let tolerance = policy.tolerance_ns;
    // SAFETY: pointer into an array map value.
    let tat_p = unsafe { &raw mut (*b).tat_ns };
    let mut tat = unsafe { core::ptr::read_volatile(tat_p) };
    // Bounded retries: under a storm of CPUs racing for the same bucket, the loser of the
    // fourth race is refused, which only ever admits less.
    for _ in 0..4 {
        let start = if tat > now { tat } else { now };
        if start - now > tolerance {
            return false;
        }
        let (found, swapped) = cas(tat_p, tat, start + t);
        if swapped {
            return true;
        }
        tat = found;
    }
    false
}

/// Undo what a rejected connect took.
#[inline(always)]
fn give_back(slot: u32, flags: u32) {
    if flags & TRACK_HELD != 0 {
        if let Some(active) = ACTIVE.get_ptr_mut(slot) {
            add(active, MINUS_ONE);
        }
    }
    if flags & TRACK_PROBE != 0 {
        if let Some(probes) = PROBES.get_ptr_mut(slot) {
            add(probes, 1);
        }
    }
}

/// Exact ip:port first, then the longest CIDR on this port, then the longest CIDR on any port.
#[inline(always)]
fn find_slot(ep: &Endpoint, lookup: u32) -> Option<u32> {
    if lookup & LOOKUP_EXACT != 0 {
        if let Some(slot) = unsafe { EXACT.get(ep) } {
            return Some(*slot);
        }
    }
    if lookup & LOOKUP_CIDR_PORT != 0 {
        let key = Key::new(FULL_PREFIX, CidrData::new(ep.addr, ep.port));
        if let Some(slot) = CIDR.get(&key) {
            return Some(*slot);
        }
    }
    if lookup & LOOKUP_CIDR_ANY != 0 {
        let key = Key::new(FULL_PREFIX, CidrData::new(ep.addr, 0));
        if let Some(slot) = CIDR.get(&key) {
            return Some(*slot);
        }
    }
    None
}

/// A destination no policy names: never rejected, counted in the LRU map for the dashboard.
#[inline(always)]
fn observe(ctx: &SockAddrContext, ep: &Endpoint, now: u64) {
    let mut counters = OBSERVED.get_ptr_mut(ep);
    if counters.is_none() {
        // BPF_NOEXIST: when two CPUs race to create it, the loser just uses the winner's entry.
        let _ = OBSERVED.insert(ep, DestCounters::default(), 1);
        counters = OBSERVED.get_ptr_mut(ep);
    }
    if let Some(c) = counters {
        unsafe { add(&raw mut (*c).attempts, 1) };
    }
    track(ctx, ep, SLOT_OBSERVED, 0, 0, now);
}

/// Remember the allowed connect so that the state tracker can count its outcome.
#[inline(always)]
fn track(ctx: &SockAddrContext, ep: &Endpoint, slot: u32, generation: u32, flags: u32, now: u64) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let conn = ConnTrack {
        start_ns: now,
        endpoint: *ep,
        slot,
        state: CONN_CONNECTING,
        flags,
        generation,
        _pad: 0,
    };
    if CONNS.insert(cookie, conn, 0).is_err() {
        // Untracked: nobody would see its outcome or give its place back.
        give_back(slot, flags);
        if let Some(s) = stats() {
            unsafe { (*s).untracked += 1 };
        }
    }
}

#[inline(always)]
fn count_hook_error() {
    if let Some(s) = stats() {
        unsafe { (*s).hook_errors += 1 };
    }
}
