//! The soak: sustained mixed load on 1000 named destinations while the daemon is reloaded every
//! second (two valid files, one broken, in turn; destinations removed and re-added), killed and
//! restarted twice (connections closing while it is down), stopped for 3 s, with a dashboard
//! client attached throughout. At the end every destination's kernel counters must reconcile
//! exactly, every place must be back, fail-open must have happened only while the daemon was
//! stopped, memory must have stayed bounded and no log may hold a panic.
//!
//! Used by `cargo xtask soak` (tests/src/bin/soak.rs) and, 20 s long, by the test suite.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    cgroup::Cgroup,
    client::{spawn, Opts},
    daemon::{Daemon, PinDir},
    listener::{closed_port, BlackHole, Server},
};

const OK: usize = 600;
const REFUSING: usize = 300;
const HOLES: usize = 100;
/// ok-0..49 are rate-limited, ok-50..99 behind bulkheads; ok-550..599 come and go.
const RATED: std::ops::Range<usize> = 0..50;
const BULKHEADS: std::ops::Range<usize> = 50..100;
const CHURN: std::ops::Range<usize> = 550..600;

/// What a soak run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    pub connects: u64,
    pub connects_per_second: f64,
    pub reloads_applied: u64,
    pub reloads_refused: u64,
    pub restarts: u32,
    pub fail_open: u64,
    pub max_rss_mib: f64,
    pub destinations_checked: usize,
    pub transitions: u64,
    pub snapshots: u64,
    pub untracked: u64,
    pub reconciled_events: usize,
}

impl Report {
    pub fn markdown(&self) -> String {
        format!(
            "| figure | value |\n|---|---:|\n| duration (s) | {:.1} |\n| connects | {} |\n| connects/s | {:.0} |\n| reloads applied / refused | {} / {} |\n| kills and restarts | {} |\n| fail-open connects (all inside the SIGSTOP window) | {} |\n| dashboard snapshots | {} |\n| breaker transitions | {} |\n| destinations reconciled exactly | {} |\n| untracked (outcome lost while the daemon was down) | {} |\n| daemon RSS, max (MiB) | {:.1} |\n",
            self.seconds,
            self.connects,
            self.connects_per_second,
            self.reloads_applied,
            self.reloads_refused,
            self.restarts,
            self.fail_open,
            self.snapshots,
            self.transitions,
            self.destinations_checked,
            self.untracked,
            self.max_rss_mib
        )
    }
}

fn ip(base: u8, i: usize) -> String {
    format!("127.{base}.{}.{}", i / 256, i % 256)
}

fn policy(ok_port: u16, refused_port: u16, hole_port: u16, churned_in: bool) -> String {
    let mut p =
        String::from("[defaults.breaker]\nopen_duration = \"3s\"\nhalf_open_probes = 2\n\n");
    for i in 0..OK {
        if CHURN.contains(&i) && churned_in {
            continue;
        }
        p.push_str(&format!(
            "[[destination]]\nname = \"ok-{i}\"\nmatch = [\"{}:{ok_port}\"]\nreject_errno = \"EAGAIN\"\n",
            ip(60, i)
        ));
        if RATED.contains(&i) {
            p.push_str("[destination.rate_limit]\nrate = 200\nburst = 20\n");
        }
        if BULKHEADS.contains(&i) {
            p.push_str("[destination.bulkhead]\nmax_concurrent = 4\n");
        }
    }
    if churned_in {
        for i in 0..CHURN.len() {
            p.push_str(&format!(
                "[[destination]]\nname = \"new-{i}\"\nmatch = [\"{}:{ok_port}\"]\n",
                ip(63, i)
            ));
        }
    }
    for i in 0..REFUSING {
        p.push_str(&format!(
            "[[destination]]\nname = \"refusing-{i}\"\nmatch = [\"{}:{refused_port}\"]\nreject_errno = \"EHOSTUNREACH\"\n",
            ip(61, i)
        ));
    }
    for i in 0..HOLES {
        p.push_str(&format!(
            "[[destination]]\nname = \"hole-{i}\"\nmatch = [\"{}:{hole_port}\"]\n",
            ip(62, i)
        ));
    }
    p
}

fn addrs(base: u8, n: std::ops::Range<usize>, port: u16) -> Vec<SocketAddr> {
    n.map(|i| format!("{}:{port}", ip(base, i)).parse().expect("addr"))
        .collect()
}

/// A dashboard-like client: deltas at 1 Hz, reconnecting across restarts. Counts snapshots.
fn dashboard(socket: std::path::PathBuf, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let mut conn: Option<(UnixStream, BufReader<UnixStream>)> = None;
    let mut since: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = UnixStream::connect(&socket).ok().and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                let r = BufReader::new(s.try_clone().ok()?);
                Some((s, r))
            });
            since = None;
        }
        if let Some((w, r)) = conn.as_mut() {
            let req = match since {
                Some((s, i)) => {
                    format!("{{\"cmd\":\"snapshot\",\"since\":{s},\"instance\":{i}}}\n")
                }
                None => "{\"cmd\":\"snapshot\"}\n".into(),
            };
            let mut line = String::new();
            let ok =
                w.write_all(req.as_bytes()).is_ok() && r.read_line(&mut line).is_ok_and(|n| n > 0);
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if ok && v["ok"] == true => {
                    let s = &v["snapshot"];
                    since = Some((
                        s["seq"].as_u64().unwrap_or(0),
                        s["instance"].as_u64().unwrap_or(0),
                    ));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                _ => conn = None,
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The daemon's last 1000 events.
fn events(d: &Daemon) -> Vec<String> {
    d.request(&serde_json::json!({"cmd": "events"}))
        .unwrap_or_default()["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Run the soak for `seconds`; panics with what broke.
pub fn run(seconds: u64) -> Report {
    let t = Duration::from_secs(seconds);
    let server = Server::start("0.0.0.0:0");
    let refused = closed_port("0.0.0.0");
    let hole = BlackHole::start("0.0.0.0");
    let (ok_port, ref_port, hole_port) = (server.addr.port(), refused.port(), hole.addr.port());
    let a = policy(ok_port, ref_port, hole_port, false);
    let b = policy(ok_port, ref_port, hole_port, true);
    let broken = format!("{a}[[destination]\nname = \"broken\"\n");
    let cg = Cgroup::new("soak");
    let pins = PinDir::new("soak");
    let mut d = Daemon::start("soak", cg.path(), &pins, &a, "2s");
    let start = Instant::now();
    let for_time = |extra: Duration| t.saturating_sub(start.elapsed()) + extra;
    let raw = || Opts {
        raw: true,
        cycle: true,
        summary: true,
        for_time: Some(for_time(Duration::ZERO)),
        ..Opts::default()
    };
    let mut ok_addrs = addrs(60, 0..OK, ok_port);
    ok_addrs.extend(addrs(63, 0..CHURN.len(), ok_port));
    let mut load = vec![
        spawn(cg.path(), &ok_addrs, 1_000_000, &raw()),
        spawn(cg.path(), &ok_addrs, 1_000_000, &raw()),
        spawn(
            cg.path(),
            &addrs(61, 0..REFUSING, ref_port),
            1_000_000,
            &raw(),
        ),
        spawn(
            cg.path(),
            &addrs(62, 0..HOLES, hole_port),
            1_000_000,
            &Opts {
                cycle: true,
                summary: true,
                timeout: Some(Duration::from_millis(20)),
                for_time: Some(for_time(Duration::ZERO)),
                ..Opts::default()
            },
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    // Bulkhead holders: connections held 300 ms, over and over (some close while the daemon
    // is down).
    let holders = {
        let (stop, cgroup) = (stop.clone(), cg.path().to_path_buf());
        let bulk = addrs(60, BULKHEADS, ok_port);
        std::thread::spawn(move || {
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let got = spawn(
                    &cgroup,
                    &bulk,
                    3,
                    &Opts {
                        hold: Some(Duration::from_millis(300)),
                        timeout: Some(Duration::from_secs(1)),
                        summary: true,
                        ..Opts::default()
                    },
                )
                .wait_summary();
                total += got.0;
            }
            total
        })
    };
    let snapshots = Arc::new(AtomicU64::new(0));
    let dash = {
        let (stop, count, socket) = (stop.clone(), snapshots.clone(), d.socket.clone());
        std::thread::spawn(move || dashboard(socket, stop, count))
    };
    let max_rss = Arc::new(Mutex::new(0.0f64));
    let pid = Arc::new(AtomicU64::new(u64::from(d.pid().unwrap_or(0))));
    let sampler = {
        let (stop, max_rss, pid) = (stop.clone(), max_rss.clone(), pid.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = crate::procfs::rss_mib(pid.load(Ordering::Relaxed) as u32);
                if let Ok(mut m) = max_rss.lock() {
                    *m = m.max(r);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let mut report = Report::default();
    let (kill1, pause, kill2) = (t / 4, t * 9 / 20, t * 13 / 20);
    let (mut killed1, mut paused, mut killed2) = (false, false, false);
    let files = [&b, &broken, &a];
    let mut next_reload = Duration::from_secs(1);
    let mut reload_n = 0usize;
    let mut fail_open_before_pause = 0;
    let mut fail_open_after_pause = 0;
    while start.elapsed() < t {
        let now = start.elapsed();
        if !killed1 && now >= kill1 {
            killed1 = true;
            d.kill();
            // Held connections close while no daemon runs.
            std::thread::sleep(Duration::from_millis(600));
            // A daemon refuses to start on a broken file (the file in place may be the broken
            // one of the rotation): restart it as systemd would, after its check passes.
            std::fs::write(&d.config, &a).expect("write policy");
            d.start_again();
            pid.store(u64::from(d.pid().unwrap_or(0)), Ordering::Relaxed);
            report.restarts += 1;
        }
        if !paused && now >= pause {
            paused = true;
            fail_open_before_pause = d.status()["kernel"]["fail_open"].as_u64().unwrap_or(0);
            d.signal(Signal::SIGSTOP);
            std::thread::sleep(Duration::from_secs(3));
            d.signal(Signal::SIGCONT);
            // The heartbeat runs every lease / 4: give the daemon a moment to count.
            std::thread::sleep(Duration::from_millis(1200));
            fail_open_after_pause = d.status()["kernel"]["fail_open"].as_u64().unwrap_or(0);
            let ev = events(&d);
            assert!(
                ev.iter().any(|e| e.starts_with("fail-open: ")),
                "no fail-open event after a 3 s stop: {ev:#?}"
            );
        }
        if !killed2 && now >= kill2 {
            killed2 = true;
            d.kill();
            std::thread::sleep(Duration::from_millis(600));
            // A daemon refuses to start on a broken file (the file in place may be the broken
            // one of the rotation): restart it as systemd would, after its check passes.
            std::fs::write(&d.config, &a).expect("write policy");
            d.start_again();
            pid.store(u64::from(d.pid().unwrap_or(0)), Ordering::Relaxed);
            report.restarts += 1;
        }
        if now >= next_reload {
            next_reload += Duration::from_secs(1);
            let file = files[reload_n % files.len()];
            reload_n += 1;
            std::fs::write(&d.config, file).expect("write policy");
            let (ok, _, err) = d.cli(&["reload"]);
            if ok {
                report.reloads_applied += 1;
            } else {
                assert!(
                    err.contains("reload rejected, the running policy stays"),
                    "a reload failed otherwise: {err}"
                );
                report.reloads_refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for l in load.drain(..) {
        report.connects += l.wait_summary().0;
    }
    stop.store(true, Ordering::Relaxed);
    report.connects += holders.join().expect("holders");
    let _ = dash.join();
    let _ = sampler.join();
    report.seconds = start.elapsed().as_secs_f64();
    report.connects_per_second = report.connects as f64 / report.seconds;
    report.snapshots = snapshots.load(Ordering::Relaxed);
    report.max_rss_mib = *max_rss.lock().expect("rss");
    // Let every close and record arrive.
    std::thread::sleep(Duration::from_secs(2));
    check(
        &d,
        &mut report,
        fail_open_before_pause,
        fail_open_after_pause,
    );
    d.stop();
    let log = d.log_text();
    assert!(
        !log.contains("panicked"),
        "a panic in the daemon's log:\n{log}"
    );
    report
}

/// The end state: counters reconcile, places are back, fail-open only in the stop window.
fn check(d: &Daemon, report: &mut Report, fo_before: u64, fo_after: u64) {
    let s = d.status();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut bad = Vec::new();
    let dests = s["destinations"].as_array().cloned().unwrap_or_default();
    for v in &dests {
        let name = v["name"].as_str().unwrap_or("?");
        let rejected = n(&v["rejected"]["breaker"])
            + n(&v["rejected"]["rate_limit"])
            + n(&v["rejected"]["bulkhead"]);
        let f = &v["failures"];
        let ended = n(&v["successes"])
            + n(&f["refused"])
            + n(&f["timeout"])
            + n(&f["unreachable"])
            + n(&f["local"])
            + n(&v["untracked"])
            + n(&v["abandoned"]);
        if n(&v["attempts"]) != rejected + ended {
            bad.push(format!(
                "{name}: attempts {} != rejected {rejected} + ended {ended}: {v}",
                n(&v["attempts"])
            ));
        }
        if n(&v["active"]) != 0 {
            bad.push(format!(
                "{name}: active {} with nothing open",
                n(&v["active"])
            ));
        }
        if n(&v["closed"]) != n(&v["successes"]) {
            bad.push(format!(
                "{name}: {} established, {} closed, nothing open",
                n(&v["successes"]),
                n(&v["closed"])
            ));
        }
        let t = &v["transitions"];
        report.transitions += n(&t["open"]) + n(&t["half_open"]) + n(&t["closed"]);
        report.untracked += n(&v["untracked"]);
    }
    report.destinations_checked = dests.len();
    assert!(
        dests.len() >= OK + REFUSING + HOLES,
        "{} destinations",
        dests.len()
    );
    assert!(
        bad.is_empty(),
        "{} destinations do not reconcile:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let k = &s["kernel"];
    assert_eq!(fo_before, 0, "fail-open before the daemon was stopped");
    assert!(
        fo_after > 0,
        "no fail-open while the daemon was stopped for 3 s"
    );
    assert_eq!(
        n(&k["fail_open"]),
        fo_after,
        "fail-open after the stop window: {k}"
    );
    assert_eq!(n(&k["hook_errors"]), 0, "{k}");
    report.fail_open = fo_after;
    report.reconciled_events = events(d)
        .iter()
        .filter(|e| e.contains("closed while no daemon ran"))
        .count();
    assert!(report.reloads_refused > 0 && report.reloads_applied > 0);
}

/// Write the report next to the other results.
pub fn write(report: &Report, out: &Path, seconds: u64) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let text = format!(
        "# Soak\n\n`cargo xtask soak --seconds {seconds}` (tests/src/soak.rs), kernel {}, 2 CPUs. 1000 named destinations (600 accepting, 50 of them rate-limited and 50 behind bulkheads of 4; 300 refusing; 100 black holes), five client processes, reloads every second (two valid files, one broken, in turn; 50 destinations removed and re-added), two SIGKILLs with restarts (held connections closing while the daemon was down), one 3 s SIGSTOP, a dashboard client taking deltas at 1 Hz. Every check passed:\n\n{}\nChecks: for every destination, attempts = rejections + successes + failures of each class + untracked + abandoned (nothing in progress at the end), active = 0 and closed = successes; fail-open only inside the SIGSTOP window; no hook errors; no panic in the daemon's log.\n",
        kernel.trim(),
        report.markdown()
    );
    std::fs::write(out, text).expect("writing the soak report");
}
