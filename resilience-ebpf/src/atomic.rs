//! Atomics on shared counters. `AtomicU64` is unusable on bpfel in `core`; these intrinsics
//! compile to BPF atomic instructions (BPF_ADD, with BPF_FETCH when the old value is used,
//! which needs ISA v3: see build.rs).

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: callers pass pointers into map values, which live as long as the program runs.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v);
    }
}

/// A 32-bit add (BPF_ADD | BPF_W); `v` may be a two's complement for a subtraction.
#[inline(always)]
pub fn add32(p: *mut u32, v: u32) {
    // SAFETY: as above.
    unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, v);
    }
}

/// Adds `v` (two's complement for a subtraction) and returns the previous value.
#[inline(always)]
pub fn fetch_add(p: *mut u64, v: u64) -> u64 {
    // SAFETY: as above.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// Compare-and-swap (BPF_CMPXCHG): stores `new` if `*p == old`; returns whether it did, and
/// the value found.
#[inline(always)]
pub fn cas(p: *mut u64, old: u64, new: u64) -> (u64, bool) {
    // SAFETY: as above.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
}

/// Replace `*p` with `next(current)` by compare-and-swap, retrying with the value found at most
/// `tries` times. False when `next` says no (None) or every try lost a race: a caller that
/// takes something on true then only ever takes less under contention, never more.
#[inline(always)]
pub fn cas_update(p: *mut u64, tries: u32, next: impl Fn(u64) -> Option<u64>) -> bool {
    // SAFETY: as above.
    let mut cur = unsafe { core::ptr::read_volatile(p) };
    for _ in 0..tries {
        let Some(new) = next(cur) else {
            return false;
        };
        let (found, swapped) = cas(p, cur, new);
        if swapped {
            return true;
        }
        cur = found;
    }
    false
}

/// Two's complement of 1, for atomic decrements.
pub const MINUS_ONE: u64 = u64::MAX;
