//! Privileged: how the daemon lives with cgroups. A guarded cgroup removed and created again
//! (what systemd does to a service's cgroup on restart) is guarded again.
//!
//! Two daemons on nested cgroups. The kernel runs the inner cgroup's programs
//! first, then the outer's, and a connect fails if either rejects it. Each daemon must count
//! only what it decided and what really happened: a connect the other daemon rejected is
//! neither an attempt nor a failure of the destination.

use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    listener::Server,
    privileged,
};

const SECOND: Duration = Duration::from_secs(1);

/// The outer daemon's breaker stays open for the whole test once tripped; the inner one's goes
/// half-open after 1 s.
fn policy(addr: std::net::SocketAddr, mode: &str, open: &str) -> String {
    format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{addr}\"]\nmode = \"{mode}\"\n[destination.breaker]\nconsecutive_failures = 3\nopen_duration = \"{open}\"\nhalf_open_probes = 2\nmax_half_open_duration = \"0s\"\n"
    )
}

#[test]
fn a_connect_rejected_by_the_other_daemon_counts_nowhere_else() {
    if !privileged("nested_daemons") {
        return;
    }
    let server = Server::start("127.0.0.160:0");
    let outer_cg = Cgroup::new("nested-outer");
    let inner_cg = outer_cg.child("inner");
    let outer_pins = PinDir::new("nested-outer");
    let inner_pins = PinDir::new("nested-inner");
    let outer = Daemon::start(
        "nested-outer",
        outer_cg.path(),
        &outer_pins,
        &policy(server.addr, "enforce", "1h"),
        "2s",
    );
    let inner = Daemon::start(
        "nested-inner",
        inner_cg.path(),
        &inner_pins,
        &policy(server.addr, "forced-open", "1s"),
        "2s",
    );

    // The inner daemon rejects: the outer one must not see a failure (it would trip).
    let got = connect_from(inner_cg.path(), &[server.addr], 5, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    let i = inner.dest("svc");
    assert_eq!(i["rejected"]["breaker"], 5, "{i:#}");
    std::thread::sleep(Duration::from_millis(300));
    let o = outer.dest("svc");
    assert_eq!(o["state"], "closed", "{o:#}");
    assert_eq!(o["failures"]["unreachable"], 0, "{o:#}");
    assert_eq!(
        o["attempts"], 0,
        "not an attempt the outer daemon saw go out: {o:#}"
    );
    assert_eq!(o["active"], 0, "{o:#}");

    // The outer daemon rejects: the inner one admitted the connect first, and must give its
    // place back without counting a failure.
    drop(inner);
    let inner = Daemon::start(
        "nested-inner",
        inner_cg.path(),
        &inner_pins,
        &policy(server.addr, "enforce", "1s"),
        "2s",
    );
    assert!(outer.cli(&["trip", "svc"]).0);
    let got = connect_from(inner_cg.path(), &[server.addr], 5, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    std::thread::sleep(Duration::from_millis(300));
    let i = inner.wait_dest("svc", |v| v["failures"]["local"] == 5);
    assert_eq!(i["state"], "closed", "{i:#}");
    assert_eq!(i["failures"]["unreachable"], 0, "{i:#}");
    assert_eq!(i["active"], 0, "{i:#}");

    // A probe of the inner daemon's half-open breaker that the outer daemon rejects says
    // nothing about the destination: the probe goes back into the budget, the round goes on.
    assert!(inner.cli(&["trip", "svc"]).0);
    let i = inner.wait_dest_for("svc", Duration::from_secs(4), |v| v["state"] == "half_open");
    assert_eq!(i["probes_left"], 2, "{i:#}");
    let got = connect_from(inner_cg.path(), &[server.addr], 3, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    let i = inner.wait_dest("svc", |v| v["failures"]["local"] == 8);
    assert_eq!(
        (i["state"].as_str(), i["probes_left"].as_u64()),
        (Some("half_open"), Some(2)),
        "{i:#}"
    );

    // Both admit: both count the same connects, and the inner round closes on its probes.
    assert!(outer.cli(&["reset", "svc"]).0);
    let got = connect_from(inner_cg.path(), &[server.addr], 2, SECOND);
    assert!(got.iter().all(|o| o.ok), "the two probes: {got:?}");
    let i = inner.wait_dest("svc", |v| v["state"] == "closed");
    assert_eq!(i["state"], "closed", "{i:#}");
    let got = connect_from(inner_cg.path(), &[server.addr], 2, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    inner.wait_dest("svc", |v| v["successes"] == 4);
    outer.wait_dest("svc", |v| v["successes"] == 4);
}

#[test]
fn a_guarded_cgroup_created_again_is_guarded_again() {
    if !privileged("cgroup_recreated") {
        return;
    }
    let server = Server::start("127.0.0.161:0");
    let parent = Cgroup::new("recreated");
    let service = parent.child("service");
    let pins = PinDir::new("recreated");
    let d = Daemon::start(
        "recreated",
        service.path(),
        &pins,
        &policy(server.addr, "forced-open", "1h"),
        "2s",
    );
    let rejected = |why: &str| {
        let got = connect_from(service.path(), &[server.addr], 1, SECOND);
        assert_eq!(got[0].errno, libc::ECONNREFUSED, "{why}: {got:?}");
    };
    rejected("at start");
    assert_eq!(d.status()["daemon"]["attached"], true);

    // The service stops: its cgroup goes. The daemon says so.
    std::fs::remove_dir(service.path()).expect("rmdir the service's cgroup");
    let removed = wait_for(|| d.status()["daemon"]["attached"] == false);
    assert!(removed, "{:#}", d.status()["daemon"]);
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("was removed: no connect is guarded"),
        "{events}"
    );

    // It starts again: a new cgroup at the same path, guarded within a second or two.
    std::fs::create_dir(service.path()).expect("mkdir the service's cgroup again");
    let back = wait_for(|| d.status()["daemon"]["attached"] == true);
    assert!(back, "{:#}", d.status()["daemon"]);
    rejected("after the cgroup came back");
    let v = d.dest("svc");
    assert_eq!(v["rejected"]["breaker"], 2, "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("was created again: programs attached"),
        "{events}"
    );
}

fn wait_for(pred: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
