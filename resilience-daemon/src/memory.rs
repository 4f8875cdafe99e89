//! The allocator: mimalloc, giving freed pages back to the kernel at once.
//!
//! Not glibc's malloc: with 10k destinations its heap kept 14 MiB free in holes smaller than a
//! page after the start-up build (the parsed policy, the plan, the kernel's BTF read twice),
//! each hole held in place by a live block beside it, so that `malloc_trim` could return none
//! of it (heap 19.6 MiB, 3.5 MiB in use; the daemon at 52 MiB RSS). mimalloc keeps blocks of
//! one size together and returns whole free pages: 41 MiB, and less CPU (bench/daemon.md).

pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc.h (v3, the version `mimalloc` builds by default):
/// checked by a test against the option's default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`, before threads start.
pub fn configure() {
    // SAFETY: mi_option_set only stores an option; the prctl only changes this process's
    // memory policy.
    unsafe {
        // Free pages go back at once instead of a second later: a delayed purge kept the
        // start-up's peak resident (96 MiB), and the daemon frees in bursts (a page of
        // rows, a snapshot) between which a second may not pass.
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        // No transparent huge pages: a 2 MiB page with one live block counts whole in RSS.
        // (The crate's `no_thp` only stops mimalloc asking for them; a host with THP
        // "always" would give them anyway.)
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// After a burst of frees (a build, a span of dashboard pages): this thread's cached free
/// blocks go back too.
pub fn give_back() {
    // SAFETY: no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_it_is_named_after() {
        // 1000 (ms) is purge_delay's default and no other option's: a renumbered enum fails
        // here.
        // SAFETY: reads an option.
        let v = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(v, 1000, "mimalloc option {PURGE_DELAY} is not purge_delay");
    }
}
