//! Map names, sizes and slot indices, the contract between the object and the daemon.

use core::mem::size_of;

use crate::{
    Bucket, CgroupPath, CidrData, ConnTrack, Control, DestCounters, DestPolicy, Endpoint,
    PendingAges, QuietCount, RetryBudget, SavedBreaker, ServiceRoute, Stats, WindowCounts,
};

/// (set, ip:port) or (set, ip with port 0) -> destination slot.
pub const EXACT: &str = "EXACT";
/// (set, CIDR, port first, see `CidrData`) -> destination slot.
pub const CIDR: &str = "CIDR";
/// set * MAX_SLOTS + slot -> verdict.
pub const POLICY: &str = "POLICY";
/// slot -> counters.
pub const COUNTERS: &str = "COUNTERS";
/// slot -> connections admitted and not yet closed (the bulkhead's count).
pub const ACTIVE: &str = "ACTIVE";
/// slot -> half-open probes left (never below zero: taken by compare-and-swap).
pub const PROBES: &str = "PROBES";
/// slot -> token bucket.
pub const BUCKETS: &str = "BUCKETS";
/// slot -> consecutive counted connect failures since the last success (the trip fuse).
pub const STREAKS: &str = "STREAKS";
/// slot -> the breaker window's counts since its last state change (the kernel's own judgement).
pub const WINDOWS: &str = "WINDOWS";
/// slot -> successes counted without a record (`QuietCount`).
pub const QUIET: &str = "QUIET";
/// slot -> connects whose SYN has no answer yet, by age (`PendingAges`).
pub const PENDING: &str = "PENDING";
/// slot -> retry budget: bounds (daemon) and window counts (kernel).
pub const RETRY: &str = "RETRY";
/// slot -> the daemon's saved breaker (never read by the programs).
pub const SAVED: &str = "SAVED";
/// (set, scoped destination, service) -> slot (see `service`).
pub const ROUTES: &str = "ROUTES";
/// cgroup id -> service, for the cgroups of services that exist now.
pub const SERVICES: &str = "SERVICES";
/// cgroup path -> service: the paths where a service's cgroup is (or will be) created.
pub const WATCH: &str = "WATCH";
/// [0] -> per-CPU room for one cgroup path (too big for the BPF stack).
pub const PATH_SCRATCH: &str = "PATH_SCRATCH";
/// Endpoint no policy names -> counters (LRU).
pub const OBSERVED: &str = "OBSERVED";
/// Socket cookie -> connection in flight or established. A plain hash: an entry is never
/// evicted, so a place it holds is never lost. Connections to observed destinations hold at
/// most half of it (`GLOBAL_OBS_CAP`, counted in `OBS_LIVE`).
pub const CONNS: &str = "CONNS";
/// The same, tried first: `MAX_HOT_CONNS` entries, so that its buckets stay in the CPU's caches.
/// A connection's entry is in HOT_CONNS or in CONNS.
pub const HOT_CONNS: &str = "HOT_CONNS";
/// Socket cookie -> connection to an observed destination, as builds before CONNS held them
/// (LRU). Still read for sockets such a build armed, and emptied at start.
pub const OBS_CONNS: &str = "OBS_CONNS";
/// [0] -> tracking entries (HOT_CONNS and CONNS) held by connections to observed destinations.
pub const OBS_LIVE: &str = "OBS_LIVE";
/// Outcome records.
pub const EVENTS: &str = "EVENTS";
/// [0] -> lease and active set.
pub const CONTROL: &str = "CONTROL";
/// [0] -> per-CPU global counters.
pub const STATS: &str = "STATS";

/// Slots, each destination keeping its own across reloads and restarts. Twice the number of
/// destinations a policy may name: a slot freed by a reload is reused only after a grace
/// period, so a reload that renames every destination still finds fresh slots.
pub const MAX_SLOTS: u32 = 32768;
pub const MAX_DESTINATIONS: u32 = MAX_SLOTS / 2;
/// POLICY holds one array of slots per policy set.
pub const POLICY_ENTRIES: u32 = 2 * MAX_SLOTS;
/// Exact ip:port keys of both sets (not preallocated: memory follows use).
pub const MAX_EXACT: u32 = 262144;
/// CIDR keys of both sets.
pub const MAX_CIDR: u32 = 65536;
/// Keys one policy set may hold: both sets live in the same map during a reload.
pub const MAX_EXACT_PER_SET: u32 = MAX_EXACT / 2;
pub const MAX_CIDR_PER_SET: u32 = MAX_CIDR / 2;
pub const MAX_OBSERVED: u32 = 16384;
/// (destination, service) routes of both sets: a service's cgroup is counted once per
/// destination that lists it.
pub const MAX_ROUTES: u32 = 65536;
/// Service cgroups that exist at once, and paths watched.
pub const MAX_SERVICE_CGROUPS: u32 = 4096;
/// Connections to named destinations tracked at once (the daemon may set another size at
/// load: `[daemon] max_connections`).
pub const MAX_CONNS: u32 = 65536;
/// Entries of HOT_CONNS: 64 KiB of buckets.
pub const MAX_HOT_CONNS: u32 = 4096;
pub const MAX_OBS_CONNS: u32 = 65536;
pub const EVENTS_BYTES: u32 = 1 << 20;

/// The array maps the daemon memory-maps (reads counters, writes verdicts without syscalls).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;

/// Read-only global in the object: byte offset of `sk_err` in `struct sock`, found in the
/// running kernel's BTF by the daemon at load time.
pub const GLOBAL_SK_ERR_OFFSET: &str = "SK_ERR_OFFSET";
/// Read-only global in the object: byte offset of the cookie in `struct sock`, found the same
/// way (0: unknown).
pub const GLOBAL_SK_COOKIE_OFFSET: &str = "SK_COOKIE_OFFSET";
/// Read-only global in the object: 1 where cgroup programs have bpf_set_retval and
/// bpf_get_retval (Linux 5.18+); with 0 a rejected connect gets EPERM.
pub const GLOBAL_HAVE_RETVAL: &str = "HAVE_RETVAL";

/// Read-only globals in the object: byte offsets of `kn` in `struct cgroup` and of `id` in
/// `struct kernfs_node` (0: unknown, the `cgroup_mkdir` tracepoint does nothing).
pub const GLOBAL_CGROUP_KN_OFFSET: &str = "CGROUP_KN_OFFSET";
pub const GLOBAL_KERNFS_ID_OFFSET: &str = "KERNFS_ID_OFFSET";
/// And of `root` in `struct cgroup` and `hierarchy_id` in `struct cgroup_root`: only cgroups of
/// the v2 hierarchy (id 0) count; a v1 hierarchy's cgroup ids are another numbering.
pub const GLOBAL_CGROUP_ROOT_OFFSET: &str = "CGROUP_ROOT_OFFSET";
pub const GLOBAL_HIERARCHY_ID_OFFSET: &str = "HIERARCHY_ID_OFFSET";

/// Read-only global in the object: how many tracking entries (HOT_CONNS and CONNS) connections
/// to observed destinations may hold (the daemon sets half of `max_connections`).
pub const GLOBAL_OBS_CAP: &str = "OBS_CAP";

/// Read-only global in the object: the kernel's HZ (jiffies per second), for the initial SYN
/// retransmission timeout of a connect with a deadline.
pub const GLOBAL_HZ: &str = "HZ";

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
    (WINDOWS, size_of::<u32>(), size_of::<WindowCounts>()),
    (QUIET, size_of::<u32>(), size_of::<QuietCount>()),
    (SAVED, size_of::<u32>(), size_of::<SavedBreaker>()),
    (PENDING, size_of::<u32>(), size_of::<PendingAges>()),
    (RETRY, size_of::<u32>(), size_of::<RetryBudget>()),
    (ROUTES, size_of::<ServiceRoute>(), size_of::<u32>()),
    (SERVICES, size_of::<u64>(), size_of::<u64>()),
    (WATCH, size_of::<CgroupPath>(), size_of::<u64>()),
    (PATH_SCRATCH, size_of::<u32>(), size_of::<CgroupPath>()),
    (OBSERVED, size_of::<Endpoint>(), size_of::<DestCounters>()),
    (CONNS, size_of::<u64>(), size_of::<ConnTrack>()),
    (HOT_CONNS, size_of::<u64>(), size_of::<ConnTrack>()),
    (OBS_CONNS, size_of::<u64>(), size_of::<ConnTrack>()),
    (OBS_LIVE, size_of::<u32>(), size_of::<u64>()),
    (CONTROL, size_of::<u32>(), size_of::<Control>()),
    (STATS, size_of::<u32>(), size_of::<Stats>()),
];

/// The memory-mapped arrays, with their entries.
pub const MMAPPED: &[(&str, u32)] = &[
    (POLICY, POLICY_ENTRIES),
    (COUNTERS, MAX_SLOTS),
    (ACTIVE, MAX_SLOTS),
    (PROBES, MAX_SLOTS),
    (BUCKETS, MAX_SLOTS),
    (STREAKS, MAX_SLOTS),
    (WINDOWS, MAX_SLOTS),
    (QUIET, MAX_SLOTS),
    (SAVED, MAX_SLOTS),
    (PENDING, MAX_SLOTS),
    (RETRY, MAX_SLOTS),
    (OBS_LIVE, 1),
    (CONTROL, 1),
];
