//! Every map of the object. Names and sizes come from `resilience_common::maps`; the daemon's
//! tests check the built object against them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use resilience_common::{
    maps::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, EVENTS_BYTES, MAX_CIDR, MAX_CONNS, MAX_EXACT,
        MAX_HOT_CONNS, MAX_OBSERVED, MAX_OBS_CONNS, MAX_ROUTES, MAX_SERVICE_CGROUPS, MAX_SLOTS,
        POLICY_ENTRIES,
    },
    Bucket, CgroupPath, CidrData, ConnTrack, Control, DestCounters, DestPolicy, Endpoint,
    PendingAges, QuietCount, RetryBudget, SavedBreaker, ServiceRoute, Stats, WindowCounts,
};

// Pinned (by name, under the daemon's pin directory): a restarted daemon finds the same
// policies, counters and connections. The arrays are memory-mapped by the daemon.
#[map]
pub static EXACT: HashMap<Endpoint, u32> = HashMap::pinned(MAX_EXACT, BPF_F_NO_PREALLOC);
// (aya-ebpf adds BPF_F_NO_PREALLOC to LPM tries itself: the kernel requires it.)
#[map]
pub static CIDR: LpmTrie<CidrData, u32> = LpmTrie::pinned(MAX_CIDR, 0);
#[map]
pub static POLICY: Array<DestPolicy> = Array::pinned(POLICY_ENTRIES, BPF_F_MMAPABLE);
#[map]
pub static COUNTERS: Array<DestCounters> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
// Each in its own array: the daemon writes PROBES and BUCKETS whole, and must never overwrite
// ACTIVE, which only the hooks change while a slot is owned.
#[map]
pub static ACTIVE: Array<u64> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static PROBES: Array<u64> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static BUCKETS: Array<Bucket> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static STREAKS: Array<u64> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static WINDOWS: Array<WindowCounts> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static QUIET: Array<QuietCount> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static RETRY: Array<RetryBudget> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static PENDING: Array<PendingAges> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
// The daemon's own: saved breaker states. Declared here so that it is created and pinned with
// the rest and checked by the same layout test.
#[map]
pub static SAVED: Array<SavedBreaker> = Array::pinned(MAX_SLOTS, BPF_F_MMAPABLE);
#[map]
pub static ROUTES: HashMap<ServiceRoute, u32> = HashMap::pinned(MAX_ROUTES, BPF_F_NO_PREALLOC);
#[map]
pub static SERVICES: HashMap<u64, u64> = HashMap::pinned(MAX_SERVICE_CGROUPS, 0);
#[map]
pub static WATCH: HashMap<CgroupPath, u64> =
    HashMap::pinned(MAX_SERVICE_CGROUPS, BPF_F_NO_PREALLOC);
#[map]
pub static PATH_SCRATCH: PerCpuArray<CgroupPath> = PerCpuArray::with_max_entries(1, 0);
// LRU, one list for all CPUs: a destination seen once ages out instead of filling the map.
#[map]
pub static OBSERVED: LruHashMap<Endpoint, DestCounters> = LruHashMap::pinned(MAX_OBSERVED, 0);
// Connections: plain hashes, never evicting (with both full a connect is untracked, counted,
// with its place given back). HOT_CONNS is tried first: small, so that its buckets stay in the
// CPU's caches and TLB (an insert into the large one costs a miss on a random bucket page);
// CONNS takes the rest, its size set at load. A connection's entry is in one of the two.
// Observed destinations' connections hold at most OBS_CAP in all, counted in OBS_LIVE.
#[map]
pub static HOT_CONNS: HashMap<u64, ConnTrack> = HashMap::pinned(MAX_HOT_CONNS, 0);
#[map]
pub static CONNS: HashMap<u64, ConnTrack> = HashMap::pinned(MAX_CONNS, 0);
// Observed destinations' connections as an earlier build tracked them (they are in CONNS
// now): read for the sockets such a build armed, emptied by the daemon at start.
#[map]
pub static OBS_CONNS: LruHashMap<u64, ConnTrack> = LruHashMap::pinned(MAX_OBS_CONNS, 0);
#[map]
pub static OBS_LIVE: Array<u64> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static CONTROL: Array<Control> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::pinned(1, 0);

// Not pinned: each daemon reads the records produced while it runs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Byte offset of `sk_err` in `struct sock`, set by the daemon from the kernel's BTF
/// (Rust eBPF has no CO-RE). 0 means unknown: failures are then classed by state alone.
#[unsafe(no_mangle)]
pub static SK_ERR_OFFSET: u32 = 0;

/// Byte offset of the cookie (`__sk_common.skc_cookie`) in `struct sock`, from BTF as above;
/// 0: unknown (the hooks then look for an entry wherever one might be).
#[unsafe(no_mangle)]
pub static SK_COOKIE_OFFSET: u32 = 0;

/// 1 where cgroup programs have bpf_set_retval and bpf_get_retval (Linux 5.18+), set by the
/// daemon. A read-only global: the verifier knows its value and never looks at the branch a
/// kernel without the helpers could not load.
#[unsafe(no_mangle)]
pub static HAVE_RETVAL: u32 = 1;

/// Offsets of `cgroup.kn` and `kernfs_node.id`, set by the daemon from the kernel's BTF; 0:
/// unknown (the `cgroup_mkdir` tracepoint then does nothing).
#[unsafe(no_mangle)]
pub static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static KERNFS_ID_OFFSET: u32 = 0;
/// Offsets of `cgroup.root` and `cgroup_root.hierarchy_id` (the v2 hierarchy is 0).
#[unsafe(no_mangle)]
pub static CGROUP_ROOT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static HIERARCHY_ID_OFFSET: u32 = 0;

/// How many tracking entries (HOT_CONNS and CONNS) connections to observed destinations may
/// hold, set by the daemon (half of `max_connections`).
#[unsafe(no_mangle)]
pub static OBS_CAP: u32 = MAX_CONNS / 2;

#[inline(always)]
pub fn obs_cap() -> u32 {
    // SAFETY: a read of a global the loader sets once.
    unsafe { core::ptr::read_volatile(&OBS_CAP) }
}

/// The kernel's HZ, set by the daemon (the initial SYN timeout is given in jiffies).
#[unsafe(no_mangle)]
pub static HZ: u32 = 250;

#[inline(always)]
pub fn hz() -> u64 {
    // SAFETY: a read of a global the loader sets once.
    u64::from(unsafe { core::ptr::read_volatile(&HZ) })
}

#[inline(always)]
pub fn have_retval() -> bool {
    // SAFETY: a read of a global the loader sets once.
    unsafe { core::ptr::read_volatile(&HAVE_RETVAL) != 0 }
}

#[inline(always)]
pub fn stats() -> Option<*mut Stats> {
    STATS.get_ptr_mut(0)
}

/// The active policy set's verdict for `slot`.
#[inline(always)]
pub fn policy(set: u32, slot: u32) -> Option<&'static DestPolicy> {
    if slot >= MAX_SLOTS {
        return None;
    }
    POLICY.get((set & 1) * MAX_SLOTS + slot)
}

/// Someone records every outcome (`Control::record_all`).
#[inline(always)]
pub fn record_all() -> bool {
    CONTROL.get(0).is_some_and(|c| c.record_all != 0)
}

/// The policy set the hooks read now.
#[inline(always)]
pub fn active_set() -> u32 {
    CONTROL.get(0).map_or(0, |c| c.active_set & 1)
}
