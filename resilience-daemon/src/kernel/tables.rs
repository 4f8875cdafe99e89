//! Typed handles on the object's maps, and the only code that reads or writes them (with
//! `keys.rs` for the policy keys and `reconcile.rs` for the connection tables).
//!
//! Who writes what, so that nothing is overwritten by a race:
//! - CONTROL: `heartbeat_ns` only by the lease thread; `active_set` and `lookup_flags` only by
//!   the daemon's loop. Separate words, each one atomic store.
//! - POLICY: the inactive set only by the loop while it builds a reload; the active set's
//!   `action` and `trip_after` only by the loop (verdicts), as single-word stores.
//! - COUNTERS, ACTIVE, STREAKS: the programs, with atomic adds; the daemon resets an entry
//!   only while its slot is retired (no program charges it), and otherwise only adds
//!   atomically (reconciliation).
//! - PROBES, BUCKETS: the daemon sets them before publishing the verdict that uses them.
//! - SAVED: the daemon only.

use std::sync::{atomic::Ordering, Arc};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use resilience_common::{
    maps::{self, MAX_SLOTS, POLICY_ENTRIES},
    retry::RETRY_BUCKETS,
    Bucket, Control, DestCounters, DestPolicy, Endpoint, PendingAges, QuietCount, RetryBudget,
    SavedBreaker, Stats, WindowCounts,
};

use super::{
    keys::KeySets,
    mmap,
    mmap::{Bits, MmapArray},
};
use resilience_common::service::{LEVEL_SHIFT, SERVICE_LEVELS};

/// The memory-mapped arrays, shared by the loop, the lease thread and the workers.
pub struct Arrays {
    pub policy: MmapArray<DestPolicy>,
    pub counters: MmapArray<DestCounters>,
    pub active: MmapArray<u64>,
    pub probes: MmapArray<u64>,
    pub buckets: MmapArray<Bucket>,
    pub streaks: MmapArray<u64>,
    pub windows: MmapArray<WindowCounts>,
    pub quiet: MmapArray<QuietCount>,
    /// Never mapped: read and written through the syscall (at a commit, a transition, a
    /// start), so that its pages are not the daemon's resident memory.
    pub saved: MmapArray<SavedBreaker>,
    /// Connects still waiting for an answer, by age. Never reset: the kernel adds and takes
    /// back each connect's one, whoever owns the slot meanwhile.
    pub pending: MmapArray<PendingAges>,
    /// Retry budgets: bounds written here, counts by the programs.
    pub retry: MmapArray<RetryBudget>,
    /// The slots whose RETRY entry may hold anything (a budget now or earlier in its owner's
    /// life); every other slot's entry is all zero and is never touched here, so that its
    /// 320 bytes never become the daemon's resident memory (3 MiB at 10k destinations).
    retry_live: Bits,
    /// [0]: tracking entries held by connections to observed destinations (the programs add
    /// and take back; reconciliation takes back the entries it removes).
    pub obs_live: MmapArray<u64>,
    pub control: MmapArray<Control>,
}

/// Slots are mapped in steps of this many (the largest array, COUNTERS, takes about 350 KiB a
/// step).
pub const GROW_STEP: u32 = 1024;

/// One past the highest slot either policy set has an owner or a generation for (0 when none):
/// read through a temporary mapping of the whole array, which the daemon keeps only in part.
fn slots_in_use(policy: &MmapArray<DestPolicy>) -> Result<u32> {
    let size = std::mem::size_of::<DestPolicy>();
    let bytes = size * POLICY_ENTRIES as usize;
    // SAFETY: a fresh read-only shared mapping of the map's whole value area, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            policy.raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let all = addr.cast::<DestPolicy>();
    let mut used = 0;
    for i in 0..POLICY_ENTRIES {
        // SAFETY: in range of the mapping, aligned; plain data read once.
        let p = unsafe { std::ptr::read_volatile(all.add(i as usize)) };
        if p.name_id != 0 || p.generation != 0 {
            used = used.max(i % MAX_SLOTS + 1);
        }
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(addr, bytes) };
    Ok(used)
}

pub struct Tables {
    pub arrays: Arc<Arrays>,
    /// EXACT and CIDR, lent to the worker that builds a policy set (None while it has them).
    pub keys: Option<KeySets>,
    /// SERVICES and WATCH.
    pub services: super::services::ServiceMaps,
    pub observed: HashMap<MapData, Endpoint, DestCounters>,
    pub stats: PerCpuArray<MapData, Stats>,
}

/// The `MapData` inside a map of any kind.
pub fn map_data(map: Map, name: &str) -> Result<MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m) => Ok(m),
        _ => anyhow::bail!("map {name} has an unexpected type"),
    }
}

impl Tables {
    /// Take every map out of the loaded object.
    pub fn take_from(src: &mut aya::Ebpf) -> Result<Tables> {
        fn take(src: &mut aya::Ebpf, name: &'static str) -> Result<Map> {
            src.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        }
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            src: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<T> {
            T::try_from(take(src, name)?).with_context(|| format!("map {name} has the wrong type"))
        }
        fn mapped<T: Copy>(
            src: &mut aya::Ebpf,
            name: &'static str,
            n: u32,
            per_set: u32,
            initial: u32,
        ) -> Result<MmapArray<T>> {
            MmapArray::new(map_data(take(src, name)?, name)?, name, n, per_set, initial)
        }
        let policy: MmapArray<DestPolicy> =
            mapped(src, maps::POLICY, POLICY_ENTRIES, MAX_SLOTS, 0)?;
        // Slots a previous daemon left in use (or retired) are mapped from the start; the rest
        // as plans hand them out (`Arrays::grow`).
        let used = slots_in_use(&policy).context("reading map POLICY")?;
        fn slots<T: Copy>(name: &'static str, src: &mut aya::Ebpf) -> Result<MmapArray<T>> {
            mapped(src, name, MAX_SLOTS, MAX_SLOTS, 0)
        }
        fn sparse<T: Copy>(name: &'static str, src: &mut aya::Ebpf) -> Result<MmapArray<T>> {
            MmapArray::sparse(map_data(take(src, name)?, name)?, name, MAX_SLOTS)
        }
        let arrays = Arrays {
            counters: slots(maps::COUNTERS, src)?,
            active: slots(maps::ACTIVE, src)?,
            probes: slots(maps::PROBES, src)?,
            buckets: slots(maps::BUCKETS, src)?,
            streaks: slots(maps::STREAKS, src)?,
            windows: slots(maps::WINDOWS, src)?,
            quiet: slots(maps::QUIET, src)?,
            saved: sparse(maps::SAVED, src)?,
            pending: slots(maps::PENDING, src)?,
            retry: sparse(maps::RETRY, src)?,
            retry_live: Bits::new(MAX_SLOTS as usize),
            policy,
            obs_live: mapped(src, maps::OBS_LIVE, 1, 1, 1)?,
            control: mapped(src, maps::CONTROL, 1, 1, 1)?,
        };
        arrays.grow(used)?;
        arrays.find_live_retry(used).context("reading map RETRY")?;
        let mut keys = KeySets::load(
            typed(src, maps::EXACT)?,
            typed(src, maps::CIDR)?,
            typed(src, maps::ROUTES)?,
        )?;
        // The levels each set's services live at, as a previous daemon left them.
        let control = arrays.control();
        for set in 0..2u32 {
            let flags = control.lookup_flags[set as usize];
            keys.set_levels(set, (flags >> LEVEL_SHIFT) & ((1 << SERVICE_LEVELS) - 1));
        }
        let services = super::services::ServiceMaps::new(
            typed(src, maps::SERVICES)?,
            typed(src, maps::WATCH)?,
        );
        Ok(Tables {
            services,
            arrays: Arc::new(arrays),
            keys: Some(keys),
            observed: typed(src, maps::OBSERVED)?,
            stats: typed(src, maps::STATS)?,
        })
    }

    /// The global counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let per_cpu = self.stats.get(&0, 0).context("reading map STATS")?;
        Ok(per_cpu.iter().fold(Stats::default(), |a, s| Stats {
            fail_open: a.fail_open + s.fail_open,
            ringbuf_lost: a.ringbuf_lost + s.ringbuf_lost,
            untracked: a.untracked + s.untracked,
            hook_errors: a.hook_errors + s.hook_errors,
            stale: a.stale + s.stale,
        }))
    }

    /// Every observed destination: one batch read, or entry by entry where the kernel cannot
    /// batch.
    pub fn observed(&self) -> Vec<(Endpoint, DestCounters)> {
        use aya::maps::IterableMap;
        use std::os::fd::AsFd;
        let fd = IterableMap::map(&self.observed).fd().as_fd();
        match super::batch::lookup_all::<Endpoint, DestCounters>(fd) {
            Ok(v) => v,
            Err(_) => self.observed.iter().filter_map(|r| r.ok()).collect(),
        }
    }
}

impl Arrays {
    pub fn control(&self) -> Control {
        self.control.get(0).unwrap_or_default()
    }

    /// The policy set the hooks read now.
    pub fn active_set(&self) -> u32 {
        self.control().active_set & 1
    }

    fn control_ptr(&self) -> Result<*mut Control> {
        self.control.ptr(0).context("map CONTROL has no entry")
    }

    /// The lease thread's one write.
    pub fn heartbeat(&self, now_ns: u64, lease_ns: u64) -> Result<()> {
        let c = self.control_ptr()?;
        // SAFETY: aligned fields of the mapped entry; each an independent word.
        unsafe {
            super::mmap::atomic_u64(&raw mut (*c).lease_ns).store(lease_ns, Ordering::Release);
            super::mmap::atomic_u64(&raw mut (*c).heartbeat_ns).store(now_ns, Ordering::Release);
        }
        Ok(())
    }

    /// Which kinds of keys policy set `set` holds (written before it becomes active).
    pub fn set_lookup_flags(&self, set: u32, flags: u32) -> Result<()> {
        let c = self.control_ptr()?;
        // SAFETY: as above.
        unsafe {
            super::mmap::atomic_u32(&raw mut (*c).lookup_flags[(set & 1) as usize])
                .store(flags, Ordering::Release)
        };
        Ok(())
    }

    /// Make `set` the one the hooks read: the whole policy changes at once.
    pub fn flip(&self, set: u32) -> Result<()> {
        let c = self.control_ptr()?;
        // SAFETY: as above.
        unsafe {
            super::mmap::atomic_u32(&raw mut (*c).active_set).store(set & 1, Ordering::Release)
        };
        Ok(())
    }

    pub fn policy(&self, set: u32, slot: u32) -> Option<DestPolicy> {
        (slot < MAX_SLOTS)
            .then(|| self.policy.get((set & 1) * MAX_SLOTS + slot))
            .flatten()
    }

    pub fn policy_ptr(&self, set: u32, slot: u32) -> Option<*mut DestPolicy> {
        (slot < MAX_SLOTS)
            .then(|| self.policy.ptr((set & 1) * MAX_SLOTS + slot))
            .flatten()
    }

    /// Write a whole policy entry of a set no connect reads (the one being built).
    pub fn set_policy(&self, set: u32, slot: u32, p: DestPolicy) -> Result<()> {
        (slot < MAX_SLOTS && self.policy.set((set & 1) * MAX_SLOTS + slot, p))
            .then_some(())
            .with_context(|| format!("POLICY[{set}][{slot}] out of range"))
    }

    pub fn counters(&self, slot: u32) -> DestCounters {
        self.counters.get(slot).unwrap_or_default()
    }

    /// Connections admitted and not yet closed.
    pub fn active(&self, slot: u32) -> u64 {
        self.active.get(slot).unwrap_or(0)
    }

    pub fn streak(&self, slot: u32) -> u64 {
        self.streaks.get(slot).unwrap_or(0)
    }

    pub fn reset_streak(&self, slot: u32) {
        if let Some(a) = self.streaks.atomic(slot) {
            a.store(0, Ordering::Release);
        }
    }

    /// The epoch the kernel's window counts of `slot` belong to.
    pub fn window_epoch(&self, slot: u32) -> u64 {
        self.windows.get(slot).map_or(0, |w| w.epoch)
    }

    /// Calls the kernel counted in `slot`'s window.
    pub fn window_calls(&self, slot: u32) -> u64 {
        self.windows
            .get(slot)
            .map_or(0, |w| WindowCounts::calls(w.failures))
    }

    /// Start `slot`'s window counts over, for `epoch`: counts first, epoch last, so that the
    /// kernel never adds to the new epoch's counts before they are zero.
    pub fn reset_window(&self, slot: u32, epoch: u32) {
        let Some(p) = self.windows.ptr(slot) else {
            return;
        };
        // SAFETY: aligned u64 fields of mapped entries.
        unsafe {
            if let Some(q) = self.quiet.ptr(slot) {
                mmap::atomic_u64(&raw mut (*q).epoch).store(0, Ordering::Release);
                mmap::atomic_u64(&raw mut (*q).successes).store(0, Ordering::Release);
                mmap::atomic_u64(&raw mut (*q).epoch).store(u64::from(epoch), Ordering::Release);
            }
            mmap::atomic_u64(&raw mut (*p).epoch).store(0, Ordering::Release);
            mmap::atomic_u64(&raw mut (*p).failures).store(0, Ordering::Release);
            mmap::atomic_u64(&raw mut (*p).slow).store(0, Ordering::Release);
            mmap::atomic_u64(&raw mut (*p).epoch).store(u64::from(epoch), Ordering::Release);
        }
    }

    /// Map every slot-indexed array up to at least slot `n - 1` (in steps of `GROW_STEP`
    /// slots). Slots mapped for the first time were never used by this daemon: their window
    /// counts go, as at start.
    pub fn grow(&self, n: u32) -> Result<()> {
        let n = n
            .div_ceil(GROW_STEP)
            .saturating_mul(GROW_STEP)
            .min(MAX_SLOTS);
        let before = self.windows.mapped();
        if n <= before && n <= self.policy.mapped() {
            return Ok(());
        }
        self.policy.grow(n).context("mapping map POLICY")?;
        self.counters.grow(n).context("mapping map COUNTERS")?;
        self.active.grow(n).context("mapping map ACTIVE")?;
        self.probes.grow(n).context("mapping map PROBES")?;
        self.buckets.grow(n).context("mapping map BUCKETS")?;
        self.streaks.grow(n).context("mapping map STREAKS")?;
        self.windows.grow(n).context("mapping map WINDOWS")?;
        self.quiet.grow(n).context("mapping map QUIET")?;
        self.pending.grow(n).context("mapping map PENDING")?;
        for slot in before..self.windows.mapped() {
            self.windows.set(slot, WindowCounts::default());
            self.quiet.set(slot, QuietCount::default());
        }
        Ok(())
    }

    /// No window counts survive a daemon: its breakers start new windows.
    pub fn clear_windows(&self) {
        for slot in 0..MAX_SLOTS {
            self.windows.set(slot, WindowCounts::default());
            self.quiet.set(slot, QuietCount::default());
        }
    }

    /// Whether every success gets a record (someone records them all).
    pub fn set_record_all(&self, on: bool) -> Result<()> {
        let c = self.control_ptr()?;
        // SAFETY: an aligned field of the mapped entry.
        unsafe {
            super::mmap::atomic_u32(&raw mut (*c).record_all)
                .store(u32::from(on), Ordering::Release)
        };
        Ok(())
    }

    pub fn bucket(&self, slot: u32) -> Bucket {
        self.buckets.get(slot).unwrap_or_default()
    }

    pub fn set_bucket(&self, slot: u32, b: Bucket) {
        self.buckets.set(slot, b);
    }

    /// The half-open budget; written before the verdict that uses it.
    pub fn set_probes(&self, slot: u32, n: u32) {
        if let Some(a) = self.probes.atomic(slot) {
            a.store(u64::from(n), Ordering::Release);
        }
    }

    /// One probe back into the budget the hook takes from.
    pub fn give_back_probe(&self, slot: u32) {
        if let Some(a) = self.probes.atomic(slot) {
            a.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn probes(&self, slot: u32) -> u64 {
        self.probes.get(slot).unwrap_or(0)
    }

    /// A fresh owner's slot starts from zero: counters, places, streak, probes, bucket. Only
    /// for a retired slot: no connect can be charged to it (see the generations).
    /// Connects to `slot` pending for at least `slow_ns` now.
    pub fn pending_slow(&self, slot: u32, slow_ns: u64, now_ns: u64) -> u32 {
        self.pending
            .get(slot)
            .map_or(0, |p| p.slow(slow_ns, now_ns))
    }

    /// Take back one pending count (a tracking entry removed by the daemon).
    pub fn unpend(&self, slot: u32, bucket: usize) {
        let Some(p) = self.pending.ptr(slot) else {
            return;
        };
        if bucket >= resilience_common::dest::PENDING_BUCKETS {
            return;
        }
        // SAFETY: an aligned u32 of a mapped entry, which the programs change atomically.
        let count = unsafe { super::mmap::atomic_u32(&raw mut (*p).counts[bucket]) };
        let _ = count.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |v| v.checked_sub(1),
        );
    }

    /// The slots below `used` whose RETRY entry a previous daemon (or the programs under its
    /// policy) left anything in: read through the syscall, not the mapping. (A slot no policy
    /// ever owned has no counts; bounds a crash left there without a policy are never read,
    /// and a budget's own bounds replace them.)
    fn find_live_retry(&self, used: u32) -> Result<()> {
        for slot in 0..used.min(MAX_SLOTS) {
            if self.retry.lookup(slot)? != RetryBudget::default() {
                self.map_retry(slot)?;
                self.retry_live.set(slot as usize);
            }
        }
        Ok(())
    }

    /// Map `slot`'s RETRY entry, for a budget (RETRY is mapped only where one is used).
    pub fn map_retry(&self, slot: u32) -> Result<()> {
        self.retry.map_entry(slot).context("mapping map RETRY")
    }

    /// Put `budget`'s bounds in force for `slot` (or none), leaving the counts alone. The
    /// bucket width goes last when a budget starts, first when it ends: the hooks never use a
    /// half-written one.
    pub fn set_retry_bounds(&self, slot: u32, budget: Option<&crate::config::RetryBudget>) {
        if budget.is_none() && !self.retry_live.get(slot as usize) {
            // All zero already: no bounds in force.
            return;
        }
        let Some(p) = self.retry.ptr(slot) else {
            return;
        };
        self.retry_live.set(slot as usize);
        // SAFETY: aligned u64 fields of a mapped entry; the programs read them.
        unsafe {
            let width = mmap::atomic_u64(&raw mut (*p).bucket_ns);
            let Some(b) = budget else {
                width.store(0, Ordering::Release);
                return;
            };
            let bucket_ns = (b.window.as_nanos() / RETRY_BUCKETS as u128) as u64;
            if width.load(Ordering::Acquire) != bucket_ns {
                // A new width reads the buckets differently: start the window over.
                width.store(0, Ordering::Release);
                for i in 0..RETRY_BUCKETS {
                    mmap::atomic_u64(&raw mut (*p).originals[i]).store(0, Ordering::Release);
                    mmap::atomic_u64(&raw mut (*p).retries[i]).store(0, Ordering::Release);
                }
            }
            mmap::atomic_u64(&raw mut (*p).after_failure_ns)
                .store(b.retry_after_failure.as_nanos() as u64, Ordering::Release);
            mmap::atomic_u64(&raw mut (*p).min_retries).store(b.min_retries(), Ordering::Release);
            mmap::atomic_u64(&raw mut (*p).ratio_milli).store(b.ratio_milli(), Ordering::Release);
            width.store(bucket_ns, Ordering::Release);
        }
    }

    /// The retry budget's window of `slot` at `now_ns`.
    pub fn retry_window(&self, slot: u32, now_ns: u64) -> crate::snapshot::RetryWindow {
        let b = self.retry_entry(slot);
        let (tag, _) = b.epoch(now_ns);
        let originals = RetryBudget::window_sum(&b.originals, tag);
        crate::snapshot::RetryWindow {
            originals,
            retries: RetryBudget::window_sum(&b.retries, tag),
            allowed: b.allowed(originals),
            retries_admitted: b.retries_admitted,
        }
    }

    /// Retries rejected for the budget, and those a dry run would have rejected.
    pub fn retry_rejections(&self, slot: u32) -> (u64, u64) {
        let b = self.retry_entry(slot);
        (b.rejected, b.would_reject)
    }

    fn retry_entry(&self, slot: u32) -> RetryBudget {
        if !self.retry_live.get(slot as usize) {
            return RetryBudget::default();
        }
        self.retry.get(slot).unwrap_or_default()
    }

    pub fn reset_slot(&self, slot: u32) {
        self.counters.set(slot, DestCounters::default());
        self.active.set(slot, 0);
        self.streaks.set(slot, 0);
        self.probes.set(slot, 0);
        self.buckets.set(slot, Bucket::default());
        self.save(slot, SavedBreaker::default());
        if self.retry_live.get(slot as usize) {
            self.retry.set(slot, RetryBudget::default());
            self.retry_live.clear(slot as usize);
        }
    }

    pub fn saved(&self, slot: u32) -> SavedBreaker {
        self.saved.lookup(slot).unwrap_or_default()
    }

    pub fn save(&self, slot: u32, s: SavedBreaker) {
        if let Err(e) = self.saved.update(slot, &s) {
            tracing::warn!(slot, error = %e, "cannot save a breaker's state in map SAVED");
        }
    }
}
