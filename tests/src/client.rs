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
    // Next to the test executable's profile directory: target/<profile>/connector.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("connector");
    assert!(bin.exists(), "{} not built (cargo builds it with the tests)", bin.display());
    bin
}

/// `count` connects to each address in turn, from a process inside `cgroup`.
pub fn connect_from(cgroup: &Path, addrs: &[SocketAddr], count: u32, timeout: Duration) -> Vec<Outcome> {
    let out = Command::new(connector_bin())
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
