//! One destination's circuit breaker: closed -> open on a failure or slow-call rate over the
//! window (once `minimum_calls` are in), or on a streak of consecutive failures; open ->
//! half-open when the open time has passed (no traffic needed); half-open admits exactly
//! `half_open_probes` connects (the kernel enforces the count) and decides by its rule: the
//! probes' failure and slow-call rates once all have ended (`rate`, Resilience4j), or one bad
//! probe reopens and all good ones close (`all`, gobreaker). Reopening lasts longer each time;
//! a half-open breaker undecided for `max_half_open_duration` opens again.

use super::{
    window::{Call, CallWindow, WindowContents},
    Jitter,
};
use crate::config::{BreakerConfig, FailureClass, HalfOpenRule, Mode};

/// How many failures ahead the trip fuse looks.
const FUSE_LIMIT: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    pub fn from_name(s: &str) -> Option<State> {
        [State::Closed, State::Open, State::HalfOpen]
            .into_iter()
            .find(|x| x.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A connect's result, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success {
        latency_ns: u64,
        probe: bool,
    },
    /// `counted`: its class is one of the breaker's `failures`. `replaces`: a reset of an
    /// established connection carries the time its success was recorded; that call becomes
    /// the failure (one connect is one call).
    Failure {
        class: FailureClass,
        counted: bool,
        probe: bool,
        replaces: Option<u64>,
        /// Time from the connect to its failure: at least `slow_call_duration` makes it a slow
        /// call too (Resilience4j's SLOW_ERROR).
        latency_ns: u64,
    },
}

/// What the kernel should do with new connects, and its trip fuse (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelVerdict {
    pub verdict: Verdict,
    pub trip_after: u32,
    /// The window's epoch: the kernel tags each outcome with it, and the window takes the
    /// outcomes of its own epoch only, so that it counts exactly what the kernel counts.
    pub epoch: u32,
    /// The window as the kernel judges it itself, while it can.
    pub window: Option<WindowArm>,
}

/// What the kernel needs to judge a closed breaker's window on its own, on the very outcome
/// that crosses a threshold (a success that brings the window to its minimum with the failure
/// rate over, a slow call): the window as it stands since the last state change, as long as
/// it has dropped nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowArm {
    pub min: u32,
    /// A count window's size: past it, calls leave the window and the kernel's totals no
    /// longer match.
    pub max_calls: u32,
    /// A time window's first expiry.
    pub until_ns: u64,
    /// Thresholds in thousandths of a percent, rounded up: never stricter than the breaker.
    pub failure_milli: u32,
    pub slow_milli: u32,
}

/// Window epochs: unique within the daemon (the daemon clears the kernel's window counts when
/// it starts). Never 0, the cleared value.
static EPOCHS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn next_epoch() -> u32 {
    loop {
        let e = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if e != 0 {
            return e;
        }
    }
}

/// What the breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject,
    /// Admit this many, reject the rest.
    Probe(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
    pub at_ns: u64,
}

/// What a restarted daemon needs to resume a breaker where it was (the window's calls are not
/// kept: a resumed closed breaker starts its window empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub state: State,
    pub since_ns: u64,
    pub open_until_ns: u64,
    pub trips: u32,
    pub probes_ok: u32,
    pub probes_failed: u32,
    pub probes_slow: u32,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    mode: Mode,
    state: State,
    since_ns: u64,
    window: CallWindow,
    streak: u32,
    /// Trips since the breaker last closed: each one doubles the open time.
    trips: u32,
    open_until_ns: u64,
    /// Half-open: probes that ended without failing, that failed, and that were slow.
    probes_ok: u32,
    probes_failed: u32,
    probes_slow: u32,
    /// The window's epoch: a new one at every state change.
    epoch: u32,
    /// Counts every change to what the breaker shows (a call recorded, a transition): a
    /// snapshot's delta tells a changed breaker by it without walking its window.
    changes: u64,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, mode: Mode, now_ns: u64) -> Breaker {
        Breaker {
            window: CallWindow::new(cfg.window),
            cfg,
            mode,
            state: State::Closed,
            since_ns: now_ns,
            streak: 0,
            trips: 0,
            open_until_ns: 0,
            probes_ok: 0,
            probes_failed: 0,
            probes_slow: 0,
            epoch: next_epoch(),
            changes: 0,
        }
    }

    /// Changes when anything the breaker shows changes (or, in a time window with calls,
    /// every second, as old calls expire).
    pub fn changes(&self, now_ns: u64) -> u64 {
        let ticking =
            matches!(self.cfg.window, crate::config::Window::Time(_)) && self.streak_or_calls();
        self.changes
            .wrapping_mul(31)
            .wrapping_add(if ticking { now_ns / 1_000_000_000 } else { 0 })
    }

    fn streak_or_calls(&self) -> bool {
        self.streak > 0 || !self.window.is_empty()
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The file's or the operator's mode changed: the state machine stays where it is (an open
    /// breaker disabled and enabled again is still open, with its time).
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    pub fn resume_point(&self) -> Resume {
        Resume {
            state: self.state,
            since_ns: self.since_ns,
            open_until_ns: self.open_until_ns,
            trips: self.trips,
            probes_ok: self.probes_ok,
            probes_failed: self.probes_failed,
            probes_slow: self.probes_slow,
        }
    }

    /// A breaker as it was saved.
    pub fn resumed(cfg: BreakerConfig, mode: Mode, r: Resume) -> Breaker {
        let mut b = Breaker::new(cfg, mode, r.since_ns);
        b.state = r.state;
        b.open_until_ns = r.open_until_ns;
        b.trips = r.trips;
        b.probes_ok = r.probes_ok;
        b.probes_failed = r.probes_failed;
        b.probes_slow = r.probes_slow;
        b
    }

    /// The verdict with its trip fuse and the window the kernel judges.
    pub fn kernel_verdict(&mut self, now_ns: u64) -> KernelVerdict {
        let verdict = self.verdict();
        let (fuse, window) = match verdict {
            Verdict::Allow => (self.trip_fuse(now_ns), self.window_arm(now_ns)),
            _ => (None, None),
        };
        // The kernel acts on a window trip through the fuse's check: it needs one armed.
        let trip_after = fuse.unwrap_or(if window.is_some() { u32::MAX } else { 0 });
        KernelVerdict {
            verdict,
            trip_after,
            epoch: self.epoch,
            window,
        }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Calls in the window now.
    pub fn window_calls(&mut self, now_ns: u64) -> u32 {
        self.window.totals(now_ns).calls
    }

    /// The window's running totals now: what its rates come from, without copying its calls.
    pub fn window_totals(&mut self, now_ns: u64) -> super::Totals {
        self.window.totals(now_ns)
    }

    fn window_arm(&mut self, now_ns: u64) -> Option<WindowArm> {
        if self.state != State::Closed || !self.mode_runs() {
            return None;
        }
        let min = self.window.minimum(self.cfg.minimum_calls);
        let calls = self.window.totals(now_ns).calls;
        let (max_calls, until_ns) = match self.cfg.window {
            crate::config::Window::Count(size) => (size, u64::MAX),
            crate::config::Window::Time(d) => {
                const NS: u64 = 1_000_000_000;
                // The window's calls all came after its last clear; the first of them leaves
                // when its second is `d` old.
                (u32::MAX, (self.since_ns / NS + d.as_secs()) * NS)
            }
        };
        if calls >= max_calls || now_ns >= until_ns {
            return None;
        }
        let milli = |pct: f64| (pct * 1000.0).ceil().clamp(1.0, 100_000.0) as u32;
        Some(WindowArm {
            min,
            max_calls,
            until_ns,
            failure_milli: milli(self.cfg.failure_rate),
            slow_milli: milli(self.cfg.slow_call_rate),
        })
    }

    /// For the kernel's trip fuse: the consecutive counted failures since the last success (the
    /// kernel keeps the same streak) after which the breaker trips if nothing else comes in
    /// between; `None` when no run of failures (up to `FUSE_LIMIT` more) would trip it, or the
    /// breaker is not closed. Failures only ever make a trip nearer, so a fuse that a success
    /// or the clock has made stale trips late, never early... except in a time window, whose
    /// old failures expire: the daemon recomputes the fuse on every tick.
    pub fn trip_fuse(&mut self, now_ns: u64) -> Option<u32> {
        if self.state != State::Closed || !self.mode_runs() {
            return None;
        }
        let min = self.window.minimum(self.cfg.minimum_calls);
        let mut best = match self.cfg.consecutive_failures {
            0 => None,
            cf => Some(cf.saturating_sub(self.streak).max(1)),
        };
        let limit = best.map_or(FUSE_LIMIT, |b| b.saturating_sub(1).min(FUSE_LIMIT));
        if let Some(k) = self
            .window
            .failures_to_trip(now_ns, min, self.cfg.failure_rate, limit)
        {
            best = Some(k);
        }
        best.map(|k| self.streak + k)
    }

    /// The window's contents now (empty outside closed: every transition clears it).
    pub fn window_contents(&mut self, now_ns: u64) -> WindowContents {
        self.window.contents(now_ns)
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Consecutive counted failures since the last success.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn since_ns(&self) -> u64 {
        self.since_ns
    }

    /// A probe admitted at `admitted_ns` that ended without a verdict (a failure class the
    /// breaker ignores, or closed before its SYN): if it belongs to this half-open round, its
    /// place in the probe budget goes back, as Resilience4j releases the permission of an
    /// ignored call. Else the round could never collect its successes.
    pub fn returns_probe(&self, admitted_ns: u64) -> bool {
        self.state == State::HalfOpen && admitted_ns >= self.since_ns
    }

    /// When `on_tick` may next act: the end of the open time, or of a half-open round's
    /// `max_half_open_duration`; None while closed (or half-open without a limit). Whatever the
    /// mode: a mode that does not run only makes `on_tick` do nothing then.
    pub fn next_timer_ns(&self) -> Option<u64> {
        let limit = self.cfg.max_half_open_duration;
        match self.state {
            State::Open => Some(self.open_until_ns),
            State::HalfOpen if !limit.is_zero() => Some(
                self.since_ns
                    .saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX)),
            ),
            _ => None,
        }
    }

    pub fn open_until_ns(&self) -> Option<u64> {
        (self.state == State::Open).then_some(self.open_until_ns)
    }

    /// What the kernel enforces. Dry-run publishes the breaker's verdict too: the kernel counts
    /// what it would reject and rejects nothing.
    pub fn verdict(&self) -> Verdict {
        match self.mode {
            Mode::ForcedOpen => Verdict::Reject,
            Mode::Disabled => Verdict::Allow,
            Mode::Enforce | Mode::DryRun => match self.state {
                State::Closed => Verdict::Allow,
                State::Open => Verdict::Reject,
                State::HalfOpen => Verdict::Probe(self.cfg.half_open_probes),
            },
        }
    }

    pub fn on_outcome(
        &mut self,
        now_ns: u64,
        outcome: Outcome,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        if self.mode == Mode::Disabled || self.mode == Mode::ForcedOpen {
            return None;
        }
        if let Outcome::Failure {
            counted: true,
            replaces: Some(success_ns),
            ..
        } = outcome
        {
            // The connection's call is already in the window, as a success: it becomes a
            // failure, no call is added. Once that call has left the window (or outside
            // closed, where windows start anew), there is nothing to change.
            if self.state != State::Closed || !self.window.fail_success(success_ns, now_ns) {
                return None;
            }
            self.changes += 1;
            return self.judge(now_ns, jitter);
        }
        let (call, probe) = match outcome {
            Outcome::Success { latency_ns, probe } => {
                let slow = latency_ns >= self.cfg.slow_call_duration.as_nanos() as u64;
                (
                    Call {
                        failure: false,
                        slow,
                    },
                    probe,
                )
            }
            Outcome::Failure { counted: false, .. } => return None,
            Outcome::Failure {
                probe, latency_ns, ..
            } => (
                Call {
                    failure: true,
                    slow: latency_ns >= self.cfg.slow_call_duration.as_nanos() as u64,
                },
                probe,
            ),
        };
        match self.state {
            State::Closed => self.closed_call(now_ns, call, outcome, jitter),
            // Connects admitted before the breaker opened finish late; only probes count.
            State::Open => None,
            State::HalfOpen if !probe => None,
            State::HalfOpen => self.probe_ended(now_ns, call, outcome, jitter),
        }
    }

    /// `n` plain successes the kernel counted without records (`QuietCount`): numbers
    /// `first..first + n` of window epoch `epoch`, in that order. Each is a call of a closed
    /// breaker's window, stamped with its `quiet_stamp` (a reset of its connection finds it by
    /// that), judged as a success with its own record would be: as successes only lower the
    /// window's rates, only the one that brings the window to its minimum can trip it.
    pub fn on_quiet(
        &mut self,
        now_ns: u64,
        epoch: u32,
        first: u32,
        n: u32,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        if n == 0 || self.state != State::Closed || epoch != self.epoch || !self.mode_runs() {
            return None;
        }
        let minimum = self.window.minimum(self.cfg.minimum_calls);
        let success = Call {
            failure: false,
            slow: false,
        };
        self.changes += 1;
        self.streak = 0;
        for k in 0..n {
            let stamp = resilience_common::dest::quiet_stamp(epoch, first.wrapping_add(k));
            self.window.record_stamped(now_ns, stamp, success);
            if self.window.totals(now_ns).calls == minimum {
                if let Some(t) = self.judge(now_ns, jitter) {
                    return Some(t);
                }
            }
        }
        None
    }

    fn probe_ended(
        &mut self,
        now_ns: u64,
        call: Call,
        outcome: Outcome,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        self.changes += 1;
        let n = self.cfg.half_open_probes;
        match self.cfg.half_open_rule {
            HalfOpenRule::All => {
                if call.failure || call.slow {
                    let what = describe(outcome, call);
                    return self.open(now_ns, format!("probe {what}"), jitter);
                }
                self.probes_ok += 1;
                (self.probes_ok >= n)
                    .then(|| self.close(now_ns, format!("{n} of {n} probes succeeded")))
            }
            HalfOpenRule::Rate => {
                if call.failure {
                    self.probes_failed += 1;
                } else {
                    self.probes_ok += 1;
                }
                self.probes_slow += u32::from(call.slow);
                let done = self.probes_ok + self.probes_failed;
                if done < n {
                    return None;
                }
                let failure_rate = f64::from(self.probes_failed) * 100.0 / f64::from(done);
                let slow_rate = f64::from(self.probes_slow) * 100.0 / f64::from(done);
                if failure_rate >= self.cfg.failure_rate {
                    let reason = format!(
                        "probe failure rate {}% >= {}% over {done} probes",
                        pct(failure_rate),
                        pct(self.cfg.failure_rate)
                    );
                    return self.open(now_ns, reason, jitter);
                }
                if slow_rate >= self.cfg.slow_call_rate {
                    let reason = format!(
                        "probe slow-call rate {}% >= {}% over {done} probes",
                        pct(slow_rate),
                        pct(self.cfg.slow_call_rate)
                    );
                    return self.open(now_ns, reason, jitter);
                }
                let reason = format!(
                    "{done} probes: failure rate {}% < {}%, slow-call rate {}% < {}%",
                    pct(failure_rate),
                    pct(self.cfg.failure_rate),
                    pct(slow_rate),
                    pct(self.cfg.slow_call_rate)
                );
                Some(self.close(now_ns, reason))
            }
        }
    }

    fn closed_call(
        &mut self,
        now_ns: u64,
        call: Call,
        outcome: Outcome,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        self.window.record(now_ns, call);
        self.changes += 1;
        self.streak = if call.failure { self.streak + 1 } else { 0 };
        let cf = self.cfg.consecutive_failures;
        if cf > 0 && self.streak >= cf {
            let what = describe(outcome, call);
            return self.open(
                now_ns,
                format!("{cf} consecutive failures (last: {what})"),
                jitter,
            );
        }
        self.judge(now_ns, jitter)
    }

    /// Early slow-call detection: `pending_slow` connects are still waiting for an answer and
    /// have already taken at least the slow-call threshold. Each is a slow call from now on:
    /// judged with the window's calls, not added to it (its outcome, when it comes, is the one
    /// call that enters the window, slow as well). Only a closed breaker judges this way.
    pub fn on_pending(
        &mut self,
        now_ns: u64,
        pending_slow: u32,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        if pending_slow == 0 || self.state != State::Closed || !self.mode_runs() {
            return None;
        }
        self.judge_with(now_ns, pending_slow, jitter)
    }

    /// The window's rates against the thresholds.
    fn judge(&mut self, now_ns: u64, jitter: &mut impl Jitter) -> Option<Transition> {
        self.judge_with(now_ns, 0, jitter)
    }

    /// The same, with `pending` slow calls still in progress on top of the window's.
    fn judge_with(
        &mut self,
        now_ns: u64,
        pending: u32,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        let mut t = self.window.totals(now_ns);
        t.calls += pending;
        t.slow += pending;
        if t.calls == 0 || t.calls < self.window.minimum(self.cfg.minimum_calls) {
            return None;
        }
        let still = if pending > 0 {
            format!(", {pending} of them still connecting")
        } else {
            String::new()
        };
        let failure_rate = f64::from(t.failures) * 100.0 / f64::from(t.calls);
        if failure_rate >= self.cfg.failure_rate {
            let reason = format!(
                "failure rate {}% >= {}% over {} calls{still}",
                pct(failure_rate),
                pct(self.cfg.failure_rate),
                t.calls
            );
            return self.open(now_ns, reason, jitter);
        }
        let slow_rate = f64::from(t.slow) * 100.0 / f64::from(t.calls);
        if slow_rate >= self.cfg.slow_call_rate {
            let reason = format!(
                "slow-call rate {}% >= {}% over {} calls (slow: >= {:?}){still}",
                pct(slow_rate),
                pct(self.cfg.slow_call_rate),
                t.calls,
                self.cfg.slow_call_duration
            );
            return self.open(now_ns, reason, jitter);
        }
        None
    }

    /// Open -> half-open once the open time has passed.
    pub fn on_tick(&mut self, now_ns: u64, jitter: &mut impl Jitter) -> Option<Transition> {
        let limit = self.cfg.max_half_open_duration;
        if self.state == State::HalfOpen
            && !limit.is_zero()
            && now_ns.saturating_sub(self.since_ns) >= limit.as_nanos() as u64
            && self.mode_runs()
        {
            let reason = format!(
                "half-open for {} without a verdict (max_half_open_duration)",
                secs(limit)
            );
            return self.open(now_ns, reason, jitter);
        }
        if self.state == State::Open && now_ns >= self.open_until_ns && self.mode_runs() {
            let planned =
                std::time::Duration::from_nanos(self.open_until_ns.saturating_sub(self.since_ns));
            let reason = format!("open time of {} over", secs(planned));
            return Some(self.to(State::HalfOpen, now_ns, reason));
        }
        None
    }

    /// Operator's trip: open now, as if the breaker had tripped.
    pub fn trip(&mut self, now_ns: u64, jitter: &mut impl Jitter) -> Option<Transition> {
        if self.state == State::Open {
            return None;
        }
        self.open(now_ns, "tripped by operator".into(), jitter)
    }

    /// Operator's reset: closed, with an empty window.
    pub fn reset(&mut self, now_ns: u64) -> Option<Transition> {
        let was_closed = self.state == State::Closed;
        let t = self.close(now_ns, "reset by operator".into());
        (!was_closed).then_some(t)
    }

    fn mode_runs(&self) -> bool {
        matches!(self.mode, Mode::Enforce | Mode::DryRun)
    }

    fn open(
        &mut self,
        now_ns: u64,
        reason: String,
        jitter: &mut impl Jitter,
    ) -> Option<Transition> {
        self.trips = self.trips.saturating_add(1);
        let base = self.cfg.open_duration.as_secs_f64();
        let max = self.cfg.open_duration_max.as_secs_f64();
        let mut secs_open = base
            * self
                .cfg
                .open_duration_multiplier
                .powi(self.trips.saturating_sub(1).min(60) as i32);
        if self.trips > 1 {
            // +-10% so that hosts that tripped together do not probe together.
            secs_open *= 0.9 + 0.2 * jitter.unit();
        }
        let secs_open = secs_open.min(max);
        // Saturating: a record's timestamp comes from outside (found by fuzzing).
        self.open_until_ns = now_ns.saturating_add((secs_open * 1e9) as u64);
        let reason = format!(
            "{reason}; open for {}",
            secs(std::time::Duration::from_secs_f64(secs_open))
        );
        Some(self.to(State::Open, now_ns, reason))
    }

    fn close(&mut self, now_ns: u64, reason: String) -> Transition {
        self.trips = 0;
        self.to(State::Closed, now_ns, reason)
    }

    fn to(&mut self, to: State, now_ns: u64, reason: String) -> Transition {
        let from = self.state;
        self.state = to;
        self.changes += 1;
        self.since_ns = now_ns;
        self.window.clear();
        self.streak = 0;
        self.probes_ok = 0;
        self.probes_failed = 0;
        self.probes_slow = 0;
        self.epoch = next_epoch();
        Transition {
            from,
            to,
            reason,
            at_ns: now_ns,
        }
    }
}

fn describe(outcome: Outcome, call: Call) -> String {
    match outcome {
        Outcome::Failure { class, .. } => class.name().to_string(),
        Outcome::Success { latency_ns, .. } if call.slow => {
            format!(
                "slow ({})",
                secs(std::time::Duration::from_nanos(latency_ns))
            )
        }
        Outcome::Success { .. } => "success".into(),
    }
}

/// 80 or 66.7.
fn pct(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{}s", pct(s))
    } else {
        format!("{}ms", pct(s * 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Window;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&mut self) -> f64 {
            self.0
        }
    }

    fn ok() -> Outcome {
        Outcome::Success {
            latency_ns: MS,
            probe: false,
        }
    }
    fn refused() -> Outcome {
        Outcome::Failure {
            class: FailureClass::Refused,
            counted: true,
            probe: false,
            replaces: None,
            latency_ns: 0,
        }
    }
    fn probe_ok() -> Outcome {
        Outcome::Success {
            latency_ns: MS,
            probe: true,
        }
    }
    fn probe_failed() -> Outcome {
        Outcome::Failure {
            class: FailureClass::Timeout,
            counted: true,
            probe: true,
            replaces: None,
            latency_ns: 0,
        }
    }

    /// The defaults (count window of 10, minimum 5 calls, 60%, 30 s open, 3 probes), with
    /// slow calls from 1 s.
    fn cfg() -> BreakerConfig {
        BreakerConfig {
            slow_call_duration: Duration::from_secs(1),
            ..BreakerConfig::default()
        }
    }

    /// Feed outcomes at 1 ms intervals; return the transitions.
    fn feed(b: &mut Breaker, start: u64, outcomes: &[Outcome]) -> Vec<Transition> {
        let mut j = Fixed(0.5);
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| b.on_outcome(start + i as u64 * MS, *o, &mut j))
            .collect()
    }

    #[test]
    fn pending_slow_connects_are_judged_as_slow_calls_without_entering_the_window() {
        let c = BreakerConfig {
            slow_call_rate: 50.0,
            ..cfg()
        };
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(0.5);
        assert!(feed(&mut b, 0, &[ok(), ok()]).is_empty());
        // 2 fast calls and 2 still pending past the threshold: 4 calls, under the minimum.
        assert!(b.on_pending(10 * MS, 2, &mut j).is_none());
        // They were judged, not recorded: the window still holds the two successes.
        assert_eq!(b.window_contents(10 * MS).totals.calls, 2);
        // Three pending: 5 calls, 60% slow.
        let t = b.on_pending(20 * MS, 3, &mut j).expect("trips");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert_eq!(
            t.reason,
            "slow-call rate 60% >= 50% over 5 calls (slow: >= 1s), 3 of them still connecting; open for 30s"
        );
        // Open: pending connects change nothing.
        assert!(b.on_pending(30 * MS, 10, &mut j).is_none());
        // Disabled: no judgement at all.
        let mut off = Breaker::new(cfg(), Mode::Disabled, 0);
        assert!(off.on_pending(0, 100, &mut j).is_none());
    }

    #[test]
    fn successes_counted_without_records_are_calls_in_order_and_judged_as_each_would_be() {
        let mut j = Fixed(0.5);
        // 3 failures, then 2 successes the kernel counted in bulk: the 5th call brings the
        // window to its minimum at 60%, and trips there as a success with its record would.
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        let e = b.epoch();
        assert!(feed(&mut b, 0, &[refused(); 3]).is_empty());
        let t = b
            .on_quiet(10 * MS, e, 1, 2, &mut j)
            .expect("trips at the minimum");
        assert_eq!(
            t.reason,
            "failure rate 60% >= 60% over 5 calls; open for 30s"
        );
        // 2 failures then 4 successes in bulk: 2/5 at the minimum, lower after: closed, with
        // every call in the window and the streak ended.
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        let e = b.epoch();
        assert!(feed(&mut b, 0, &[refused(); 2]).is_empty());
        assert_eq!(b.streak(), 2);
        assert!(b.on_quiet(10 * MS, e, 1, 4, &mut j).is_none());
        assert_eq!(b.window_contents(10 * MS).calls, "xx....");
        assert_eq!(b.streak(), 0);
        // Another epoch's successes are not this window's.
        assert!(b.on_quiet(20 * MS, e + 1, 5, 3, &mut j).is_none());
        assert_eq!(b.window_calls(20 * MS), 6);
        // A reset of the connection of the 3rd of them (the 5th call) finds it by its stamp.
        let reset = Outcome::Failure {
            class: FailureClass::Reset,
            counted: true,
            probe: false,
            replaces: Some(resilience_common::dest::quiet_stamp(e, 3)),
            latency_ns: 0,
        };
        assert!(b.on_outcome(30 * MS, reset, &mut j).is_none());
        assert_eq!(b.window_contents(30 * MS).calls, "xx..x.");
        // Outside closed, nothing comes in.
        let mut open = Breaker::new(cfg(), Mode::Enforce, 0);
        let e = open.epoch();
        assert_eq!(feed(&mut open, 0, &[refused(); 5]).len(), 1);
        assert!(open.on_quiet(10 * MS, e, 1, 9, &mut j).is_none());
        assert_eq!(open.window_calls(10 * MS), 0);
    }

    #[test]
    fn trips_on_failure_rate_once_minimum_calls_are_in() {
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        // 4 failures: below minimum_calls, stays closed.
        assert!(feed(&mut b, 0, &[refused(); 4]).is_empty());
        assert_eq!(b.verdict(), Verdict::Allow);
        let t = feed(&mut b, 10 * MS, &[refused()]);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to), (State::Closed, State::Open));
        assert_eq!(
            t[0].reason,
            "failure rate 100% >= 60% over 5 calls; open for 30s"
        );
        assert_eq!(b.verdict(), Verdict::Reject);
    }

    #[test]
    fn failure_rate_below_threshold_stays_closed() {
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        // Never at or above 60% from the 5th call on: 2/5, 3/6, 3/7, 4/8, 4/9, 5/10.
        let seq = [
            ok(),
            refused(),
            ok(),
            refused(),
            ok(),
            refused(),
            ok(),
            refused(),
            ok(),
            refused(),
        ];
        assert!(feed(&mut b, 0, &seq).is_empty());
        // One more failure pushes out the oldest call (a success): 6 of 10.
        let t = feed(&mut b, 30 * MS, &[refused()]);
        assert_eq!(
            t[0].reason,
            "failure rate 60% >= 60% over 10 calls; open for 30s"
        );
    }

    #[test]
    fn uncounted_failure_classes_are_ignored() {
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        let reset = Outcome::Failure {
            class: FailureClass::Reset,
            counted: false,
            probe: false,
            replaces: Some(0),
            latency_ns: 0,
        };
        assert!(feed(&mut b, 0, &[reset; 20]).is_empty());
        assert_eq!(b.state(), State::Closed);
    }

    /// Only probes of the current half-open round give their place back.
    #[test]
    fn an_unjudged_probe_goes_back_only_within_its_round() {
        let mut j = Fixed(0.5);
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        assert!(!b.returns_probe(0), "closed: no probes");
        b.trip(MS, &mut j);
        assert!(!b.returns_probe(2 * MS), "open: no probes");
        let half_open_at = 60 * 1000 * MS;
        assert!(b.on_tick(half_open_at, &mut Fixed(0.5)).is_some());
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.returns_probe(half_open_at + MS));
        assert!(
            !b.returns_probe(half_open_at - MS),
            "a probe of an earlier round"
        );
    }

    /// A connect that succeeds and is then reset is one call, a failure: with resets counted,
    /// one such connect over two calls is 50%, not "a success and a failure".
    #[test]
    fn a_reset_replaces_its_connections_success() {
        let mut c = cfg();
        c.minimum_calls = 2;
        c.failure_rate = 50.0;
        c.failures.reset = true;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(0.5);
        let reset_of = |at: u64| Outcome::Failure {
            class: FailureClass::Reset,
            counted: true,
            probe: false,
            replaces: Some(at),
            latency_ns: 0,
        };
        assert!(b.on_outcome(MS, ok(), &mut j).is_none());
        assert!(b.on_outcome(2 * MS, ok(), &mut j).is_none());
        // The first connection is reset: 1 failure of 2 calls = 50% trips.
        let t = b.on_outcome(5 * MS, reset_of(MS), &mut j).expect("trip");
        assert_eq!(
            t.reason,
            "failure rate 50% >= 50% over 2 calls; open for 30s"
        );
        // A reset whose success is no longer in the window changes nothing.
        let mut b = Breaker::new(cfg_with_reset(), Mode::Enforce, 0);
        assert!(b.on_outcome(MS, ok(), &mut j).is_none());
        assert!(b.on_outcome(2 * MS, reset_of(999), &mut j).is_none());
        assert_eq!(b.window_contents(3 * MS).totals.calls, 1);
        assert_eq!(b.window_contents(3 * MS).totals.failures, 0);
    }

    fn cfg_with_reset() -> BreakerConfig {
        let mut c = cfg();
        c.failures.reset = true;
        c
    }

    #[test]
    fn a_reset_in_a_time_window_replaces_its_success_too() {
        let mut c = cfg_with_reset();
        c.window = Window::Time(Duration::from_secs(10));
        c.minimum_calls = 2;
        c.failure_rate = 50.0;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(0.5);
        b.on_outcome(S, ok(), &mut j);
        b.on_outcome(2 * S, ok(), &mut j);
        let reset = Outcome::Failure {
            class: FailureClass::Reset,
            counted: true,
            probe: false,
            replaces: Some(2 * S),
            latency_ns: 0,
        };
        let t = b.on_outcome(3 * S, reset, &mut j).expect("trip");
        assert_eq!(
            t.reason,
            "failure rate 50% >= 50% over 2 calls; open for 30s"
        );
    }

    #[test]
    fn consecutive_failures_trip_regardless_of_the_window() {
        let mut c = cfg();
        c.consecutive_failures = 3;
        c.minimum_calls = 100;
        c.window = Window::Count(100);
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        assert!(feed(
            &mut b,
            0,
            &[ok(), ok(), refused(), refused(), ok(), refused(), refused()]
        )
        .is_empty());
        let t = feed(&mut b, 10 * MS, &[refused()]);
        assert_eq!(
            t[0].reason,
            "3 consecutive failures (last: refused); open for 30s"
        );
    }

    #[test]
    fn slow_calls_trip_on_slow_rate() {
        let mut c = cfg();
        c.slow_call_rate = 50.0;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let slow = Outcome::Success {
            latency_ns: S + 10 * MS,
            probe: false,
        };
        assert!(feed(&mut b, 0, &[ok(), ok(), ok(), slow]).is_empty());
        let t = feed(&mut b, 10 * MS, &[slow, slow]);
        assert_eq!(
            t[0].reason,
            "slow-call rate 50% >= 50% over 6 calls (slow: >= 1s); open for 30s"
        );
    }

    #[test]
    fn time_window_counts_only_recent_calls() {
        let mut c = cfg();
        c.window = Window::Time(Duration::from_secs(2));
        c.minimum_calls = 3;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(0.5);
        assert!(b.on_outcome(0, refused(), &mut j).is_none());
        assert!(b.on_outcome(MS, refused(), &mut j).is_none());
        // 5 s later the two failures have left the window: 1 call, below the minimum.
        assert!(b.on_outcome(5 * S, refused(), &mut j).is_none());
        assert!(b.on_outcome(5 * S + MS, refused(), &mut j).is_none());
        let t = b
            .on_outcome(5 * S + 2 * MS, refused(), &mut j)
            .expect("trip");
        assert_eq!(
            t.reason,
            "failure rate 100% >= 60% over 3 calls; open for 30s"
        );
    }

    #[test]
    fn open_goes_half_open_after_the_open_time_without_traffic() {
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        feed(&mut b, 0, &[refused(); 5]);
        let opened = 4 * MS;
        assert_eq!(b.open_until_ns(), Some(opened + 30 * S));
        assert!(b.on_tick(opened + 30 * S - 1, &mut Fixed(0.5)).is_none());
        let t = b
            .on_tick(opened + 30 * S, &mut Fixed(0.5))
            .expect("half-open");
        assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
        assert_eq!(t.reason, "open time of 30s over");
        assert_eq!(b.verdict(), Verdict::Probe(3));
    }

    #[test]
    fn half_open_closes_when_every_probe_succeeds() {
        let mut c = cfg();
        c.half_open_rule = HalfOpenRule::All;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        feed(&mut b, 0, &[refused(); 5]);
        b.on_tick(31 * S, &mut Fixed(0.5));
        // Late results of connects admitted before the trip do not count.
        assert!(feed(&mut b, 31 * S, &[ok(), refused()]).is_empty());
        assert!(feed(&mut b, 32 * S, &[probe_ok(), probe_ok()]).is_empty());
        let t = feed(&mut b, 33 * S, &[probe_ok()]);
        assert_eq!((t[0].from, t[0].to), (State::HalfOpen, State::Closed));
        assert_eq!(t[0].reason, "3 of 3 probes succeeded");
        assert_eq!(b.verdict(), Verdict::Allow);
        // The window starts empty: 4 failures are below the minimum again.
        assert!(feed(&mut b, 34 * S, &[refused(); 4]).is_empty());
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_with_jitter_up_to_the_max() {
        let mut c = cfg();
        c.open_duration = Duration::from_secs(10);
        c.open_duration_max = Duration::from_secs(25);
        c.half_open_rule = HalfOpenRule::All;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(1.0); // the top of the +-10% band
        for i in 0..5 {
            b.on_outcome(i, refused(), &mut j);
        }
        assert_eq!(b.open_until_ns(), Some(4 + 10 * S));
        b.on_tick(20 * S, &mut Fixed(0.5));
        let t = b
            .on_outcome(21 * S, probe_failed(), &mut j)
            .expect("reopen");
        assert_eq!(t.reason, "probe timeout; open for 22s");
        assert_eq!(b.open_until_ns(), Some(21 * S + 22 * S));
        b.on_tick(50 * S, &mut Fixed(0.5));
        let t = b
            .on_outcome(51 * S, probe_failed(), &mut j)
            .expect("reopen");
        // 10 * 4 * 1.1 = 44 s, capped at 25 s.
        assert_eq!(t.reason, "probe timeout; open for 25s");
        // Closing resets the backoff.
        b.on_tick(80 * S, &mut Fixed(0.5));
        for _ in 0..3 {
            b.on_outcome(81 * S, probe_ok(), &mut j);
        }
        assert_eq!(b.state(), State::Closed);
        for i in 0..5 {
            b.on_outcome(90 * S + i, refused(), &mut j);
        }
        assert_eq!(b.open_until_ns(), Some(90 * S + 4 + 10 * S));
    }

    #[test]
    fn a_slow_probe_counts_as_failed() {
        let mut c = cfg();
        c.half_open_rule = HalfOpenRule::All;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        feed(&mut b, 0, &[refused(); 5]);
        b.on_tick(31 * S, &mut Fixed(0.5));
        let slow_probe = Outcome::Success {
            latency_ns: 2 * S,
            probe: true,
        };
        let t = feed(&mut b, 32 * S, &[slow_probe]);
        assert_eq!(t[0].to, State::Open);
        assert!(
            t[0].reason.starts_with("probe slow (2s)"),
            "{}",
            t[0].reason
        );
    }

    fn probe_failed_at(latency_ns: u64) -> Outcome {
        Outcome::Failure {
            class: FailureClass::Refused,
            counted: true,
            probe: true,
            replaces: None,
            latency_ns,
        }
    }

    /// Half-open with `n` probes and a 50% failure rate.
    fn half_open(n: u32, rule: HalfOpenRule) -> Breaker {
        let mut c = cfg();
        c.half_open_probes = n;
        c.failure_rate = 50.0;
        c.half_open_rule = rule;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        feed(&mut b, 0, &[refused(); 5]);
        assert!(b.on_tick(31 * S, &mut Fixed(0.5)).is_some());
        b
    }

    /// Resilience4j's half-open: the probes' rates decide once all have ended.
    #[test]
    fn the_rate_rule_judges_all_probes_together() {
        // F,S,S,S: 25% < 50%: closes.
        let mut b = half_open(4, HalfOpenRule::Rate);
        let t = feed(
            &mut b,
            32 * S,
            &[probe_failed_at(0), probe_ok(), probe_ok(), probe_ok()],
        );
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].to, State::Closed);
        assert_eq!(
            t[0].reason,
            "4 probes: failure rate 25% < 50%, slow-call rate 0% < 100%"
        );
        // F,F,S,F: all four admitted, then 75% >= 50%: opens.
        let mut b = half_open(4, HalfOpenRule::Rate);
        let t = feed(
            &mut b,
            32 * S,
            &[probe_failed_at(0), probe_failed_at(0), probe_ok()],
        );
        assert!(t.is_empty(), "undecided before the last probe: {t:?}");
        let t = feed(&mut b, 33 * S, &[probe_failed_at(0)]);
        assert_eq!(t[0].to, State::Open);
        assert!(
            t[0].reason
                .starts_with("probe failure rate 75% >= 50% over 4 probes"),
            "{}",
            t[0].reason
        );
        // The same F,S,S,S under the "all" rule reopens at the first failure.
        let mut b = half_open(4, HalfOpenRule::All);
        let t = feed(&mut b, 32 * S, &[probe_failed_at(0)]);
        assert_eq!(t[0].to, State::Open);
    }

    /// Resilience4j's SLOW_ERROR: a failed call over the slow threshold is slow as well.
    #[test]
    fn a_slow_failure_is_slow_too() {
        let mut c = cfg();
        c.slow_call_rate = 50.0;
        c.failure_rate = 100.0;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let slow_failure = Outcome::Failure {
            class: FailureClass::Timeout,
            counted: true,
            probe: false,
            replaces: None,
            latency_ns: 2 * S,
        };
        // Three slow failures of five calls: 60% slow (and only 60% failed, under 100%).
        let t = feed(
            &mut b,
            0,
            &[ok(), slow_failure, slow_failure, slow_failure, ok()],
        );
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(
            t[0].reason
                .starts_with("slow-call rate 60% >= 50% over 5 calls"),
            "{}",
            t[0].reason
        );
    }

    #[test]
    fn a_half_open_breaker_without_a_verdict_opens_again_after_its_limit() {
        let mut c = cfg();
        c.max_half_open_duration = Duration::from_secs(10);
        let mut b = Breaker::new(c.clone(), Mode::Enforce, 0);
        assert_eq!(b.next_timer_ns(), None, "closed: no timer");
        feed(&mut b, 0, &[refused(); 5]);
        let open_until = b.next_timer_ns().expect("open: its end");
        assert!(b.on_tick(open_until - 1, &mut Fixed(0.5)).is_none());
        assert!(b.on_tick(31 * S, &mut Fixed(0.5)).is_some());
        assert_eq!(b.next_timer_ns(), Some(41 * S), "half-open: its limit");
        assert!(b.on_tick(41 * S - 1, &mut Fixed(0.5)).is_none());
        let t = b.on_tick(41 * S, &mut Fixed(0.5)).expect("reopen");
        assert_eq!(t.to, State::Open);
        assert!(
            t.reason
                .starts_with("half-open for 10s without a verdict (max_half_open_duration)"),
            "{}",
            t.reason
        );
        // Zero: no limit.
        c.max_half_open_duration = Duration::ZERO;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        feed(&mut b, 0, &[refused(); 5]);
        b.on_tick(31 * S, &mut Fixed(0.5));
        assert_eq!(b.next_timer_ns(), None, "half-open without a limit");
        assert!(b.on_tick(10_000 * S, &mut Fixed(0.5)).is_none());
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[test]
    fn the_open_time_grows_by_the_multiplier() {
        let mut c = cfg();
        c.open_duration = Duration::from_secs(10);
        c.open_duration_max = Duration::from_secs(1000);
        c.open_duration_multiplier = 1.5;
        c.half_open_rule = HalfOpenRule::All;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let mut j = Fixed(0.5); // no jitter: the middle of the band
        feed(&mut b, 0, &[refused(); 5]);
        b.on_tick(20 * S, &mut j);
        let t = b
            .on_outcome(21 * S, probe_failed_at(0), &mut j)
            .expect("reopen");
        assert!(t.reason.ends_with("open for 15s"), "{}", t.reason);
        b.on_tick(40 * S, &mut j);
        let t = b
            .on_outcome(41 * S, probe_failed_at(0), &mut j)
            .expect("reopen");
        assert!(t.reason.ends_with("open for 22.5s"), "{}", t.reason);
    }

    /// What the kernel judges on its own: a closed breaker's window until it drops a call.
    #[test]
    fn the_kernel_judges_the_window_until_it_drops_calls() {
        let mut c = cfg();
        c.failure_rate = 33.3333;
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        let kv = b.kernel_verdict(0);
        let w = kv.window.expect("armed");
        assert_eq!((w.min, w.max_calls, w.until_ns), (5, 10, u64::MAX));
        // Rounded up: the kernel is never stricter than the breaker.
        assert_eq!((w.failure_milli, w.slow_milli), (33334, 100_000));
        assert_ne!(
            kv.trip_after, 0,
            "a fuse armed: the kernel's window trip acts through it"
        );
        let epoch = kv.epoch;
        feed(&mut b, 0, &[ok(); 9]);
        assert!(b.kernel_verdict(S).window.is_some());
        feed(&mut b, S, &[ok()]);
        assert_eq!(
            b.kernel_verdict(S).window,
            None,
            "full: the next call drops one"
        );
        // A state change starts a new window, in a new epoch.
        b.trip(2 * S, &mut Fixed(0.5));
        let kv = b.kernel_verdict(2 * S);
        assert_eq!((kv.window, kv.trip_after), (None, 0));
        assert_ne!(kv.epoch, epoch);
        // A time window: until its first call can expire.
        let mut c = cfg();
        c.window = Window::Time(Duration::from_secs(10));
        let mut b = Breaker::new(c, Mode::Enforce, 3 * S + 500 * MS);
        let w = b.kernel_verdict(4 * S).window.expect("armed");
        assert_eq!((w.max_calls, w.until_ns), (u32::MAX, 13 * S));
        assert_eq!(b.kernel_verdict(13 * S).window, None);
        // Not while disabled.
        let mut b = Breaker::new(cfg(), Mode::Disabled, 0);
        assert_eq!(b.kernel_verdict(0).window, None);
    }

    #[test]
    fn modes() {
        for (mode, verdict_after_failures) in [
            (Mode::Enforce, Verdict::Reject),
            (Mode::DryRun, Verdict::Reject),
            (Mode::Disabled, Verdict::Allow),
            (Mode::ForcedOpen, Verdict::Reject),
        ] {
            let mut b = Breaker::new(cfg(), mode, 0);
            feed(&mut b, 0, &[refused(); 10]);
            assert_eq!(b.verdict(), verdict_after_failures, "{mode:?}");
        }
        // Forced-open never goes half-open.
        let mut b = Breaker::new(cfg(), Mode::ForcedOpen, 0);
        assert!(b.on_tick(100 * S, &mut Fixed(0.5)).is_none());
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn the_trip_fuse_counts_failures_the_window_still_needs() {
        // minimum 5, 60%, window 10.
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        assert_eq!(b.trip_fuse(0), Some(5));
        feed(&mut b, 0, &[refused(), refused()]);
        // Streak 2; 3 more make 5 calls at 100%: the kernel trips at a streak of 5.
        assert_eq!(b.trip_fuse(MS), Some(5));
        feed(&mut b, 2 * MS, &[ok()]);
        // 2 of 3 failed, streak 0: 2 more -> 4 of 5 = 80%.
        assert_eq!(b.trip_fuse(3 * MS), Some(2));
        feed(&mut b, 3 * MS, &[ok(), ok(), ok(), ok(), ok(), ok(), ok()]);
        // 10 calls, 2 failed: k failures push out the oldest (2 failures first):
        // k = 6 -> window [ok x4.., F x6]: 6/10 = 60%.
        assert_eq!(b.trip_fuse(20 * MS), Some(6));
        // The fuse agrees with the breaker: 5 failures do not trip it, the 6th does.
        assert!(feed(&mut b, 30 * MS, &[refused(); 5]).is_empty());
        assert_eq!(feed(&mut b, 40 * MS, &[refused()]).len(), 1);
        assert_eq!(b.trip_fuse(50 * MS), None);
    }

    #[test]
    fn the_trip_fuse_takes_the_nearer_of_streak_and_rate() {
        let mut c = cfg();
        c.consecutive_failures = 3;
        c.minimum_calls = 50;
        c.window = Window::Count(100);
        let mut b = Breaker::new(c, Mode::Enforce, 0);
        feed(&mut b, 0, &[refused()]);
        assert_eq!(b.trip_fuse(MS), Some(3));
        let mut off = Breaker::new(cfg(), Mode::Disabled, 0);
        assert_eq!(off.trip_fuse(0), None);
    }

    #[test]
    fn operator_trip_and_reset() {
        let mut b = Breaker::new(cfg(), Mode::Enforce, 0);
        let mut j = Fixed(0.5);
        let t = b.trip(S, &mut j).expect("trip");
        assert_eq!(t.reason, "tripped by operator; open for 30s");
        assert!(b.trip(2 * S, &mut j).is_none());
        let t = b.reset(3 * S).expect("reset");
        assert_eq!(
            (t.from, t.to, t.reason.as_str()),
            (State::Open, State::Closed, "reset by operator")
        );
        assert!(b.reset(4 * S).is_none());
    }
}
