//! The daemon's lease and the kernel's global counters.

/// Written by the daemon, read by the connect hook.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// CLOCK_MONOTONIC (= bpf_ktime_get_ns) of the daemon's last heartbeat.
    pub heartbeat_ns: u64,
    /// How long a heartbeat stays valid; past it the hook fails open.
    pub lease_ns: u64,
    /// `LOOKUP_*`: which kinds of policy keys exist, so the hook skips lookups that cannot
    /// match.
    pub lookup_flags: u32,
    pub _pad: u32,
}

/// The EXACT map holds entries.
pub const LOOKUP_EXACT: u32 = 1 << 0;
/// The CIDR trie holds entries with a port.
pub const LOOKUP_CIDR_PORT: u32 = 1 << 1;
/// The CIDR trie holds entries for any port.
pub const LOOKUP_CIDR_ANY: u32 = 1 << 2;

/// Global counters, one copy per CPU, summed by the daemon.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connects that a destination's verdict would have rejected, let through because the
    /// lease had expired.
    pub fail_open: u64,
    /// Outcome records dropped because the ring buffer was full.
    pub ringbuf_lost: u64,
    /// Allowed connects that could not be tracked (connection map update failed).
    pub untracked: u64,
    /// Connect-hook lookups that failed unexpectedly (the connect was allowed).
    pub hook_errors: u64,
}
