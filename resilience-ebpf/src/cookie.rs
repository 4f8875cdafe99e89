//! Whether a socket has had its cookie made yet. Every connect the hook tracks makes its
//! socket's cookie (the key of its entry), so a socket without one has no entry anywhere:
//! the connect hook need not look for an earlier attempt's, nor sock_release for any.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock};
use core::ffi::c_void;

use crate::maps::SK_COOKIE_OFFSET;

/// True only if `sk` (a `struct sock`, as a BTF pointer or the raw address) has no cookie.
/// False where it has one or cannot be told: the caller then looks.
#[inline(always)]
fn unset_at(sk: *const u8) -> bool {
    // SAFETY: a read of a global the loader sets once.
    let off = unsafe { core::ptr::read_volatile(&SK_COOKIE_OFFSET) };
    if off == 0 || sk.is_null() {
        return false;
    }
    let p = sk.wrapping_add(off as usize) as *const u64;
    // SAFETY: the helper checks the address; a failed read counts as "has one".
    matches!(unsafe { bpf_probe_read_kernel(p) }, Ok(0))
}

/// For the connect hook: the connecting socket (`bpf_sock_addr.sk`).
#[inline(always)]
pub fn unset(sk: *mut c_void) -> bool {
    // SAFETY: the helper accepts any socket pointer the context gives and returns a BTF
    // pointer or null (the verifier allows no arithmetic on the context's socket itself).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
    unset_at(tp as *const u8)
}

/// For sock_release: its context is the `struct sock` itself.
#[inline(always)]
pub fn unset_released(sk: *const c_void) -> bool {
    unset_at(sk as *const u8)
}
