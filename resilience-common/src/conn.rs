//! Connections in flight and the outcome records sent to the daemon.

use crate::endpoint::Endpoint;

/// `ConnTrack::slot` of a destination that no policy names (counted in the observed map).
pub const SLOT_OBSERVED: u32 = u32::MAX;

pub const CONN_CONNECTING: u16 = 0;
pub const CONN_ESTABLISHED: u16 = 1;

/// A TCP socket whose connect the hook allowed, keyed by socket cookie in HOT_CONNS or CONNS
/// (earlier builds kept observed destinations' in OBS_CONNS).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConnTrack {
    /// bpf_ktime_get_ns() when the hook saw the connect.
    pub start_ns: u64,
    /// When it reached ESTABLISHED (the time of its success record), or for a success counted
    /// without a record its `dest::quiet_stamp`; 0 before.
    pub established_ns: u64,
    pub endpoint: Endpoint,
    /// Destination slot, or `SLOT_OBSERVED`.
    pub slot: u32,
    /// `CONN_*`.
    pub state: u16,
    /// With `TRACK_DEADLINE`: the TCP_USER_TIMEOUT (ms) the hook gave the socket for its
    /// connect. (Was the high half of a u32 `state`: entries pinned by older builds read 0.)
    pub deadline_ms: u16,
    /// `TRACK_*`, and with `TRACK_PENDING` the age bucket in `PENDING_BUCKET_MASK`.
    pub flags: u32,
    /// `DestPolicy::generation` when admitted: the outcome is charged to the slot only while
    /// its generation is still this one.
    pub generation: u32,
    /// With `TRACK_DEADLINE`: the application's own TCP_USER_TIMEOUT (ms) when it connected,
    /// given back once the connection is established.
    pub app_user_timeout_ms: u32,
}

/// The connection holds a bulkhead place (given back when it closes or fails).
pub const TRACK_HELD: u32 = 1 << 0;
/// The connection is a half-open probe.
pub const TRACK_PROBE: u32 = 1 << 1;
/// (Records only) the connect took at least `slow_ns`: a slow success, or a slow failure.
pub const TRACK_SLOW: u32 = 1 << 2;
/// The SYN went out and the state callback is on for this socket: it will report the socket's
/// end. Without it (a Fast Open connect not yet written to), sock_release has the last word.
pub const TRACK_ARMED: u32 = 1 << 3;
/// The hook set the socket's TCP_USER_TIMEOUT to the destination's `connect_timeout`
/// (`ConnTrack::deadline_ms`); the application's own comes back at ESTABLISHED.
pub const TRACK_DEADLINE: u32 = 1 << 4;
/// The connect is counted in `PENDING[slot]`, in the age bucket `(flags >> PENDING_SHIFT) &
/// PENDING_BUCKET_MASK`, until its connect phase ends.
pub const TRACK_PENDING: u32 = 1 << 5;
/// The connect was admitted as a retry (counted in the retry budget's window).
pub const TRACK_RETRY: u32 = 1 << 6;
/// A connect to an observed destination that holds one of the tracking entries observed
/// connects may hold (`OBS_LIVE`), given back with the entry.
pub const TRACK_ROOM: u32 = 1 << 7;
pub const PENDING_SHIFT: u32 = 8;
/// (Records only) a success picked at random, one in `SAMPLE_ONE_IN`: its latency is one of
/// the destination's latency samples.
pub const TRACK_SAMPLE: u32 = 1 << 16;
/// One success in this many is a latency sample (a power of two).
pub const SAMPLE_ONE_IN: u32 = 8;
pub const PENDING_BUCKET_MASK: u32 = 0xff;

pub const OUTCOME_SUCCESS: u32 = 0;
pub const OUTCOME_REFUSED: u32 = 1;
pub const OUTCOME_TIMEOUT: u32 = 2;
pub const OUTCOME_UNREACHABLE: u32 = 3;
pub const OUTCOME_RESET: u32 = 4;
pub const OUTCOME_CLOSED: u32 = 5;
/// The socket was closed before its SYN was ever sent (a Fast Open connect never written to):
/// not a call to the destination.
pub const OUTCOME_ABANDONED: u32 = 6;
/// The connect failed before its SYN left the host: no route, no local port, or a program on
/// an enclosing cgroup (another daemon's) refused it after this one let it through. Says
/// nothing about the destination, so no breaker counts it unless `failures` lists "local".
pub const OUTCOME_LOCAL: u32 = 7;

/// One record per connect outcome and per reset of an established connection.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OutcomeEvent {
    pub ts_ns: u64,
    /// Connect latency for `OUTCOME_SUCCESS`, time since the connect otherwise.
    pub latency_ns: u64,
    pub endpoint: Endpoint,
    pub slot: u32,
    /// `OUTCOME_*`.
    pub outcome: u32,
    /// The socket's error (positive errno) when it closed, 0 if none.
    pub sk_err: u32,
    /// `TRACK_*`.
    pub flags: u32,
    /// The slot's generation when the connect was admitted.
    pub generation: u32,
    /// The breaker window's epoch when the outcome was counted (`DestPolicy::window_epoch`).
    pub epoch: u32,
    /// The slot's successes counted without a record in `epoch` (`QuietCount::successes`)
    /// when this record was written: those up to here came before it. 0 when the kernel's
    /// count was of another epoch. (Was padding: records of earlier builds read 0.)
    pub quiet: u32,
    /// A reset of an established connection: when it was established, i.e. the time of its
    /// success record (or the `dest::quiet_stamp` of a success counted without one), so that
    /// the daemon can turn that call into a failure (one connect is one call). 0 otherwise.
    pub established_ns: u64,
}
