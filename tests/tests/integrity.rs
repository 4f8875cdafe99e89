//! Privileged: state integrity across reloads, restarts and slot reuse (issue "State
//! integrity"). Each test reproduces one finding against the real daemon and kernel.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, spawn, Opts, Running},
    daemon::{run_to_end, Daemon, PinDir, StartOpts},
    listener::{BlackHole, Server},
    privileged,
};

const SECOND: Duration = Duration::from_secs(1);

fn messages(d: &Daemon) -> Vec<String> {
    d.status()["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn names(d: &Daemon) -> Vec<String> {
    d.status()["destinations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn reload(d: &Daemon, policy: &str) -> (bool, String, String) {
    std::fs::write(&d.config, policy).expect("write policy");
    d.cli(&["reload"])
}

fn dest(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[[destination]]\nname = \"{name}\"\nmatch = [\"{addr}\"]\n{extra}")
}

/// Connects that stay open `ms` after the last one.
fn hold(ms: u64) -> Opts {
    Opts {
        hold: Some(Duration::from_millis(ms)),
        timeout: Some(5 * SECOND),
        ..Opts::default()
    }
}

/// A bulkhead of 3 that rejects with EAGAIN.
const THREE_PLACES: &str =
    "reject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 3\n";

/// Three connections to `db` (at `server`, `THREE_PLACES`): one held through a restart of the
/// daemon (killed, or stopped), two that close while it is down (held `long_ms` and `short_ms`).
/// After the restart only the live one holds a place and the two are counted closed. Returns
/// the live one's client.
fn two_close_while_down(
    d: &mut Daemon,
    cg: &Cgroup,
    server: SocketAddr,
    kill: bool,
    (long_ms, short_ms): (u64, u64),
) -> Running {
    let long = spawn(cg.path(), &[server], 1, &hold(long_ms));
    let short = spawn(cg.path(), &[server], 2, &hold(short_ms));
    d.wait_dest("db", |v| v["active"] == 3);
    if kill {
        d.kill();
    } else {
        d.stop();
    }
    assert!(short.wait().iter().all(|o| o.ok));
    d.start_again();
    let v = d.wait_dest("db", |v| v["active"] == 1);
    assert_eq!(
        v["active"], 1,
        "kill={kill}: only the live connection holds a place: {v:#}"
    );
    assert_eq!(v["closed"], 2, "{v:#}");
    long
}

/// Finding 1: a reload that `check` accepted but `run` could not apply emptied the daemon, and
/// the next connect crashed it. Now `check` refuses what `run` would, and a refused reload keeps
/// everything: destinations, an open breaker, and the daemon itself.
#[test]
fn a_refused_reload_keeps_every_destination_and_the_daemon() {
    if !privileged("a_refused_reload_keeps_every_destination") {
        return;
    }
    let server = Server::start("127.0.0.101:0");
    let other: SocketAddr = "127.0.0.102:81".parse().expect("addr");
    let policy = format!(
        "{}{}",
        dest("api", server.addr, ""),
        dest(
            "other",
            other,
            "reject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nopen_duration = \"1h\"\n"
        )
    );
    let cg = Cgroup::new("refused");
    let pins = PinDir::new("refused");
    let d = Daemon::start("refused", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "other"]).0);

    // 16385 destinations: one more than a policy may have.
    let mut big = policy.clone();
    for i in 0..16383u32 {
        let ip = format!("127.{}.{}.{}", 3 + i / 65536, (i / 256) % 256, i % 256);
        big.push_str(&format!(
            "[[destination]]\nname = \"f{i}\"\nmatch = [\"{ip}:9\"]\n"
        ));
    }
    let file = d.config.with_file_name("big.toml");
    std::fs::write(&file, &big).expect("write");
    let (code, _, err) = run_to_end(&["check", &file.display().to_string()], 30 * SECOND);
    assert_eq!(code, Some(1), "check must refuse it: {err}");
    assert!(
        err.contains("more than 16384 destinations"),
        "check says why, at file:line:col: {err}"
    );

    let (ok, _, err) = reload(&d, &big);
    assert!(!ok, "the reload must be refused");
    assert!(
        err.contains("reload rejected, the running policy stays")
            && err.contains("more than 16384 destinations"),
        "{err}"
    );
    assert_eq!(names(&d), ["api", "other"]);
    assert_eq!(d.dest("other")["state"], "open");
    let got = connect_from(cg.path(), &[other], 1, SECOND);
    assert_eq!(got[0].errno, libc::EHOSTUNREACH, "still open: {got:?}");
    // The daemon is alive and acts: a connect to api, then a reset of other.
    assert!(connect_from(cg.path(), &[server.addr], 1, SECOND)[0].ok);
    let (ok, out, err) = d.cli(&["reset", "other"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "other: open -> closed");
    assert!(d.status()["destinations"].is_array());
}

/// A reload that fails inside the kernel, midway through writing the new keys, leaves the
/// running policy exactly as it was: the new keys never became visible, the old ones all work.
#[test]
fn a_reload_that_fails_midway_in_the_kernel_is_rolled_back() {
    if !privileged("a_reload_that_fails_midway") {
        return;
    }
    let a = Server::start("127.0.0.103:0");
    let b = Server::start("127.0.0.104:0");
    let cg = Cgroup::new("midway");
    let pins = PinDir::new("midway");
    let one = dest("blocked", a.addr, "mode = \"forced-open\"\n");
    // The start writes one key; the 3rd write (in the reload below) fails.
    let d = Daemon::start_with(
        "midway",
        cg.path(),
        &pins,
        &one,
        "2s",
        StartOpts {
            env: vec![("RESILIENCE_FAULT_KEY_WRITE".into(), "3".into())],
            ..StartOpts::default()
        },
    );
    let two = format!(
        "{}{}",
        dest("blocked", b.addr, "mode = \"forced-open\"\n"),
        "[[destination]]\nname = \"more\"\nmatch = [\"127.0.0.105:1\", \"127.0.0.105:2\", \"127.0.0.105:3\"]\n"
    );
    let (ok, _, err) = reload(&d, &two);
    assert!(!ok, "the injected fault must refuse the reload");
    assert!(err.contains("injected fault"), "{err}");
    // Nothing of the new policy shows, in the kernel or the daemon.
    assert_eq!(
        connect_from(cg.path(), &[a.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
    assert!(connect_from(cg.path(), &[b.addr], 1, SECOND)[0].ok);
    assert_eq!(names(&d), ["blocked"]);
    // The same file again, now without a fault: it applies whole.
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 destinations"), "{out}");
    assert!(connect_from(cg.path(), &[a.addr], 1, SECOND)[0].ok);
    assert_eq!(
        connect_from(cg.path(), &[b.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
    // One rejected connect before the reload, one after: the slot and its counters stayed.
    assert_eq!(
        d.dest("blocked")["attempts"],
        2,
        "counters kept across both"
    );
}

/// Connects pending on destination `a` (a black hole) until their client gives up.
fn pending(
    cg: &Cgroup,
    to: SocketAddr,
    n: usize,
    give_up: Duration,
) -> Vec<resilience_tests::client::Running> {
    let opts = Opts {
        timeout: Some(give_up),
        ..Opts::default()
    };
    (0..n).map(|_| spawn(cg.path(), &[to], 1, &opts)).collect()
}

/// Finding 2: a slot given to a new destination inherited the old owner's late outcomes (a
/// healthy destination tripped on another's timeouts). By reloads, then by restarts.
#[test]
fn a_reused_slot_inherits_no_outcomes_across_reloads_or_restarts() {
    if !privileged("a_reused_slot_inherits_no_outcomes") {
        return;
    }
    let hole = BlackHole::start("127.0.0.106");
    let server = Server::start("127.0.0.107:0");
    let a = dest("a", hole.addr, "");
    let b = dest(
        "b",
        server.addr,
        "[destination.breaker]\nconsecutive_failures = 3\n",
    );
    for restarts in [false, true] {
        let cg = Cgroup::new("inherit");
        let pins = PinDir::new("inherit");
        let mut d = Daemon::start("inherit", cg.path(), &pins, &a, "2s");
        let waiting = pending(&cg, hole.addr, 4, Duration::from_millis(2500));
        d.wait_dest("a", |v| v["active"] == 4);
        if restarts {
            std::fs::write(&d.config, "").expect("write");
            d.restart();
            std::fs::write(&d.config, &b).expect("write");
            d.restart();
        } else {
            assert!(reload(&d, "").0);
            std::thread::sleep(Duration::from_millis(400));
            assert!(reload(&d, &b).0);
        }
        for w in waiting {
            assert!(w.wait().iter().all(|o| o.errno == libc::ETIMEDOUT));
        }
        std::thread::sleep(Duration::from_millis(300));
        let v = d.dest("b");
        assert_eq!(v["state"], "closed", "restarts={restarts}: {v:#}");
        assert_eq!(v["attempts"], 0, "{v:#}");
        assert_eq!(v["failures"]["timeout"], 0, "{v:#}");
        assert_eq!(v["active"], 0, "{v:#}");
        assert_eq!(
            d.status()["kernel"]["stale"],
            4,
            "the four late outcomes were charged to nobody"
        );
        let got = connect_from(cg.path(), &[server.addr], 3, SECOND);
        assert!(got.iter().all(|o| o.ok), "{got:?}");
    }
}

/// Finding 3: a slot's active count wrapped below zero when the old owner's connections closed
/// while a reload gave the slot to a new destination, and the new one's bulkhead then rejected
/// everything for good.
#[test]
fn a_reused_slots_place_count_never_wraps() {
    if !privileged("a_reused_slots_place_count_never_wraps") {
        return;
    }
    let old = Server::start("127.0.0.108:0");
    let fresh = Server::start("127.0.0.109:0");
    // Thousands of other destinations make each reload take a while.
    let mut filler = String::new();
    for i in 0..3000u32 {
        filler.push_str(&format!(
            "[[destination]]\nname = \"f{i}\"\nmatch = [\"127.1.{}.{}:9\"]\n",
            i / 256,
            i % 256
        ));
    }
    let with_a = format!("{}{filler}", dest("a", old.addr, ""));
    let with_b = format!(
        "{filler}{}",
        dest(
            "b",
            fresh.addr,
            "[destination.bulkhead]\nmax_concurrent = 5\n"
        )
    );
    let cg = Cgroup::new("wrap");
    let pins = PinDir::new("wrap");
    let d = Daemon::start("wrap", cg.path(), &pins, &with_a, "2s");
    // 2000 connections, closing in groups of 20 every 10 ms for a second.
    let t0 = Instant::now();
    let holders: Vec<_> = (0..100)
        .map(|i| {
            let opts = Opts {
                hold: Some(Duration::from_millis(1200 + 10 * i)),
                timeout: Some(5 * SECOND),
                ..Opts::default()
            };
            spawn(cg.path(), &[old.addr], 20, &opts)
        })
        .collect();
    d.wait_dest_for("a", 10 * SECOND, |v| v["active"] == 2000);
    // `a` goes; then, while its connections close, `b` takes its slot.
    assert!(reload(&d, &filler).0);
    std::thread::sleep(Duration::from_millis(1800).saturating_sub(t0.elapsed()));
    let (ok, _, err) = reload(&d, &with_b);
    assert!(ok, "{err}");
    for h in holders {
        assert!(h.wait().iter().all(|o| o.ok));
    }
    std::thread::sleep(Duration::from_millis(300));
    let v = d.dest("b");
    assert_eq!(v["active"], 0, "{v:#}");
    let got = connect_from(cg.path(), &[fresh.addr], 5, SECOND);
    assert!(got.iter().all(|o| o.ok), "b's bulkhead is free: {got:?}");
}

/// Finding 4: connections that closed while the daemon was down kept their places forever.
/// Connections alive across the restart keep theirs.
#[test]
fn places_of_connections_closed_while_the_daemon_was_down_come_back() {
    if !privileged("places_closed_while_down") {
        return;
    }
    let server = Server::start("127.0.0.110:0");
    let policy = dest("db", server.addr, THREE_PLACES);
    for kill in [true, false] {
        let cg = Cgroup::new("down");
        let pins = PinDir::new("down");
        let mut d = Daemon::start("down", cg.path(), &pins, &policy, "2s");
        let long = two_close_while_down(&mut d, &cg, server.addr, kill, (6000, 1000));
        assert!(
            messages(&d).iter().any(|m| m.starts_with(
                "2 tracked connections closed while no daemon ran: 2 bulkhead places given back"
            )),
            "{:#?}",
            messages(&d)
        );
        let got = connect_from(cg.path(), &[server.addr], 1, SECOND);
        assert!(got[0].ok, "{got:?}");
        assert!(long.wait()[0].ok);
        let v = d.wait_dest("db", |v| v["active"] == 0);
        assert_eq!(v["active"], 0, "{v:#}");
    }
}

/// The same with the small tracking map full, so that the connections that close while no
/// daemon runs are tracked in CONNS: the restart finds them there and gives their places back.
#[test]
fn places_closed_while_down_come_back_past_the_small_map() {
    if !privileged("places_closed_while_down_past_hot") {
        return;
    }
    let fill = Server::start("127.0.0.231:0");
    let server = Server::start("127.0.0.232:0");
    let policy = format!(
        "{}{}",
        dest(
            "fill",
            fill.addr,
            "[destination.bulkhead]\nmax_concurrent = 100000\n"
        ),
        dest("db", server.addr, THREE_PLACES)
    );
    let cg = Cgroup::new("down-hot");
    let pins = PinDir::new("down-hot");
    let mut d = Daemon::start("down-hot", cg.path(), &pins, &policy, "2s");
    // The small map's 4096 entries, held through the restart.
    let fillers: Vec<_> = (0..32)
        .map(|_| spawn(cg.path(), &[fill.addr], 128, &hold(15000)))
        .collect();
    d.wait_dest_for("fill", 20 * SECOND, |v| v["active"] == 4096);
    let long = two_close_while_down(&mut d, &cg, server.addr, true, (9000, 2500));
    assert_eq!(d.status()["kernel"]["untracked"], 0);
    assert!(long.wait()[0].ok);
    let v = d.wait_dest("db", |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "{v:#}");
    for f in fillers {
        assert!(f.wait().iter().all(|o| o.ok));
    }
    let v = d.wait_dest("fill", |v| v["active"] == 0);
    assert_eq!(v["closed"], 4096, "{v:#}");
}

/// Finding 5: a restart forgot an open breaker and refilled the token bucket.
#[test]
fn a_restart_keeps_open_breakers_and_bucket_levels() {
    if !privileged("a_restart_keeps_verdicts") {
        return;
    }
    let server = Server::start("127.0.0.111:0");
    let bucket = Server::start("127.0.0.112:0");
    let policy = format!(
        "{}{}",
        dest(
            "tripped",
            server.addr,
            "reject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nopen_duration = \"10m\"\n"
        ),
        dest(
            "limited",
            bucket.addr,
            "reject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = 1\nburst = 10\n"
        )
    );
    let cg = Cgroup::new("keep");
    let pins = PinDir::new("keep");
    let mut d = Daemon::start("keep", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "tripped"]).0);
    let first = connect_from(cg.path(), &[bucket.addr], 10, SECOND);
    assert!(first.iter().all(|o| o.ok), "{first:?}");
    d.restart();
    let second = connect_from(cg.path(), &[bucket.addr], 5, SECOND);
    let v = d.dest("tripped");
    assert_eq!(v["state"], "open", "{v:#}");
    assert!(v["retry_in"].as_f64().is_some_and(|s| s > 500.0), "{v:#}");
    assert_eq!(v["transitions"]["open"], 1, "counts kept: {v:#}");
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::EHOSTUNREACH
    );
    assert!(
        messages(&d)
            .iter()
            .any(|m| m.starts_with("tripped: restored after restart: open, half-open in")),
        "{:#?}",
        messages(&d)
    );
    // burst + rate * t over the whole run, restart included.
    let all: Vec<_> = first.iter().chain(&second).collect();
    let admitted = all.iter().filter(|o| o.ok).count() as f64;
    let start = all.iter().map(|o| o.started_ns).min().expect("connects");
    let end = all
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.started_ns + o.elapsed.as_nanos() as u64)
        .max()
        .expect("admitted");
    let bound = 10.0 + (end - start) as f64 / 1e9;
    assert!(
        admitted <= bound.floor(),
        "{admitted} admitted > burst + rate*t = {bound:.2}: {second:?}"
    );
}

/// Finding 6: a second daemon on the same pin directory started and overwrote the first's
/// verdicts.
#[test]
fn a_second_daemon_on_the_same_pin_dir_is_refused() {
    if !privileged("a_second_daemon_is_refused") {
        return;
    }
    let server = Server::start("127.0.0.113:0");
    let cg = Cgroup::new("first");
    let other_cg = Cgroup::new("second");
    let pins = PinDir::new("shared");
    let d = Daemon::start(
        "first",
        cg.path(),
        &pins,
        &dest("blocked", server.addr, "mode = \"forced-open\"\n"),
        "2s",
    );
    let pid = d.pid().expect("pid");
    let socket = d.socket.with_file_name("second.sock");
    let (code, _, err) = run_to_end(
        &[
            "run",
            "--cgroup",
            &other_cg.path().display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--pin-dir",
            &pins.path.display().to_string(),
        ],
        20 * SECOND,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("in use by another resilience daemon (pid {pid})")),
        "{err}"
    );
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED,
        "the first daemon's verdict stands"
    );
}

/// Finding 7: connects let through by fail-open held no places, so the bulkhead admitted past
/// its maximum afterwards.
#[test]
fn fail_open_connects_hold_places() {
    if !privileged("fail_open_connects_hold_places") {
        return;
    }
    let server = Server::start("127.0.0.114:0");
    let policy = dest(
        "db",
        server.addr,
        "reject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 2\n",
    );
    let cg = Cgroup::new("failopen");
    let pins = PinDir::new("failopen");
    let d = Daemon::start("failopen", cg.path(), &pins, &policy, "300ms");
    let early = spawn(cg.path(), &[server.addr], 2, &hold(1500));
    d.wait_dest("db", |v| v["active"] == 2);
    d.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(700));
    // Past the lease: the bulkhead fails open, and these hold places all the same.
    let late = spawn(cg.path(), &[server.addr], 3, &hold(4000));
    std::thread::sleep(Duration::from_millis(300));
    d.signal(Signal::SIGCONT);
    assert!(early.wait().iter().all(|o| o.ok));
    let v = d.wait_dest("db", |v| v["active"] == 3);
    assert_eq!(v["active"], 3, "{v:#}");
    assert_eq!(v["fail_open"], 3, "{v:#}");
    let extra = connect_from(cg.path(), &[server.addr], 1, SECOND);
    assert_eq!(extra[0].errno, libc::EAGAIN, "3 open of 2: full: {extra:?}");
    assert!(late.wait().iter().all(|o| o.ok));
    let v = d.wait_dest("db", |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "{v:#}");
}

/// Finding 8: disable then enable closed an open breaker silently; a reload that replaced a
/// breaker did too.
#[test]
fn operator_actions_never_change_a_breaker_silently() {
    if !privileged("operator_actions_never_silent") {
        return;
    }
    let server = Server::start("127.0.0.115:0");
    let policy = dest(
        "svc",
        server.addr,
        "reject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nopen_duration = \"1h\"\n",
    );
    let cg = Cgroup::new("silent");
    let pins = PinDir::new("silent");
    let d = Daemon::start("silent", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "svc"]).0);
    assert!(d.cli(&["disable", "svc"]).0);
    assert!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].ok,
        "disabled admits"
    );
    assert!(d.cli(&["enable", "svc"]).0);
    let v = d.dest("svc");
    assert_eq!(v["state"], "open", "{v:#}");
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::EHOSTUNREACH
    );
    // New breaker settings: a new breaker, and an event that says so.
    let changed = policy.replace("open_duration = \"1h\"", "open_duration = \"2h\"");
    assert!(reload(&d, &changed).0);
    assert_eq!(d.dest("svc")["state"], "closed");
    assert!(
        messages(&d).iter().any(|m| m
            == "svc: open -> closed: breaker settings changed by reload: a new breaker starts closed"),
        "{:#?}",
        messages(&d)
    );
    assert_eq!(d.dest("svc")["transitions"]["closed"], 1);
}

/// Finding 9: the socket path replaced whatever file was there (the policy file itself).
#[test]
fn the_socket_path_never_replaces_anything_but_a_socket() {
    if !privileged("socket_path_safety") {
        return;
    }
    let cg = Cgroup::new("sockpath");
    let pins = PinDir::new("sockpath");
    let dir = std::env::temp_dir().join(resilience_tests::unique("sockpath"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "# precious\n").expect("write");
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&policy, &link).expect("symlink");
    for socket in [&policy, &link] {
        let (code, _, err) = run_to_end(
            &[
                "run",
                "--config",
                &policy.display().to_string(),
                "--cgroup",
                &cg.path().display().to_string(),
                "--pin-dir",
                &pins.path.display().to_string(),
                "--socket",
                &socket.display().to_string(),
            ],
            20 * SECOND,
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&policy).expect("read"),
            "# precious\n"
        );
    }
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the symlink stays"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 10: a zero lease panicked the daemon.
#[test]
fn zero_or_tiny_durations_are_refused_everywhere() {
    if !privileged("zero_durations") {
        return;
    }
    let cg = Cgroup::new("lease");
    let pins = PinDir::new("lease");
    let dir = std::env::temp_dir().join(resilience_tests::unique("lease"));
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("control.sock").display().to_string();
    let (cgroup, pin_dir) = (
        cg.path().display().to_string(),
        pins.path.display().to_string(),
    );
    // Never the root cgroup, even if a broken build got as far as attaching.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--cgroup",
            &cgroup,
            "--pin-dir",
            &pin_dir,
            "--socket",
            &socket,
        ];
        args.extend_from_slice(extra);
        run_to_end(&args, 10 * SECOND)
    };
    let (code, _, err) = run(&["--lease", "0s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("lease must be at least 100ms"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for (text, want) in [
        (
            "[daemon]\nlease = \"0.000001ms\"\n",
            ":2:9: lease must be at least 100ms",
        ),
        (
            "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[destination.breaker]\nopen_duration = \"0.5ms\"\n",
            ":5:17: open_duration must be at least 1ms",
        ),
        (
            "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[destination.breaker]\nwindow = \"time\"\nwindow_duration = \"1500ms\"\n",
            ":6:19: window_duration must be a whole number of seconds",
        ),
    ] {
        let file = dir.join("p.toml");
        std::fs::write(&file, text).expect("write");
        let f = file.display().to_string();
        let (code, _, err) = run_to_end(&["check", &f], 10 * SECOND);
        assert_eq!(code, Some(1), "{text}: {err}");
        assert!(err.contains(&format!("{f}{want}")), "{err}");
        let (code, _, err) = run(&["--config", &f]);
        assert_eq!(code, Some(1), "{text}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The daemon maps the kernel's per-slot arrays only as far as slots are in use, and maps more
/// as reloads hand out more: a destination past the first step keeps its slot and counters
/// across a reload that grows the mapping and across a restart, which finds the slots in use
/// from the pinned policy. Its resident memory shows only what is mapped.
#[test]
fn slots_past_the_first_mapped_step_keep_their_counters() {
    if !privileged("slots_past_the_first_step") {
        return;
    }
    let server = Server::start("127.0.0.224:0");
    let late = Server::start("127.0.0.225:0");
    // Destinations that nobody connects to, each on its own address.
    let filler = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| {
                let addr: SocketAddr = format!("127.1.{}.{}:1", i / 250, i % 250 + 1)
                    .parse()
                    .expect("addr");
                dest(&format!("d-{i}"), addr, "")
            })
            .collect()
    };
    let first = format!("{}{}", filler(0, 1029), dest("far", server.addr, ""));
    let cg = Cgroup::new("mapped-step");
    let pins = PinDir::new("mapped-step");
    let mut d = Daemon::start("mapped-step", cg.path(), &pins, &first, "2s");
    let got = connect_from(cg.path(), &[server.addr], 3, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    let v = d.wait_dest("far", |v| v["successes"] == 3);
    assert_eq!(
        (v["attempts"].clone(), v["successes"].clone()),
        (3.into(), 3.into()),
        "{v:#}"
    );

    // 1100 more, then one more past them: the mapping grows under a running daemon.
    let second = format!(
        "{first}{}{}",
        filler(1029, 2129),
        dest("later", late.addr, "")
    );
    let (ok, out, err) = reload(&d, &second);
    assert!(ok, "reload: {out}{err}");
    assert!(connect_from(cg.path(), &[server.addr], 2, SECOND)
        .iter()
        .all(|o| o.ok));
    assert!(connect_from(cg.path(), &[late.addr], 1, SECOND)
        .iter()
        .all(|o| o.ok));
    let v = d.wait_dest("far", |v| v["successes"] == 5);
    assert_eq!(v["attempts"], 5, "the same slot, its counts kept: {v:#}");
    let v = d.wait_dest("later", |v| v["successes"] == 1);
    assert_eq!(v["attempts"], 1, "{v:#}");
    let pid = d.pid().expect("pid");
    let mapped = resilience_tests::procfs::rss_parts(pid).bpf_maps;
    assert!(
        mapped < 16.0,
        "2131 slots in use map a fraction of the 32768-slot arrays, got {mapped:.1} MiB"
    );

    // A restart maps what the pinned policy has in use before anything reads it.
    d.restart();
    let v = d.dest("far");
    assert_eq!(
        (v["attempts"].clone(), v["successes"].clone()),
        (5.into(), 5.into()),
        "{v:#}"
    );
    let v = d.dest("later");
    assert_eq!(v["attempts"], 1, "{v:#}");
    assert!(connect_from(cg.path(), &[late.addr], 1, SECOND)
        .iter()
        .all(|o| o.ok));
    let v = d.wait_dest("later", |v| v["successes"] == 2);
    assert_eq!(v["attempts"], 2, "{v:#}");
}
