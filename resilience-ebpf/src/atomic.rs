//! Atomic add on shared counters. `AtomicU64::fetch_add` is missing from `core` for bpfel; the
//! intrinsic compiles to a BPF atomic add (BPF_ADD | BPF_FETCH-free `lock xadd`).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: callers pass pointers into map values, which live as long as the program runs.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v);
    }
}
