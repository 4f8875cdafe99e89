//! Connect deadlines: the socket's TCP_USER_TIMEOUT while it connects (the kernel fails the
//! connect with ETIMEDOUT once it has passed since the first SYN), an initial SYN timeout no
//! longer than the deadline (the expiry is only checked when that timer fires), and the
//! application's own user timeout given back once the connection is established.

use aya_ebpf::helpers::generated::{bpf_getsockopt, bpf_setsockopt};
use core::ffi::c_void;

const SOL_TCP: i32 = 6;
const TCP_USER_TIMEOUT: i32 = 18;
/// The kernel's initial SYN retransmission timeout (TCP_TIMEOUT_INIT), in ms.
const DEFAULT_SYN_RTO_MS: u64 = 1000;

/// The socket's TCP_USER_TIMEOUT in ms; `ctx` is a program context that may call the helper
/// (cgroup connect hooks, and sock_ops callbacks that hold the socket's lock).
#[inline(always)]
pub fn user_timeout(ctx: *mut c_void) -> Option<u32> {
    let mut v: i32 = 0;
    // SAFETY: the helper writes at most `optlen` bytes into `v`.
    let r = unsafe {
        bpf_getsockopt(
            ctx,
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut v).cast(),
            size_of::<i32>() as i32,
        )
    };
    (r == 0 && v >= 0).then_some(v as u32)
}

#[inline(always)]
pub fn set_user_timeout(ctx: *mut c_void, ms: u32) -> bool {
    let mut v = ms as i32;
    // SAFETY: the helper reads `optlen` bytes from `v`.
    let r = unsafe {
        bpf_setsockopt(
            ctx,
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut v).cast(),
            size_of::<i32>() as i32,
        )
    };
    r == 0
}

/// The initial SYN timeout in jiffies for a deadline of `ms`, if it must be shorter than the
/// kernel's: rounded up, at least one jiffy.
#[inline(always)]
pub fn syn_rto_jiffies(ms: u32, hz: u64) -> Option<u32> {
    let ms = u64::from(ms);
    if ms == 0 || ms >= DEFAULT_SYN_RTO_MS || hz == 0 {
        return None;
    }
    let j = (ms * hz).div_ceil(1000);
    Some(if j == 0 { 1 } else { j as u32 })
}
