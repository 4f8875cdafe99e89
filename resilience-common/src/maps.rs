//! Map names, sizes and slot indices, the contract between the object and the daemon.

use core::mem::size_of;

use crate::{Bucket, CidrData, ConnTrack, Control, DestCounters, DestPolicy, Endpoint, Stats};

/// ip:port (or ip with port 0) -> destination slot.
pub const EXACT: &str = "EXACT";
/// CIDR (port first, see `CidrData`) -> destination slot.
pub const CIDR: &str = "CIDR";
/// slot -> verdict.
pub const POLICY: &str = "POLICY";
/// slot -> counters.
pub const COUNTERS: &str = "COUNTERS";
/// slot -> connections admitted and not yet closed (the bulkhead's count).
pub const ACTIVE: &str = "ACTIVE";
/// slot -> half-open probes left (signed; below zero once spent).
pub const PROBES: &str = "PROBES";
/// slot -> token bucket.
pub const BUCKETS: &str = "BUCKETS";
/// slot -> consecutive counted connect failures since the last success (the trip fuse).
pub const STREAKS: &str = "STREAKS";
/// Endpoint no policy names -> counters (LRU).
pub const OBSERVED: &str = "OBSERVED";
/// Socket cookie -> connection in flight or established (LRU).
pub const CONNS: &str = "CONNS";
/// Outcome records.
pub const EVENTS: &str = "EVENTS";
/// [0] -> lease.
pub const CONTROL: &str = "CONTROL";
/// [0] -> per-CPU global counters.
pub const STATS: &str = "STATS";

pub const MAX_SLOTS: u32 = 16384;
/// Exact ip:port keys (not preallocated: memory follows use).
pub const MAX_EXACT: u32 = 262144;
pub const MAX_CIDR: u32 = 65536;
pub const MAX_OBSERVED: u32 = 16384;
pub const MAX_CONNS: u32 = 65536;
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Read-only global in the object: byte offset of `sk_err` in `struct sock`, found in the
/// running kernel's BTF by the daemon at load time.
pub const GLOBAL_SK_ERR_OFFSET: &str = "SK_ERR_OFFSET";

/// LPM trie keys are `{ u32 prefix_len, data }`, packed.
pub const CIDR_KEY_SIZE: usize = 4 + size_of::<CidrData>();

/// (map name, key size, value size) for every map with a typed key and value. The ring buffer
/// has neither and is not listed.
pub const LAYOUT: &[(&str, usize, usize)] = &[
    (EXACT, size_of::<Endpoint>(), size_of::<u32>()),
    (CIDR, CIDR_KEY_SIZE, size_of::<u32>()),
    (POLICY, size_of::<u32>(), size_of::<DestPolicy>()),
    (COUNTERS, size_of::<u32>(), size_of::<DestCounters>()),
    (ACTIVE, size_of::<u32>(), size_of::<u64>()),
    (PROBES, size_of::<u32>(), size_of::<u64>()),
    (BUCKETS, size_of::<u32>(), size_of::<Bucket>()),
    (STREAKS, size_of::<u32>(), size_of::<u64>()),
    (OBSERVED, size_of::<Endpoint>(), size_of::<DestCounters>()),
    (CONNS, size_of::<u64>(), size_of::<ConnTrack>()),
    (CONTROL, size_of::<u32>(), size_of::<Control>()),
    (STATS, size_of::<u32>(), size_of::<Stats>()),
];
