//! Every map of the object. Names and sizes come from `resilience_common::maps`; the daemon's
//! tests check the built object against them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use resilience_common::{
    maps::{EVENTS_BYTES, MAX_CIDR, MAX_CONNS, MAX_EXACT, MAX_OBSERVED, MAX_SLOTS},
    Bucket, CidrData, ConnTrack, Control, DestCounters, DestPolicy, Endpoint, Stats,
};

// Pinned (by name, under the daemon's pin directory): a restarted daemon finds the same
// policies, counters and connections.
#[map]
pub static EXACT: HashMap<Endpoint, u32> = HashMap::pinned(MAX_EXACT, BPF_F_NO_PREALLOC);
#[map]
pub static CIDR: LpmTrie<CidrData, u32> = LpmTrie::pinned(MAX_CIDR, 0);
#[map]
pub static POLICY: Array<DestPolicy> = Array::pinned(MAX_SLOTS, 0);
#[map]
pub static COUNTERS: Array<DestCounters> = Array::pinned(MAX_SLOTS, 0);
// Each in its own array: the daemon writes PROBES and BUCKETS whole, and must never overwrite
// ACTIVE, which only the hooks change.
#[map]
pub static ACTIVE: Array<u64> = Array::pinned(MAX_SLOTS, 0);
#[map]
pub static PROBES: Array<u64> = Array::pinned(MAX_SLOTS, 0);
#[map]
pub static BUCKETS: Array<Bucket> = Array::pinned(MAX_SLOTS, 0);
#[map]
pub static STREAKS: Array<u64> = Array::pinned(MAX_SLOTS, 0);
// LRU: a destination seen once, or a connection whose close was never seen (say, while no
// daemon ran), ages out instead of filling the map. Per-CPU LRU lists: no shared lock on the
// connect path. (Measured alternatives for CONNS: socket-local storage costs about twice as
// much per connect here, its allocation dominating.)
#[map]
pub static OBSERVED: LruHashMap<Endpoint, DestCounters> =
    LruHashMap::pinned(MAX_OBSERVED, BPF_F_NO_COMMON_LRU);
#[map]
pub static CONNS: LruHashMap<u64, ConnTrack> = LruHashMap::pinned(MAX_CONNS, BPF_F_NO_COMMON_LRU);
#[map]
pub static CONTROL: Array<Control> = Array::pinned(1, 0);
#[map]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::pinned(1, 0);

const BPF_F_NO_PREALLOC: u32 = 1 << 0;
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

// Not pinned: each daemon reads the records produced while it runs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Byte offset of `sk_err` in `struct sock`, set by the daemon from the kernel's BTF
/// (Rust eBPF has no CO-RE). 0 means unknown: failures are then classed by state alone.
#[unsafe(no_mangle)]
pub static SK_ERR_OFFSET: u32 = 0;

#[inline(always)]
pub fn stats() -> Option<*mut Stats> {
    STATS.get_ptr_mut(0)
}
