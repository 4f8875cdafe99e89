//! Fixed snapshots: the dashboard's rendering tests, the metrics tests and the frame-time
//! benchmark draw from these instead of a running daemon.

use serde_json::json;

use crate::snapshot::{
    Counts, DaemonStats, DestinationStatus, EventRecord, Failures, KernelStats, Latency,
    ObservedStatus, Rejected, Snapshot, TransitionCounts, WindowView,
};
use crate::{config::Mode, engine::State};

const T0: f64 = 1_795_000_000.0;

fn counts(attempts: u64, ok: u64, refused: u64, timeout: u64, rejected: [u64; 3]) -> Counts {
    let mut hist = vec![0u64; 24];
    // Loopback-like latencies: most under 64 µs, a tail to 1 ms.
    hist[6] = ok * 9 / 10;
    hist[10] = ok - ok * 9 / 10;
    Counts {
        attempts,
        successes: ok,
        slow: 0,
        failures: Failures {
            refused,
            timeout,
            unreachable: 0,
            reset: 0,
            local: 0,
        },
        rejected: Rejected {
            breaker: rejected[0],
            rate_limit: rejected[1],
            bulkhead: rejected[2],
            retry_budget: 0,
        },
        would_reject: Rejected {
            breaker: 0,
            rate_limit: 0,
            bulkhead: 0,
            retry_budget: 0,
        },
        fail_open: 0,
        active: 0,
        closed: ok,
        untracked: 0,
        abandoned: 0,
        latency_ms: Latency {
            p50: (ok > 0).then_some(0.05),
            p99: (ok > 0).then_some(0.9),
            mean: (ok > 0).then_some(0.12),
        },
        latency_histogram: hist,
        latency_sum_ns: ok * 120_000,
    }
}

fn window(recent: &str, streak: u32) -> WindowView {
    let calls = recent.len() as u32;
    let failures = recent.chars().filter(|c| *c == 'x').count() as u32;
    let slow = recent.chars().filter(|c| *c == 's').count() as u32;
    let rate = |n: u32| (calls > 0).then(|| f64::from(n) * 100.0 / f64::from(calls));
    WindowView {
        kind: "count".into(),
        size: 20,
        calls,
        failures,
        slow,
        failure_rate: rate(failures),
        slow_rate: rate(slow),
        consecutive_failures: streak,
        recent: recent.into(),
        seconds: Vec::new(),
    }
}

fn dest(
    name: &str,
    mode: &str,
    state: &str,
    matches: &[&str],
    counts: Counts,
) -> DestinationStatus {
    DestinationStatus {
        name: name.into(),
        service: None,
        matches: matches.iter().map(|m| m.to_string()).collect(),
        mode: Mode::from_name(mode).unwrap_or(Mode::Enforce),
        state: State::from_name(state).unwrap_or(State::Closed),
        since: 42.0,
        retry_in: None,
        resolved: Vec::new(),
        reject_errno: "ECONNREFUSED".into(),
        tokens: None,
        burst: None,
        max_concurrent: None,
        retry_budget: None,
        override_mode: None,
        probes_left: None,
        transitions: TransitionCounts::default(),
        window: window("", 0),
        policy: Some(std::sync::Arc::new(json!({
            "name": name,
            "match": matches,
            "mode": mode,
            "reject_errno": "ECONNREFUSED",
            "breaker": {"window": "count(20)", "minimum_calls": 10, "failure_rate": 50.0,
                        "open_duration_ms": 30000, "half_open_probes": 3},
            "rate_limit": null,
            "bulkhead": null,
        }))),
        counts,
    }
}

fn event(seq: u64, name: &str, from: &str, to: &str, reason: &str) -> EventRecord {
    EventRecord {
        seq,
        time: T0 + seq as f64 * 7.0,
        name: name.into(),
        from: Some(from.into()),
        to: Some(to.into()),
        message: format!("{name}: {from} -> {to}: {reason}"),
    }
}

/// Seven destinations, one in each state and mode, two observed ones, five events.
pub fn fixture() -> Snapshot {
    let mut pay = dest(
        "payments-api",
        "enforce",
        "open",
        &["payments.internal:443"],
        counts(120, 80, 36, 4, [12, 0, 0]),
    );
    pay.retry_in = Some(17.5);
    pay.since = 12.5;
    pay.window = window("", 0);
    pay.transitions.open = 1;
    pay.resolved = vec!["127.0.0.10:443".into()];
    let mut inv = dest(
        "inventory",
        "enforce",
        "half_open",
        &["127.0.0.20:8080"],
        counts(300, 290, 10, 0, [5, 0, 0]),
    );
    inv.since = 3.0;
    inv.window = window("", 0);
    inv.transitions = TransitionCounts {
        open: 1,
        half_open: 1,
        closed: 0,
    };
    let mut db = dest(
        "postgres",
        "enforce",
        "closed",
        &["127.0.0.0/24:5432"],
        counts(5000, 4990, 10, 0, [0, 0, 25]),
    );
    db.max_concurrent = Some(20);
    db.counts.active = 17;
    db.window = window("....x...............", 0);
    db.since = 3725.0;
    let mut partner = dest(
        "partner-api",
        "enforce",
        "closed",
        &["127.0.0.30:443"],
        counts(2100, 2000, 0, 0, [0, 100, 0]),
    );
    partner.tokens = Some(37);
    partner.burst = Some(100);
    partner.window = window("...s.....s", 0);
    let staging = dest(
        "staging",
        "dry-run",
        "open",
        &["127.0.0.40:80"],
        counts(50, 20, 30, 0, [0, 0, 0]),
    );
    let legacy = dest(
        "legacy",
        "disabled",
        "closed",
        &["127.0.0.50:21"],
        counts(3, 3, 0, 0, [0, 0, 0]),
    );
    let maint = dest(
        "maintenance",
        "forced-open",
        "open",
        &["127.0.0.60:9000"],
        counts(9, 0, 0, 0, [9, 0, 0]),
    );
    Snapshot {
        version: "0.1.0".into(),
        lease_ms: 2000,
        seq: 1,
        instance: 1,
        delta: false,
        removed: Vec::new(),
        removed_observed: Vec::new(),
        destinations: vec![pay, inv, db, partner, staging, legacy, maint],
        observed: vec![
            ObservedStatus {
                address: "127.0.0.1:6379".into(),
                counts: counts(800, 800, 0, 0, [0, 0, 0]),
            },
            ObservedStatus {
                address: "[::1]:8443".into(),
                counts: counts(12, 9, 3, 0, [0, 0, 0]),
            },
        ],
        kernel: KernelStats {
            fail_open: 0,
            ringbuf_lost: 0,
            untracked: 0,
            hook_errors: 0,
            outcome_records: 8419,
            stale: 0,
            observed_tracked: 0,
            quiet_successes: 25_310,
        },
        daemon: DaemonStats {
            uptime: 3725.0,
            reloads: 1,
            reload_failures: 0,
            policy_file: Some("/etc/resilience/policy.toml".into()),
            stale_records: 0,
            reconciled: 0,
            cgroup: Some("/sys/fs/cgroup/system.slice".into()),
            attached: true,
            reject_errno: true,
        },
        events: vec![
            EventRecord {
                seq: 1,
                time: T0,
                name: "reload".into(),
                from: None,
                to: None,
                message: "policy reloaded from /etc/resilience/policy.toml: 7 destinations".into(),
            },
            event(
                2,
                "inventory",
                "closed",
                "open",
                "failure rate 60% >= 50% over 10 calls; open for 30s",
            ),
            event(
                3,
                "payments-api",
                "closed",
                "open",
                "5 consecutive failures (last: refused); open for 30s",
            ),
            event(4, "inventory", "open", "half_open", "open time of 30s over"),
            event(
                5,
                "staging",
                "closed",
                "open",
                "failure rate 60% >= 50% over 50 calls; open for 30s",
            ),
        ],
        table: None,
    }
}

/// `n` destinations (a mix of the states above) and 100 observed ones: the frame benchmark's
/// load.
pub fn fixture_many(n: usize) -> Snapshot {
    let base = fixture();
    let mut s = base.clone();
    s.destinations = (0..n)
        .map(|i| {
            let mut d = base.destinations[i % base.destinations.len()].clone();
            d.name = format!("{}-{i:05}", d.name);
            d
        })
        .collect();
    s.observed = (0..100)
        .map(|i| {
            let mut o = base.observed[0].clone();
            o.address = format!("127.0.1.{}:{}", i % 250, 1000 + i);
            o
        })
        .collect();
    s
}
