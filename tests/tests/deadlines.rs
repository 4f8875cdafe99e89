//! Privileged: connect deadlines enforced by the kernel and early slow-call detection (issue
//! "Per-service policies, kernel-enforced connect deadlines, early slow-call detection, retry
//! budgets", items 2 and 3), with blocking connects that set no timeout of their own.

use std::time::{Duration, Instant};

use libc::ETIMEDOUT;
use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, spawn, Opts, Running},
    daemon::{Daemon, PinDir},
    listener::{BlackHole, Server},
    privileged,
};

const SECOND: Duration = Duration::from_secs(1);

/// Clients left hanging on a black hole, stopped however the test ends (they would otherwise
/// outlive it by the kernel's two minutes of SYN retries and keep its cgroup busy).
struct Hanging(Vec<Running>);

impl Drop for Hanging {
    fn drop(&mut self) {
        for r in std::mem::take(&mut self.0) {
            r.kill();
        }
    }
}

fn blocking() -> Opts {
    Opts {
        blocking: true,
        ..Opts::default()
    }
}

/// A blocking connect with no application timeout, to a black hole (a listener whose accept
/// queue is full drops the SYNs): with `connect_timeout = "300ms"` it fails with ETIMEDOUT in
/// 300-450 ms and counts as a timeout. A destination without a deadline in the same policy
/// keeps the kernel's own SYN timeouts (the deadline is the destination's, not the host's).
#[test]
fn a_deadline_fails_a_hanging_connect_in_time() {
    if !privileged("connect_deadline") {
        return;
    }
    let hole = BlackHole::start("127.0.0.210");
    let other = BlackHole::start("127.0.0.211");
    let policy = format!(
        "[[destination]]\nname = \"hole\"\nmatch = [\"{}\"]\nconnect_timeout = \"300ms\"\n\n[[destination]]\nname = \"other\"\nmatch = [\"{}\"]\n",
        hole.addr, other.addr
    );
    let cg = Cgroup::new("deadline");
    let pins = PinDir::new("deadline");
    let d = Daemon::start("deadline", cg.path(), &pins, &policy, "2s");

    for _ in 0..3 {
        let got = spawn(cg.path(), &[hole.addr], 1, &blocking()).wait();
        let o = &got[0];
        assert_eq!(o.errno, ETIMEDOUT, "{got:?}");
        assert!(
            o.elapsed >= Duration::from_millis(300) && o.elapsed <= Duration::from_millis(450),
            "failed after {:?}, not in 300-450 ms",
            o.elapsed
        );
    }
    let v = d.wait_dest("hole", |v| v["failures"]["timeout"] == 3);
    assert_eq!(
        v["failures"]["timeout"], 3,
        "each counts as a timeout: {v:#}"
    );

    // No deadline there: the first SYN's 1 s timer is the kernel's, so a connect the
    // application gives up on after 1.2 s is still pending at 1.2 s.
    let got = connect_from(cg.path(), &[other.addr], 1, Duration::from_millis(1200));
    assert_eq!(got[0].errno, ETIMEDOUT, "{got:?}");
    assert!(
        got[0].elapsed >= Duration::from_millis(1150),
        "a destination without connect_timeout failed early: {got:?}"
    );
}

/// The deadline is the connect's only: once established, the socket's TCP_USER_TIMEOUT is the
/// application's again (0, or what it set), or an established connection would abort after
/// 300 ms of unacknowledged data. An application timeout shorter than the deadline stays.
#[test]
fn the_applications_user_timeout_comes_back_once_connected() {
    if !privileged("deadline_restore") {
        return;
    }
    let server = Server::start("127.0.0.212:0");
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{}\"]\nconnect_timeout = \"300ms\"\n",
        server.addr
    );
    let cg = Cgroup::new("deadline-restore");
    let pins = PinDir::new("deadline-restore");
    let _d = Daemon::start("deadline-restore", cg.path(), &pins, &policy, "2s");

    for (app, want) in [(None, 0), (Some(5000), 5000), (Some(120), 120)] {
        let opts = Opts {
            user_timeout: app.map(Duration::from_millis),
            ..blocking()
        };
        let got = spawn(cg.path(), &[server.addr], 1, &opts).wait();
        assert!(got[0].ok, "{got:?}");
        assert_eq!(
            got[0].user_timeout_ms, want,
            "TCP_USER_TIMEOUT after connecting, the application having set {app:?}"
        );
    }
}

/// Connects to a black hole that are still pending after `slow_call_duration` count as slow
/// calls at that moment: five of them trip the breaker within 500 ms, while they still hang
/// (no outcome yet), and the next connect is rejected at once.
#[test]
fn pending_connects_trip_the_breaker_as_slow_calls() {
    if !privileged("early_slow") {
        return;
    }
    let hole = BlackHole::start("127.0.0.213");
    let policy = format!(
        "[[destination]]\nname = \"hole\"\nmatch = [\"{}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nslow_call_duration = \"300ms\"\nslow_call_rate = 100\nminimum_calls = 5\n",
        hole.addr
    );
    let cg = Cgroup::new("early-slow");
    let pins = PinDir::new("early-slow");
    let d = Daemon::start("early-slow", cg.path(), &pins, &policy, "2s");

    let start = Instant::now();
    let _hanging = Hanging(
        (0..5)
            .map(|_| spawn(cg.path(), &[hole.addr], 1, &blocking()))
            .collect(),
    );
    let mut tripped = None;
    while start.elapsed() < 2 * SECOND {
        if d.dest("hole")["state"] == "open" {
            tripped = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = d.dest("hole");
    let tripped = tripped.unwrap_or_else(|| panic!("not open within 2 s: {v:#}"));
    assert!(
        tripped <= Duration::from_millis(500),
        "open after {tripped:?}, not within 500 ms"
    );
    // Still hanging: no connect has ended, so no outcome can have tripped it.
    assert_eq!(v["failures"]["timeout"], 0, "{v:#}");
    assert_eq!(v["successes"], 0, "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("5 of them still connecting"),
        "the trip says why: {events}"
    );

    let got = connect_from(cg.path(), &[hole.addr], 1, SECOND);
    assert_eq!(got[0].errno, libc::EHOSTUNREACH, "{got:?}");
    assert!(
        got[0].elapsed < Duration::from_millis(100),
        "rejected at once, not after {:?}",
        got[0].elapsed
    );
}
