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

#[derive(Debug, Clone)]
pub enum CallWindow {
    Count {
        size: usize,
        calls: VecDeque<Call>,
    },
    /// (second, totals of that second), oldest first.
    Time {
        secs: u64,
        buckets: VecDeque<(u64, Totals)>,
    },
}

const NS: u64 = 1_000_000_000;

impl CallWindow {
    pub fn new(w: Window) -> CallWindow {
        match w {
            Window::Count(n) => CallWindow::Count {
                size: n as usize,
                calls: VecDeque::new(),
            },
            Window::Time(d) => CallWindow::Time {
                secs: d.as_secs().max(1),
                buckets: VecDeque::new(),
            },
        }
    }

    pub fn record(&mut self, now_ns: u64, call: Call) {
        match self {
            CallWindow::Count { size, calls } => {
                if calls.len() == *size {
                    calls.pop_front();
                }
                calls.push_back(call);
            }
            CallWindow::Time { buckets, .. } => {
                let sec = now_ns / NS;
                if buckets.back().is_none_or(|(s, _)| *s != sec) {
                    buckets.push_back((sec, Totals::default()));
                }
                if let Some((_, t)) = buckets.back_mut() {
                    t.calls += 1;
                    t.failures += u32::from(call.failure);
                    t.slow += u32::from(call.slow);
                }
                self.expire(now_ns);
            }
        }
    }

    fn expire(&mut self, now_ns: u64) {
        if let CallWindow::Time { secs, buckets } = self {
            let oldest = (now_ns / NS).saturating_sub(*secs - 1);
            while buckets.front().is_some_and(|(s, _)| *s < oldest) {
                buckets.pop_front();
            }
        }
    }

    pub fn totals(&mut self, now_ns: u64) -> Totals {
        self.expire(now_ns);
        match self {
            CallWindow::Count { calls, .. } => Totals {
                calls: calls.len() as u32,
                failures: calls.iter().filter(|c| c.failure).count() as u32,
                slow: calls.iter().filter(|c| c.slow).count() as u32,
            },
            CallWindow::Time { buckets, .. } => {
                buckets.iter().fold(Totals::default(), |a, (_, t)| Totals {
                    calls: a.calls + t.calls,
                    failures: a.failures + t.failures,
                    slow: a.slow + t.slow,
                })
            }
        }
    }

    /// Totals after `k` more failed calls at `now_ns` (a count window drops its oldest).
    pub fn totals_after_failures(&mut self, now_ns: u64, k: u32) -> Totals {
        let t = self.totals(now_ns);
        match self {
            CallWindow::Count { size, calls } => {
                let size = *size as u32;
                let evicted = (t.calls + k).saturating_sub(size) as usize;
                let gone = calls
                    .iter()
                    .take(evicted)
                    .fold(Totals::default(), |a, c| Totals {
                        calls: a.calls + 1,
                        failures: a.failures + u32::from(c.failure),
                        slow: a.slow + u32::from(c.slow),
                    });
                Totals {
                    calls: (t.calls + k).min(size),
                    failures: t.failures - gone.failures + k.min(size),
                    slow: t.slow - gone.slow,
                }
            }
            CallWindow::Time { .. } => Totals {
                calls: t.calls + k,
                failures: t.failures + k,
                slow: t.slow,
            },
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
            CallWindow::Count { size, calls } => WindowContents {
                kind: "count",
                size: *size as u64,
                totals,
                calls: calls
                    .iter()
                    .map(|c| match (c.failure, c.slow) {
                        (true, _) => 'x',
                        (false, true) => 's',
                        (false, false) => '.',
                    })
                    .collect(),
                seconds: Vec::new(),
            },
            CallWindow::Time { secs, buckets } => {
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

    pub fn clear(&mut self) {
        match self {
            CallWindow::Count { calls, .. } => calls.clear(),
            CallWindow::Time { buckets, .. } => buckets.clear(),
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
