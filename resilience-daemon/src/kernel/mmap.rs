//! BPF array maps created with BPF_F_MMAPABLE, mapped into the daemon's memory: counters are
//! read and verdicts written with plain (volatile or atomic) memory accesses, no syscall per
//! entry. The kernel programs update the same memory with atomic instructions, so the daemon
//! uses atomics wherever both sides write.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64},
};

use anyhow::{bail, Result};
use aya::maps::MapData;

pub struct MmapArray<T> {
    base: NonNull<T>,
    len: u32,
    bytes: usize,
    /// The mapping outlives a closed fd, but keeping the map handle makes ownership plain.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory. Every access goes through volatile or atomic
// operations on aligned values; which thread writes which field is the callers' contract
// (documented where the arrays are shared).
unsafe impl<T: Send> Send for MmapArray<T> {}
unsafe impl<T: Sync> Sync for MmapArray<T> {}

impl<T: Copy> MmapArray<T> {
    /// Map all `len` entries of `map`, whose value type is `T`.
    pub fn new(map: MapData, name: &str, len: u32) -> Result<MmapArray<T>> {
        let size = std::mem::size_of::<T>();
        // The kernel lays an mmapable array's values out 8-byte aligned and rounded up to 8;
        // every type mapped here is a multiple of 8, so entry `i` is at `i * size`.
        if !size.is_multiple_of(8) || std::mem::align_of::<T>() > 8 {
            bail!("map {name}: value size {size} is not a multiple of 8");
        }
        let info = map.info()?;
        if info.value_size() as usize != size || info.max_entries() != len {
            bail!(
                "map {name}: {} entries of {} bytes, expected {len} of {size}",
                info.max_entries(),
                info.value_size()
            );
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (size * len as usize).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the size and that
        // the map was created with BPF_F_MMAPABLE.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "memory-mapping map {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(addr.cast::<T>())
            .ok_or_else(|| anyhow::anyhow!("mmap of map {name} returned null"))?;
        Ok(MmapArray {
            base,
            len,
            bytes,
            _map: map,
        })
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to entry `i`, if in range.
    pub fn ptr(&self, i: u32) -> Option<*mut T> {
        // SAFETY: in range of the mapping.
        (i < self.len).then(|| unsafe { self.base.as_ptr().add(i as usize) })
    }

    /// A copy of entry `i` (fields the kernel updates concurrently may be mid-update, each
    /// one consistent on its own).
    pub fn get(&self, i: u32) -> Option<T> {
        // SAFETY: in range and aligned; a volatile read of plain data.
        self.ptr(i).map(|p| unsafe { std::ptr::read_volatile(p) })
    }

    /// Write entry `i` whole. Only for entries no kernel program reads or writes at the time
    /// (an inactive policy set, a retired slot) or that only the daemon uses.
    pub fn set(&self, i: u32, v: T) -> bool {
        match self.ptr(i) {
            Some(p) => {
                // SAFETY: in range and aligned.
                unsafe { std::ptr::write_volatile(p, v) };
                true
            }
            None => false,
        }
    }

    /// Entries `0..n`, copied.
    pub fn snapshot(&self, n: u32) -> Vec<T> {
        (0..n.min(self.len)).filter_map(|i| self.get(i)).collect()
    }
}

impl MmapArray<u64> {
    /// Entry `i` as an atomic, for values the kernel programs change with atomic instructions.
    pub fn atomic(&self, i: u32) -> Option<&AtomicU64> {
        // SAFETY: in range, 8-byte aligned, and shared memory is where atomics belong.
        self.ptr(i).map(|p| unsafe { AtomicU64::from_ptr(p) })
    }
}

/// An aligned u64 field of a mapped entry, as an atomic.
///
/// # Safety
/// `p` must point into a live mapping and be 8-byte aligned.
pub unsafe fn atomic_u64<'a>(p: *mut u64) -> &'a AtomicU64 {
    // SAFETY: the caller's contract.
    unsafe { AtomicU64::from_ptr(p) }
}

/// An aligned u32 field of a mapped entry, as an atomic.
///
/// # Safety
/// `p` must point into a live mapping and be 4-byte aligned.
pub unsafe fn atomic_u32<'a>(p: *mut u32) -> &'a AtomicU32 {
    // SAFETY: the caller's contract.
    unsafe { AtomicU32::from_ptr(p) }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
