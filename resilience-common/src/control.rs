//! The daemon's lease, the active policy set, and the kernel's global counters.

/// Written by the daemon (memory-mapped), read by the hooks.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// CLOCK_MONOTONIC (= bpf_ktime_get_ns) of the daemon's last heartbeat. Written alone, by
    /// the lease thread, as one aligned 8-byte store.
    pub heartbeat_ns: u64,
    /// How long a heartbeat stays valid; past it the hook fails open.
    pub lease_ns: u64,
    /// Which policy set (0 or 1) the hooks read: EXACT and CIDR keys carry their set, and
    /// POLICY holds one array of slots per set. The daemon builds the other set where no
    /// connect can see it, then flips this word: a reload takes effect all at once.
    pub active_set: u32,
    /// Non-zero while someone records (`resilience record`): every success gets a record.
    /// (Was padding: earlier builds wrote 0.)
    pub record_all: u32,
    /// `LOOKUP_*` per set: which kinds of policy keys exist, so the hook skips lookups that
    /// cannot match.
    pub lookup_flags: [u32; 2],
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
    /// Allowed connects to named destinations that could not be tracked (the tracking map was
    /// full): their place was given back at once, their outcome is not counted.
    pub untracked: u64,
    /// Connect-hook lookups that failed unexpectedly (the connect was allowed).
    pub hook_errors: u64,
    /// Outcomes of connections whose destination was removed (or whose slot has a new owner)
    /// since they were admitted: dropped, charged to nobody.
    pub stale: u64,
}
