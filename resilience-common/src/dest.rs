//! Per-destination verdicts (written by the daemon) and counters (written by the kernel).

/// Let the connect through.
pub const ACTION_ALLOW: u32 = 0;
/// Reject the connect with `DestPolicy::errno` (forced-open, or an open breaker).
pub const ACTION_REJECT: u32 = 1;
/// Half-open: admit while the slot's probe budget (`PROBES[slot]`) lasts, reject the rest.
pub const ACTION_PROBE: u32 = 2;

/// Count what would have been rejected, reject nothing (dry-run, and disabled).
pub const FLAG_DRY_RUN: u32 = 1 << 0;
/// Apply the token bucket (`ns_per_token`, `burst`).
pub const FLAG_RATE_LIMIT: u32 = 1 << 1;
/// Apply the bulkhead (`max_concurrent`).
pub const FLAG_BULKHEAD: u32 = 1 << 2;
/// Connect failures that count toward the trip fuse's streak.
pub const FLAG_COUNT_REFUSED: u32 = 1 << 3;
pub const FLAG_COUNT_TIMEOUT: u32 = 1 << 4;
pub const FLAG_COUNT_UNREACHABLE: u32 = 1 << 5;
pub const FLAG_COUNT_LOCAL: u32 = 1 << 6;
/// Apply the retry budget (`RETRY[slot]`).
pub const FLAG_RETRY_BUDGET: u32 = 1 << 7;
/// Every success gets a record: a time window's seconds need each call's time (a count
/// window takes successes counted in `QUIET` in their place).
pub const FLAG_RECORD_SUCCESSES: u32 = 1 << 8;

/// Index of a rejection reason in `DestCounters::rejected`.
pub const REJECT_BREAKER: usize = 0;
pub const REJECT_RATE_LIMIT: usize = 1;
pub const REJECT_BULKHEAD: usize = 2;
pub const REJECT_REASONS: usize = 3;
/// A fourth reason, counted in `RetryBudget::rejected` / `would_reject` (the counters' layout
/// is pinned across upgrades).
pub const REJECT_RETRY_BUDGET: usize = 3;

/// Connect latency histogram: bucket `i` counts connects that took less than `2^i` µs and at
/// least `2^(i-1)` µs; the last bucket takes everything slower (about 4 s and up).
pub const LATENCY_BUCKETS: usize = 24;

/// What the connect hook does for one destination slot.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DestPolicy {
    /// `ACTION_*`.
    pub action: u32,
    /// Positive errno the application sees on a rejected connect.
    pub errno: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Bulkhead size: connections admitted and not yet closed.
    pub max_concurrent: u32,
    /// Hash of the destination's name; 0 marks a free slot. Not read by the hook: it lets a
    /// restarted daemon give each destination back its slot, and with it its counters.
    pub name_id: u64,
    /// Token bucket refill: one token per this many nanoseconds (rounded up, so the rate is
    /// never exceeded).
    pub ns_per_token: u64,
    /// Token bucket as GCRA: `(burst - 1) * ns_per_token`, how far ahead of now the next
    /// conforming time may be (computed by the daemon, saturating).
    pub tolerance_ns: u64,
    /// A success that took at least this long is slow (0: no slow-call detection).
    pub slow_ns: u64,
    /// Changes when the slot is retired or changes owner: a connection admitted under another
    /// generation is charged nothing (no counters, no place given back, no streak, no record).
    pub generation: u32,
    /// Trip fuse: with the action ALLOW, reject (as an open breaker) once `STREAKS[slot]`
    /// consecutive counted failures reach this; 0 = no fuse. Set by the daemon's breaker so that
    /// the kernel trips on the very failure that crosses the threshold. A window the kernel
    /// judges trips by setting the streak to `TRIPPED`.
    pub trip_after: u32,
    /// The breaker's window, as the kernel judges it itself while it can (see `WindowCounts`):
    /// the window's epoch (records carry it: the daemon's window takes the outcomes of its own
    /// epoch only), and the calls it needs before its rates count; 0: the kernel does not judge.
    pub window_epoch: u32,
    pub window_min: u32,
    /// The kernel judges only while the window has dropped nothing: up to this many calls (a
    /// count window's size) and before `window_until_ns` (a time window's first expiry).
    pub window_max_calls: u32,
    /// Thresholds in thousandths of a percent, rounded up (never stricter than the daemon's):
    /// trip when `failures * 100000 >= failure_milli * calls` (or the same for slow calls).
    pub failure_milli: u32,
    pub slow_milli: u32,
    /// Connect deadline (`connect_timeout`) in ms: the socket's TCP_USER_TIMEOUT while it
    /// connects, and its first SYN retransmission no later than that; 0 = none.
    pub connect_timeout_ms: u32,
    pub window_until_ns: u64,
}

/// `STREAKS[slot]` when the kernel tripped the breaker by judging its window: above any fuse,
/// and far from overflowing however many failures are added to it afterwards.
pub const TRIPPED: u64 = 1 << 62;

/// One slot's window as the kernel counts it, since the breaker's last state change. Each word
/// packs the calls (low 32 bits) with the failures or the slow calls (high 32 bits), so that one
/// atomic add returns a consistent pair.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Which window these counts belong to (`DestPolicy::window_epoch`); the daemon resets the
    /// counts when it publishes a new one.
    pub epoch: u64,
    pub failures: u64,
    pub slow: u64,
}

impl WindowCounts {
    pub const CALL: u64 = 1;
    pub const MARK: u64 = 1 << 32;

    pub fn calls(word: u64) -> u64 {
        word & 0xffff_ffff
    }

    pub fn marked(word: u64) -> u64 {
        word >> 32
    }
}

/// Successes of one slot the kernel counted without a record (plain ones: no probe, not slow,
/// no trip), in the window epoch the daemon last set up. Records carry the count as it was
/// when they were written, so that the daemon puts these successes back in order.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct QuietCount {
    /// `DestPolicy::window_epoch` these successes belong to; the daemon resets the count
    /// (with `WindowCounts`) when it publishes a new one. A success in another epoch gets a
    /// record.
    pub epoch: u64,
    pub successes: u64,
}

/// `ConnTrack::established_ns` of a connection whose success was counted in `QUIET` (bit 63,
/// never set in a real time): the epoch (its low 29 bits, in bits 32-60) and the success's
/// number in it, so that a reset of that connection finds its call in the daemon's window.
/// Bits 61 and 62 stay clear, as in a kernel time (below 2^61 ns, 73 years of uptime).
pub const QUIET_STAMP: u64 = 1 << 63;

#[inline(always)]
pub fn quiet_stamp(epoch: u32, n: u32) -> u64 {
    QUIET_STAMP | (u64::from(epoch & 0x1fff_ffff) << 32) | u64::from(n)
}

/// Token bucket state: GCRA, the token bucket kept as one timestamp.
///
/// Why this design: `tat_ns` is the theoretical arrival time of the next conforming connect.
/// A connect at `now` conforms if `tat_ns - now <= (burst - 1) * T` (T = `ns_per_token`); it
/// then moves `tat_ns` to `max(tat_ns, now) + T` with one compare-and-swap. One word holds the
/// whole state, so the update is atomic across CPUs without a lock, there is no refill timer
/// and no rounding of partial tokens: at most `burst + floor(t / T)` connects conform in any
/// interval `t`, which is the bucket's `burst + rate * t`. A CPU that loses the swap retries
/// with the value it found (a few times, then refuses: never more, sometimes less).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tat_ns: u64,
    pub _pad: u64,
}

/// Counters for one destination. The kernel adds to them atomically; the daemon only reads.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DestCounters {
    /// Connects seen by the hook (allowed or rejected).
    pub attempts: u64,
    /// Connects rejected, by `REJECT_*` reason.
    pub rejected: [u64; REJECT_REASONS],
    /// Connects a dry-run destination would have rejected, by `REJECT_*` reason.
    pub would_reject: [u64; REJECT_REASONS],
    /// Connects let through because the daemon's lease had expired (fail-open).
    pub fail_open: u64,
    /// SYN_SENT -> ESTABLISHED.
    pub successes: u64,
    /// Connects at least `slow_ns` slow: successes, and failures the breaker counts.
    pub slow: u64,
    /// SYN_SENT -> CLOSE on a reset (ECONNREFUSED).
    pub refused: u64,
    /// SYN_SENT -> CLOSE on ETIMEDOUT, or given up by the application.
    pub timeout: u64,
    /// SYN_SENT -> CLOSE on an ICMP error (EHOSTUNREACH, ENETUNREACH, ...).
    pub unreachable: u64,
    /// Failed before the SYN left the host (`OUTCOME_LOCAL`).
    pub local: u64,
    /// An established connection ended by a reset.
    pub reset: u64,
    /// Established connections that have closed (for any reason, resets included).
    pub closed: u64,
    /// Admitted connects whose outcome was never seen: the tracking map was full, or the
    /// socket closed while no daemon had the programs attached (found at start).
    pub untracked: u64,
    /// Admitted connects closed before their SYN was sent (Fast Open, never written to).
    pub abandoned: u64,
    /// Sum of connect latencies of successes, in nanoseconds.
    pub latency_sum_ns: u64,
    pub latency_log2_us: [u64; LATENCY_BUCKETS],
}

impl Default for DestCounters {
    fn default() -> Self {
        Self::ZERO
    }
}

impl DestCounters {
    pub const ZERO: DestCounters = DestCounters {
        attempts: 0,
        rejected: [0; REJECT_REASONS],
        would_reject: [0; REJECT_REASONS],
        fail_open: 0,
        successes: 0,
        slow: 0,
        refused: 0,
        timeout: 0,
        unreachable: 0,
        local: 0,
        reset: 0,
        closed: 0,
        untracked: 0,
        abandoned: 0,
        latency_sum_ns: 0,
        latency_log2_us: [0; LATENCY_BUCKETS],
    };

    /// Connections established and not yet closed.
    pub fn active(&self) -> u64 {
        self.successes.saturating_sub(self.closed)
    }
}

/// The histogram bucket for a latency in nanoseconds.
#[inline(always)]
pub fn latency_bucket(latency_ns: u64) -> usize {
    let us = latency_ns / 1000;
    // Number of significant bits of `us`: 0 for 0, 1 for 1, 2 for 2..=3, ...
    let bits = (64 - us.leading_zeros()) as usize;
    if bits >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        bits
    }
}

/// Age buckets of `PendingAges`.
pub const PENDING_BUCKETS: usize = 16;

/// Connects of one slot whose SYN has had no answer yet, by when they started: bucket
/// `(start_ns / width) % PENDING_BUCKETS` with `width = slow_ns / 4`, so that the buckets span
/// four slow-call thresholds. The kernel adds one when it admits a connect and takes it back
/// when the connect ends either way; the daemon reads which connects have been pending longer
/// than the threshold and counts them as slow calls now, before they end (early slow-call
/// detection). A connect pending longer than the whole span shares its bucket with younger
/// ones and is read as young: the count can only be low, never high.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingAges {
    pub counts: [u32; PENDING_BUCKETS],
}

impl PendingAges {
    /// Width of a bucket for a slow-call threshold; 0 when there is no threshold.
    #[inline(always)]
    pub fn width(slow_ns: u64) -> u64 {
        slow_ns / 4
    }

    #[inline(always)]
    pub fn bucket(start_ns: u64, width: u64) -> usize {
        if width == 0 {
            return 0;
        }
        ((start_ns / width) % PENDING_BUCKETS as u64) as usize
    }

    /// Connects that have been pending for at least `slow_ns` at `now_ns`: the buckets whose
    /// youngest start is that old. Buckets still filling, or young, are left out.
    pub fn slow(&self, slow_ns: u64, now_ns: u64) -> u32 {
        let width = Self::width(slow_ns);
        if width == 0 {
            return 0;
        }
        let current = now_ns / width;
        let mut n = 0u32;
        // Bucket `current - k` holds starts in [(current - k) * width, (current - k + 1) *
        // width); all of them are at least `slow_ns` old once (current - k + 1) * width +
        // slow_ns <= now_ns.
        for k in 1..PENDING_BUCKETS as u64 {
            let Some(b) = current.checked_sub(k) else {
                break;
            };
            let count = self.counts[(b % PENDING_BUCKETS as u64) as usize];
            // A count that went below zero (cannot happen while every add has its take-back)
            // reads as nothing rather than as four billion.
            if (b + 1) * width + slow_ns <= now_ns && count < 1 << 31 {
                n = n.saturating_add(count);
            }
        }
        n
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    #[test]
    fn counts_only_buckets_past_the_threshold() {
        let slow = 400;
        let w = PendingAges::width(slow);
        assert_eq!(w, 100);
        let mut p = PendingAges::default();
        // Started at 1000 (bucket of 1000..1100) and at 1350.
        p.counts[PendingAges::bucket(1000, w)] += 2;
        p.counts[PendingAges::bucket(1350, w)] += 1;
        // At 1450 nothing is 400 old.
        assert_eq!(p.slow(slow, 1450), 0);
        // 1099 + 400 < 1500: the first two are.
        assert_eq!(p.slow(slow, 1500), 2);
        assert_eq!(p.slow(slow, 1799), 2);
        assert_eq!(p.slow(slow, 1800), 3);
        // No threshold, nothing slow.
        assert_eq!(p.slow(0, 5000), 0);
    }
}
