//! Privileged: breakers, token buckets, bulkheads, dry-run and reloads, against the real
//! daemon and kernel (child cgroup per test, loopback only).

use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::{connect_from, spawn, Opts},
    daemon::{Daemon, PinDir},
    listener::{closed_port, BlackHole, Server},
    privileged,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);
const HOOK_ERRNO: i32 = libc::EHOSTUNREACH;

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == want
}

fn events(d: &Daemon) -> Vec<String> {
    d.status()["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn breaker_opens_on_refusals_and_rejects_without_reaching_the_destination() {
    if !privileged("breaker_opens_on_refusals") {
        return;
    }
    let target = closed_port("127.0.0.10");
    let policy = format!(
        r#"
[[destination]]
name = "svc"
match = ["{target}"]
reject_errno = "EHOSTUNREACH"
[destination.breaker]
minimum_calls = 4
failure_rate = 50
open_duration = "30s"
"#
    );
    let cg = Cgroup::new("trip");
    let pins = PinDir::new("trip");
    let d = Daemon::start("trip", cg.path(), &pins, &policy, "2s");

    let got = connect_from(cg.path(), &[target], 4, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    let v = d.wait_dest("svc", state_is("open"));
    assert_eq!(v["state"], "open", "{v:#}");
    assert_eq!(v["failures"]["refused"], 4);

    // Now something listens there; the breaker keeps connects from reaching it.
    let server = Server::start(&target.to_string());
    let got = connect_from(cg.path(), &[target], 20, SECOND);
    assert!(got.iter().all(|o| o.errno == HOOK_ERRNO), "{got:?}");
    let m = resilience_tests::client::median(&got);
    assert!(m < Duration::from_millis(1), "median rejection took {m:?}");
    assert_eq!(server.accepted(), 0);
    let v = d.dest("svc");
    assert_eq!(v["rejected"]["breaker"], 20);
    assert!(
        v["retry_in"]
            .as_f64()
            .is_some_and(|s| s > 20.0 && s <= 30.0),
        "{v:#}"
    );
    assert!(
        events(&d).iter().any(
            |e| e == "svc: closed -> open: failure rate 100% >= 50% over 4 calls; open for 30s"
        ),
        "{:#?}",
        events(&d)
    );
}

#[test]
fn open_goes_half_open_without_traffic_and_closes_after_good_probes() {
    if !privileged("half_open_then_closed") {
        return;
    }
    let server = Server::start("127.0.0.11:0");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{}\"]\n[destination.breaker]\nopen_duration = \"500ms\"\nhalf_open_probes = 2\nhalf_open_rule = \"all\"\nmax_half_open_duration = \"0s\"\n",
        server.addr
    );
    let cg = Cgroup::new("halfopen");
    let pins = PinDir::new("halfopen");
    let d = Daemon::start("halfopen", cg.path(), &pins, &policy, "2s");
    let (ok, out, err) = d.cli(&["trip", "svc"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "svc: closed -> open");
    // No connect at all: the open time passing is enough.
    let v = d.wait_dest_for("svc", 3 * SECOND, state_is("half_open"));
    assert_eq!(v["state"], "half_open", "{v:#}");

    let got = connect_from(cg.path(), &[server.addr], 2, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    let v = d.wait_dest("svc", state_is("closed"));
    assert_eq!(v["state"], "closed", "{v:#}");
    let ev = events(&d);
    assert!(
        ev.iter()
            .any(|e| e == "svc: open -> half_open: open time of 500ms over"),
        "{ev:#?}"
    );
    assert!(
        ev.iter()
            .any(|e| e == "svc: half_open -> closed: 2 of 2 probes succeeded"),
        "{ev:#?}"
    );
    // Closed: everything passes again.
    assert!(connect_from(cg.path(), &[server.addr], 5, SECOND)
        .iter()
        .all(|o| o.ok));
}

#[test]
fn half_open_admits_exactly_the_probes_and_a_failed_probe_reopens_for_longer() {
    if !privileged("probes_exact") {
        return;
    }
    // Probes to a black hole hang until the client gives up: none completes during the burst.
    let hole = BlackHole::start("127.0.0.12");
    let policy = format!(
        r#"
[[destination]]
name = "svc"
match = ["{}"]
reject_errno = "EHOSTUNREACH"
[destination.breaker]
open_duration = "400ms"
open_duration_max = "10s"
half_open_probes = 3
half_open_rule = "all"
max_half_open_duration = "0s"
"#,
        hole.addr
    );
    let cg = Cgroup::new("probes");
    let pins = PinDir::new("probes");
    let d = Daemon::start("probes", cg.path(), &pins, &policy, "2s");
    assert!(d.cli(&["trip", "svc"]).0);
    d.wait_dest_for("svc", 3 * SECOND, state_is("half_open"));

    // 8 processes x 10 connects, all at once.
    let opts = Opts {
        timeout: Some(Duration::from_millis(500)),
        ..Opts::default()
    };
    let clients: Vec<_> = (0..8)
        .map(|_| spawn(cg.path(), &[hole.addr], 10, &opts))
        .collect();
    let got: Vec<_> = clients.into_iter().flat_map(|c| c.wait()).collect();
    let admitted = got.iter().filter(|o| o.errno == libc::ETIMEDOUT).count();
    let rejected = got.iter().filter(|o| o.errno == HOOK_ERRNO).count();
    assert_eq!((admitted, rejected), (3, 77), "{got:?}");

    // The probes timed out: open again, for 2 x 400 ms, +-10%.
    let v = d.wait_dest("svc", state_is("open"));
    assert_eq!(v["state"], "open", "{v:#}");
    let reopen = events(&d)
        .into_iter()
        .find(|e| e.starts_with("svc: half_open -> open: probe timeout; open for "));
    let reopen = reopen.unwrap_or_else(|| panic!("no reopen event in {:#?}", events(&d)));
    let ms: f64 = reopen
        .rsplit(' ')
        .next()
        .and_then(|t| t.strip_suffix("ms"))
        .and_then(|t| t.parse().ok())
        .expect("ms");
    assert!((720.0..=880.0).contains(&ms), "{reopen}");
    assert_eq!(v["rejected"]["breaker"], 77);
}

#[test]
fn slow_connects_trip_the_breaker() {
    if !privileged("slow_calls") {
        return;
    }
    let hole = BlackHole::start("127.0.0.13");
    let policy = format!(
        r#"
[[destination]]
name = "slow"
match = ["{}"]
[destination.breaker]
minimum_calls = 1
slow_call_duration = "500ms"
slow_call_rate = 50
"#,
        hole.addr
    );
    let cg = Cgroup::new("slow");
    let pins = PinDir::new("slow");
    let d = Daemon::start("slow", cg.path(), &pins, &policy, "2s");
    let opts = Opts {
        timeout: Some(3 * SECOND),
        ..Opts::default()
    };
    let client = spawn(cg.path(), &[hole.addr], 1, &opts);
    // Let the first SYN be dropped, then make room: the retransmitted SYN gets through.
    std::thread::sleep(Duration::from_millis(300));
    hole.accept_one();
    let got = client.wait();
    assert!(got[0].ok, "{got:?}");
    assert!(got[0].elapsed >= Duration::from_millis(900), "{got:?}");
    let v = d.wait_dest("slow", state_is("open"));
    assert_eq!(v["state"], "open", "{v:#}");
    assert_eq!(v["slow"], 1);
    assert!(
        events(&d).iter().any(|e| e.starts_with(
            "slow: closed -> open: slow-call rate 100% >= 50% over 1 calls (slow: >= 500ms)"
        )),
        "{:#?}",
        events(&d)
    );
}

#[test]
fn token_bucket_is_exact_when_saturated_from_two_processes() {
    if !privileged("token_bucket") {
        return;
    }
    let server = Server::start("127.0.0.14:0");
    let (rate, burst) = (200.0, 20.0);
    let policy = format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = {rate}\nburst = {burst}\n",
        server.addr
    );
    let cg = Cgroup::new("bucket");
    let pins = PinDir::new("bucket");
    let d = Daemon::start("bucket", cg.path(), &pins, &policy, "2s");
    assert_eq!(d.dest("api")["tokens"], 20);

    let opts = Opts {
        raw: true,
        for_time: Some(Duration::from_millis(1500)),
        ..Opts::default()
    };
    let a = spawn(cg.path(), &[server.addr], 1_000_000, &opts);
    let b = spawn(cg.path(), &[server.addr], 1_000_000, &opts);
    let mut got = a.wait();
    got.extend(b.wait());
    let admitted = got.iter().filter(|o| o.ok).count() as f64;
    let rejected = got.iter().filter(|o| o.errno == libc::EAGAIN).count() as f64;
    assert_eq!(admitted + rejected, got.len() as f64, "unexpected errors");
    // Every admission was decided inside [first start, end of the last admitted connect].
    let first = got.iter().map(|o| o.started_ns).min().expect("connects");
    let end = got
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.started_ns + o.elapsed.as_nanos() as u64)
        .max()
        .expect("admitted connects");
    let t = (end - first) as f64 / 1e9;
    let bound = burst + rate * t;
    assert!(
        rejected > admitted,
        "not saturated: {admitted} admitted, {rejected} rejected"
    );
    assert!(
        admitted <= bound.floor(),
        "{admitted} admitted > burst + rate*t = {bound:.2} (t = {t:.4}s)"
    );
    assert!(
        admitted >= 0.95 * bound,
        "{admitted} admitted < 95% of {bound:.1} (t = {t:.3}s)"
    );
    let v = d.dest("api");
    assert_eq!(
        v["rejected"]["rate_limit"].as_f64(),
        Some(rejected),
        "{v:#}"
    );
}

#[test]
fn bulkhead_rejects_the_extra_connect_and_frees_the_place_on_close() {
    if !privileged("bulkhead") {
        return;
    }
    let server = Server::start("127.0.0.15:0");
    let policy = format!(
        "[[destination]]\nname = \"db\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 3\n",
        server.addr
    );
    let cg = Cgroup::new("bulkhead");
    let pins = PinDir::new("bulkhead");
    let d = Daemon::start("bulkhead", cg.path(), &pins, &policy, "2s");

    let opts = Opts {
        hold: Some(Duration::from_millis(800)),
        ..Opts::default()
    };
    let holder = spawn(cg.path(), &[server.addr], 3, &opts);
    d.wait_dest("db", |v| v["active"] == 3);
    let extra = connect_from(cg.path(), &[server.addr], 1, SECOND);
    assert_eq!(extra[0].errno, libc::EAGAIN, "{extra:?}");
    assert!(holder.wait().iter().all(|o| o.ok));
    // The holder closed its three: places are free again.
    let v = d.wait_dest("db", |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "{v:#}");
    assert!(connect_from(cg.path(), &[server.addr], 1, SECOND)[0].ok);
    let v = d.dest("db");
    assert_eq!(v["rejected"]["bulkhead"], 1, "{v:#}");
}

#[test]
fn bulkhead_count_never_drifts() {
    if !privileged("bulkhead_drift") {
        return;
    }
    let server = Server::start("127.0.0.16:0");
    let closed = closed_port("127.0.0.16");
    let hole = BlackHole::start("127.0.0.16");
    // Breaker effectively off: this test is about the count.
    let policy = r#"
[[destination]]
name = "many"
match = ["127.0.0.16"]
[destination.bulkhead]
max_concurrent = 10000
[destination.breaker]
failure_rate = 100
minimum_calls = 100000
window_size = 100000
"#;
    let cg = Cgroup::new("drift");
    let pins = PinDir::new("drift");
    let d = Daemon::start("drift", cg.path(), &pins, policy, "2s");
    // Long enough for a SYN retransmitted twice (1 s, then 3 s): under load the server's
    // accept queue can overflow for a moment and the kernel drops a SYN (seen once in CI).
    let opts = Opts {
        timeout: Some(5 * SECOND),
        ..Opts::default()
    };
    let quick = Opts {
        timeout: Some(Duration::from_millis(50)),
        ..Opts::default()
    };
    let runs = vec![
        spawn(cg.path(), &[server.addr], 1500, &opts),
        spawn(cg.path(), &[server.addr], 1500, &opts),
        spawn(cg.path(), &[closed], 500, &opts),
        spawn(cg.path(), &[hole.addr], 20, &quick),
    ];
    let got: Vec<_> = runs.into_iter().flat_map(|r| r.wait()).collect();
    let failed: Vec<_> = got
        .iter()
        .filter(|o| !o.ok && o.addr == server.addr.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "connects to the server failed: {failed:?}"
    );
    assert_eq!(got.iter().filter(|o| o.ok).count(), 3000);
    let v = d.wait_dest("many", |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "{v:#}");
    assert_eq!(v["attempts"], 3520, "{v:#}");
    assert_eq!(v["failures"]["refused"], 500, "{v:#}");
    assert_eq!(v["failures"]["timeout"], 20, "{v:#}");
}

#[test]
fn dry_run_rejects_nothing_and_counts_what_it_would() {
    if !privileged("dry_run") {
        return;
    }
    let server = Server::start("127.0.0.17:0");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{}\"]\nmode = \"dry-run\"\n[destination.rate_limit]\nrate = 1\nburst = 2\n",
        server.addr
    );
    let cg = Cgroup::new("dryrun");
    let pins = PinDir::new("dryrun");
    let d = Daemon::start("dryrun", cg.path(), &pins, &policy, "2s");
    let got = connect_from(cg.path(), &[server.addr], 6, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    assert!(d.cli(&["trip", "svc"]).0);
    assert!(connect_from(cg.path(), &[server.addr], 3, SECOND)
        .iter()
        .all(|o| o.ok));
    let v = d.wait_dest("svc", |v| v["successes"] == 9);
    assert_eq!(v["mode"], "dry-run");
    assert_eq!(v["would_reject"]["rate_limit"], 4, "{v:#}");
    assert_eq!(v["would_reject"]["breaker"], 3, "{v:#}");
    assert_eq!(
        v["rejected"]["breaker"].as_u64().unwrap_or(99)
            + v["rejected"]["rate_limit"].as_u64().unwrap_or(99),
        0
    );
    assert_eq!(server.wait_accepted(9), 9);
}

#[test]
fn reload_keeps_state_and_a_bad_file_keeps_the_running_policy() {
    if !privileged("reload") {
        return;
    }
    let server = Server::start("127.0.0.18:0");
    let a = format!(
        "[[destination]]\nname = \"a\"\nmatch = [\"{}\"]\nreject_errno = \"EHOSTUNREACH\"\n",
        server.addr
    );
    let cg = Cgroup::new("reload");
    let pins = PinDir::new("reload");
    let d = Daemon::start("reload", cg.path(), &pins, &a, "2s");
    assert!(connect_from(cg.path(), &[server.addr], 2, SECOND)
        .iter()
        .all(|o| o.ok));
    assert!(d.cli(&["trip", "a"]).0);

    let b = format!("{a}[[destination]]\nname = \"b\"\nmatch = [\"127.0.0.19:80\"]\n");
    std::fs::write(&d.config, &b).expect("write policy");
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 destinations"), "{out}");
    let v = d.dest("a");
    assert_eq!(
        (v["state"].as_str(), v["successes"].as_u64()),
        (Some("open"), Some(2)),
        "{v:#}"
    );
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        HOOK_ERRNO
    );

    std::fs::write(
        &d.config,
        format!("{b}[[destination]]\nname = \"c\"\nmatch = [\"10.0.0.0/33\"]\n"),
    )
    .expect("write");
    let (ok, _, err) = d.cli(&["reload"]);
    assert!(!ok);
    let at = format!(
        "{}:10:10: \"10.0.0.0/33\": prefix length \"33\" is not in 0..=32",
        d.config.display()
    );
    assert!(err.contains(&at), "{err}");
    // The running policy: a still open, b still there, c never was.
    assert_eq!(d.dest("a")["state"], "open");
    let names: Vec<String> = d.status()["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        HOOK_ERRNO
    );
}

#[test]
fn a_changed_policy_file_is_reloaded_without_a_signal() {
    if !privileged("file_watch") {
        return;
    }
    let server = Server::start("127.0.0.20:0");
    let cg = Cgroup::new("watch");
    let pins = PinDir::new("watch");
    let d = Daemon::start("watch", cg.path(), &pins, "", "2s");
    assert!(connect_from(cg.path(), &[server.addr], 1, SECOND)[0].ok);
    let policy = format!(
        "[[destination]]\nname = \"w\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\n",
        server.addr
    );
    std::fs::write(&d.config, policy).expect("write policy");
    let v = d.wait_dest_for_existence("w", Duration::from_secs(5));
    assert_eq!(v["mode"], "forced-open");
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
}

#[test]
fn the_kernel_trips_on_the_crossing_failure_without_the_daemon() {
    if !privileged("kernel_fuse") {
        return;
    }
    let target = closed_port("127.0.0.24");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{target}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nminimum_calls = 5\nfailure_rate = 50\n"
    );
    let cg = Cgroup::new("fuse");
    let pins = PinDir::new("fuse");
    let d = Daemon::start("fuse", cg.path(), &pins, &policy, "10s");
    // One success first: the fuse must count it (5 calls, 4 failures = 80% trips; 3 of 4 = 75%
    // does not reach minimum_calls).
    let server = Server::start(&target.to_string());
    assert!(connect_from(cg.path(), &[target], 1, SECOND)[0].ok);
    drop(server);
    d.wait_dest("svc", |v| v["successes"] == 1);
    // The daemon cannot act now; the lease (10 s) keeps the hook enforcing.
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let got = connect_from(cg.path(), &[target], 10, SECOND);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let errnos: Vec<i32> = got.iter().map(|o| o.errno).collect();
    let mut want = vec![libc::ECONNREFUSED; 4];
    want.extend([HOOK_ERRNO; 6]);
    assert_eq!(
        errnos, want,
        "the 4th failure crosses 50% over 5 calls; nothing passes after it"
    );
    let v = d.wait_dest("svc", state_is("open"));
    assert_eq!(v["state"], "open", "{v:#}");
    assert_eq!(v["failures"]["refused"], 4, "{v:#}");
}

#[test]
fn dns_names_resolve_through_the_system_resolver() {
    if !privileged("dns") {
        return;
    }
    // localhost comes from /etc/hosts: no query leaves the machine.
    let server = Server::start("127.0.0.1:0");
    let port = server.addr.port();
    let policy = format!(
        "[[destination]]\nname = \"byname\"\nmatch = [\"localhost:{port}\"]\nmode = \"forced-open\"\n"
    );
    let cg = Cgroup::new("dns");
    let pins = PinDir::new("dns");
    let d = Daemon::start("dns", cg.path(), &pins, &policy, "2s");
    // Names are looked up off the daemon's loop: the answer arrives a moment after start.
    let v = d.wait_dest("byname", |v| {
        v["resolved"].as_array().is_some_and(|a| !a.is_empty())
    });
    let resolved: Vec<&str> = v["resolved"]
        .as_array()
        .expect("resolved")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        resolved.contains(&format!("127.0.0.1:{port}").as_str()),
        "{v:#}"
    );
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
    assert_eq!(server.accepted(), 0);
}

/// A Kubernetes ConfigMap volume: the file is a symlink through `..data`, and the kubelet
/// updates it by pointing `..data` at a new timestamped directory (an atomic rename of a
/// symlink) and removing the old one. The file's own path never changes.
#[test]
fn a_configmap_style_symlink_swap_is_reloaded() {
    if !privileged("configmap_swap") {
        return;
    }
    let server = Server::start("127.0.0.220:0");
    let cg = Cgroup::new("configmap");
    let pins = PinDir::new("configmap");
    let d = Daemon::start("configmap", cg.path(), &pins, "", "2s");
    let volume = d.config.with_file_name("volume");
    let version = |n: u32, name: &str| {
        let dir = volume.join(format!("..2026_11_23_{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = format!(
            "[[destination]]\nname = \"{name}\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\n",
            server.addr
        );
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        let tmp = volume.join("..data_tmp");
        std::os::unix::fs::symlink(dir.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, volume.join("..data")).unwrap();
    };
    version(1, "k1");
    std::os::unix::fs::symlink("..data/policy.toml", volume.join("policy.toml")).unwrap();
    // The daemon's policy path becomes the volume's file (as a mount would make it).
    let link = d.config.with_file_name("link.tmp");
    std::os::unix::fs::symlink(volume.join("policy.toml"), &link).unwrap();
    std::fs::rename(&link, &d.config).unwrap();
    d.wait_dest_for_existence("k1", Duration::from_secs(5));

    version(2, "k2");
    std::fs::remove_dir_all(volume.join("..2026_11_23_1")).unwrap();
    let v = d.wait_dest_for_existence("k2", Duration::from_secs(5));
    assert_eq!(v["mode"], "forced-open");
    let names: Vec<String> = d.status()["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["k2"], "the old version's destination is gone");
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
    let _ = std::fs::remove_dir_all(volume);
}

/// Plain successes have no record of their own: the kernel counts them and the daemon puts
/// them back in the window in their place. The trip fuse it arms afterwards must count them,
/// exactly: 10 failures and 30 successes are 40 calls; with the daemon stopped, the kernel
/// alone lets through exactly the 20 failures that bring 50 calls to 50%.
#[test]
fn successes_counted_without_records_are_in_the_window_and_the_fuse() {
    if !privileged("quiet_successes") {
        return;
    }
    let target = closed_port("127.0.0.226");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{target}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nwindow_size = 100\nminimum_calls = 50\nfailure_rate = 50\n"
    );
    let cg = Cgroup::new("quiet");
    let pins = PinDir::new("quiet");
    let d = Daemon::start("quiet", cg.path(), &pins, &policy, "10s");
    let got = connect_from(cg.path(), &[target], 10, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    let server = Server::start(&target.to_string());
    let got = connect_from(cg.path(), &[target], 30, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    // Every connection accepted before the listener goes: none is reset (a reset has a
    // record of its own).
    assert_eq!(server.wait_accepted(30), 30);
    drop(server);
    let v = d.wait_dest("svc", |v| v["window"]["calls"] == 40);
    assert_eq!(v["failures"]["reset"], 0, "{v:#}");
    assert_eq!(
        v["window"]["recent"],
        format!("{}{}", "x".repeat(10), ".".repeat(30))
    );
    assert_eq!(v["successes"], 30, "{v:#}");
    let k = &d.status()["kernel"];
    let (records, quiet) = (
        k["outcome_records"].as_u64().unwrap_or(0),
        k["quiet_successes"].as_u64().unwrap_or(0),
    );
    // Of 30 successes, one in four at random has a record: 30 without is (1/4)^30.
    assert_eq!(records + quiet, 40, "{k:#}");
    assert!(quiet > 0, "{k:#}");

    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let got = connect_from(cg.path(), &[target], 30, SECOND);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let errnos: Vec<i32> = got.iter().map(|o| o.errno).collect();
    let mut want = vec![libc::ECONNREFUSED; 20];
    want.extend([HOOK_ERRNO; 10]);
    assert_eq!(errnos, want, "30 of 60 calls failed at the 20th failure");
    let v = d.wait_dest("svc", state_is("open"));
    assert_eq!(v["failures"]["refused"], 30, "{v:#}");
    assert!(
        events(&d)
            .iter()
            .any(|e| e.starts_with("svc: closed -> open: failure rate 50% >= 50% over 60 calls")),
        "{:#?}",
        events(&d)
    );
}
