//! Privileged: what the README promises, held to (issue "The README as a contract"):
//! `disabled` rejects nothing at all, counters never go backwards, one connect is one call.

use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, spawn, Opts},
    daemon::{Daemon, PinDir},
    listener::Server,
    privileged,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

/// Finding 1: "disabled: observe only, reject nothing" was false: the bucket and the bulkhead
/// still rejected, by mode and by `resilience disable`.
#[test]
fn disabled_rejects_nothing_and_counts_what_it_would_have() {
    if !privileged("disabled_bypass") {
        return;
    }
    let limited = Server::start("127.0.0.150:0");
    let bulk = Server::start("127.0.0.151:0");
    let policy = format!(
        "[[destination]]\nname = \"limited\"\nmatch = [\"{}\"]\nmode = \"disabled\"\nreject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = 0.1\nburst = 1\n[[destination]]\nname = \"order\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 1\n",
        limited.addr, bulk.addr
    );
    let cg = Cgroup::new("disabled");
    let pins = PinDir::new("disabled");
    let d = Daemon::start("disabled", cg.path(), &pins, &policy, "2s");
    let got = connect_from(cg.path(), &[limited.addr], 3, SECOND);
    assert!(got.iter().all(|o| o.ok), "disabled by mode: {got:?}");
    let v = d.dest("limited");
    assert_eq!(v["would_reject"]["rate_limit"], 2, "{v:#}");
    assert_eq!(v["rejected"]["rate_limit"], 0, "{v:#}");

    let holder = spawn(
        cg.path(),
        &[bulk.addr],
        1,
        &Opts {
            hold: Some(Duration::from_millis(4000)),
            ..Opts::default()
        },
    );
    d.wait_dest("order", |v| v["active"] == 1);
    assert_eq!(
        connect_from(cg.path(), &[bulk.addr], 1, SECOND)[0].errno,
        libc::EAGAIN,
        "full before the override"
    );
    assert!(d.cli(&["disable", "order"]).0);
    let got = connect_from(cg.path(), &[bulk.addr], 8, SECOND);
    assert!(
        got.iter().all(|o| o.ok),
        "disabled by the operator: {got:?}"
    );
    let v = d.dest("order");
    assert_eq!(v["would_reject"]["bulkhead"], 8, "{v:#}");
    assert_eq!(v["rejected"]["bulkhead"], 1, "only the one before: {v:#}");
    assert!(d.cli(&["enable", "order"]).0);
    assert_eq!(
        connect_from(cg.path(), &[bulk.addr], 1, SECOND)[0].errno,
        libc::EAGAIN,
        "enforcing again"
    );
    assert!(holder.wait()[0].ok);
}

/// Every counter of a destination, by name.
fn counters(v: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for k in [
        "attempts",
        "successes",
        "slow",
        "fail_open",
        "closed",
        "untracked",
        "abandoned",
    ] {
        out.push((k.to_string(), v[k].as_u64().unwrap_or(0)));
    }
    for (group, keys) in [
        (
            "failures",
            &["refused", "timeout", "unreachable", "reset"][..],
        ),
        ("rejected", &["breaker", "rate_limit", "bulkhead"][..]),
        ("would_reject", &["breaker", "rate_limit", "bulkhead"][..]),
        ("transitions", &["open", "half_open", "closed"][..]),
    ] {
        for k in keys {
            out.push((format!("{group}.{k}"), v[group][k].as_u64().unwrap_or(0)));
        }
    }
    out
}

fn never_less(before: &[(String, u64)], after: &[(String, u64)], what: &str) {
    for ((name, b), (_, a)) in before.iter().zip(after) {
        assert!(a >= b, "{what}: {name} went from {b} to {a}");
    }
}

/// Finding 2: counters (transitions) went back to 0 when a destination's definition changed,
/// including a disable/enable cycle.
#[test]
fn counters_never_go_backwards() {
    if !privileged("monotonic") {
        return;
    }
    let server = Server::start("127.0.0.152:0");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{}\"]\nreject_errno = \"EHOSTUNREACH\"\n",
        server.addr
    );
    let cg = Cgroup::new("monotonic");
    let pins = PinDir::new("monotonic");
    let mut d = Daemon::start("monotonic", cg.path(), &pins, &policy, "2s");
    assert!(connect_from(cg.path(), &[server.addr], 5, SECOND)
        .iter()
        .all(|o| o.ok));
    assert!(d.cli(&["trip", "svc"]).0);
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 2, SECOND)[0].errno,
        libc::EHOSTUNREACH
    );
    assert!(d.cli(&["reset", "svc"]).0);
    let mut before = counters(&d.wait_dest("svc", |v| v["closed"] == 5));
    assert_eq!(d.dest("svc")["transitions"]["open"], 1);
    let changed = format!(
        "{policy}[destination.breaker]\nfailure_rate = 90\nopen_duration = \"45s\"\n[destination.rate_limit]\nrate = 1000\n"
    );
    std::fs::write(&d.config, &changed).expect("write");
    assert!(d.cli(&["reload"]).0);
    let after = counters(&d.dest("svc"));
    never_less(&before, &after, "definition changed");
    before = after;
    assert!(d.cli(&["disable", "svc"]).0);
    assert!(d.cli(&["enable", "svc"]).0);
    let after = counters(&d.dest("svc"));
    never_less(&before, &after, "disable and enable");
    before = after;
    d.restart();
    let after = counters(&d.dest("svc"));
    never_less(&before, &after, "restart");
    assert_eq!(after, before, "nothing happened in between");
}

/// Finding 3: with "reset" among the failures, one connect that succeeded and was then reset
/// counted as two calls (a success, then a reset).
#[test]
fn one_connect_is_one_call() {
    if !privileged("one_call") {
        return;
    }
    let resets = Server::start_resetting("127.0.0.153:0");
    let other = Server::start_resetting("127.0.0.154:0");
    let policy = format!(
        "[defaults.breaker]\nfailures = [\"refused\", \"reset\"]\nminimum_calls = 2\n\n[[destination]]\nname = \"two\"\nmatch = [\"{}\"]\n[destination.breaker]\nfailure_rate = 60\n[[destination]]\nname = \"one\"\nmatch = [\"{}\"]\n[destination.breaker]\nfailure_rate = 50\n",
        resets.addr, other.addr
    );
    let cg = Cgroup::new("onecall");
    let pins = PinDir::new("onecall");
    let d = Daemon::start("onecall", cg.path(), &pins, &policy, "2s");
    let hold = Opts {
        hold: Some(Duration::from_millis(300)),
        ..Opts::default()
    };
    // Two connects, each reset after it was established: two calls, both failures.
    assert!(spawn(cg.path(), &[resets.addr], 2, &hold)
        .wait()
        .iter()
        .all(|o| o.ok));
    let v = d.wait_dest("two", |v| v["state"] == "open");
    assert_eq!(v["failures"]["reset"], 2, "{v:#}");
    assert_eq!(v["state"], "open", "2 of 2 calls failed: {v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("two: closed -> open: failure rate 100% >= 60% over 2 calls"),
        "{events}"
    );
    // One such connect is one call: below minimum_calls, nothing to judge.
    assert!(spawn(cg.path(), &[other.addr], 1, &hold).wait()[0].ok);
    let v = d.wait_dest("one", |v| v["failures"]["reset"] == 1);
    assert_eq!(v["failures"]["reset"], 1, "{v:#}");
    std::thread::sleep(Duration::from_millis(200));
    let v = d.dest("one");
    assert_eq!(v["state"], "closed", "{v:#}");
    assert_eq!(
        (
            v["window"]["calls"].as_u64(),
            v["window"]["failures"].as_u64()
        ),
        (Some(1), Some(1)),
        "{v:#}"
    );
}
