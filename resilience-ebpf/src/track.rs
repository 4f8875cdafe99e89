//! TCP outcome tracking for connects the hook allowed: success with latency, failure by class,
//! and the close of established connections.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_skc_to_tcp_sock,
    },
    programs::{SockContext, SockOpsContext},
    EbpfContext,
};
use resilience_common::{
    conn::{
        CONN_CONNECTING, CONN_ESTABLISHED, OUTCOME_CLOSED, OUTCOME_REFUSED, OUTCOME_RESET,
        OUTCOME_SUCCESS, OUTCOME_TIMEOUT, OUTCOME_UNREACHABLE, SLOT_OBSERVED, TRACK_HELD,
        TRACK_PROBE, TRACK_SLOW,
    },
    dest::{latency_bucket, FLAG_COUNT_REFUSED, FLAG_COUNT_TIMEOUT, FLAG_COUNT_UNREACHABLE},
    ConnTrack, DestCounters, OutcomeEvent,
};

use crate::{
    atomic::add,
    maps::{stats, ACTIVE, CONNS, COUNTERS, EVENTS, OBSERVED, POLICY, SK_ERR_OFFSET, STREAKS},
};

const TCP_CLOSE: u32 = 7;

const ECONNRESET: u32 = 104;
const ETIMEDOUT: u32 = 110;
const ECONNREFUSED: u32 = 111;
const EPIPE: u32 = 32;

/// sock_ops of the guarded cgroup. A cgroup program, not a tracepoint: the kernel never skips
/// it when it would nest (a tracing program is skipped when a softirq on the same CPU fires it
/// again while it runs, and a skipped close is a bulkhead place never given back), and only
/// guarded sockets pay for it.
pub fn on_sock_ops(ctx: &SockOpsContext) {
    match ctx.op() {
        // The connect is about to send its SYN: follow this socket's state changes.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
            let _ = ctx.set_cb_flags(flags as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            established(cookie);
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            closed(cookie, sk_err(ctx), None);
        }
        _ => {}
    }
}

/// cgroup/sock_release: a connect that failed after the hook let it through but before its SYN
/// (no route, no local port) reaches CLOSE without a state callback. Its entry is still here
/// when the application closes the socket; count it then.
pub fn on_release(ctx: &SockContext) {
    // SAFETY: the kernel hands a valid bpf_sock to this program type.
    if unsafe { (*ctx.sock).state } != TCP_CLOSE {
        // Closing from another state goes through the state callback.
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    closed(cookie, 0, Some(OUTCOME_UNREACHABLE));
}

/// SYN_SENT -> ESTABLISHED.
#[inline(always)]
fn established(cookie: u64) {
    let Some(conn) = CONNS.get_ptr_mut(cookie) else {
        // Not a connect the hook allowed (it started before the daemon did).
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer into an LRU map value; copied first.
    let c: ConnTrack = unsafe { *conn };
    let elapsed = now.wrapping_sub(c.start_ns);
    unsafe { (*conn).state = CONN_ESTABLISHED };
    if c.slot != SLOT_OBSERVED {
        if let Some(streak) = STREAKS.get_ptr_mut(c.slot) {
            // SAFETY: pointer into an array map value.
            unsafe { core::ptr::write_volatile(streak, 0) };
        }
    }
    let mut flags = c.flags & TRACK_PROBE;
    if let Some(p) = POLICY.get(c.slot) {
        if p.slow_ns != 0 && elapsed >= p.slow_ns && c.slot != SLOT_OBSERVED {
            flags |= TRACK_SLOW;
        }
    }
    if let Some(counters) = counters_for(&c) {
        unsafe {
            add(&raw mut (*counters).successes, 1);
            if flags & TRACK_SLOW != 0 {
                add(&raw mut (*counters).slow, 1);
            }
            add(&raw mut (*counters).latency_sum_ns, elapsed);
            let b = latency_bucket(elapsed);
            if b < (*counters).latency_log2_us.len() {
                add(&raw mut (*counters).latency_log2_us[b], 1);
            }
        }
    }
    // The breaker acts on probes and slow calls: wake the daemon for them.
    emit(now, elapsed, &c, OUTCOME_SUCCESS, 0, flags, flags != 0);
}

/// The socket reached CLOSE. `forced`: the outcome of a failed connect when the socket error
/// cannot tell.
#[inline(always)]
fn closed(cookie: u64, err: u32, forced: Option<u32>) {
    let Some(conn) = CONNS.get_ptr_mut(cookie) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer into an LRU map value; copied before the entry goes away.
    let c: ConnTrack = unsafe { *conn };
    let elapsed = now.wrapping_sub(c.start_ns);

    // CLOSE. Whoever deletes the entry counts the outcome, so it is counted exactly once.
    if CONNS.remove(cookie).is_err() {
        return;
    }
    if c.flags & TRACK_HELD != 0 {
        release(&c);
    }
    let outcome = match (c.state, forced) {
        (CONN_CONNECTING, Some(o)) => o,
        (CONN_CONNECTING, None) => match err {
            ECONNREFUSED => OUTCOME_REFUSED,
            // The kernel gave up on SYN retries, or the application gave up waiting.
            0 | ETIMEDOUT => OUTCOME_TIMEOUT,
            _ => OUTCOME_UNREACHABLE,
        },
        _ if err == ECONNRESET || err == EPIPE => OUTCOME_RESET,
        _ => OUTCOME_CLOSED,
    };
    if let Some(counters) = counters_for(&c) {
        unsafe {
            let field = match outcome {
                OUTCOME_REFUSED => &raw mut (*counters).refused,
                OUTCOME_TIMEOUT => &raw mut (*counters).timeout,
                OUTCOME_UNREACHABLE => &raw mut (*counters).unreachable,
                _ => &raw mut (*counters).closed,
            };
            add(field, 1);
            if outcome == OUTCOME_RESET {
                add(&raw mut (*counters).reset, 1);
            }
        }
    }
    // A plain close is in the counters; records are for connect outcomes and resets. A
    // failure of a named destination may trip its breaker: wake the daemon at once.
    if outcome != OUTCOME_CLOSED {
        let urgent = c.slot != SLOT_OBSERVED;
        emit(
            now,
            elapsed,
            &c,
            outcome,
            err,
            c.flags & TRACK_PROBE,
            urgent,
        );
    }
    // After the record: a daemon that sees the streak has the record too.
    if c.slot != SLOT_OBSERVED {
        count_streak(c.slot, outcome);
    }
}

/// The trip fuse's streak: consecutive counted connect failures, zeroed by a success.
#[inline(always)]
fn count_streak(slot: u32, outcome: u32) {
    let Some(p) = POLICY.get(slot) else { return };
    let counted = match outcome {
        OUTCOME_REFUSED => p.flags & FLAG_COUNT_REFUSED != 0,
        OUTCOME_TIMEOUT => p.flags & FLAG_COUNT_TIMEOUT != 0,
        OUTCOME_UNREACHABLE => p.flags & FLAG_COUNT_UNREACHABLE != 0,
        _ => false,
    };
    if counted {
        if let Some(streak) = STREAKS.get_ptr_mut(slot) {
            add(streak, 1);
        }
    }
}

/// Give the bulkhead place back, unless the slot changed owner since (its count restarted).
#[inline(always)]
fn release(c: &ConnTrack) {
    let Some(p) = POLICY.get(c.slot) else { return };
    if p.generation != c.generation {
        return;
    }
    if let Some(active) = ACTIVE.get_ptr_mut(c.slot) {
        add(active, u64::MAX);
    }
}

#[inline(always)]
fn counters_for(c: &ConnTrack) -> Option<*mut DestCounters> {
    if c.slot == SLOT_OBSERVED {
        OBSERVED.get_ptr_mut(c.endpoint)
    } else {
        COUNTERS.get_ptr_mut(c.slot)
    }
}

/// The socket's pending error, read at the offset the daemon found in BTF.
#[inline(always)]
fn sk_err(ctx: &SockOpsContext) -> u32 {
    let off = unsafe { core::ptr::read_volatile(&SK_ERR_OFFSET) };
    if off == 0 {
        return 0;
    }
    // SAFETY: the context's socket field, checked for null; the helper gives a BTF pointer.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 0;
    }
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return 0;
    }
    let p = (tp as *const u8).wrapping_add(off as usize) as *const i32;
    match unsafe { bpf_probe_read_kernel(p) } {
        Ok(e) if e > 0 => e as u32,
        _ => 0,
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
                unsafe { (*s).ringbuf_lost += 1 };
            }
        }
    }
}
