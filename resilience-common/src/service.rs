//! Services: a destination scoped to services has one slot per service, and the connect hook
//! picks the slot by the connecting process's cgroup.
//!
//! Why this shape: every per-slot mechanism (breaker, bucket, bulkhead, pending ages, retry
//! budget) then works per service unchanged. The EXACT or CIDR key of a scoped destination
//! holds `SLOT_SERVICES | dispatch` instead of a slot; the hook asks for the process's
//! ancestor cgroup at each level where a service lives (innermost first) and looks
//! (set, dispatch, cgroup id) up in ROUTES. No route: the process is in none of the
//! destination's services, and the connect is observed.

/// An EXACT or CIDR value with this bit is a scoped destination's dispatch number (the low
/// bits), not a slot.
pub const SLOT_SERVICES: u32 = 1 << 31;

/// cgroup levels a service may live at (0 is the cgroup2 root).
pub const SERVICE_LEVELS: u32 = 24;

/// In `Control::lookup_flags`, bit `LEVEL_SHIFT + l` says a service of that set lives at
/// cgroup level `l`: the hook reads only those ancestors.
pub const LEVEL_SHIFT: u32 = 8;

/// ROUTES key: (policy set, scoped destination, cgroup id of one of its services) -> slot.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRoute {
    /// The cgroup's id (its inode number in the cgroup2 tree).
    pub cgroup_id: u64,
    pub dispatch: u32,
    pub set: u32,
}

/// The lookup-flag bits for services living at the levels in `levels` (bit l = level l).
pub const fn level_flags(levels: u32) -> u32 {
    (levels & ((1 << SERVICE_LEVELS) - 1)) << LEVEL_SHIFT
}
