//! Sliding windows of call results: the last N calls, or the calls of the last D seconds in
//! one-second buckets (Resilience4j's partial aggregation).

use std::collections::VecDeque;

use crate::config::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub failure: bool,
    pub slow: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

/// A window's contents at one moment (see `CallWindow::contents`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowContents {
    pub kind: &'static str,
    /// Calls (count window) or seconds (time window).
    pub size: u64,
    pub totals: Totals,
    pub calls: String,
    pub seconds: Vec<Totals>,
}

/// Both kinds keep their running totals, so that reading them costs nothing whatever the
/// window's size.
#[derive(Debug, Clone)]
pub enum CallWindow {
    Count {
        size: usize,
        calls: VecDeque<Slot>,
        totals: Totals,
    },
    /// (second, totals of that second), oldest first.
    Time {
        secs: u64,
        buckets: VecDeque<(u64, Totals)>,
        totals: Totals,
    },
}

/// One call of a count window: its stamp (its kernel time, or a quiet success's
/// `quiet_stamp`) with its result in two bits no stamp uses. One word a call: the window is
/// most of what a destination costs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u64);

const FAILED: u64 = 1 << 62;
const SLOW: u64 = 1 << 61;

impl Slot {
    fn new(stamp: u64, c: Call) -> Slot {
        let stamp = stamp & !(FAILED | SLOW);
        Slot(stamp | if c.failure { FAILED } else { 0 } | if c.slow { SLOW } else { 0 })
    }

    fn call(self) -> Call {
        Call {
            failure: self.0 & FAILED != 0,
            slow: self.0 & SLOW != 0,
        }
    }

    fn stamp(self) -> u64 {
        self.0 & !(FAILED | SLOW)
    }
}

impl Totals {
    /// `n` of the calls as a percentage; None without calls.
    pub fn pct(&self, n: u32) -> Option<f64> {
        (self.calls > 0).then(|| f64::from(n) * 100.0 / f64::from(self.calls))
    }

    fn add(&mut self, c: Call) {
        self.calls += 1;
        self.failures += u32::from(c.failure);
        self.slow += u32::from(c.slow);
    }

    fn remove(&mut self, c: Call) {
        self.calls -= 1;
        self.failures -= u32::from(c.failure);
        self.slow -= u32::from(c.slow);
    }
}

const NS: u64 = 1_000_000_000;
/// A count window shows at most its most recent calls this many (the totals cover them all).
pub const RECENT_SHOWN: usize = 200;

impl CallWindow {
    pub fn new(w: Window) -> CallWindow {
        match w {
            Window::Count(n) => CallWindow::Count {
                size: n as usize,
                calls: VecDeque::new(),
                totals: Totals::default(),
            },
            Window::Time(d) => CallWindow::Time {
                secs: d.as_secs().max(1),
                buckets: VecDeque::new(),
                totals: Totals::default(),
            },
        }
    }

    pub fn record(&mut self, now_ns: u64, call: Call) {
        self.record_stamped(now_ns, now_ns, call);
    }

    /// `record`, a count window keeping `stamp` as the call's (what `fail_success` looks for)
    /// instead of its time.
    pub fn record_stamped(&mut self, now_ns: u64, stamp: u64, call: Call) {
        match self {
            CallWindow::Count {
                size,
                calls,
                totals,
            } => {
                if calls.len() == *size {
                    if let Some(old) = calls.pop_front() {
                        totals.remove(old.call());
                    }
                }
                calls.push_back(Slot::new(stamp, call));
                // Full for the first time: exactly `size` of room, so that from now on each
                // call takes the place the oldest left (one cache line a call, not two).
                if calls.len() == *size && calls.capacity() != *size {
                    calls.shrink_to_fit();
                }
                totals.add(call);
            }
            CallWindow::Time {
                buckets, totals, ..
            } => {
                let sec = now_ns / NS;
                if buckets.back().is_none_or(|(s, _)| *s != sec) {
                    buckets.push_back((sec, Totals::default()));
                }
                if let Some((_, t)) = buckets.back_mut() {
                    t.add(call);
                }
                totals.add(call);
                self.expire(now_ns);
            }
        }
    }

    fn expire(&mut self, now_ns: u64) {
        if let CallWindow::Time {
            secs,
            buckets,
            totals,
        } = self
        {
            let oldest = (now_ns / NS).saturating_sub(*secs - 1);
            while buckets.front().is_some_and(|(s, _)| *s < oldest) {
                if let Some((_, t)) = buckets.pop_front() {
                    totals.calls -= t.calls;
                    totals.failures -= t.failures;
                    totals.slow -= t.slow;
                }
            }
        }
    }

    pub fn totals(&mut self, now_ns: u64) -> Totals {
        self.expire(now_ns);
        match self {
            CallWindow::Count { totals, .. } | CallWindow::Time { totals, .. } => *totals,
        }
    }

    /// The fewest failed calls from now (1..=`limit`) after which the window holds at least
    /// `minimum` calls with a failure rate at or above `rate` percent; None if no such number
    /// up to `limit`. O(limit): a count window drops its oldest calls as failures come in,
    /// walked once from the front.
    pub fn failures_to_trip(
        &mut self,
        now_ns: u64,
        minimum: u32,
        rate: f64,
        limit: u32,
    ) -> Option<u32> {
        let t = self.totals(now_ns);
        let trips = |calls: u32, failures: u32| {
            calls >= minimum && f64::from(failures) * 100.0 >= rate * f64::from(calls)
        };
        match self {
            CallWindow::Count { size, calls, .. } => {
                let size = *size as u32;
                let mut oldest = calls.iter();
                let mut gone_failures = 0u32;
                for k in 1..=limit {
                    if t.calls + k > size {
                        // One more of the oldest calls leaves the window.
                        if let Some(c) = oldest.next() {
                            gone_failures += u32::from(c.call().failure);
                        }
                    }
                    let n = (t.calls + k).min(size);
                    let f = (t.failures - gone_failures + k.min(size)).min(n);
                    if trips(n, f) {
                        return Some(k);
                    }
                }
                None
            }
            CallWindow::Time { .. } => (1..=limit).find(|&k| trips(t.calls + k, t.failures + k)),
        }
    }

    /// Calls needed before rates mean anything: `minimum_calls`, and never more than a count
    /// window can hold.
    pub fn minimum(&self, minimum_calls: u32) -> u32 {
        match self {
            CallWindow::Count { size, .. } => minimum_calls.min(*size as u32),
            CallWindow::Time { .. } => minimum_calls,
        }
    }

    /// What the window holds, for the dashboard and `status`: a count window's calls, oldest
    /// first, as one character each ('.' success, 's' slow, 'x' failure); a time window's
    /// totals per second, oldest first, empty seconds included.
    pub fn contents(&mut self, now_ns: u64) -> WindowContents {
        let totals = self.totals(now_ns);
        match self {
            CallWindow::Count { size, calls, .. } => WindowContents {
                kind: "count",
                size: *size as u64,
                totals,
                calls: calls
                    .iter()
                    .skip(calls.len().saturating_sub(RECENT_SHOWN))
                    .map(|c| match (c.call().failure, c.call().slow) {
                        (true, _) => 'x',
                        (false, true) => 's',
                        (false, false) => '.',
                    })
                    .collect(),
                seconds: Vec::new(),
            },
            CallWindow::Time { secs, buckets, .. } => {
                let last = now_ns / NS;
                let first = last.saturating_sub(*secs - 1);
                let seconds = (first..=last)
                    .map(|s| {
                        buckets
                            .iter()
                            .find(|(b, _)| *b == s)
                            .map_or(Totals::default(), |(_, t)| *t)
                    })
                    .collect();
                WindowContents {
                    kind: "time",
                    size: *secs,
                    totals,
                    calls: String::new(),
                    seconds,
                }
            }
        }
    }

    /// Turn the success recorded at `at_ns` into a failure (a reset of that connection);
    /// false if no such success is in the window any more.
    pub fn fail_success(&mut self, at_ns: u64, now_ns: u64) -> bool {
        self.expire(now_ns);
        match self {
            CallWindow::Count { calls, totals, .. } => {
                let Some(c) = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c.stamp() == at_ns && !c.call().failure)
                else {
                    return false;
                };
                *c = Slot(c.0 | FAILED);
                totals.failures += 1;
                true
            }
            // A time window has its successes' times, never a quiet stamp.
            CallWindow::Time { .. } if at_ns & resilience_common::dest::QUIET_STAMP != 0 => false,
            CallWindow::Time {
                buckets, totals, ..
            } => {
                let sec = at_ns / NS;
                let Some((_, t)) = buckets.iter_mut().find(|(s, _)| *s == sec) else {
                    return false;
                };
                if t.failures >= t.calls {
                    return false;
                }
                t.failures += 1;
                totals.failures += 1;
                true
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            CallWindow::Count { calls, .. } => calls.is_empty(),
            CallWindow::Time { buckets, .. } => buckets.is_empty(),
        }
    }

    pub fn clear(&mut self) {
        match self {
            CallWindow::Count { calls, totals, .. } => {
                calls.clear();
                *totals = Totals::default();
            }
            CallWindow::Time {
                buckets, totals, ..
            } => {
                buckets.clear();
                *totals = Totals::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const F: Call = Call {
        failure: true,
        slow: false,
    };
    const OK: Call = Call {
        failure: false,
        slow: false,
    };
    const SLOW: Call = Call {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_keeps_the_last_n() {
        let mut w = CallWindow::new(Window::Count(3));
        for c in [F, F, OK, SLOW] {
            w.record(0, c);
        }
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.minimum(5), 3);
        assert_eq!(w.contents(0).calls, "x.s");
    }

    /// The incremental search agrees with recomputing the window for each k.
    #[test]
    fn failures_to_trip_matches_brute_force() {
        let mut seed = 7u64;
        for size in [1u32, 3, 10, 50] {
            for _ in 0..200 {
                let mut w = CallWindow::new(Window::Count(size));
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = (seed >> 33) % (2 * u64::from(size) + 1);
                for i in 0..n {
                    let failure = (seed >> (i % 60)) & 1 == 1;
                    w.record(
                        0,
                        Call {
                            failure,
                            slow: false,
                        },
                    );
                }
                let min = ((seed >> 20) % u64::from(size + 2)) as u32 + 1;
                let rate = [10.0, 50.0, 60.0, 100.0][(seed >> 40) as usize % 4];
                let brute = (1..=40u32).find(|&k| {
                    let mut c = w.clone();
                    for _ in 0..k {
                        c.record(0, F);
                    }
                    let t = c.totals(0);
                    t.calls >= min.min(size)
                        && f64::from(t.failures) * 100.0 >= rate * f64::from(t.calls)
                });
                assert_eq!(
                    w.failures_to_trip(0, min.min(size), rate, 40),
                    brute,
                    "size {size}, {n} calls, min {min}, rate {rate}"
                );
            }
        }
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let mut w = CallWindow::new(Window::Time(Duration::from_secs(2)));
        w.record(0, F);
        w.record(NS / 2, F);
        w.record(NS, OK);
        assert_eq!(
            w.totals(NS),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // At t = 2 s the bucket of second 0 is out.
        assert_eq!(
            w.totals(2 * NS),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        let c = w.contents(2 * NS);
        assert_eq!((c.kind, c.size), ("time", 2));
        let calls: Vec<u32> = c.seconds.iter().map(|t| t.calls).collect();
        assert_eq!(calls, [1, 0], "second 1 then the empty second 2");
        assert_eq!(w.totals(10 * NS), Totals::default());
        assert_eq!(w.minimum(5), 5);
    }
}
