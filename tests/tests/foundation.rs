//! Privileged: the real daemon, the real kernel, one child cgroup per test, loopback only.
//! Run one at a time: `cargo xtask test` (or `cargo test -p resilience-tests -- --test-threads=1`).

use std::{net::SocketAddr, time::Duration};

use nix::sys::signal::Signal;
use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, median},
    daemon::{Daemon, PinDir},
    listener::{closed_port, BlackHole, Server},
    privileged,
};

const ECONNREFUSED: i32 = libc::ECONNREFUSED;
const SECOND: Duration = Duration::from_secs(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn forced_open(name: &str, matches: &[String]) -> String {
    let m: Vec<String> = matches.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[[destination]]\nname = {name:?}\nmatch = [{}]\nmode = \"forced-open\"\n",
        m.join(", ")
    )
}

#[test]
fn forced_open_rejects_inside_the_cgroup_only() {
    if !privileged("forced_open_rejects_inside_the_cgroup_only") {
        return;
    }
    let server = Server::start("127.0.0.2:0");
    let cg = Cgroup::new("forced");
    let pins = PinDir::new("forced");
    let d = Daemon::start(
        "forced",
        cg.path(),
        &pins,
        &forced_open("blocked", &[server.addr.to_string()]),
        "2s",
    );

    let got = connect_from(cg.path(), &[server.addr], 50, SECOND);
    assert_eq!(got.len(), 50);
    assert!(
        got.iter().all(|o| !o.ok && o.errno == ECONNREFUSED),
        "{got:?}"
    );
    // Rejected by the hook before any SYN: well under a millisecond, versus a connect timeout.
    let m = median(&got);
    assert!(m < Duration::from_millis(1), "median rejection took {m:?}");
    assert_eq!(
        server.accepted(),
        0,
        "a rejected connect reached the listener"
    );

    // This test process is outside the guarded cgroup: the same address works.
    std::net::TcpStream::connect_timeout(&server.addr, SECOND)
        .expect("connect from outside the cgroup");

    let dest = d.dest("blocked");
    assert_eq!(dest["mode"], "forced-open");
    assert_eq!(dest["state"], "open");
    assert_eq!(dest["attempts"], 50);
    assert_eq!(dest["rejected"]["breaker"], 50);
    assert_eq!(dest["successes"], 0);
}

#[test]
fn cidr_port_and_exact_matching() {
    if !privileged("cidr_port_and_exact_matching") {
        return;
    }
    // Listeners on every loopback address, on two ports.
    let a = Server::start("0.0.0.0:0");
    let b = Server::start("0.0.0.0:0");
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let policy = format!(
        r#"
[[destination]]
name = "net1-on-a"
match = ["127.0.1.0/24:{pa}"]
mode = "forced-open"

[[destination]]
name = "net2-any"
match = ["127.0.2.0/24"]
mode = "forced-open"
reject_errno = "EHOSTUNREACH"

[[destination]]
name = "net2-exception"
match = ["127.0.2.9:{pb}"]
mode = "enforce"
"#
    );
    let cg = Cgroup::new("cidr");
    let pins = PinDir::new("cidr");
    let d = Daemon::start("cidr", cg.path(), &pins, &policy, "2s");

    let cases = [
        (format!("127.0.1.7:{pa}"), Some(ECONNREFUSED)), // CIDR on port a
        (format!("127.0.1.7:{pb}"), None),               // same CIDR, other port: not matched
        (format!("127.0.2.9:{pa}"), Some(libc::EHOSTUNREACH)), // CIDR on any port
        (format!("127.0.2.9:{pb}"), None),               // exact ip:port wins over the CIDR
        (format!("127.0.2.10:{pb}"), Some(libc::EHOSTUNREACH)),
        (format!("127.0.3.5:{pa}"), None), // no policy: observed, never rejected
    ];
    for (target, want) in &cases {
        let got = &connect_from(cg.path(), &[addr(target)], 1, SECOND)[0];
        match want {
            Some(errno) => assert!(!got.ok && got.errno == *errno, "{target}: {got:?}"),
            None => assert!(got.ok, "{target}: {got:?}"),
        }
    }
    let net1 = d.dest("net1-on-a");
    assert_eq!(
        (
            net1["attempts"].as_u64(),
            net1["rejected"]["breaker"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let net2 = d.dest("net2-any");
    assert_eq!(
        (
            net2["attempts"].as_u64(),
            net2["rejected"]["breaker"].as_u64()
        ),
        (Some(2), Some(1 + 1))
    );
    let exc = d.wait_dest("net2-exception", |v| v["successes"] == 1);
    assert_eq!(
        (exc["attempts"].as_u64(), exc["successes"].as_u64()),
        (Some(1), Some(1))
    );

    let status = d.status();
    let observed: Vec<&str> = status["observed"]
        .as_array()
        .expect("observed")
        .iter()
        .filter_map(|o| o["address"].as_str())
        .collect();
    for unmatched in [format!("127.0.1.7:{pb}"), format!("127.0.3.5:{pa}")] {
        assert!(
            observed.contains(&unmatched.as_str()),
            "{unmatched} not observed in {observed:?}"
        );
    }
    assert_eq!(a.wait_accepted(2) + b.wait_accepted(1), 3);
}

#[test]
fn ipv6_loopback_and_v4_mapped() {
    if !privileged("ipv6_loopback_and_v4_mapped") {
        return;
    }
    let v6 = Server::start("[::1]:0");
    let v4 = Server::start("127.0.0.3:0");
    let policy = format!(
        "{}{}",
        forced_open("v6", &[format!("[::1]:{}", v6.addr.port())]),
        forced_open("v4", &[v4.addr.to_string()])
    );
    let cg = Cgroup::new("v6");
    let pins = PinDir::new("v6");
    let d = Daemon::start("v6", cg.path(), &pins, &policy, "2s");

    let mapped = addr(&format!("[::ffff:127.0.0.3]:{}", v4.addr.port()));
    let got = connect_from(cg.path(), &[v6.addr, mapped], 1, SECOND);
    assert!(
        got.iter().all(|o| !o.ok && o.errno == ECONNREFUSED),
        "{got:?}"
    );
    assert_eq!(d.dest("v6")["rejected"]["breaker"], 1);
    // connect6 to ::ffff:127.0.0.3 is the IPv4 destination.
    assert_eq!(d.dest("v4")["rejected"]["breaker"], 1);
    assert_eq!(v6.accepted() + v4.accepted(), 0);

    // Another port on ::1 is not named by the policy.
    let other = Server::start("[::1]:0");
    assert!(connect_from(cg.path(), &[other.addr], 1, SECOND)[0].ok);
}

#[test]
fn outcome_counters_are_exact() {
    if !privileged("outcome_counters_are_exact") {
        return;
    }
    let ok = Server::start("127.0.0.4:0");
    let hole = BlackHole::start("127.0.0.4");
    let closed = closed_port("127.0.0.4");
    // Disabled: outcomes are counted, the breaker never acts.
    let policy = "[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.4\"]\nmode = \"disabled\"\n";
    let cg = Cgroup::new("outcomes");
    let pins = PinDir::new("outcomes");
    let d = Daemon::start("outcomes", cg.path(), &pins, policy, "2s");

    let good = connect_from(cg.path(), &[ok.addr], 20, SECOND);
    assert!(good.iter().all(|o| o.ok), "{good:?}");
    let refused = connect_from(cg.path(), &[closed], 7, SECOND);
    assert!(
        refused.iter().all(|o| o.errno == ECONNREFUSED),
        "{refused:?}"
    );
    let timed_out = connect_from(cg.path(), &[hole.addr], 3, Duration::from_millis(300));
    assert!(
        timed_out.iter().all(|o| o.errno == libc::ETIMEDOUT),
        "{timed_out:?}"
    );

    let v = d.wait_dest("svc", |v| v["closed"] == 20 && v["active"] == 0);
    assert_eq!(v["attempts"], 30, "{v:#}");
    assert_eq!(v["successes"], 20, "{v:#}");
    assert_eq!(v["failures"]["refused"], 7, "{v:#}");
    assert_eq!(v["failures"]["timeout"], 3, "{v:#}");
    assert_eq!(v["failures"]["unreachable"], 0, "{v:#}");
    assert_eq!(v["failures"]["reset"], 0, "{v:#}");
    assert_eq!(v["closed"], 20, "{v:#}");
    assert_eq!(v["active"], 0, "{v:#}");
    assert!(
        v["latency_ms"]["p50"].as_f64().is_some_and(|ms| ms > 0.0),
        "{v:#}"
    );
    assert_eq!(ok.wait_accepted(20), 20);
    let k = &d.status()["kernel"];
    assert_eq!(k["ringbuf_lost"], 0);
    // Every connect outcome once: 7 refused and 3 timeouts with a record each; of the 20
    // successes, those the kernel picked as latency samples (one in four, at random) with a
    // record, the rest counted in the kernel without one and fed to the breaker in bulk.
    let records = k["outcome_records"].as_u64().unwrap_or(0);
    let quiet = k["quiet_successes"].as_u64().unwrap_or(0);
    assert_eq!(records + quiet, 30, "{k:#}");
    assert!(quiet > 0 && records >= 10, "{k:#}");
}

#[test]
fn sigkill_fails_open_and_restart_continues_counters() {
    if !privileged("sigkill_fails_open_and_restart_continues_counters") {
        return;
    }
    let server = Server::start("127.0.0.5:0");
    let cg = Cgroup::new("restart");
    let pins = PinDir::new("restart");
    let mut d = Daemon::start(
        "restart",
        cg.path(),
        &pins,
        &forced_open("p", &[server.addr.to_string()]),
        "2s",
    );
    let got = connect_from(cg.path(), &[server.addr], 3, SECOND);
    assert!(got.iter().all(|o| o.errno == ECONNREFUSED), "{got:?}");

    // The kernel detaches a dead daemon's programs with its last file descriptor.
    d.kill();
    let got = connect_from(cg.path(), &[server.addr], 1, SECOND);
    assert!(got[0].ok, "connect after SIGKILL: {got:?}");

    d.restart();
    let v = d.dest("p");
    assert_eq!(
        v["rejected"]["breaker"], 3,
        "counters did not survive the restart: {v:#}"
    );
    let got = connect_from(cg.path(), &[server.addr], 1, SECOND);
    assert_eq!(got[0].errno, ECONNREFUSED, "{got:?}");
    assert_eq!(d.dest("p")["rejected"]["breaker"], 4);
    assert_eq!(d.dest("p")["attempts"], 4);
}

#[test]
fn hung_daemon_fails_open_after_its_lease() {
    if !privileged("hung_daemon_fails_open_after_its_lease") {
        return;
    }
    let server = Server::start("127.0.0.6:0");
    let cg = Cgroup::new("lease");
    let pins = PinDir::new("lease");
    let d = Daemon::start(
        "lease",
        cg.path(),
        &pins,
        &forced_open("p", &[server.addr.to_string()]),
        "300ms",
    );
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        ECONNREFUSED
    );

    // A stopped daemon keeps its programs attached but renews nothing.
    d.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(800));
    let got = connect_from(cg.path(), &[server.addr], 2, SECOND);
    d.signal(Signal::SIGCONT);
    assert!(
        got.iter().all(|o| o.ok),
        "connects while the lease was expired: {got:?}"
    );

    // Renewed: enforcing again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        ECONNREFUSED
    );
    let v = d.dest("p");
    assert_eq!(v["fail_open"], 2, "{v:#}");
    assert_eq!(v["rejected"]["breaker"], 2, "{v:#}");
    assert_eq!(d.status()["kernel"]["fail_open"], 2);
    // The operator hears of it: an event once the daemon runs again (heartbeat: lease / 4).
    std::thread::sleep(Duration::from_millis(200));
    let events = d.status()["events"].to_string();
    assert!(
        events
            .contains("fail-open: 2 connects let through unguarded (the daemon missed its lease)"),
        "{events}"
    );
}

#[test]
fn a_connect_that_fails_before_its_syn_is_counted_and_gives_its_place_back() {
    if !privileged("fails_before_syn") {
        return;
    }
    // A network namespace with nothing but a down loopback: no route anywhere, so the connect
    // fails inside connect() before any SYN (nothing leaves the namespace).
    let ns = format!("resilience-test-{}", resilience_tests::unique("ns"));
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip netns add");
    assert!(ok.success(), "ip netns add {ns} failed");
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _ns = Netns(ns.clone());
    let policy = "[[destination]]\nname = \"far\"\nmatch = [\"10.0.0.0/8\"]\nmode = \"disabled\"\n[destination.bulkhead]\nmax_concurrent = 5\n";
    let cg = Cgroup::new("nosyn");
    let pins = PinDir::new("nosyn");
    let d = Daemon::start("nosyn", cg.path(), &pins, policy, "2s");
    let out = std::process::Command::new(resilience_tests::client::connector_bin())
        .arg("--cgroup")
        .arg(cg.path())
        .args(["--netns", &ns, "--count", "8", "10.1.2.3:80"])
        .output()
        .expect("connector in netns");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(&format!("\"errno\":{}", libc::ENETUNREACH)))
            .count(),
        8,
        "{text}"
    );
    // 8 > max_concurrent: every place came back, each time.
    let v = d.wait_dest("far", |v| v["failures"]["local"] == 8);
    assert_eq!(
        v["failures"]["local"], 8,
        "no route: failed on this host: {v:#}"
    );
    assert_eq!(v["active"], 0, "{v:#}");
    assert_eq!(v["rejected"]["bulkhead"], 0, "{v:#}");
}

/// More observed destinations than one batch read of the map returns (512 a call): status
/// lists every one, each with its connect.
#[test]
fn every_observed_destination_is_listed_past_one_batch() {
    if !privileged("every_observed_destination_is_listed_past_one_batch") {
        return;
    }
    let cg = Cgroup::new("observed-many");
    let pins = PinDir::new("observed-many");
    let d = Daemon::start("observed-many", cg.path(), &pins, "", "2s");
    // Nothing listens on these: each connect is refused at once.
    let targets: Vec<SocketAddr> = (0..1300)
        .map(|i| addr(&format!("127.9.{}.{}:9", i / 250, 1 + i % 250)))
        .collect();
    let opts = resilience_tests::client::Opts {
        cycle: true,
        timeout: Some(SECOND),
        ..Default::default()
    };
    let got = resilience_tests::client::spawn(cg.path(), &targets, 1, &opts).wait();
    assert_eq!(got.len(), targets.len(), "{got:?}");
    let status = d.status();
    let listed: std::collections::HashMap<&str, u64> = status["observed"]
        .as_array()
        .expect("observed")
        .iter()
        .filter_map(|o| Some((o["address"].as_str()?, o["attempts"].as_u64()?)))
        .collect();
    for t in &targets {
        assert_eq!(
            listed.get(t.to_string().as_str()),
            Some(&1),
            "{t} not listed with its one connect ({} listed)",
            listed.len()
        );
    }
}
