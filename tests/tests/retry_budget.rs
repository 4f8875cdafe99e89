//! Privileged: the retry budget (issue "Per-service policies, kernel-enforced connect
//! deadlines, early slow-call detection, retry budgets", item 4), with a real retry storm.

use std::time::Duration;

use libc::{EAGAIN, ECONNREFUSED};
use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts},
    daemon::{Daemon, PinDir},
    listener::{closed_port, Server},
    privileged,
};

/// A destination that refuses half the connects (one of its two addresses has no listener),
/// and a client that retries each failure at once, three times: the retries admitted stay
/// within `max(min_per_second * window, ratio * originals)`, the rest are rejected with the
/// destination's errno and counted under reason `retry_budget`.
#[test]
fn a_retry_storm_is_held_to_the_budget() {
    if !privileged("retry_budget") {
        return;
    }
    let server = Server::start("127.0.0.214:0");
    let refusing = closed_port("127.0.0.214");
    // Only local failures count for the breaker, so that it stays closed through the storm.
    let metrics = closed_port("127.0.0.1");
    let policy = format!(
        "[daemon]\nmetrics = \"{metrics}\"\n\n[[destination]]\nname = \"api\"\nmatch = [\"{}\", \"{refusing}\"]\nreject_errno = \"EAGAIN\"\n[destination.breaker]\nfailures = [\"local\"]\n[destination.retry_budget]\nratio = 0.2\nmin_per_second = 1\nwindow = \"20s\"\nretry_after_failure = \"30ms\"\n",
        server.addr
    );
    let cg = Cgroup::new("retry-budget");
    let pins = PinDir::new("retry-budget");
    let d = Daemon::start("retry-budget", cg.path(), &pins, &policy, "2s");

    // 25 rounds, 60 ms apart: the listener (an original), the refusing address (an original:
    // the last failure is more than 30 ms old), then its three retries at once.
    let opts = Opts {
        cycle: true,
        interval: Some(Duration::from_millis(60)),
        retries: 3,
        timeout: Some(Duration::from_secs(1)),
        ..Opts::default()
    };
    let got = spawn(cg.path(), &[server.addr, refusing], 25, &opts).wait();
    let to_refusing: Vec<_> = got
        .iter()
        .filter(|o| o.addr == refusing.to_string())
        .collect();
    let originals = got.len() - to_refusing.len() + 25;
    let refused = to_refusing
        .iter()
        .filter(|o| o.errno == ECONNREFUSED)
        .count();
    let rejected = to_refusing.iter().filter(|o| o.errno == EAGAIN).count();
    let admitted_retries = refused - 25;
    // min_per_second * window = 20; ratio * 50 originals = 10.
    let bound = 20.max(originals / 5);
    eprintln!(
        "originals {originals}, retries admitted {admitted_retries} (bound {bound}), rejected {rejected}"
    );
    assert_eq!(originals, 50, "{got:?}");
    assert_eq!(refused + rejected, to_refusing.len(), "{to_refusing:?}");
    assert!(
        admitted_retries <= bound,
        "{admitted_retries} retries admitted, over the bound of {bound}"
    );
    // Every retry was attempted three times until rejected: most of the 75 were rejected.
    assert!(
        rejected >= 75 - bound,
        "{rejected} rejected of 75 retries with {admitted_retries} admitted"
    );
    let v = d.wait_dest("api", |v| {
        v["rejected"]["retry_budget"].as_u64() == Some(rejected as u64)
    });
    assert_eq!(
        v["rejected"]["retry_budget"], rejected as u64,
        "status counts them under the reason: {v:#}"
    );
    assert_eq!(v["rejected"]["breaker"], 0, "{v:#}");
    assert_eq!(
        v["retry_budget"]["retries"], admitted_retries as u64,
        "{v:#}"
    );
    assert_eq!(v["retry_budget"]["originals"], originals as u64, "{v:#}");
    let body = resilience_tests::scrape_metrics(metrics);
    let line = format!(
        "resilience_connect_rejected_total{{destination=\"api\",reason=\"retry_budget\"}} {rejected}"
    );
    assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
}

/// The daemon maps a slot's retry budget entry only while the slot has (or had) a budget: what
/// a budget rejected stays in status after a reload removes the budget and after a restart
/// (found in the pinned map), and a destination that never had one shows none.
#[test]
fn retry_rejections_outlive_their_budget() {
    if !privileged("retry_budget") {
        return;
    }
    let refusing = closed_port("127.0.0.227");
    let plain = closed_port("127.0.0.228");
    let metrics = closed_port("127.0.0.1");
    // No retry is ever within budget (ratio 0, no minimum): each one is rejected.
    let budget = "[destination.retry_budget]\nratio = 0\nmin_per_second = 0\nwindow = \"20s\"\nretry_after_failure = \"30ms\"\n";
    let policy = |budget: &str| {
        format!(
            "[daemon]\nmetrics = \"{metrics}\"\n\n[[destination]]\nname = \"api\"\nmatch = [\"{refusing}\"]\nreject_errno = \"EAGAIN\"\n[destination.breaker]\nfailures = [\"local\"]\n{budget}\n[[destination]]\nname = \"plain\"\nmatch = [\"{plain}\"]\n[destination.breaker]\nfailures = [\"local\"]\n"
        )
    };
    let cg = Cgroup::new("retry-outlive");
    let pins = PinDir::new("retry-outlive");
    let mut d = Daemon::start("retry-outlive", cg.path(), &pins, &policy(budget), "2s");

    // 5 rounds, 60 ms apart: an original (refused), then its two retries at once (rejected).
    let opts = Opts {
        cycle: true,
        interval: Some(Duration::from_millis(60)),
        retries: 2,
        timeout: Some(Duration::from_secs(1)),
        ..Opts::default()
    };
    let got = spawn(cg.path(), &[refusing, plain], 5, &opts).wait();
    let rejected = got.iter().filter(|o| o.errno == EAGAIN).count();
    assert_eq!(rejected, 10, "{got:?}");
    let counted = |d: &Daemon, name: &str| d.dest(name)["rejected"]["retry_budget"].clone();
    d.wait_dest("api", |v| v["rejected"]["retry_budget"] == 10);
    assert_eq!(counted(&d, "plain"), 0);

    std::fs::write(&d.config, policy("")).expect("write policy");
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    let v = d.wait_dest("api", |v| v["retry_budget"].is_null());
    assert_eq!(v["rejected"]["retry_budget"], 10, "after the reload: {v:#}");

    d.restart();
    let v = d.dest("api");
    assert_eq!(
        v["rejected"]["retry_budget"], 10,
        "after the restart: {v:#}"
    );
    assert_eq!(counted(&d, "plain"), 0);
    let body = resilience_tests::scrape_metrics(metrics);
    let line = "resilience_connect_rejected_total{destination=\"api\",reason=\"retry_budget\"} 10";
    assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
}
