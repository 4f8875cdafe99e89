//! A destination's breaker as the daemon last saw it, kept in a pinned map so that a restarted
//! daemon comes back with the same verdicts. Written and read by the daemon only; the kernel
//! programs never touch it.

/// One slot's saved breaker. Valid while `name_id` and `generation` match the slot's policy.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedBreaker {
    /// The owner's name hash (as `DestPolicy::name_id`); 0: nothing saved.
    pub name_id: u64,
    /// Hash of the breaker settings it ran with: different settings start a new breaker.
    pub config_id: u64,
    /// CLOCK_MONOTONIC of the last transition.
    pub since_ns: u64,
    /// Open: when it goes half-open.
    pub open_until_ns: u64,
    /// Transitions into open, half-open and closed, since the destination got its slot.
    pub transitions: [u64; 3],
    pub generation: u32,
    /// `SAVED_*`.
    pub state: u32,
    /// Trips since the breaker last closed (the open-time backoff).
    pub trips: u32,
    /// Half-open: probes that succeeded so far.
    pub probes_ok: u32,
    /// The operator's override: `OVERRIDE_*`.
    pub override_mode: u32,
    /// Half-open: probes that failed, and that were slow, so far (the rate rule's counts).
    pub probes_failed: u16,
    pub probes_slow: u16,
}

pub const SAVED_CLOSED: u32 = 0;
pub const SAVED_OPEN: u32 = 1;
pub const SAVED_HALF_OPEN: u32 = 2;

pub const OVERRIDE_NONE: u32 = 0;
pub const OVERRIDE_DISABLED: u32 = 1;
