//! Privileged: the kernel's accounting under unusual but legal socket use (issue "Kernel
//! accounting edge cases"): probe tickets under contention, reconnects, disconnects, Fast Open,
//! simultaneous open, tiny rates, wildcard addresses, overlapping matches, and a tracking map
//! filled from one CPU.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, disconnect, spawn, Opts},
    daemon::{run_to_end, Daemon, PinDir},
    listener::{closed_port, Server},
    privileged, Netns,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

fn hold(ms: u64) -> Opts {
    Opts {
        hold: Some(Duration::from_millis(ms)),
        timeout: Some(5 * SECOND),
        ..Opts::default()
    }
}

/// Finding 1: with the bulkhead (or the bucket) full, half-open probes taken by connects that
/// a later step rejected were given back after another CPU had driven the budget to zero, and
/// lost: the breaker stayed half-open, rejecting everything, for good.
#[test]
fn probe_tickets_always_come_back_under_contention() {
    if !privileged("probe_tickets") {
        return;
    }
    let server = Server::start("0.0.0.0:0");
    let port = server.addr.port();
    let mut policy = String::from(
        "[defaults]\nreject_errno = \"EHOSTUNREACH\"\n[defaults.breaker]\nopen_duration = \"150ms\"\n\n",
    );
    for k in 1..=3 {
        policy.push_str(&format!(
            "[[destination]]\nname = \"bulk-{k}\"\nmatch = [\"127.0.1.{k}:{port}\"]\n[destination.breaker]\nhalf_open_probes = {k}\n[destination.bulkhead]\nmax_concurrent = 2\n"
        ));
    }
    policy.push_str(&format!(
        "[[destination]]\nname = \"bucket\"\nmatch = [\"127.0.1.9:{port}\"]\n[destination.breaker]\nhalf_open_probes = 2\n[destination.rate_limit]\nrate = 0.001\nburst = 1\n"
    ));
    let cg = Cgroup::new("probes");
    let pins = PinDir::new("probes");
    let d = Daemon::start("probes", cg.path(), &pins, &policy, "2s");
    let bulk: Vec<SocketAddr> = (1..=3)
        .map(|k| format!("127.0.1.{k}:{port}").parse().expect("addr"))
        .collect();
    let bucket: SocketAddr = format!("127.0.1.9:{port}").parse().expect("addr");
    // Fill the bulkheads for the whole test, and empty the bucket.
    let holders: Vec<_> = bulk
        .iter()
        .map(|a| spawn(cg.path(), &[*a], 2, &hold(30_000)))
        .collect();
    for k in 1..=3 {
        d.wait_dest(&format!("bulk-{k}"), |v| v["active"] == 2);
    }
    assert!(connect_from(cg.path(), &[bucket], 1, SECOND)[0].ok);
    let names = ["bulk-1", "bulk-2", "bulk-3", "bucket"];
    let budget = |n: &str| {
        if n == "bucket" {
            2
        } else {
            n[5..].parse::<u64>().unwrap_or(0)
        }
    };
    let mut left: Vec<(String, Value)> = Vec::new();
    for _round in 0..20 {
        for n in names {
            assert!(d.cli(&["trip", n]).0);
        }
        for n in names {
            d.wait_dest_for(n, 3 * SECOND, |v| v["state"] == "half_open");
        }
        let mut targets = bulk.clone();
        targets.push(bucket);
        let storm: Vec<_> = (0..8)
            .map(|_| spawn(cg.path(), &targets, 5, &Opts::default()))
            .collect();
        for s in storm {
            assert!(
                s.wait().iter().all(|o| !o.ok),
                "a probe got through a full bulkhead or an empty bucket"
            );
        }
        for n in names {
            let v = d.dest(n);
            assert_eq!(v["state"], "half_open", "{v:#}");
            left.push((n.to_string(), v["probes_left"].clone()));
        }
    }
    // The budgets are whole: with room in the bulkheads again, the next connect probes.
    for h in holders {
        h.kill();
    }
    for (k, a) in bulk.iter().enumerate() {
        d.wait_dest(&format!("bulk-{}", k + 1), |v| v["active"] == 0);
        let got = connect_from(cg.path(), &[*a], 1, SECOND);
        assert!(got[0].ok, "bulk-{}: the budget was lost: {got:?}", k + 1);
    }
    for (n, v) in &left {
        assert_eq!(
            v.as_u64(),
            Some(budget(n)),
            "{n}: probes left after a round"
        );
    }
}

/// 127.255.255.255 is the loopback net's broadcast address: connect() fails with ENETUNREACH
/// before any SYN.
const UNREACHABLE: &str = "127.255.255.255:9";

/// "bcast" (the unreachable address, a bulkhead of 3) and "api" (at `api`).
fn bcast_and_api(api: SocketAddr) -> String {
    format!(
        "[[destination]]\nname = \"bcast\"\nmatch = [\"{UNREACHABLE}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 3\n[[destination]]\nname = \"api\"\nmatch = [\"{api}\"]\n"
    )
}

/// Two sockets each connect to the unreachable address, fail before their SYN, and connect
/// again to `api`: each first attempt is a local failure counted once, every place comes back.
fn reconnect_twice(d: &Daemon, cg: &Cgroup, api: SocketAddr) {
    let unreachable: SocketAddr = UNREACHABLE.parse().expect("addr");
    let got = spawn(
        cg.path(),
        &[unreachable],
        2,
        &Opts {
            reconnect_to: Some(api),
            ..Opts::default()
        },
    )
    .wait();
    assert!(got.iter().all(|o| o.ok), "the second connects: {got:?}");
    // Failed before a SYN left: a local failure, not the destination's.
    let v = d.wait_dest("bcast", |v| v["failures"]["local"] == 2);
    assert_eq!(v["failures"]["local"], 2, "{v:#}");
    assert_eq!(v["failures"]["unreachable"], 0, "{v:#}");
    assert_eq!(v["active"], 0, "{v:#}");
    let v = d.wait_dest("api", |v| v["closed"] == 2);
    assert_eq!(
        (v["successes"].as_u64(), v["active"].as_u64()),
        (Some(2), Some(0)),
        "{v:#}"
    );
    // Three more attempts fit the bulkhead of 3: no place was lost.
    let again = connect_from(cg.path(), [unreachable; 3].as_ref(), 1, SECOND);
    assert!(
        again.iter().all(|o| o.errno == libc::ENETUNREACH),
        "{again:?}"
    );
}

/// Finding 2: a second connect() on a socket whose first connect failed before its SYN
/// (ENETUNREACH) overwrote the tracking entry that held a place.
#[test]
fn a_reconnect_on_the_same_socket_gives_the_first_attempts_place_back() {
    if !privileged("reconnect_same_socket") {
        return;
    }
    let server = Server::start("127.0.0.131:0");
    let cg = Cgroup::new("reconnect");
    let pins = PinDir::new("reconnect");
    let d = Daemon::start(
        "reconnect",
        cg.path(),
        &pins,
        &bcast_and_api(server.addr),
        "2s",
    );
    reconnect_twice(&d, &cg, server.addr);
}

/// The hooks track a connection in a small map first (HOT_CONNS, 4096 entries) and in CONNS
/// once that is full. With the small map held full, a socket's first attempt is tracked in
/// CONNS; its reconnect must still find that entry (the hook skips the look only for a socket
/// that never had a cookie made) and give its place back.
#[test]
fn a_reconnect_finds_its_first_attempt_past_the_small_map() {
    if !privileged("reconnect_past_hot") {
        return;
    }
    let many = Server::start("127.0.0.229:0");
    let api = Server::start("127.0.0.230:0");
    let policy = format!(
        "[daemon]\nmax_connections = 1024\n\n[[destination]]\nname = \"many\"\nmatch = [\"{}\"]\n[destination.bulkhead]\nmax_concurrent = 100000\n{}",
        many.addr,
        bcast_and_api(api.addr)
    );
    let cg = Cgroup::new("reconnect-hot");
    let pins = PinDir::new("reconnect-hot");
    let d = Daemon::start("reconnect-hot", cg.path(), &pins, &policy, "2s");
    // 4100 held open: the small map's 4096 entries, and 4 in CONNS.
    let holders: Vec<_> = (0..41)
        .map(|_| spawn(cg.path(), &[many.addr], 100, &hold(6000)))
        .collect();
    let v = d.wait_dest_for("many", 20 * SECOND, |v| v["active"] == 4100);
    assert_eq!(v["active"], 4100, "{v:#}");
    assert_eq!(v["untracked"], 0, "{v:#}");
    reconnect_twice(&d, &cg, api.addr);
    for h in holders {
        assert!(h.wait().iter().all(|o| o.ok));
    }
    let v = d.wait_dest("many", |v| v["active"] == 0);
    assert_eq!(v["closed"], 4100, "{v:#}");
}

/// Finding 3: a TCP Fast Open connect (SYN deferred to the first write) closed before any write
/// kept its bulkhead place for good.
#[test]
fn a_fast_open_connect_closed_before_its_syn_gives_its_place_back() {
    if !privileged("fast_open") {
        return;
    }
    // A namespace of our own: Fast Open without a cookie (5 = client + no cookie needed)
    // without touching the host's settings.
    let ns = Netns::new("tfo", true);
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=5"]);
    let target: SocketAddr = "127.0.0.133:7000".parse().expect("addr");
    let policy = format!(
        "[[destination]]\nname = \"tfo\"\nmatch = [\"{target}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 3\n"
    );
    let cg = Cgroup::new("tfo");
    let pins = PinDir::new("tfo");
    let d = Daemon::start("tfo", cg.path(), &pins, &policy, "2s");
    let in_ns = |tfo_defer| Opts {
        tfo_defer,
        netns: Some(ns.0.clone()),
        ..Opts::default()
    };
    let got = spawn(cg.path(), &[target], 3, &in_ns(true)).wait();
    assert!(
        got.iter().all(|o| o.ok),
        "deferred connects return at once: {got:?}"
    );
    let v = d.wait_dest("tfo", |v| v["abandoned"] == 3);
    assert_eq!(v["abandoned"], 3, "{v:#}");
    assert_eq!(v["active"], 0, "{v:#}");
    // The bulkhead is free: a plain connect reaches the (empty) namespace and is refused by
    // its kernel, not rejected by the bulkhead.
    let got = spawn(cg.path(), &[target], 1, &in_ns(false)).wait();
    assert_eq!(got[0].errno, libc::ECONNREFUSED, "{got:?}");
}

/// `connect(AF_UNSPEC)` on an established socket (a disconnect) takes it to CLOSE while the
/// application keeps it: its place comes back at once, its connection is counted closed, and
/// the same socket may connect again, as a new attempt that holds a place of its own.
#[test]
fn a_disconnected_socket_gives_its_place_back_and_may_connect_again() {
    if !privileged("disconnect_and_reconnect") {
        return;
    }
    // A listener that never accepts: its connections stay ESTABLISHED in its queue, so the
    // disconnect is from ESTABLISHED (a server that closes would leave them in CLOSE_WAIT).
    let server = TcpListener::bind("127.0.0.234:0").expect("listener");
    let addr = server.local_addr().expect("local_addr");
    let cg = Cgroup::new("disconnect");
    let pins = PinDir::new("disconnect");
    let d = Daemon::start(
        "disconnect",
        cg.path(),
        &pins,
        &format!(
            "[[destination]]\nname = \"db\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 1\n",
            addr
        ),
        "2s",
    );
    // Sockets made in the cgroup are guarded wherever this process is later.
    let first = cg.while_in(|| TcpStream::connect(addr).expect("first connect"));
    d.wait_dest("db", |v| v["active"] == 1);
    assert_eq!(
        refused(cg.while_in(|| TcpStream::connect(addr))),
        Some(libc::EAGAIN),
        "a second connection got past a bulkhead of one"
    );

    disconnect(first.as_raw_fd()).expect("AF_UNSPEC disconnect");
    let v = d.wait_dest("db", |v| v["active"] == 0 && v["closed"] == 1);
    assert_eq!(
        (v["active"].as_u64(), v["closed"].as_u64()),
        (Some(0), Some(1)),
        "{v:#}"
    );

    // The same socket connects again: a new attempt, admitted, holding the place.
    nix::sys::socket::connect(
        first.as_raw_fd(),
        &nix::sys::socket::SockaddrStorage::from(addr),
    )
    .expect("reconnect of the same socket");
    let v = d.wait_dest("db", |v| v["active"] == 1 && v["successes"] == 2);
    assert_eq!(v["attempts"], 3, "{v:#}");
    assert_eq!(v["successes"], 2, "{v:#}");
    assert_eq!(v["rejected"]["bulkhead"], 1, "{v:#}");
    assert_eq!(
        refused(cg.while_in(|| TcpStream::connect(addr))),
        Some(libc::EAGAIN),
        "the reconnected socket holds no place"
    );

    drop(first);
    let v = d.wait_dest("db", |v| v["active"] == 0 && v["closed"] == 2);
    assert_eq!(
        (v["active"].as_u64(), v["closed"].as_u64()),
        (Some(0), Some(2)),
        "{v:#}"
    );
    let again = cg.while_in(|| TcpStream::connect(addr));
    assert!(
        again.is_ok(),
        "the place did not come back at close: {again:?}"
    );
}

/// The errno a connect failed with; None if it succeeded.
fn refused(r: std::io::Result<TcpStream>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Finding 4: a simultaneous open (here a TCP self-connect) established through the passive
/// path and was counted as a timeout: three of them tripped a breaker.
#[test]
fn a_simultaneous_open_counts_as_a_success() {
    if !privileged("simultaneous_open") {
        return;
    }
    let target = closed_port("127.0.0.134");
    let policy = format!(
        "[[destination]]\nname = \"self\"\nmatch = [\"{target}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nconsecutive_failures = 3\n"
    );
    let cg = Cgroup::new("selfconnect");
    let pins = PinDir::new("selfconnect");
    let d = Daemon::start("selfconnect", cg.path(), &pins, &policy, "2s");
    for _ in 0..3 {
        let got = spawn(
            cg.path(),
            &[target],
            1,
            &Opts {
                self_connect: true,
                ..Opts::default()
            },
        )
        .wait();
        assert!(got[0].ok, "{got:?}");
    }
    let v = d.wait_dest("self", |v| v["closed"] == 3);
    assert_eq!(v["successes"], 3, "{v:#}");
    assert_eq!(v["failures"]["timeout"], 0, "{v:#}");
    assert_eq!(v["state"], "closed", "{v:#}");
}

/// Finding 5: rates so low that the nanoseconds per token overflow admitted everything.
#[test]
fn tiny_rates_are_refused_and_the_extremes_hold() {
    if !privileged("tiny_rates") {
        return;
    }
    let dir = std::env::temp_dir().join(resilience_tests::unique("rates"));
    std::fs::create_dir_all(&dir).expect("dir");
    for (rate, burst) in [("1e-12", "1"), ("5e-11", "2")] {
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            format!("[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[destination.rate_limit]\nrate = {rate}\nburst = {burst}\n"),
        )
        .expect("write");
        let (code, _, err) = run_to_end(&["check", &file.display().to_string()], 10 * SECOND);
        assert_eq!(code, Some(1), "rate {rate}: {err}");
        assert!(
            err.contains(":5:8: rate") && err.contains("0.000001"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    // At both ends of what is allowed, the bucket does what it says.
    let slow = Server::start("127.0.0.135:0");
    let fast = Server::start("127.0.0.136:0");
    let policy = format!(
        "[[destination]]\nname = \"slowest\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = 0.000001\nburst = 1\n[[destination]]\nname = \"fastest\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = 1e9\nburst = 1\n",
        slow.addr, fast.addr
    );
    let cg = Cgroup::new("rates");
    let pins = PinDir::new("rates");
    let d = Daemon::start("rates", cg.path(), &pins, &policy, "2s");
    let got = connect_from(cg.path(), &[slow.addr], 5, SECOND);
    let errnos: Vec<i32> = got.iter().map(|o| o.errno).collect();
    assert_eq!(
        errnos,
        [0, libc::EAGAIN, libc::EAGAIN, libc::EAGAIN, libc::EAGAIN]
    );
    let got = connect_from(cg.path(), &[fast.addr], 50, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    assert_eq!(d.dest("slowest")["tokens"], 0);
}

/// Finding 6: connects to 0.0.0.0, `::` and `::ffff:0.0.0.0` reach loopback listeners without
/// meeting the loopback policy.
#[test]
fn wildcard_destinations_meet_the_loopback_policy() {
    if !privileged("wildcards") {
        return;
    }
    let server = Server::start("[::]:0");
    let port = server.addr.port();
    let policy = format!(
        "[[destination]]\nname = \"v4\"\nmatch = [\"127.0.0.1:{port}\"]\nmode = \"forced-open\"\n[[destination]]\nname = \"v6\"\nmatch = [\"[::1]:{port}\"]\nmode = \"forced-open\"\n"
    );
    let cg = Cgroup::new("wildcard");
    let pins = PinDir::new("wildcard");
    let d = Daemon::start("wildcard", cg.path(), &pins, &policy, "2s");
    let wild: Vec<SocketAddr> = [
        format!("0.0.0.0:{port}"),
        format!("[::]:{port}"),
        format!("[::ffff:0.0.0.0]:{port}"),
    ]
    .iter()
    .map(|a| a.parse().expect("addr"))
    .collect();
    let got = connect_from(cg.path(), &wild, 1, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    assert_eq!(server.accepted(), 0);
    assert_eq!(
        d.dest("v4")["rejected"]["breaker"],
        2,
        "0.0.0.0 and ::ffff:0.0.0.0"
    );
    assert_eq!(d.dest("v6")["rejected"]["breaker"], 1, "::");
    let observed = d.status()["observed"].to_string();
    assert!(
        !observed.contains("0.0.0.0") && !observed.contains("\"[::]"),
        "{observed}"
    );
}

/// Finding 7: overlapping matches across destinations passed `check` silently, and IPv4 text
/// forms such as `127.1` were taken for DNS names, escaping duplicate detection.
#[test]
fn check_states_overlaps_and_parses_every_ipv4_form() {
    let dir = std::env::temp_dir().join(resilience_tests::unique("overlap"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("p.toml");
    let f = file.display().to_string();
    std::fs::write(
        &file,
        "[[destination]]\nname = \"net\"\nmatch = [\"127.0.0.0/8\"]\n[[destination]]\nname = \"one\"\nmatch = [\"127.0.0.1:80\"]\n[[destination]]\nname = \"all-v6\"\nmatch = [\"[::/0]:443\"]\n",
    )
    .expect("write");
    let (code, out, err) = run_to_end(&["check", &f], 10 * SECOND);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("overlap: one's \"127.0.0.1:80\" lies inside net's \"127.0.0.0/8\": connects to 127.0.0.1:80 go to one (an exact address before any CIDR)"),
        "{out}"
    );
    assert!(
        out.contains("overlap: all-v6's \"[::/0]:443\" covers IPv4 too (IPv4-mapped): IPv4 connects to port 443 go to all-v6, ahead of net's \"127.0.0.0/8\" (a CIDR on the port before a CIDR on any port)"),
        "{out}"
    );
    for (a, b) in [
        ("127.1:80", "127.0.0.1:80"),
        ("127.000.000.001:80", "127.0.0.1:80"),
        ("0x7f.1:80", "127.0.0.1:80"),
    ] {
        std::fs::write(
            &file,
            format!("[[destination]]\nname = \"x\"\nmatch = [\"{b}\"]\n[[destination]]\nname = \"y\"\nmatch = [\"{a}\"]\n"),
        )
        .expect("write");
        let (code, _, err) = run_to_end(&["check", &f], 10 * SECOND);
        assert_eq!(code, Some(1), "{a}: {err}");
        assert!(
            err.contains(&format!("\"{a}\" is already matched by destination \"x\"")),
            "{a}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 8: connection tracking was a per-CPU LRU: 36,000 connections opened from one CPU
/// evicted entries that held places, and closing them all left places taken for good.
#[test]
fn tracking_holds_36000_connections_opened_from_one_cpu() {
    if !privileged("tracking_one_cpu") {
        return;
    }
    let server = Server::start("0.0.0.0:0");
    let port = server.addr.port();
    let policy = format!(
        "[[destination]]\nname = \"many\"\nmatch = [\"127.0.0.0/24:{port}\"]\n[destination.bulkhead]\nmax_concurrent = 1000000\n"
    );
    let cg = Cgroup::new("onecpu");
    let pins = PinDir::new("onecpu");
    let d = Daemon::start("onecpu", cg.path(), &pins, &policy, "2s");
    // Four processes on CPU 0, 9000 connections each (to four addresses: enough ports).
    let holders: Vec<_> = (1..=4)
        .map(|i| {
            let a: SocketAddr = format!("127.0.0.{i}:{port}").parse().expect("addr");
            spawn(
                cg.path(),
                &[a],
                9000,
                &Opts {
                    cpu: Some(0),
                    hold: Some(Duration::from_millis(3000)),
                    timeout: Some(5 * SECOND),
                    summary: true,
                    ..Opts::default()
                },
            )
        })
        .collect();
    let v = d.wait_dest_for("many", 60 * SECOND, |v| v["attempts"] == 36000);
    assert_eq!(v["attempts"], 36000, "{v:#}");
    for h in holders {
        assert_eq!(h.wait_summary(), (9000, 9000));
    }
    let v = d.wait_dest_for("many", 20 * SECOND, |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "places left with nothing open: {v:#}");
    assert_eq!(v["untracked"], 0, "{v:#}");
    assert_eq!(v["closed"], 36000, "{v:#}");
}
