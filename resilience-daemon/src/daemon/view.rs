//! Snapshots: an immutable picture of the destinations, their counters (read from the mapped
//! arrays, no syscall each) and the daemon, for the control socket, the CLI, the dashboard and
//! the metrics endpoint.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{guarded::Dest, journal::Journal, Daemon};
use crate::{
    apply,
    config::Mode,
    engine::State,
    kernel::{monotonic_ns, Arrays},
    snapshot::{self, DaemonStats, DestinationStatus, ObservedStatus, Snapshot, WindowView},
};

/// Events a snapshot carries.
const SNAPSHOT_EVENTS: usize = 100;

/// What the daemon itself reports beside its destinations.
pub struct Info<'a> {
    pub started: Instant,
    pub lease: Duration,
    pub config_path: Option<&'a std::path::Path>,
}

pub fn destination(d: &mut Dest, arrays: &Arrays, now_ns: u64) -> DestinationStatus {
    let window = WindowView::new(&d.breaker.window_contents(now_ns), d.breaker.streak());
    let def = &d.def;
    // What applications see: a forced-open destination is open whatever its breaker says.
    let state = match def.mode {
        Mode::ForcedOpen => State::Open,
        _ => d.breaker.state(),
    };
    let tokens = def.rate_limit.map(|_| {
        let p = arrays
            .policy(arrays.active_set(), d.slot)
            .unwrap_or_default();
        apply::tokens_left(&p, &arrays.bucket(d.slot), now_ns)
    });
    let c = arrays.counters(d.slot);
    DestinationStatus {
        name: def.name.clone(),
        matches: def.matches.iter().map(|m| m.text.clone()).collect(),
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
        tokens,
        burst: def.rate_limit.map(|r| r.burst),
        max_concurrent: def.bulkhead.map(|b| b.max_concurrent),
        override_mode: d.override_mode,
        transitions: d.transitions,
        window,
        policy: d.policy_json.clone(),
        counts: snapshot::Counts::new(&c, Some(&d.samples), arrays.active(d.slot)),
    }
}

/// The whole picture.
pub fn snapshot(
    daemon: &mut Daemon,
    journal: &Journal,
    info: &Info<'_>,
    seq: u64,
) -> Result<Snapshot> {
    let now = monotonic_ns();
    let arrays = daemon.tables.arrays.clone();
    let destinations = daemon
        .guarded
        .dests
        .iter_mut()
        .map(|d| destination(d, &arrays, now))
        .collect();
    let mut observed: Vec<_> = daemon.tables.observed();
    observed.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    let observed = observed
        .iter()
        .map(|(ep, c)| ObservedStatus {
            address: snapshot::show_endpoint(ep),
            counts: snapshot::Counts::new(c, None, c.active()),
        })
        .collect();
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        lease_ms: info.lease.as_millis() as u64,
        seq,
        delta: false,
        removed: Vec::new(),
        destinations,
        observed,
        kernel: snapshot::kernel_stats(&daemon.tables.stats()?, daemon.intake.records),
        daemon: DaemonStats {
            uptime: info.started.elapsed().as_secs_f64(),
            reloads: daemon.life.reloads,
            reload_failures: daemon.life.reload_failures,
            policy_file: info.config_path.map(|p| p.display().to_string()),
            stale_records: daemon.intake.stale,
            reconciled: daemon.reconciled,
        },
        events: journal.last(SNAPSHOT_EVENTS),
    })
}
