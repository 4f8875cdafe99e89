//! An immutable picture of everything the daemon knows, for the control socket and the CLI.
//! Field names are part of the control protocol: add, do not rename.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use resilience_common::{
    dest::{REJECT_BREAKER, REJECT_BULKHEAD, REJECT_RATE_LIMIT, REJECT_REASONS},
    DestCounters, Endpoint, Stats,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Mode,
    engine::{State, Transition},
    latency::Samples,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub lease_ms: u64,
    /// Numbers snapshots; a client passes it back as `since` (with `instance`) to get only
    /// what changed.
    #[serde(default)]
    pub seq: u64,
    /// Changes with every daemon start: a delta is only ever relative to the same daemon.
    #[serde(default)]
    pub instance: u64,
    /// True for an answer to `since`: `destinations` and `observed` then hold only the entries
    /// that changed since that snapshot (seconds in state and tokens refilled by time alone do
    /// not count as a change), and `removed` the names that left the policy. False: everything.
    #[serde(default)]
    pub delta: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Delta: observed addresses that aged out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_observed: Vec<String>,
    pub destinations: Vec<DestinationStatus>,
    /// Destinations no policy names, busiest first.
    pub observed: Vec<ObservedStatus>,
    pub kernel: KernelStats,
    #[serde(default)]
    pub daemon: DaemonStats,
    /// The most recent state changes, reloads and errors, oldest first.
    #[serde(default)]
    pub events: Vec<EventRecord>,
    /// The answer to a `table` request: one page of the dashboard's rows (`destinations` then
    /// holds only the destination asked for in detail, `observed` nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<crate::table::Page>,
}

impl Snapshot {
    /// Bring a whole picture up to date with a delta (the answer to `since = self.seq`): the
    /// entries that changed replace theirs, the others only see time pass. A whole snapshot
    /// replaces the picture.
    pub fn apply(&mut self, d: Snapshot) {
        if !d.delta {
            *self = d;
            return;
        }
        let dt = (d.daemon.uptime - self.daemon.uptime).max(0.0);
        for x in &mut self.destinations {
            x.since += dt;
            if let Some(r) = &mut x.retry_in {
                *r = (*r - dt).max(0.0);
            }
        }
        let index: std::collections::HashMap<String, usize> = self
            .destinations
            .iter()
            .enumerate()
            .map(|(i, x)| (x.label(), i))
            .collect();
        for mut nd in d.destinations {
            match index.get(&nd.label()) {
                Some(&i) => {
                    let old = &mut self.destinations[i];
                    if nd.matches.is_empty() {
                        nd.matches = std::mem::take(&mut old.matches);
                    }
                    if nd.policy.is_none() {
                        nd.policy = old.policy.take();
                    }
                    *old = nd;
                }
                None => self.destinations.push(nd),
            }
        }
        self.destinations
            .retain(|x| !d.removed.contains(&x.label()));
        let index: std::collections::HashMap<String, usize> = self
            .observed
            .iter()
            .enumerate()
            .map(|(i, x)| (x.address.clone(), i))
            .collect();
        for no in d.observed {
            match index.get(&no.address) {
                Some(&i) => self.observed[i] = no,
                None => self.observed.push(no),
            }
        }
        self.observed
            .retain(|x| !d.removed_observed.contains(&x.address));
        // Busiest first, as the daemon sends them.
        self.observed
            .sort_by_key(|o| std::cmp::Reverse(o.counts.attempts));
        let last = self.events.last().map_or(0, |e| e.seq);
        self.events
            .extend(d.events.into_iter().filter(|e| e.seq > last));
        let extra = self.events.len().saturating_sub(100);
        self.events.drain(..extra);
        self.version = d.version;
        self.lease_ms = d.lease_ms;
        self.seq = d.seq;
        self.instance = d.instance;
        self.kernel = d.kernel;
        self.daemon = d.daemon;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DaemonStats {
    /// Seconds since the daemon started.
    pub uptime: f64,
    pub reloads: u64,
    /// Reloads refused (a bad file): the running policy stayed.
    pub reload_failures: u64,
    /// The policy file; null for the built-in default.
    pub policy_file: Option<String>,
    /// Outcome records of connections whose destination had been removed or replaced since
    /// they were admitted (dropped).
    #[serde(default)]
    pub stale_records: u64,
    /// At start: tracked connections found closed while no daemon ran (their places given
    /// back).
    #[serde(default)]
    pub reconciled: u64,
    /// The guarded cgroup's path.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Whether the programs are attached to the directory at that path now (false after the
    /// cgroup was removed, until it is created again).
    #[serde(default = "yes")]
    pub attached: bool,
    /// Whether rejected connects get the destination's `reject_errno` (false before Linux
    /// 5.18: they get EPERM).
    #[serde(default = "yes")]
    pub reject_errno: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// Numbers events in order, from 1 at daemon start.
    #[serde(default)]
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// A destination's name, "reload", "kernel" (lost records, fail-open) or "daemon" (errors).
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message: String,
}

/// Seconds since the Unix epoch, now.
pub fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventRecord {
    pub fn transition(name: &str, t: &Transition) -> EventRecord {
        EventRecord {
            seq: 0,
            time: epoch_secs(),
            name: name.to_string(),
            from: Some(t.from.as_str().to_string()),
            to: Some(t.to.as_str().to_string()),
            message: format!(
                "{name}: {} -> {}: {}",
                t.from.as_str(),
                t.to.as_str(),
                t.reason
            ),
        }
    }

    pub fn note(name: &str, message: String) -> EventRecord {
        EventRecord {
            seq: 0,
            time: epoch_secs(),
            name: name.to_string(),
            from: None,
            to: None,
            message,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestinationStatus {
    pub name: String,
    /// The service this entry guards the destination for (a destination with `services` has
    /// one entry per service); null for a destination that guards every process.
    #[serde(default)]
    pub service: Option<String>,
    /// Left out of a delta's entries (only a policy change changes it, and that brings a
    /// whole snapshot).
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
    pub mode: Mode,
    /// What applications see: a forced-open destination is `open`.
    pub state: State,
    /// Seconds in the current state.
    pub since: f64,
    /// Open: seconds until it goes half-open.
    pub retry_in: Option<f64>,
    /// What its DNS names resolved to.
    pub resolved: Vec<String>,
    pub reject_errno: String,
    /// Tokens left in the bucket; null without a rate limit.
    pub tokens: Option<u64>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
    /// The retry budget's window; null without a retry budget.
    #[serde(default)]
    pub retry_budget: Option<RetryWindow>,
    /// Half-open: probes still to be admitted (the kernel's budget); null otherwise.
    #[serde(default)]
    pub probes_left: Option<u64>,
    /// Set by `resilience disable`: the mode the operator put in force over the file's.
    #[serde(default, rename = "override")]
    pub override_mode: Option<Mode>,
    /// Transitions into each state since the destination got its slot (kept across reloads
    /// and restarts).
    #[serde(default)]
    pub transitions: TransitionCounts,
    /// The breaker's window now.
    #[serde(default)]
    pub window: WindowView,
    /// The effective policy, as `resilience check --json` prints a destination (shared, not
    /// copied, between snapshots). Left out of a delta's entries, as `match` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<std::sync::Arc<serde_json::Value>>,
    #[serde(flatten)]
    pub counts: Counts,
}

impl DestinationStatus {
    /// What tells entries apart: the name, or "name@service".
    pub fn label(&self) -> String {
        crate::config::label(&self.name, self.service.as_deref())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct TransitionCounts {
    pub open: u64,
    pub half_open: u64,
    pub closed: u64,
}

impl TransitionCounts {
    pub fn count(&mut self, to: State) {
        match to {
            State::Open => self.open += 1,
            State::HalfOpen => self.half_open += 1,
            State::Closed => self.closed += 1,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowView {
    /// "count" or "time".
    pub kind: String,
    /// Calls (count) or seconds (time) the window spans.
    pub size: u64,
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    /// Percent of the window's calls; null while it is empty.
    pub failure_rate: Option<f64>,
    pub slow_rate: Option<f64>,
    /// Consecutive counted failures since the last success.
    pub consecutive_failures: u32,
    /// Count window: its calls, oldest first ('.' success, 's' slow, 'x' failure); at most
    /// the last 200 (the totals above count them all).
    pub recent: String,
    /// Time window: [calls, failures, slow] per second, oldest first.
    pub seconds: Vec<[u32; 3]>,
}

impl WindowView {
    pub fn new(c: &crate::engine::WindowContents, streak: u32) -> WindowView {
        let t = c.totals;
        WindowView {
            kind: c.kind.to_string(),
            size: c.size,
            calls: t.calls,
            failures: t.failures,
            slow: t.slow,
            failure_rate: t.pct(t.failures),
            slow_rate: t.pct(t.slow),
            consecutive_failures: streak,
            recent: c.calls.clone(),
            seconds: c
                .seconds
                .iter()
                .map(|s| [s.calls, s.failures, s.slow])
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObservedStatus {
    pub address: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub attempts: u64,
    pub successes: u64,
    pub slow: u64,
    pub failures: Failures,
    pub rejected: Rejected,
    /// Dry-run: what would have been rejected, by reason.
    pub would_reject: Rejected,
    pub fail_open: u64,
    pub active: u64,
    pub closed: u64,
    /// Admitted connects whose outcome was never seen (tracking full, or closed while no
    /// daemon ran).
    #[serde(default)]
    pub untracked: u64,
    /// Admitted connects closed before their SYN was sent (Fast Open, never written to).
    #[serde(default)]
    pub abandoned: u64,
    pub latency_ms: Latency,
    /// Connect latency histogram: entry `i` counts connects under 2^i µs (and at least
    /// 2^(i-1) µs); the last entry takes everything slower.
    #[serde(default)]
    pub latency_histogram: Vec<u64>,
    /// Sum of the successful connects' latencies.
    #[serde(default)]
    pub latency_sum_ns: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub reset: u64,
    /// Failed before the SYN left the host (no route, no local port, refused by a program on
    /// an enclosing cgroup).
    #[serde(default)]
    pub local: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejected {
    pub breaker: u64,
    pub rate_limit: u64,
    pub bulkhead: u64,
    #[serde(default)]
    pub retry_budget: u64,
}

impl Rejected {
    /// The kernel's counts by `REJECT_*` reason, and the retry budget's (counted apart).
    pub fn of(r: &[u64; REJECT_REASONS], retry_budget: u64) -> Rejected {
        Rejected {
            breaker: r[REJECT_BREAKER],
            rate_limit: r[REJECT_RATE_LIMIT],
            bulkhead: r[REJECT_BULKHEAD],
            retry_budget,
        }
    }

    pub fn total(&self) -> u64 {
        self.breaker + self.rate_limit + self.bulkhead + self.retry_budget
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &Rejected) -> Rejected {
        Rejected {
            breaker: self.breaker.saturating_sub(earlier.breaker),
            rate_limit: self.rate_limit.saturating_sub(earlier.rate_limit),
            bulkhead: self.bulkhead.saturating_sub(earlier.bulkhead),
            retry_budget: self.retry_budget.saturating_sub(earlier.retry_budget),
        }
    }

    pub fn add(&mut self, other: &Rejected) {
        self.breaker += other.breaker;
        self.rate_limit += other.rate_limit;
        self.bulkhead += other.bulkhead;
        self.retry_budget += other.retry_budget;
    }
}

/// A retry budget's window now: original connects and retries counted in it, and the
/// retries it allows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetryWindow {
    pub originals: u64,
    pub retries: u64,
    pub allowed: u64,
    /// Retries admitted since the slot was created.
    pub retries_admitted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// From the most recent successful connects; null before the first.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Over every success the kernel counted.
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelStats {
    pub fail_open: u64,
    pub ringbuf_lost: u64,
    pub untracked: u64,
    pub hook_errors: u64,
    pub outcome_records: u64,
    /// Outcomes of connections whose destination was removed since they were admitted,
    /// dropped by the kernel.
    #[serde(default)]
    pub stale: u64,
    /// Connections to observed destinations tracked now (entries of the connection table they
    /// hold; at most half of `max_connections`, past which they are counted but not tracked).
    #[serde(default)]
    pub observed_tracked: u64,
    /// Successes of named destinations the kernel counted without a record (plain ones: no
    /// probe, not slow), fed to the breakers in bulk. With `outcome_records`, every outcome.
    #[serde(default)]
    pub quiet_successes: u64,
}

/// A quantile of the kernel's log2 latency histogram, for destinations the daemon keeps no
/// samples of (observed ones): interpolated within its bucket, as Prometheus'
/// histogram_quantile does, so within a factor of two of the truth.
pub fn histogram_quantile_ms(h: &[u64], q: f64) -> Option<f64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in h.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            // Bucket i holds [2^(i-1), 2^i) µs; bucket 0 holds [0, 1) µs.
            let lo = if i == 0 {
                0.0
            } else {
                (1u64 << (i - 1)) as f64
            };
            let hi = (1u64 << i) as f64;
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * within) / 1000.0);
        }
        below += n;
    }
    None
}

impl Counts {
    /// `retry`: the retry budget's (rejected, would_reject).
    pub fn new(
        c: &DestCounters,
        samples: Option<&Samples>,
        active: u64,
        retry: (u64, u64),
    ) -> Counts {
        Counts {
            attempts: c.attempts,
            successes: c.successes,
            slow: c.slow,
            failures: Failures {
                refused: c.refused,
                timeout: c.timeout,
                unreachable: c.unreachable,
                reset: c.reset,
                local: c.local,
            },
            rejected: Rejected::of(&c.rejected, retry.0),
            would_reject: Rejected::of(&c.would_reject, retry.1),
            fail_open: c.fail_open,
            active,
            closed: c.closed,
            untracked: c.untracked,
            abandoned: c.abandoned,
            latency_ms: Latency {
                p50: match samples {
                    Some(s) => s.quantile_or_ms(0.50, || c.latency_log2_us),
                    None => histogram_quantile_ms(&c.latency_log2_us, 0.50),
                },
                p99: match samples {
                    Some(s) => s.quantile_or_ms(0.99, || c.latency_log2_us),
                    None => histogram_quantile_ms(&c.latency_log2_us, 0.99),
                },
                mean: (c.successes > 0).then(|| c.latency_sum_ns as f64 / c.successes as f64 / 1e6),
            },
            latency_histogram: c.latency_log2_us.to_vec(),
            latency_sum_ns: c.latency_sum_ns,
        }
    }
}

pub fn kernel_stats(
    s: &Stats,
    outcome_records: u64,
    observed_tracked: u64,
    quiet_successes: u64,
) -> KernelStats {
    KernelStats {
        fail_open: s.fail_open,
        ringbuf_lost: s.ringbuf_lost,
        untracked: s.untracked,
        hook_errors: s.hook_errors,
        outcome_records,
        stale: s.stale,
        observed_tracked,
        quiet_successes,
    }
}

/// "127.0.0.1:80" or "[::1]:443".
pub fn show_endpoint(ep: &Endpoint) -> String {
    let v6 = Ipv6Addr::from(ep.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, ep.port).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_delta_replaces_what_changed_and_moves_time_on_for_the_rest() {
        let mut base = crate::fixture::fixture();
        let mut delta = base.clone();
        delta.delta = true;
        delta.seq = base.seq + 1;
        delta.daemon.uptime += 2.0;
        let mut changed = base.destinations[1].clone();
        changed.counts.attempts += 50;
        let mut sent = changed.clone();
        sent.matches.clear();
        sent.policy = None;
        delta.destinations = vec![sent];
        delta.observed = vec![];
        delta.removed_observed = vec![base.observed[1].address.clone()];
        let since_before = base.destinations[0].since;
        let retry_before = base.destinations.iter().find_map(|d| d.retry_in);
        let mut ev = base.events.last().cloned().expect("events");
        ev.seq += 1;
        ev.message = "new".into();
        delta.events = vec![base.events[0].clone(), ev];
        let n = base.destinations.len();
        let events = base.events.len();
        base.apply(delta);
        assert_eq!(base.destinations.len(), n);
        assert_eq!(base.destinations[1], changed);
        assert_eq!(base.destinations[0].since, since_before + 2.0);
        if let Some(r) = retry_before {
            let now = base.destinations.iter().find_map(|d| d.retry_in);
            assert_eq!(now, Some((r - 2.0).max(0.0)));
        }
        assert_eq!(base.observed.len(), 1, "the aged-out address is gone");
        assert_eq!(base.events.len(), events + 1, "only the new event is added");
        assert_eq!(base.seq, 2);
        assert!(!base.delta);
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::histogram_quantile_ms;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        assert_eq!(histogram_quantile_ms(&[0; 24], 0.5), None);
        // 10 connects of 16-31 µs (bucket 5), 1 of 1-2 ms (bucket 11).
        let mut h = [0u64; 24];
        h[5] = 10;
        h[11] = 1;
        let p50 = histogram_quantile_ms(&h, 0.5).expect("p50");
        assert!((0.016..0.032).contains(&p50), "{p50}");
        let p99 = histogram_quantile_ms(&h, 0.99).expect("p99");
        assert!((1.024..=2.048).contains(&p99), "{p99}");
    }
}
