//! The connect hook's decision: find the destination, apply its verdict, count, track.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use resilience_common::{
    conn::{CONN_CONNECTING, SLOT_OBSERVED},
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    dest::{ACTION_REJECT, FLAG_DRY_RUN, REJECT_BREAKER},
    endpoint::CIDR_PORT_BITS,
    CidrData, ConnTrack, DestCounters, Endpoint,
};

use crate::{
    atomic::add,
    maps::{stats, CIDR, CONNS, CONTROL, COUNTERS, EXACT, OBSERVED, POLICY},
    ALLOW,
};

/// Returned with `bpf_set_retval(-errno)` already called: the connect fails with that errno.
const REJECT: i32 = 0;
/// Prefix length of a CIDR key that matches every address on one port.
const FULL_PREFIX: u32 = CIDR_PORT_BITS + 128;

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
    let Some(counters) = COUNTERS.get_ptr_mut(slot) else {
        count_hook_error();
        return ALLOW;
    };
    // SAFETY: a pointer into an array map value, valid for the program's run.
    unsafe { add(&raw mut (*counters).attempts, 1) };

    if let Some(policy) = POLICY.get(slot) {
        if policy.action == ACTION_REJECT {
            if policy.flags & FLAG_DRY_RUN != 0 {
                unsafe { add(&raw mut (*counters).would_reject, 1) };
            } else if !lease_valid {
                // Fail-open: a daemon that stopped renewing its lease may hold stale verdicts.
                unsafe { add(&raw mut (*counters).fail_open, 1) };
                if let Some(s) = stats() {
                    unsafe { (*s).fail_open += 1 };
                }
            } else {
                unsafe {
                    add(&raw mut (*counters).rejected[REJECT_BREAKER], 1);
                    aya_ebpf::helpers::generated::bpf_set_retval(-(policy.errno as i32));
                }
                return REJECT;
            }
        }
    }
    track(ctx, &ep, slot, now);
    ALLOW
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
    track(ctx, ep, SLOT_OBSERVED, now);
}

/// Remember the allowed connect so that the state tracker can count its outcome.
#[inline(always)]
fn track(ctx: &SockAddrContext, ep: &Endpoint, slot: u32, now: u64) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let conn = ConnTrack {
        start_ns: now,
        endpoint: *ep,
        slot,
        state: CONN_CONNECTING,
        _pad: 0,
    };
    if CONNS.insert(cookie, conn, 0).is_err() {
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
