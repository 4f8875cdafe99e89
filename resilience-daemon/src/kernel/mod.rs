//! Everything that touches the kernel: feature probes, mounts, BTF, loading and attaching the
//! programs, and typed access to their maps.

mod atomics;
pub mod attach;
pub mod batch;
pub mod btf;
pub mod features;
pub mod fs;
pub mod hz;
pub mod keys;
pub mod layout;
pub mod loader;
pub mod mmap;
pub mod reconcile;
pub mod services;
pub mod sockdiag;
pub mod tables;

pub use loader::{Kernel, LoadOptions};
pub use tables::{Arrays, Tables};

/// The eBPF object, built by build.rs from the resilience-ebpf crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/resilience"));

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64);
    // CLOCK_MONOTONIC cannot fail on Linux; 0 makes the lease look expired, which fails open.
    ts.unwrap_or(0)
}

/// `bpf(2)` with `attr` as its attribute union: the call's result, or the error it set.
///
/// # Safety
/// `attr` must be the attribute struct `cmd` expects, and every pointer in it must be valid
/// for what the kernel reads or writes there during the call.
pub unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    // SAFETY: the caller's contract; the size is the attribute struct's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(test)]
mod layout_test;
