//! BPF array maps created with BPF_F_MMAPABLE, mapped into the daemon's memory: counters are
//! read and verdicts written with plain (volatile or atomic) memory accesses, no syscall per
//! entry. The kernel programs update the same memory with atomic instructions, so the daemon
//! uses atomics wherever both sides write.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;

/// `bpf(2)` commands for one element (`lookup`, `update`).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// A mapped array of `sets` runs of `per_set` entries each (POLICY holds one run per policy set;
/// the other arrays one). The whole array's address range is reserved up front, but only the
/// first `mapped` entries of each run are mapped: the kernel maps an array's pages all at
/// once, and mapping 32,768 slots when a policy uses a few would put megabytes of pages in the
/// daemon's resident memory for nothing. `grow` maps more in place, so pointers handed out
/// stay valid.
pub struct MmapArray<T> {
    base: NonNull<T>,
    len: u32,
    per_set: u32,
    /// Bytes mapped at the start of each run (a whole number of pages).
    mapped_bytes: AtomicUsize,
    reserved: usize,
    page: usize,
    grow_lock: Mutex<()>,
    /// A sparse array's mapped pages, one bit each (`map_entry`); None where each run is
    /// mapped from its start (`grow`).
    pages: Option<Bits>,
    /// The mapping outlives a closed fd, but keeping the map handle makes ownership plain.
    map: MapData,
}

// SAFETY: the mapping is plain shared memory. Every access goes through volatile or atomic
// operations on aligned values; which thread writes which field is the callers' contract
// (documented where the arrays are shared).
unsafe impl<T: Send> Send for MmapArray<T> {}
unsafe impl<T: Sync> Sync for MmapArray<T> {}

impl<T: Copy> MmapArray<T> {
    /// Reserve all `len` entries of `map` (whose value type is `T`), laid out as runs of
    /// `per_set`, and map the first `initial` of each run.
    pub fn new(
        map: MapData,
        name: &str,
        len: u32,
        per_set: u32,
        initial: u32,
    ) -> Result<MmapArray<T>> {
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
        let per_set = per_set.clamp(1, len.max(1));
        if !len.is_multiple_of(per_set)
            || (len != per_set && !(per_set as usize * size).is_multiple_of(page))
        {
            bail!("map {name}: runs of {per_set} entries do not start on a page");
        }
        let reserved = (size * len as usize).div_ceil(page) * page;
        // SAFETY: a fresh private reservation, no access allowed: entries are mapped over it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "reserving room for map {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(addr.cast::<T>())
            .ok_or_else(|| anyhow::anyhow!("mmap of map {name} returned null"))?;
        let array = MmapArray {
            base,
            len,
            per_set,
            mapped_bytes: AtomicUsize::new(0),
            reserved,
            page,
            grow_lock: Mutex::new(()),
            pages: None,
            map,
        };
        array
            .grow(initial)
            .with_context(|| format!("memory-mapping map {name}"))?;
        Ok(array)
    }

    /// An array of which the daemon uses a few entries, anywhere: only the pages of the
    /// entries `map_entry` asks for are mapped (each mapped page is resident).
    pub fn sparse(map: MapData, name: &str, len: u32) -> Result<MmapArray<T>> {
        let mut array = MmapArray::new(map, name, len, len, 0)?;
        array.pages = Some(Bits::new(array.reserved / array.page));
        Ok(array)
    }

    /// The pages entry `i` lies on.
    fn pages_of(&self, i: u32) -> std::ops::Range<usize> {
        let size = std::mem::size_of::<T>();
        let start = i as usize * size;
        start / self.page..(start + size).div_ceil(self.page)
    }

    /// Map the pages entry `i` of a sparse array lies on (no-op for the others, or if they
    /// are mapped).
    pub fn map_entry(&self, i: u32) -> Result<()> {
        let Some(pages) = &self.pages else {
            return Ok(());
        };
        if i >= self.len {
            bail!("entry {i} of {}", self.len);
        }
        let _held = self.grow_lock.lock().unwrap_or_else(|e| e.into_inner());
        for p in self.pages_of(i) {
            if pages.get(p) {
                continue;
            }
            self.map_at(p * self.page, self.page)?;
            pages.set(p);
        }
        Ok(())
    }

    /// Map `len` bytes of the map at byte `off` of its values, over the same place of our
    /// reservation. Only for pages never mapped before (`ptr` refuses entries on them, so
    /// nobody holds a pointer into them), under `grow_lock`.
    fn map_at(&self, off: usize, len: usize) -> Result<()> {
        // SAFETY: inside our own reservation (callers stay within `reserved`), over pages
        // nobody has a pointer into; a shared mapping of the map's fd at the same offset,
        // which the kernel checks against the map's size.
        let addr = unsafe {
            libc::mmap(
                self.base.as_ptr().cast::<u8>().add(off).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.map.fd().as_fd().as_raw_fd(),
                off as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("{}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Entries of the map, mapped or not.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The map's descriptor (for a mapping of its own).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }

    /// Entries mapped at the start of each run.
    pub fn mapped(&self) -> u32 {
        let bytes = self.mapped_bytes.load(Ordering::Acquire);
        ((bytes / std::mem::size_of::<T>()) as u32).min(self.per_set)
    }

    /// Map at least the first `n` entries of each run (no-op if they are).
    pub fn grow(&self, n: u32) -> Result<()> {
        if self.pages.is_some() {
            return Ok(());
        }
        let size = std::mem::size_of::<T>();
        let run_bytes = (size * self.per_set as usize).div_ceil(self.page) * self.page;
        let want = (size * n.min(self.per_set) as usize).div_ceil(self.page) * self.page;
        let _held = self.grow_lock.lock().unwrap_or_else(|e| e.into_inner());
        let have = self.mapped_bytes.load(Ordering::Acquire);
        let want = want.min(run_bytes);
        if want <= have {
            return Ok(());
        }
        let runs = self.len / self.per_set;
        for run in 0..runs as usize {
            self.map_at(run * self.per_set as usize * size + have, want - have)?;
        }
        self.mapped_bytes.store(want, Ordering::Release);
        Ok(())
    }

    /// Pointer to entry `i`, if it is mapped.
    pub fn ptr(&self, i: u32) -> Option<*mut T> {
        if i >= self.len {
            return None;
        }
        let mapped = match &self.pages {
            None => i % self.per_set < self.mapped(),
            Some(pages) => self.pages_of(i).all(|p| pages.get(p)),
        };
        if !mapped {
            return None;
        }
        // SAFETY: in range of the mapping.
        Some(unsafe { self.base.as_ptr().add(i as usize) })
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

    /// `f(i, entry)` for every mapped entry of the first run, in order: one pass of volatile
    /// reads over the mapping, without `get`'s checks per entry.
    pub fn scan(&self, mut f: impl FnMut(u32, T)) {
        let n = self.mapped().min(self.len);
        for i in 0..n {
            // SAFETY: `i` is below the mapped entries of the first run; aligned plain data.
            f(i, unsafe {
                std::ptr::read_volatile(self.base.as_ptr().add(i as usize))
            });
        }
    }

    /// Entry `i` read through the bpf syscall, whether mapped or not: the page is not made
    /// resident in the daemon.
    pub fn lookup(&self, i: u32) -> Result<T> {
        let mut v = std::mem::MaybeUninit::<T>::uninit();
        self.elem(BPF_MAP_LOOKUP_ELEM, i, v.as_mut_ptr())?;
        // SAFETY: the kernel wrote the whole value.
        Ok(unsafe { v.assume_init() })
    }

    /// Entry `i` written whole through the bpf syscall, mapped or not (as `set`, only for
    /// entries no program writes).
    pub fn update(&self, i: u32, v: &T) -> Result<()> {
        self.elem(BPF_MAP_UPDATE_ELEM, i, std::ptr::from_ref(v).cast_mut())
    }

    fn elem(&self, cmd: libc::c_long, i: u32, value: *mut T) -> Result<()> {
        /// `bpf_attr` for the element commands.
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = ElemAttr {
            map_fd: self.raw_fd() as u32,
            _pad: 0,
            key: &raw const i as u64,
            value: value as u64,
            // BPF_ANY
            flags: 0,
        };
        // SAFETY: the attr points at a u32 key and at one value of the map's type (checked
        // against the map in `new`), both alive for the call; an update only reads it.
        unsafe { super::sys_bpf(cmd, &mut attr) }?;
        Ok(())
    }

    /// Entries `0..n`, copied.
    pub fn snapshot(&self, n: u32) -> Vec<T> {
        (0..n.min(self.len)).filter_map(|i| self.get(i)).collect()
    }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: our own reservation, mapped or not; nothing uses it past the drop.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.reserved) };
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

/// One bit per page or slot, shared by the daemon's threads.
pub struct Bits(Box<[AtomicU64]>);

impl Bits {
    pub fn new(n: usize) -> Bits {
        Bits((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn word(&self, i: usize) -> Option<(&AtomicU64, u64)> {
        Some((self.0.get(i / 64)?, 1 << (i % 64)))
    }

    pub fn get(&self, i: usize) -> bool {
        self.word(i)
            .is_some_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    pub fn set(&self, i: usize) {
        if let Some((w, bit)) = self.word(i) {
            w.fetch_or(bit, Ordering::AcqRel);
        }
    }

    pub fn clear(&self, i: usize) {
        if let Some((w, bit)) = self.word(i) {
            w.fetch_and(!bit, Ordering::AcqRel);
        }
    }
}
