//! The connect hook's decision: find the destination in the active policy set, apply breaker,
//! bulkhead and token bucket in that order, count, track. A connect rejected by one step takes
//! nothing from the next; a connect let through (allowed, dry-run, disabled, fail-open) always
//! holds a place until it ends.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use resilience_common::{
    conn::{
        CONN_CONNECTING, OUTCOME_LOCAL, PENDING_SHIFT, SLOT_OBSERVED, TRACK_DEADLINE, TRACK_HELD,
        TRACK_PENDING, TRACK_PROBE, TRACK_RETRY, TRACK_ROOM,
    },
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    dest::{
        ACTION_PROBE, ACTION_REJECT, FLAG_BULKHEAD, FLAG_DRY_RUN, FLAG_RATE_LIMIT,
        FLAG_RETRY_BUDGET, PENDING_BUCKETS, REJECT_BREAKER, REJECT_BULKHEAD, REJECT_RATE_LIMIT,
        REJECT_REASONS, REJECT_RETRY_BUDGET,
    },
    endpoint::CIDR_HEAD_BITS,
    retry::RETRY_BUCKETS,
    service::{LEVEL_SHIFT, SERVICE_LEVELS, SLOT_SERVICES},
    Bucket, CidrData, ConnTrack, DestCounters, DestPolicy, Endpoint, PendingAges, RetryBudget,
    ServiceRoute,
};

use crate::{
    atomic::{add, add32, cas_update, fetch_add, MINUS_ONE},
    cookie,
    deadline::{set_user_timeout, user_timeout},
    maps::{
        have_retval, obs_cap, policy, stats, ACTIVE, BUCKETS, CIDR, CONNS, CONTROL, COUNTERS,
        EXACT, HOT_CONNS, OBSERVED, OBS_LIVE, PENDING, PROBES, RETRY, ROUTES, SERVICES, STREAKS,
    },
    outcome::{give_obs_room, settle, unpend},
    track::{Conns, Tracked},
    ALLOW,
};

/// Returned with `bpf_set_retval(-errno)` already called: the connect fails with that errno.
const REJECT: i32 = 0;
/// Prefix length of a CIDR key that matches every address on one port of one set.
const FULL_PREFIX: u32 = CIDR_HEAD_BITS + 128;
/// `bpf_map_update_elem` flag.
const BPF_NOEXIST: u64 = 1;

/// `resolve`'s answer when CONTROL cannot be read.
pub const NO_CONTROL: u64 = u64::MAX;

/// The slot a connect to `ep` is charged to in the active policy set: `(set << 32) | slot`,
/// with slot `SLOT_OBSERVED` where no policy names it (or none of its services holds the
/// process), or `NO_CONTROL`. A BPF subprogram called by the program itself, beside
/// `on_connect`, not below it: the verifier adds the frames of a call chain, and 512 bytes
/// is the limit for the sum (Linux 6.1 refused the service lookup nested in `on_connect`).
#[inline(never)]
pub fn resolve(ep: &Endpoint) -> u64 {
    let Some(control) = CONTROL.get(0) else {
        return NO_CONTROL;
    };
    let set = control.active_set & 1;
    let lookup = control.lookup_flags[set as usize];
    let slot = match find_slot(ep, lookup, set) {
        None => SLOT_OBSERVED,
        // Scoped to services: this process's service has its own slot, or none (observed).
        Some(s) if s & SLOT_SERVICES != 0 => {
            service_slot(s & !SLOT_SERVICES, lookup >> LEVEL_SHIFT, set).unwrap_or(SLOT_OBSERVED)
        }
        Some(s) => s,
    };
    (u64::from(set) << 32) | u64::from(slot)
}

pub fn on_connect(ctx: &SockAddrContext, ep: &Endpoint, resolved: u64) -> i32 {
    // A program on an inner cgroup (another daemon's, or anyone's) ran first and refused this
    // connect: it fails whatever we say, so it is nobody's attempt here. Returning ALLOW keeps
    // that refusal's errno.
    // SAFETY: the helper has no preconditions in cgroup programs.
    if have_retval() && unsafe { aya_ebpf::helpers::generated::bpf_get_retval() } != 0 {
        return ALLOW;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(control) = CONTROL.get(0) else {
        // Cannot happen for an array; if it did, the guard fails open.
        count_hook_error();
        return ALLOW;
    };
    let lease_valid = now.wrapping_sub(control.heartbeat_ns) <= control.lease_ns;
    if resolved == NO_CONTROL {
        count_hook_error();
        return ALLOW;
    }
    let set = ((resolved >> 32) & 1) as u32;
    let slot = resolved as u32;
    if slot == SLOT_OBSERVED {
        observe(ctx, ep, now);
        return ALLOW;
    }
    let (Some(counters), Some(p)) = (COUNTERS.get_ptr_mut(slot), policy(set, slot)) else {
        count_hook_error();
        return ALLOW;
    };
    // A copy: the daemon may publish a new verdict into this entry while we decide.
    let p: DestPolicy = *p;
    // SAFETY (all derefs of `counters`): a pointer into an array map value, valid for the run.
    unsafe { add(&raw mut (*counters).attempts, 1) };

    let mut flags = 0;
    if let Some(reason) = admit(slot, &p, now, &mut flags) {
        if p.flags & FLAG_DRY_RUN != 0 {
            count_reason(counters, slot, reason, true);
        } else if !lease_valid {
            // Fail-open: a daemon that stopped renewing its lease may hold stale verdicts.
            unsafe { add(&raw mut (*counters).fail_open, 1) };
            if let Some(s) = stats() {
                unsafe { (*s).fail_open += 1 };
            }
        } else {
            give_back(slot, flags, now);
            count_reason(counters, slot, reason, false);
            // Without the helper (before Linux 5.18) the application sees EPERM.
            if have_retval() {
                // SAFETY: as above.
                unsafe { aya_ebpf::helpers::generated::bpf_set_retval(-(p.errno as i32)) };
            }
            return REJECT;
        }
        // Let through all the same: it holds a place like any other admitted connect, so the
        // count stays exact for when enforcement resumes.
        if flags & TRACK_HELD == 0 {
            if let Some(active) = ACTIVE.get_ptr_mut(slot) {
                add(active, 1);
                flags |= TRACK_HELD;
            }
        }
    }
    track(ctx, ep, slot, Some(&p), flags, now, set);
    ALLOW
}

/// A rejection (or, in dry-run, a would-be one) by reason: the retry budget's in its own entry.
#[inline(always)]
fn count_reason(counters: *mut DestCounters, slot: u32, reason: usize, dry: bool) {
    if reason < REJECT_REASONS {
        // SAFETY: pointer into an array map value; `reason` is in bounds.
        unsafe {
            if dry {
                add(&raw mut (*counters).would_reject[reason], 1);
            } else {
                add(&raw mut (*counters).rejected[reason], 1);
            }
        }
    } else if let Some(rb) = RETRY.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            if dry {
                add(&raw mut (*rb).would_reject, 1);
            } else {
                add(&raw mut (*rb).rejected, 1);
            }
        }
    }
}

/// Breaker, then retry budget, then bulkhead, then token bucket. Returns the first step that says no; `flags`
/// gets what the connect took (a probe, a bulkhead place), whatever the answer.
#[inline(always)]
fn admit(slot: u32, p: &DestPolicy, now: u64, flags: &mut u32) -> Option<usize> {
    match p.action {
        ACTION_REJECT => return Some(REJECT_BREAKER),
        ACTION_PROBE => {
            let probes = PROBES.get_ptr_mut(slot)?;
            if !take_probe(probes) {
                return Some(REJECT_BREAKER);
            }
            *flags |= TRACK_PROBE;
        }
        _ => {
            // The trip fuse: the failure that crosses the breaker's threshold closes the door
            // here and now, before the daemon has read it.
            if p.trip_after != 0 {
                let streak = STREAKS.get(slot).copied().unwrap_or(0);
                if streak >= u64::from(p.trip_after) {
                    return Some(REJECT_BREAKER);
                }
            }
        }
    }
    if p.flags & FLAG_RETRY_BUDGET != 0 {
        if let Some(rb) = RETRY.get_ptr_mut(slot) {
            if !take_retry(rb, now, flags) {
                return Some(REJECT_RETRY_BUDGET);
            }
        }
    }
    // Every admitted connect to a named destination holds a place until it closes, so that the
    // active count is known with or without a bulkhead.
    let active = ACTIVE.get_ptr_mut(slot)?;
    let ticket = fetch_add(active, 1);
    if p.flags & FLAG_BULKHEAD != 0 && ticket >= u64::from(p.max_concurrent) {
        add(active, MINUS_ONE);
        return Some(REJECT_BULKHEAD);
    }
    *flags |= TRACK_HELD;
    if p.flags & FLAG_RATE_LIMIT != 0 {
        let bucket = BUCKETS.get_ptr_mut(slot)?;
        if !take_token(bucket, p, now) {
            return Some(REJECT_RATE_LIMIT);
        }
    }
    None
}

/// Count the connect in the slot's retry budget (see `resilience_common::RetryBudget` for why
/// this is exact): an original, or a retry, one that follows a connect failure of this slot by
/// at most `after_failure_ns`, admitted while the window's retries stay within the bound.
#[inline(always)]
fn take_retry(rb: *mut RetryBudget, now: u64, flags: &mut u32) -> bool {
    // SAFETY (all derefs of `rb`): a pointer into an array map value, valid for the run; the
    // daemon writes the bounds, the hooks the counts.
    let b = unsafe { core::ptr::read_volatile(rb) };
    if b.bucket_ns == 0 {
        return true;
    }
    let (tag, i) = b.epoch(now);
    if i >= RETRY_BUCKETS {
        return true;
    }
    let since = now.wrapping_sub(b.last_failure_ns);
    let retry = b.last_failure_ns != 0 && now >= b.last_failure_ns && since <= b.after_failure_ns;
    if !retry {
        bump(unsafe { &raw mut (*rb).originals[i] }, tag);
        return true;
    }
    if !bump(unsafe { &raw mut (*rb).retries[i] }, tag) {
        return false;
    }
    // Counted first, then judged: a CPU racing this one sees this retry too.
    let mut originals = 0;
    let mut retries = 0;
    for k in 0..RETRY_BUCKETS {
        unsafe {
            originals +=
                RetryBudget::live(core::ptr::read_volatile(&raw const (*rb).originals[k]), tag);
            retries +=
                RetryBudget::live(core::ptr::read_volatile(&raw const (*rb).retries[k]), tag);
        }
    }
    if retries > b.allowed(originals) {
        unbump(unsafe { &raw mut (*rb).retries[i] }, tag);
        return false;
    }
    unsafe { add(&raw mut (*rb).retries_admitted, 1) };
    *flags |= TRACK_RETRY;
    true
}

/// One more in an epoch-tagged bucket word (starting it over in a new epoch).
#[inline(always)]
fn bump(p: *mut u64, tag: u64) -> bool {
    cas_update(p, 4, |w| Some(RetryBudget::bumped(w, tag)))
}

/// Take back what `bump` counted, unless the bucket has moved on to another epoch.
#[inline(always)]
fn unbump(p: *mut u64, tag: u64) {
    cas_update(p, 4, |w| RetryBudget::dropped(w, tag));
}

/// Take one half-open probe ticket if any is left. A compare-and-swap, never an add that may
/// go below zero: a ticket given back (`give_back`) then always makes one more admissible, and
/// the budget can never be lost to a race. Under a storm of CPUs the loser of the last race is
/// refused, which only ever admits fewer.
#[inline(always)]
fn take_probe(p: *mut u64) -> bool {
    cas_update(p, 8, |left| (left as i64 > 0).then(|| left - 1))
}

/// GCRA (the token bucket as one timestamp): see `resilience_common::Bucket` for why this is
/// exact. The arithmetic saturates: a rate so low that an interval overflows admits nothing
/// more rather than wrapping around to admit everything.
#[inline(always)]
fn take_token(b: *mut Bucket, p: &DestPolicy, now: u64) -> bool {
    let t = if p.ns_per_token == 0 {
        1
    } else {
        p.ns_per_token
    };
    // Up to `burst - 1` emission intervals early is within the bucket.
    let tolerance = p.tolerance_ns;
    // SAFETY: pointer into an array map value.
    let tat_p = unsafe { &raw mut (*b).tat_ns };
    // Bounded retries: under a storm of CPUs racing for the same bucket, the loser of the
    // fourth race is refused, which only ever admits less.
    cas_update(tat_p, 4, |tat| {
        let start = if tat > now { tat } else { now };
        (start - now <= tolerance).then(|| start.saturating_add(t))
    })
}

/// Undo what a rejected connect took.
#[inline(always)]
fn give_back(slot: u32, flags: u32, now: u64) {
    if flags & TRACK_RETRY != 0 {
        if let Some(rb) = RETRY.get_ptr_mut(slot) {
            // SAFETY: pointer into an array map value.
            let b = unsafe { &*rb };
            let (tag, i) = b.epoch(now);
            if i < RETRY_BUCKETS {
                unbump(unsafe { &raw mut (*rb).retries[i] }, tag);
                add(unsafe { &raw mut (*rb).retries_admitted }, MINUS_ONE);
            }
        }
    }
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

/// Exact ip:port first, then the longest CIDR on this port, then the longest CIDR on any port,
/// all in policy set `set`.
#[inline(always)]
fn find_slot(ep: &Endpoint, lookup: u32, set: u32) -> Option<u32> {
    if lookup & LOOKUP_EXACT != 0 {
        let key = ep.in_set(set as u16);
        if let Some(slot) = unsafe { EXACT.get(key) } {
            return Some(*slot);
        }
    }
    if lookup & LOOKUP_CIDR_PORT != 0 {
        let key = Key::new(FULL_PREFIX, CidrData::new(set as u8, ep.addr, ep.port));
        if let Some(slot) = CIDR.get(&key) {
            return Some(*slot);
        }
    }
    if lookup & LOOKUP_CIDR_ANY != 0 {
        let key = Key::new(FULL_PREFIX, CidrData::new(set as u8, ep.addr, 0));
        if let Some(slot) = CIDR.get(&key) {
            return Some(*slot);
        }
    }
    None
}

/// The slot of the innermost of the connecting process's services that the scoped destination
/// `dispatch` lists, reading the process's ancestor cgroups only at the levels in `levels`.
#[inline(always)]
fn service_slot(dispatch: u32, levels: u32, set: u32) -> Option<u32> {
    let mut level = SERVICE_LEVELS;
    while level > 0 {
        level -= 1;
        if levels & (1 << level) == 0 {
            continue;
        }
        // SAFETY: the helper has no preconditions; it returns 0 above the process's depth.
        let id = unsafe {
            aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(level as i32)
        };
        if id == 0 {
            continue;
        }
        // SAFETY: a read of a hash map value, copied at once.
        let Some(&service) = (unsafe { SERVICES.get(id) }) else {
            continue;
        };
        let key = ServiceRoute {
            service,
            dispatch,
            set,
        };
        // SAFETY: a read of a hash map value, copied at once.
        if let Some(slot) = unsafe { ROUTES.get(key) } {
            return Some(*slot);
        }
    }
    None
}

/// The initial value of an observed destination's counters: a global, so that its 300-odd bytes
/// are not built on the 512-byte BPF stack.
static ZERO_COUNTERS: DestCounters = DestCounters::ZERO;

/// A destination no policy names: never rejected, counted in the LRU map for the dashboard.
#[inline(always)]
fn observe(ctx: &SockAddrContext, ep: &Endpoint, now: u64) {
    let mut counters = OBSERVED.get_ptr_mut(ep);
    if counters.is_none() {
        // BPF_NOEXIST: when two CPUs race to create it, the loser just uses the winner's entry.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the 300-odd bytes would be copied onto the BPF stack"
        )]
        let _ = OBSERVED.insert(ep, &ZERO_COUNTERS, BPF_NOEXIST);
        counters = OBSERVED.get_ptr_mut(ep);
    }
    if let Some(c) = counters {
        unsafe { add(&raw mut (*c).attempts, 1) };
    }
    track(ctx, ep, SLOT_OBSERVED, None, 0, now, 0);
}

/// Remember the allowed connect in CONNS (never evicted) so that the outcome trackers can count
/// it and give its place back. A named destination's connect also gets its deadline and is
/// counted as pending. An observed one takes room from the share observed connects may hold
/// (`OBS_CAP`): past it, it is not tracked (never rejected), and a flood of them can never
/// leave a named destination's connects untracked.
#[inline(always)]
fn track(
    ctx: &SockAddrContext,
    ep: &Endpoint,
    slot: u32,
    p: Option<&DestPolicy>,
    flags: u32,
    now: u64,
    set: u32,
) {
    // Before the cookie is made: a socket without one never had an attempt tracked.
    // SAFETY: `sk` is the connecting socket in this program type.
    let fresh = cookie::unset(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }.cast());
    // SAFETY: the context is a valid bpf_sock_addr for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut conn = ConnTrack {
        start_ns: now,
        established_ns: 0,
        endpoint: *ep,
        slot,
        state: CONN_CONNECTING,
        deadline_ms: 0,
        flags,
        generation: p.map_or(0, |p| p.generation),
        app_user_timeout_ms: 0,
    };
    if let Some(p) = p {
        if p.connect_timeout_ms != 0 {
            if let Some(app) = user_timeout(ctx.as_ptr()) {
                // The application's own timeout, if shorter, is the deadline.
                let deadline = if app != 0 && app < p.connect_timeout_ms {
                    app
                } else {
                    p.connect_timeout_ms
                };
                conn.deadline_ms = deadline.min(u32::from(u16::MAX)) as u16;
                conn.app_user_timeout_ms = app;
                conn.flags |= TRACK_DEADLINE;
            }
        }
        let width = PendingAges::width(p.slow_ns);
        if width != 0 {
            let b = PendingAges::bucket(now, width);
            if let Some(ages) = PENDING.get_ptr_mut(slot) {
                if b < PENDING_BUCKETS {
                    // SAFETY: pointer into an array map value; `b` is in bounds.
                    add32(unsafe { &raw mut (*ages).counts[b] }, 1);
                    conn.flags |= TRACK_PENDING | ((b as u32) << PENDING_SHIFT);
                }
            }
        }
    }
    if slot == SLOT_OBSERVED {
        if !take_obs_room() {
            return;
        }
        conn.flags |= TRACK_ROOM;
    }
    let (tracked, restore) = track_in(cookie, fresh, &mut conn, now, set);
    if tracked && conn.flags & TRACK_DEADLINE != 0 {
        set_user_timeout(ctx.as_ptr(), u32::from(conn.deadline_ms));
    } else if let Some(app) = restore {
        // An earlier attempt on this socket set a deadline this one does not have.
        set_user_timeout(ctx.as_ptr(), app);
    }
    if tracked {
        return;
    }
    if slot == SLOT_OBSERVED {
        give_obs_room();
        return;
    }
    // Untracked: nobody would see its outcome, give its place back or end its pending count.
    unpend(&conn);
    give_back(slot, conn.flags, now);
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        unsafe { add(&raw mut (*c).untracked, 1) };
    }
    if let Some(s) = stats() {
        unsafe { (*s).untracked += 1 };
    }
}

/// Insert `conn` into HOT_CONNS, or CONNS when that is full. The socket may be connecting
/// again (unless `fresh`): its earlier attempt failed before its SYN (no route, no local port),
/// and that attempt ends here, once. If that attempt had a deadline, the application's own
/// user timeout is the one it had then (carried into `conn`, or returned to be put back).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the entry would be copied onto the BPF stack once more"
)]
fn track_in(
    cookie: u64,
    fresh: bool,
    conn: &mut ConnTrack,
    now: u64,
    set: u32,
) -> (bool, Option<u32>) {
    let restore = if fresh {
        None
    } else {
        settle_stale(cookie, now, set).and_then(|old| inherit(conn, &old))
    };
    let tracked = HOT_CONNS.insert(cookie, &*conn, BPF_NOEXIST).is_ok()
        || CONNS.insert(cookie, &*conn, BPF_NOEXIST).is_ok();
    (tracked, restore)
}

/// One more observed connect tracked, if the share of the tracking maps they may hold has room.
#[inline(always)]
fn take_obs_room() -> bool {
    let Some(live) = OBS_LIVE.get_ptr_mut(0) else {
        return false;
    };
    if fetch_add(live, 1) >= u64::from(obs_cap()) {
        add(live, MINUS_ONE);
        return false;
    }
    true
}

#[inline(always)]
fn inherit(conn: &mut ConnTrack, old: &ConnTrack) -> Option<u32> {
    if old.flags & TRACK_DEADLINE == 0 {
        return None;
    }
    conn.app_user_timeout_ms = old.app_user_timeout_ms;
    Some(old.app_user_timeout_ms)
}

/// If the socket has a tracking entry, end it as a failure before its SYN; the entry if there
/// was one.
#[inline(always)]
fn settle_stale(cookie: u64, now: u64, set: u32) -> Option<ConnTrack> {
    let old = Tracked.entry(cookie)?;
    // SAFETY: pointer into a hash map value; copied before the entry goes away.
    let old: ConnTrack = unsafe { *old };
    // Whoever deletes the entry counts its outcome, so it is counted once.
    if Tracked.delete(cookie) {
        // connect() runs the hook again only on a socket whose last attempt never got a SYN
        // out (the kernel refuses it on a connecting socket; an attempt whose SYN went out
        // ended in the state callback, which deleted its entry).
        settle(&old, OUTCOME_LOCAL, 0, now, set);
    }
    Some(old)
}

#[inline(always)]
fn count_hook_error() {
    if let Some(s) = stats() {
        unsafe { (*s).hook_errors += 1 };
    }
}
