//! TCP outcome tracking for connects the hook allowed: success with latency, failure by class,
//! and the close of established connections.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TIMEOUT_INIT,
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
        CONN_CONNECTING, CONN_ESTABLISHED, OUTCOME_ABANDONED, OUTCOME_CLOSED, OUTCOME_LOCAL,
        OUTCOME_REFUSED, OUTCOME_RESET, OUTCOME_TIMEOUT, OUTCOME_UNREACHABLE, SLOT_OBSERVED,
        TRACK_ARMED, TRACK_DEADLINE,
    },
    ConnTrack,
};

use crate::{
    cookie,
    deadline::{set_user_timeout, syn_rto_jiffies, user_timeout},
    maps::{active_set, hz, CONNS, HOT_CONNS, OBS_CONNS, SK_ERR_OFFSET},
    outcome::{settle, succeed},
};

/// Set on the sockets whose connection is to a named destination, so that their later
/// callbacks never look in OBS_CONNS (where an earlier build tracked observed ones). A flag the
/// socket carries anyway: the RTO callback it also asks for runs only when a retransmission
/// timer fires, and returns at once.
const NAMED_MARK: u32 = BPF_SOCK_OPS_RTO_CB_FLAG;
/// Set on the sockets whose connect has a deadline, so that the initial SYN timeout callback
/// (which every socket runs) looks nothing up for the others. Its own callback runs only on a
/// retransmission, returns at once, and the mark goes at ESTABLISHED.
const DEADLINE_MARK: u32 = BPF_SOCK_OPS_RETRANS_CB_FLAG;

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
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
        // The SYN is about to go out: follow the state changes of a socket the hook let
        // through from now on, and remember in the socket whether its destination is named.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // SAFETY: the context is a valid bpf_sock_ops for this program type.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let mark = if let Some((deadline, named)) = arm(&Tracked, cookie) {
                (if named { NAMED_MARK } else { 0 }) | (if deadline { DEADLINE_MARK } else { 0 })
            } else {
                // Not ours (untracked): nothing to follow.
                return;
            };
            // A mark left by the socket's earlier attempt goes.
            let flags = (ctx.cb_flags() & !(NAMED_MARK | DEADLINE_MARK))
                | BPF_SOCK_OPS_STATE_CB_FLAG
                | mark;
            let _ = ctx.set_cb_flags(flags as i32);
        }
        // Runs right after TCP_CONNECT_CB, for every connect: a deadline below the kernel's
        // 1 s initial SYN timeout needs an earlier first timer, since the kernel checks the
        // user timeout only when the timer fires (later timers are clamped to it).
        BPF_SOCK_OPS_TIMEOUT_INIT => {
            if ctx.cb_flags() & DEADLINE_MARK == 0 {
                return;
            }
            let Some(ms) = user_timeout(ctx.as_ptr()) else {
                return;
            };
            if let Some(j) = syn_rto_jiffies(ms, hz()) {
                ctx.set_reply(j);
            }
        }
        // Only sockets armed above get here. ESTABLISHED covers the active open and the
        // simultaneous open (SYN_SENT -> SYN_RECV -> ESTABLISHED) alike.
        BPF_SOCK_OPS_STATE_CB => {
            let new = ctx.arg(1);
            let named = ctx.cb_flags() & NAMED_MARK != 0;
            if new == TCP_ESTABLISHED {
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                match established(&Tracked, cookie) {
                    Some(c) if c.flags & TRACK_DEADLINE != 0 => end_deadline(ctx, &c),
                    Some(_) => {}
                    // A socket armed by an earlier build has no mark and may be in OBS_CONNS.
                    None if !named => {
                        let _ = established(&OBS_CONNS, cookie);
                    }
                    None => {}
                }
            } else if new == TCP_CLOSE {
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                let err = sk_err(ctx);
                match closed(&Tracked, cookie, err) {
                    // A failed connect: the socket may connect again, with what the
                    // application had set.
                    Some(c) if c.flags & TRACK_DEADLINE != 0 && c.state == CONN_CONNECTING => {
                        end_deadline(ctx, &c)
                    }
                    Some(_) => {}
                    None if !named => {
                        let _ = closed(&OBS_CONNS, cookie, err);
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
}

/// cgroup/sock_release: the application closed the socket. A connect that failed before its
/// SYN (no route, no local port) reached CLOSE without a state callback, and a Fast Open
/// connect never written to never sent its SYN at all: neither would ever be reported, so their
/// end is counted here. Armed sockets are left to the state callback.
pub fn on_release(ctx: &SockContext) {
    // SAFETY: the kernel hands a valid bpf_sock to this program type.
    let state = unsafe { (*ctx.sock).state };
    // A socket the hook let through and that was never armed is still SYN_SENT (Fast Open,
    // not yet written to) or CLOSE (failed before its SYN). In any other state it was armed
    // and the state callback reports it: most closes, listening sockets and accepted ones
    // still open end here without a lookup (an accepted socket its peer reset is CLOSE, and
    // still pays the lookups).
    if state != TCP_SYN_SENT && state != TCP_CLOSE {
        return;
    }
    // Never given a cookie, so never tracked: an accepted socket its peer reset, most often.
    if cookie::unset_released(ctx.sock.cast()) {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    release(&Tracked, cookie, state);
}

/// Where connections are tracked (`Tracked`; OBS_CONNS, an earlier build's), as the trackers
/// use them.
pub trait Conns {
    fn entry(&self, cookie: u64) -> Option<*mut ConnTrack>;
    fn delete(&self, cookie: u64) -> bool;
}

macro_rules! conns {
    ($t:ty) => {
        impl Conns for $t {
            #[inline(always)]
            fn entry(&self, cookie: u64) -> Option<*mut ConnTrack> {
                self.get_ptr_mut(cookie)
            }

            #[inline(always)]
            fn delete(&self, cookie: u64) -> bool {
                self.remove(cookie).is_ok()
            }
        }
    };
}

conns!(aya_ebpf::maps::LruHashMap<u64, ConnTrack>);

/// The connections this build tracks: HOT_CONNS, then CONNS.
pub struct Tracked;

impl Conns for Tracked {
    #[inline(always)]
    fn entry(&self, cookie: u64) -> Option<*mut ConnTrack> {
        HOT_CONNS
            .get_ptr_mut(cookie)
            .or_else(|| CONNS.get_ptr_mut(cookie))
    }

    /// True for the one caller that removed the entry, from whichever map held it.
    #[inline(always)]
    fn delete(&self, cookie: u64) -> bool {
        HOT_CONNS.remove(cookie).is_ok() || CONNS.remove(cookie).is_ok()
    }
}

/// Marks the entry armed; `Some((has a deadline, named))` if there is one.
#[inline(always)]
fn arm(map: &impl Conns, cookie: u64) -> Option<(bool, bool)> {
    let conn = map.entry(cookie)?;
    // SAFETY: pointer into a hash map value; only this socket's own callbacks (under its lock)
    // write it.
    unsafe {
        (*conn).flags |= TRACK_ARMED;
        Some((
            (*conn).flags & TRACK_DEADLINE != 0,
            (*conn).slot != SLOT_OBSERVED,
        ))
    }
}

/// The connect is done: the application's own user timeout comes back, unless it set another
/// one meanwhile, and the deadline's mark goes.
#[inline(always)]
fn end_deadline(ctx: &SockOpsContext, c: &ConnTrack) {
    if user_timeout(ctx.as_ptr()) == Some(u32::from(c.deadline_ms)) {
        set_user_timeout(ctx.as_ptr(), c.app_user_timeout_ms);
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !DEADLINE_MARK) as i32);
}

/// The entry as it was before, if there is one.
#[inline(always)]
fn established(map: &impl Conns, cookie: u64) -> Option<ConnTrack> {
    let conn = map.entry(cookie)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above; copied first.
    let c: ConnTrack = unsafe { *conn };
    if c.state == CONN_CONNECTING {
        unsafe {
            (*conn).state = CONN_ESTABLISHED;
            (*conn).established_ns = succeed(&c, now, active_set()).unwrap_or(now);
        }
    }
    Some(c)
}

/// The socket reached CLOSE: whoever deletes the entry counts the outcome, so it is counted
/// exactly once.
#[inline(always)]
fn closed(map: &impl Conns, cookie: u64, err: u32) -> Option<ConnTrack> {
    let conn = map.entry(cookie)?;
    // SAFETY: copied before the entry goes away.
    let c: ConnTrack = unsafe { *conn };
    if !map.delete(cookie) {
        return Some(c);
    }
    let outcome = match c.state {
        CONN_CONNECTING => match err {
            ECONNREFUSED => OUTCOME_REFUSED,
            // The kernel gave up on SYN retries, or the application gave up waiting.
            0 | ETIMEDOUT => OUTCOME_TIMEOUT,
            _ => OUTCOME_UNREACHABLE,
        },
        _ if err == ECONNRESET || err == EPIPE => OUTCOME_RESET,
        _ => OUTCOME_CLOSED,
    };
    // A plain close is only counted: no record, no window, no slow call; the time is not
    // read for it (a clock read is not free, least of all in a VM).
    let now = if outcome == OUTCOME_CLOSED {
        c.start_ns
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    settle(&c, outcome, err, now, active_set());
    Some(c)
}

#[inline(always)]
fn release(map: &impl Conns, cookie: u64, state: u32) {
    let Some(conn) = map.entry(cookie) else {
        return;
    };
    // SAFETY: copied before the entry goes away.
    let c: ConnTrack = unsafe { *conn };
    if c.flags & TRACK_ARMED != 0 && state != TCP_CLOSE {
        // The state callback reports it when the close completes.
        return;
    }
    if map.delete(cookie) {
        let now = unsafe { bpf_ktime_get_ns() };
        // Never armed and closed: the connect failed before its SYN left (no route, no local
        // port, or refused by a program on an enclosing cgroup).
        let outcome = if state == TCP_CLOSE {
            OUTCOME_LOCAL
        } else {
            OUTCOME_ABANDONED
        };
        settle(&c, outcome, 0, now, active_set());
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
