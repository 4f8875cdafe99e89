//! Runs the `connector` binary inside a cgroup and reads what each connect returned.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub addr: String,
    pub ok: bool,
    pub errno: i32,
    pub elapsed: Duration,
}

pub fn connector_bin() -> std::path::PathBuf {
    // target/<profile>/connector: beside a binary, or one up from a test in deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    [dir.join("connector"), dir.join("../connector")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "connector not built in {} (cargo builds it with the tests)",
                dir.display()
            )
        })
}

/// `count` connects to each address in turn, from a process inside `cgroup`.
pub fn connect_from(
    cgroup: &Path,
    addrs: &[SocketAddr],
    count: u32,
    timeout: Duration,
) -> Vec<Outcome> {
    run_connector(cgroup, addrs, count, timeout, false)
}

/// Benchmark loop: `count` blocking socket+connect+close iterations, each timed.
pub fn raw_loop(cgroup: &Path, addr: SocketAddr, count: u32) -> Vec<Outcome> {
    run_connector(cgroup, &[addr], count, Duration::from_secs(1), true)
}

fn run_connector(
    cgroup: &Path,
    addrs: &[SocketAddr],
    count: u32,
    timeout: Duration,
    raw: bool,
) -> Vec<Outcome> {
    let mut cmd = Command::new(connector_bin());
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--count", &count.to_string()])
        .args(["--timeout-ms", &timeout.as_millis().to_string()])
        .args(addrs.iter().map(|a| a.to_string()))
        .output()
        .expect("running connector");
    assert!(
        out.status.success(),
        "connector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("connector JSON");
            Outcome {
                addr: v["addr"].as_str().unwrap_or_default().to_string(),
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().unwrap_or(-1) as i32,
                elapsed: Duration::from_nanos(v["ns"].as_u64().unwrap_or(0)),
            }
        })
        .collect()
}

/// The median of the elapsed times.
pub fn median(outcomes: &[Outcome]) -> Duration {
    let mut t: Vec<Duration> = outcomes.iter().map(|o| o.elapsed).collect();
    t.sort();
    t[t.len() / 2]
}
