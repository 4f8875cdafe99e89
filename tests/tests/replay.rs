//! Privileged: `resilience record` and `resilience replay` (issue "Fleet and tooling", item
//! 5). Traffic against a failing destination is recorded under a lax policy and replayed with
//! a stricter candidate; the same traffic then runs live under the candidate. The replay's
//! first trip must match the live one within a second.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use libc::{EAGAIN, ECONNREFUSED};
use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts, Outcome},
    daemon::{Daemon, PinDir},
    daemon_bin,
    listener::{closed_port, Server},
    privileged,
};
use serde_json::Value;

/// The candidate: the default failure-rate window, and 8 refused connects in a row; opens for 2 s.
const CANDIDATE: &str = "[destination.breaker]\nconsecutive_failures = 8\nopen_duration = \"2s\"\nopen_duration_max = \"8s\"\n";

fn policy(up: SocketAddr, down: SocketAddr, breaker: &str) -> String {
    format!(
        "[[destination]]\nname = \"api\"\nmatch = [\"{up}\", \"{down}\"]\nreject_errno = \"EAGAIN\"\n{breaker}"
    )
}

fn record(d: &Daemon, out: &Path, duration: &str, max_size: &str) -> Child {
    Command::new(daemon_bin())
        .args(["record", "--output"])
        .arg(out)
        .args(["--duration", duration, "--max-size", max_size, "--socket"])
        .arg(&d.socket)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting resilience record")
}

fn finish(c: Child) -> String {
    let out = c.wait_with_output().expect("resilience record");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "record failed: {err}");
    err
}

/// One second of successes, then three of refused connects, 50 ms apart.
fn traffic(cg: &Path, up: SocketAddr, down: SocketAddr) -> (Vec<Outcome>, Vec<Outcome>) {
    let opts = Opts {
        interval: Some(Duration::from_millis(50)),
        timeout: Some(Duration::from_secs(1)),
        ..Opts::default()
    };
    let ok = spawn(cg, &[up], 20, &opts).wait();
    let failing = spawn(cg, &[down], 60, &opts).wait();
    (ok, failing)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(resilience_tests::unique(name))
}

#[test]
fn replay_predicts_the_first_trip_of_a_stricter_policy() {
    if !privileged("replay") {
        return;
    }
    let server = Server::start("127.0.0.218:0");
    let up = server.addr;
    let down = closed_port("127.0.0.218");
    let cg = Cgroup::new("replay");

    // 1. Recorded under a policy whose breaker never trips (it counts only local failures).
    let rec_path = tmp("replay-rec.jsonl");
    let (failing_rec, rec_report) = {
        let pins = PinDir::new("replay-rec");
        let lax = policy(up, down, "[destination.breaker]\nfailures = [\"local\"]\n");
        let d = Daemon::start("replay-rec", cg.path(), &pins, &lax, "2s");
        let rec = record(&d, &rec_path, "6s", "64MiB");
        std::thread::sleep(Duration::from_millis(300));
        let (ok, failing) = traffic(cg.path(), up, down);
        assert!(ok.iter().all(|o| o.ok), "{ok:?}");
        assert!(
            failing.iter().all(|o| o.errno == ECONNREFUSED),
            "the lax policy rejects nothing: {failing:?}"
        );
        let err = finish(rec);
        assert!(err.contains("stopped: duration"), "{err}");
        (failing, err)
    };
    let rec = lines(&rec_path);
    assert_eq!(
        rec[0]["recording"]["format"], "resilience-recording",
        "{:#}",
        rec[0]
    );
    let outcomes = rec.iter().filter(|l| l.get("outcome").is_some()).count();
    assert_eq!(outcomes, 80, "every connect's record: {rec_report}");
    assert!(
        rec.iter().any(|l| l.get("counts").is_some()),
        "counters once a second"
    );
    assert_eq!(rec.last().unwrap()["end"]["reason"], "duration");

    // 2. Replayed under the candidate.
    let candidate = tmp("replay-candidate.toml");
    std::fs::write(&candidate, policy(up, down, CANDIDATE)).unwrap();
    let out = Command::new(daemon_bin())
        .args(["replay", "--json", "--config"])
        .arg(&candidate)
        .arg(&rec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let api = &report["destinations"][0];
    assert_eq!(api["destination"], "api", "{report:#}");
    assert_eq!(api["connects"], 80, "{report:#}");
    assert!(api["in_force"]["first_open_s"].is_null(), "{report:#}");
    let predicted_s = api["candidate"]["first_open_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("the candidate never opens: {report:#}"));
    let header_ns = rec[0]["recording"]["started_ns"].as_u64().unwrap();
    let predicted_ns = header_ns + (predicted_s * 1e9) as u64;
    let predicted_off = predicted_ns as f64 / 1e9 - failing_rec[0].started_ns as f64 / 1e9;
    let predicted_rejected = api["candidate"]["rejected"]["breaker"].as_u64().unwrap();
    let text = Command::new(daemon_bin())
        .args(["replay", "--config"])
        .arg(&candidate)
        .arg(&rec_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains("first open: candidate at "), "{text}");

    // 3. The same traffic, live, under the candidate (recorded too, for its transition time).
    let live_path = tmp("replay-live.jsonl");
    let pins = PinDir::new("replay-live");
    let d = Daemon::start(
        "replay-live",
        cg.path(),
        &pins,
        &policy(up, down, CANDIDATE),
        "2s",
    );
    let live_rec = record(&d, &live_path, "6s", "64MiB");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failing_live) = traffic(cg.path(), up, down);
    finish(live_rec);
    assert!(ok.iter().all(|o| o.ok), "{ok:?}");
    let live_rejected = failing_live.iter().filter(|o| o.errno == EAGAIN).count() as u64;
    let live_open_ns = lines(&live_path)
        .iter()
        .find_map(|l| {
            let t = l.get("transition")?;
            (t["to"] == "open").then(|| t["ns"].as_u64())?
        })
        .unwrap_or_else(|| panic!("the live candidate never opened: {:#}", d.dest("api")));
    let live_off = live_open_ns as f64 / 1e9 - failing_live[0].started_ns as f64 / 1e9;
    eprintln!(
        "first trip after the failures began: predicted {predicted_off:.3}s, live {live_off:.3}s; \
         rejected: predicted {predicted_rejected}, live {live_rejected}"
    );
    assert!(
        (predicted_off - live_off).abs() < 1.0,
        "predicted {predicted_off:.3}s, live {live_off:.3}s"
    );
    // Refused connects 50 ms apart after ten successes: the default window (10 calls, 60%)
    // trips at the 6th, 0.25 s in, before the streak of 8 would.
    assert!((0.2..1.0).contains(&live_off), "{live_off}");
    assert!(
        predicted_rejected.abs_diff(live_rejected) <= 5,
        "predicted {predicted_rejected} rejections, live {live_rejected}"
    );
    for p in [rec_path, live_path, candidate] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_recording_stops_at_its_size_bound_with_an_end_line() {
    if !privileged("replay") {
        return;
    }
    let server = Server::start("127.0.0.219:0");
    let down = closed_port("127.0.0.219");
    let cg = Cgroup::new("replay-size");
    let pins = PinDir::new("replay-size");
    let lax = policy(
        server.addr,
        down,
        "[destination.breaker]\nfailures = [\"local\"]\n",
    );
    let d = Daemon::start("replay-size", cg.path(), &pins, &lax, "2s");
    let path = tmp("replay-size.jsonl");
    let rec = record(&d, &path, "20s", "8KiB");
    std::thread::sleep(Duration::from_millis(300));
    let opts = Opts {
        interval: Some(Duration::from_millis(5)),
        timeout: Some(Duration::from_secs(1)),
        ..Opts::default()
    };
    spawn(cg.path(), &[server.addr], 200, &opts).wait();
    let err = finish(rec);
    assert!(err.contains("stopped: size"), "{err}");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= 8192, "{size} bytes");
    let l = lines(&path);
    assert_eq!(
        l.last().unwrap()["end"]["reason"],
        "size",
        "{:#}",
        l.last().unwrap()
    );
    assert!(l.len() > 10, "{} lines", l.len());
    let _ = std::fs::remove_file(path);
}
