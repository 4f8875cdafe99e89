//! Privileged: breaker fidelity with Resilience4j (issue "Breaker fidelity"), with real
//! connects: an ignored probe gives its permission back, a half-open breaker has a time limit,
//! the probes are judged together by their rates, a slow failure is a slow call.

use std::time::Duration;

use libc::{EAGAIN, ECONNREFUSED};
use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    listener::{closed_port, BlackHole, Server},
    privileged,
};

const SECOND: Duration = Duration::from_secs(1);

/// Resilience4j releases an ignored call's permission: with `failures = ["timeout"]`, probes
/// that are refused (ignored) leave the round open for the next connects, which close it.
#[test]
fn an_ignored_probe_gives_its_permission_back() {
    if !privileged("ignored_probe") {
        return;
    }
    let port = closed_port("127.0.0.180");
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{port}\"]\nreject_errno = \"EAGAIN\"\n[destination.breaker]\nfailures = [\"timeout\"]\nopen_duration = \"1s\"\nhalf_open_probes = 2\nmax_half_open_duration = \"0s\"\n"
    );
    let cg = Cgroup::new("ignored-probe");
    let pins = PinDir::new("ignored-probe");
    let d = Daemon::start("ignored-probe", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "api"]).0);
    d.wait_dest_for("api", 3 * SECOND, |v| v["state"] == "half_open");
    // Two probes, refused by the destination: not counted, so not a verdict.
    for _ in 0..2 {
        let got = connect_from(cg.path(), &[port], 1, SECOND);
        assert_eq!(
            got[0].errno, ECONNREFUSED,
            "the destination's refusal: {got:?}"
        );
    }
    let v = d.wait_dest("api", |v| v["failures"]["refused"] == 2);
    assert_eq!(v["state"], "half_open", "{v:#}");
    assert_eq!(v["probes_left"], 2, "both permissions back: {v:#}");
    // The service comes back: the next two connects are probes, and close the breaker.
    let server = Server::start(&port.to_string());
    let got = connect_from(cg.path(), &[server.addr], 2, SECOND);
    assert!(
        got.iter().all(|o| o.ok),
        "not rejected with EAGAIN: {got:?}"
    );
    let v = d.wait_dest("api", |v| v["state"] == "closed");
    assert_eq!(v["state"], "closed", "{v:#}");
}

/// A half-open breaker that gets no verdict (no traffic) opens again after
/// `max_half_open_duration`, with an event that says why.
#[test]
fn a_half_open_breaker_has_a_time_limit() {
    if !privileged("half_open_limit") {
        return;
    }
    let server = Server::start("127.0.0.182:0");
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{}\"]\n[destination.breaker]\nopen_duration = \"500ms\"\nmax_half_open_duration = \"1s\"\n",
        server.addr
    );
    let cg = Cgroup::new("half-open-limit");
    let pins = PinDir::new("half-open-limit");
    let d = Daemon::start("half-open-limit", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "api"]).0);
    d.wait_dest_for("api", 3 * SECOND, |v| v["state"] == "half_open");
    let v = d.wait_dest_for("api", 3 * SECOND, |v| v["state"] == "open");
    assert_eq!(v["state"], "open", "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains(
            "half_open -> open: half-open for 1s without a verdict (max_half_open_duration)"
        ),
        "{events}"
    );
}

/// Resilience4j's half-open: the probes' failure rate decides once all have ended. With 4
/// probes and 50%: F,S,S,S closes (25%); F,F,S,F admits all 4, then opens (75%).
#[test]
fn half_open_probes_are_judged_by_their_rates() {
    if !privileged("half_open_rate") {
        return;
    }
    let ok = Server::start("127.0.0.183:0");
    let bad = closed_port("127.0.0.183");
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{}\", \"{bad}\"]\nreject_errno = \"EAGAIN\"\n[destination.breaker]\nfailure_rate = 50\nopen_duration = \"1s\"\nhalf_open_probes = 4\nmax_half_open_duration = \"0s\"\n",
        ok.addr
    );
    let cg = Cgroup::new("half-open-rate");
    let pins = PinDir::new("half-open-rate");
    let d = Daemon::start("half-open-rate", cg.path(), &pins, &policy, "2s");
    let probe = |addr, expect_ok: bool| {
        let got = connect_from(cg.path(), &[addr], 1, SECOND);
        assert_eq!(got[0].ok, expect_ok, "{got:?}");
        if !expect_ok {
            assert_eq!(
                got[0].errno, ECONNREFUSED,
                "the destination's, not ours: {got:?}"
            );
        }
    };

    assert!(d.cli(&["trip", "api"]).0);
    d.wait_dest_for("api", 3 * SECOND, |v| v["state"] == "half_open");
    probe(bad, false);
    // One failed probe of four: still half-open (the "all" rule would have reopened).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.dest("api")["state"], "half_open");
    for _ in 0..3 {
        probe(ok.addr, true);
    }
    let v = d.wait_dest("api", |v| v["state"] == "closed");
    assert_eq!(v["state"], "closed", "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("4 probes: failure rate 25% < 50%"),
        "{events}"
    );

    assert!(d.cli(&["trip", "api"]).0);
    d.wait_dest_for("api", 3 * SECOND, |v| v["state"] == "half_open");
    probe(bad, false);
    probe(bad, false);
    probe(ok.addr, true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        d.dest("api")["state"],
        "half_open",
        "undecided before the 4th"
    );
    probe(bad, false);
    let v = d.wait_dest("api", |v| v["state"] == "open");
    assert_eq!(v["state"], "open", "{v:#}");
    let got = connect_from(cg.path(), &[ok.addr], 1, SECOND);
    assert_eq!(got[0].errno, EAGAIN, "open again: {got:?}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("probe failure rate 75% >= 50% over 4 probes"),
        "{events}"
    );
}

/// Resilience4j's SLOW_ERROR: a connect that times out after the slow threshold is a slow call
/// as well as a failure; slow failures alone can trip the slow-call rate.
#[test]
fn a_slow_failure_is_a_slow_call() {
    if !privileged("slow_failure") {
        return;
    }
    let ok = Server::start("127.0.0.184:0");
    let hole = BlackHole::start("127.0.0.184");
    let policy = String::from(
        "[[destination]]\nname = \"api\"\nmatch = [\"127.0.0.184\"]\n[destination.breaker]\nfailure_rate = 100\nslow_call_duration = \"100ms\"\nslow_call_rate = 50\nminimum_calls = 5\n"
    );
    let cg = Cgroup::new("slow-failure");
    let pins = PinDir::new("slow-failure");
    let d = Daemon::start("slow-failure", cg.path(), &pins, &policy, "2s");
    assert!(connect_from(cg.path(), &[ok.addr], 1, SECOND)[0].ok);
    // Three connects given up after 300 ms: failed, and slow.
    let got = connect_from(cg.path(), &[hole.addr], 3, Duration::from_millis(300));
    assert!(got.iter().all(|o| o.errno == libc::ETIMEDOUT), "{got:?}");
    let v = d.wait_dest("api", |v| v["failures"]["timeout"] == 3);
    assert_eq!(v["slow"], 3, "{v:#}");
    assert_eq!(v["window"]["slow"], 3, "{v:#}");
    assert_eq!(v["state"], "closed", "4 calls: under the minimum: {v:#}");
    // The fifth call: 60% slow >= 50%, with the failure rate (60%) under its 100%.
    assert!(connect_from(cg.path(), &[ok.addr], 1, SECOND)[0].ok);
    let v = d.wait_dest("api", |v| v["state"] == "open");
    assert_eq!(v["state"], "open", "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("slow-call rate 60% >= 50% over 5 calls"),
        "{events}"
    );
}

/// A success that completes a trip (the window reaching its minimum with the failure rate
/// already over) closes the door on the very next connect, as a failure does: the kernel
/// judges the window itself. Four refusals, then successes back to back: only the first success
/// is admitted.
#[test]
fn a_success_that_completes_a_trip_takes_effect_at_once() {
    if !privileged("success_trip") {
        return;
    }
    let ok = Server::start("127.0.0.185:0");
    let bad = closed_port("127.0.0.185");
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{}\", \"{bad}\"]\nreject_errno = \"EAGAIN\"\n[destination.breaker]\nminimum_calls = 5\nfailure_rate = 50\n",
        ok.addr
    );
    let cg = Cgroup::new("success-trip");
    let pins = PinDir::new("success-trip");
    let d = Daemon::start("success-trip", cg.path(), &pins, &policy, "2s");
    for _ in 0..3 {
        let got = connect_from(cg.path(), &[bad], 4, SECOND);
        assert!(got.iter().all(|o| o.errno == ECONNREFUSED), "{got:?}");
        let got = connect_from(cg.path(), &[ok.addr], 200, SECOND);
        let admitted = got.iter().filter(|o| o.ok).count();
        assert!(got.iter().all(|o| o.ok || o.errno == EAGAIN), "{got:?}");
        assert_eq!(
            admitted,
            1,
            "only the success that completed the trip: {:?}",
            &got[..5]
        );
        let v = d.wait_dest("api", |v| v["state"] == "open");
        assert_eq!(v["state"], "open", "{v:#}");
        assert!(d.cli(&["reset", "api"]).0);
        d.wait_dest("api", |v| v["state"] == "closed");
    }
}
