//! Snapshots: an immutable picture of the destinations, their counters (read from the mapped
//! arrays, no syscall each) and the daemon, for the control socket, the CLI, the dashboard and
//! the metrics endpoint.
//!
//! Deltas: every snapshot has a `seq`. Each destination remembers a hash of what it last
//! showed and the `seq` at which that changed; a request `since` an earlier `seq` (of the same
//! daemon `instance`, with no policy change in between) gets only the destinations and observed
//! addresses that changed. Time alone (seconds in state, time to half-open) is not a change:
//! the client moves those on itself.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::Result;
use resilience_common::{DestCounters, Endpoint};

use super::{guarded::Dest, journal::Journal, Daemon};
use crate::{
    apply,
    config::Mode,
    engine::State,
    kernel::{monotonic_ns, Arrays},
    snapshot::{self, DaemonStats, DestinationStatus, ObservedStatus, Snapshot, WindowView},
};

/// Events a snapshot carries.
pub const SNAPSHOT_EVENTS: usize = 100;
/// Snapshots remembered for deltas: an older `since` gets a full answer.
const MARKS: usize = 64;

/// What the daemon itself reports beside its destinations.
pub struct Info<'a> {
    pub started: Instant,
    pub lease: Duration,
    pub config_path: Option<&'a std::path::Path>,
    pub cgroup: &'a std::path::Path,
    pub attached: bool,
    pub reject_errno: bool,
}

impl<'a> Info<'a> {
    pub fn new(
        started: Instant,
        lease: Duration,
        config_path: Option<&'a std::path::Path>,
        attachment: &'a crate::kernel::attach::Attachment,
        reject_errno: bool,
    ) -> Info<'a> {
        Info {
            started,
            lease,
            config_path,
            cgroup: attachment.cgroup(),
            attached: attachment.attached(),
            reject_errno,
        }
    }
}

/// The bookkeeping deltas need.
pub struct Revisions {
    pub instance: u64,
    seq: u64,
    /// The first snapshot after the last policy commit: no delta reaches back past it.
    policy_seq: u64,
    commits_seen: u64,
    /// (snapshot seq, the journal's latest event seq then), recent first out.
    marks: VecDeque<(u64, u64)>,
    /// Observed address -> (hash of its counters, seq it changed).
    observed: HashMap<Endpoint, (u64, u64)>,
    /// (seq, address) of observed addresses that aged out.
    gone: VecDeque<(u64, String)>,
}

impl Revisions {
    pub fn new() -> Revisions {
        Revisions {
            // Different for every start (the clock never repeats a value within a boot, and a
            // restarted daemon's pins never survive a reboot).
            instance: monotonic_ns() ^ u64::from(std::process::id()).rotate_left(40),
            seq: 0,
            policy_seq: 0,
            commits_seen: 0,
            marks: VecDeque::new(),
            observed: HashMap::new(),
            gone: VecDeque::new(),
        }
    }
}

impl Default for Revisions {
    fn default() -> Self {
        Self::new()
    }
}

/// A cheap hash of plain u64 words.
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(0x0100_0000_01b3)
}

fn counters_hash(c: &DestCounters) -> u64 {
    // SAFETY: DestCounters is #[repr(C)] with only u64 fields (checked by the layout test:
    // its size is a multiple of 8).
    let words = unsafe {
        std::slice::from_raw_parts(
            (c as *const DestCounters).cast::<u64>(),
            std::mem::size_of::<DestCounters>() / 8,
        )
    };
    words.iter().fold(0xcbf2_9ce4_8422_2325, |h, w| mix(h, *w))
}

pub fn tokens(d: &Dest, arrays: &Arrays, now_ns: u64) -> Option<u64> {
    d.def.rate_limit.map(|_| {
        let p = arrays
            .policy(arrays.active_set(), d.slot)
            .unwrap_or_default();
        apply::tokens_left(&p, &arrays.bucket(d.slot), now_ns)
    })
}

/// A hash of everything a destination's entry shows but the passing of time.
fn shown(d: &Dest, arrays: &Arrays, c: &DestCounters, now_ns: u64) -> u64 {
    let t = d.transitions;
    [
        arrays.active(d.slot),
        arrays.probes(d.slot),
        tokens(d, arrays, now_ns).unwrap_or(u64::MAX),
        d.breaker.changes(now_ns),
        d.breaker.streak().into(),
        t.open,
        t.half_open,
        t.closed,
    ]
    .into_iter()
    .fold(counters_hash(c), mix)
}

/// A destination's entry; without its static parts (`match`, `policy`) unless `whole`, and
/// without `policy` unless `with_policy` too.
pub fn destination(
    d: &mut Dest,
    arrays: &Arrays,
    c: &DestCounters,
    now_ns: u64,
    whole: bool,
    with_policy: bool,
) -> DestinationStatus {
    let window = WindowView::new(&d.breaker.window_contents(now_ns), d.breaker.streak());
    let def = &d.def;
    let state = shown_state(d);
    DestinationStatus {
        name: def.name.clone(),
        service: def.service.clone(),
        matches: if whole {
            def.matches.iter().map(|m| m.text.clone()).collect()
        } else {
            Vec::new()
        },
        mode: def.mode,
        state,
        since: now_ns.saturating_sub(d.breaker.since_ns()) as f64 / 1e9,
        retry_in: d
            .breaker
            .open_until_ns()
            .filter(|_| def.mode != Mode::ForcedOpen)
            .map(|t| t.saturating_sub(now_ns) as f64 / 1e9),
        resolved: d.resolved.iter().map(snapshot::show_endpoint).collect(),
        reject_errno: def.reject_errno.name().to_string(),
        tokens: tokens(d, arrays, now_ns),
        burst: def.rate_limit.map(|r| r.burst),
        max_concurrent: def.bulkhead.map(|b| b.max_concurrent),
        override_mode: d.override_mode,
        probes_left: (d.breaker.state() == State::HalfOpen && def.mode != Mode::ForcedOpen)
            .then(|| arrays.probes(d.slot)),
        transitions: d.transitions,
        window,
        // Built when asked for: kept per destination it was most of the daemon's heap.
        policy: (whole && with_policy)
            .then(|| std::sync::Arc::new(crate::config::destination_json(def))),
        retry_budget: def
            .retry_budget
            .map(|_| arrays.retry_window(d.slot, now_ns)),
        counts: snapshot::Counts::new(
            c,
            Some(&d.samples),
            arrays.active(d.slot),
            arrays.retry_rejections(d.slot),
        ),
    }
}

/// The state applications see: a forced-open destination is open whatever its breaker says.
pub fn shown_state(d: &Dest) -> State {
    match d.def.mode {
        Mode::ForcedOpen => State::Open,
        _ => d.breaker.state(),
    }
}

/// The picture: whole, or (with `since` from the same `instance`) what changed since then.
pub fn snapshot(
    daemon: &mut Daemon,
    revs: &mut Revisions,
    journal: &Journal,
    info: &Info<'_>,
    since: Option<u64>,
    instance: Option<u64>,
    with_policy: bool,
) -> Result<Snapshot> {
    let now = monotonic_ns();
    revs.seq += 1;
    let seq = revs.seq;
    if daemon.life.commits != revs.commits_seen {
        revs.commits_seen = daemon.life.commits;
        revs.policy_seq = seq;
    }
    let since = since.filter(|&s| {
        instance == Some(revs.instance)
            && s >= revs.policy_seq
            && s < seq
            && revs.marks.iter().any(|&(m, _)| m == s)
    });
    let changed = |rev: u64| since.is_none_or(|s| rev > s);

    let arrays = daemon.tables.arrays.clone();
    let mut destinations = Vec::new();
    for d in &mut daemon.guarded.dests {
        let c = arrays.counters(d.slot);
        let h = shown(d, &arrays, &c, now);
        if h != d.shown || d.rev == 0 {
            d.shown = h;
            d.rev = seq;
        }
        if changed(d.rev) {
            destinations.push(destination(
                d,
                &arrays,
                &c,
                now,
                since.is_none(),
                with_policy,
            ));
        }
    }

    let mut observed_now = daemon.tables.observed();
    observed_now.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    let mut present = HashMap::with_capacity(observed_now.len());
    let mut observed = Vec::new();
    for (ep, c) in &observed_now {
        let h = counters_hash(c);
        let rev = match revs.observed.get(ep) {
            Some(&(old, rev)) if old == h => rev,
            _ => seq,
        };
        present.insert(*ep, (h, rev));
        if changed(rev) {
            observed.push(ObservedStatus {
                address: snapshot::show_endpoint(ep),
                counts: snapshot::Counts::new(c, None, c.active(), (0, 0)),
            });
        }
    }
    for ep in revs.observed.keys() {
        if !present.contains_key(ep) {
            revs.gone.push_back((seq, snapshot::show_endpoint(ep)));
        }
    }
    revs.observed = present;
    while revs
        .gone
        .front()
        .is_some_and(|(s, _)| seq - s > MARKS as u64)
    {
        revs.gone.pop_front();
    }
    let removed_observed = match since {
        Some(s) => revs
            .gone
            .iter()
            .filter(|(g, _)| *g > s)
            .map(|(_, a)| a.clone())
            .collect(),
        None => Vec::new(),
    };

    let events = match since.and_then(|s| revs.marks.iter().find(|(m, _)| *m == s)) {
        Some(&(_, last)) => journal
            .last(SNAPSHOT_EVENTS)
            .into_iter()
            .filter(|e| e.seq > last)
            .collect(),
        None => journal.last(SNAPSHOT_EVENTS),
    };
    revs.marks.push_back((seq, journal.latest_seq()));
    if revs.marks.len() > MARKS {
        revs.marks.pop_front();
    }
    let mut s = header(daemon, info, revs.instance)?;
    s.seq = seq;
    s.delta = since.is_some();
    s.removed_observed = removed_observed;
    s.destinations = destinations;
    s.observed = observed;
    s.events = events;
    Ok(s)
}

/// A snapshot with what the daemon reports of itself and nothing else yet.
pub fn header(daemon: &Daemon, info: &Info<'_>, instance: u64) -> Result<Snapshot> {
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        lease_ms: info.lease.as_millis() as u64,
        seq: 0,
        instance,
        delta: false,
        removed: Vec::new(),
        removed_observed: Vec::new(),
        destinations: Vec::new(),
        observed: Vec::new(),
        kernel: snapshot::kernel_stats(
            &daemon.tables.stats()?,
            daemon.intake.records,
            daemon.tables.arrays.obs_live.get(0).unwrap_or(0),
            daemon.quiet.fed,
        ),
        daemon: DaemonStats {
            uptime: info.started.elapsed().as_secs_f64(),
            reloads: daemon.life.reloads,
            reload_failures: daemon.life.reload_failures,
            policy_file: info.config_path.map(|p| p.display().to_string()),
            stale_records: daemon.intake.stale,
            reconciled: daemon.reconciled,
            cgroup: Some(info.cgroup.display().to_string()),
            attached: info.attached,
            reject_errno: info.reject_errno,
        },
        events: Vec::new(),
        table: None,
    })
}
