//! Services: a destination scoped to services has one slot per service, and the connect hook
//! picks the slot by the connecting process's cgroup.
//!
//! Why this shape: every per-slot mechanism (breaker, bucket, bulkhead, pending ages, retry
//! budget) then works per service unchanged. The EXACT or CIDR key of a scoped destination
//! holds `SLOT_SERVICES | dispatch` instead of a slot; the hook asks for the process's
//! ancestor cgroup at each level where a service lives (innermost first), finds the cgroup's
//! service in SERVICES and looks (set, dispatch, service) up in ROUTES. No route: the process
//! is in none of the destination's services, and the connect is observed.
//!
//! SERVICES (cgroup id -> service) is the only part that follows cgroups. A restarted unit's
//! new cgroup gets its entry in the `cgroup_mkdir` tracepoint, from WATCH (cgroup path ->
//! service), before any process can be moved into it; the daemon's own look every tick is the
//! fallback and removes entries of cgroups gone.

/// An EXACT or CIDR value with this bit is a scoped destination's dispatch number (the low
/// bits), not a slot.
pub const SLOT_SERVICES: u32 = 1 << 31;

/// cgroup levels a service may live at (0 is the cgroup2 root).
pub const SERVICE_LEVELS: u32 = 24;

/// In `Control::lookup_flags`, bit `LEVEL_SHIFT + l` says a service of that set lives at
/// cgroup level `l`: the hook reads only those ancestors.
pub const LEVEL_SHIFT: u32 = 8;

/// ROUTES key: (policy set, scoped destination, one of its services) -> slot.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRoute {
    /// The service (a hash of its name, never 0: SERVICES values).
    pub service: u64,
    pub dispatch: u32,
    pub set: u32,
}

/// Longest cgroup path WATCH holds, with its NUL.
pub const CGROUP_PATH_BYTES: usize = 256;

/// WATCH key: a cgroup's path below the cgroup2 root ("/system.slice/x.service"), as the
/// `cgroup_mkdir` tracepoint gives it, NUL-padded.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CgroupPath {
    pub bytes: [u8; CGROUP_PATH_BYTES],
}

impl CgroupPath {
    /// `None` when the path does not fit.
    pub fn new(path: &[u8]) -> Option<CgroupPath> {
        if path.len() >= CGROUP_PATH_BYTES {
            return None;
        }
        let mut bytes = [0; CGROUP_PATH_BYTES];
        bytes[..path.len()].copy_from_slice(path);
        Some(CgroupPath { bytes })
    }
}

/// The lookup-flag bits for services living at the levels in `levels` (bit l = level l).
pub const fn level_flags(levels: u32) -> u32 {
    (levels & ((1 << SERVICE_LEVELS) - 1)) << LEVEL_SHIFT
}
