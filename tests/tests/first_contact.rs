//! Privileged: what a new operator meets first (issue "First contact"). Destinations no policy
//! names count their outcomes exactly, and a user without privileges is told so, not that the
//! kernel lacks features.

use std::time::Duration;

use libc::ECONNREFUSED;
use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    daemon_bin,
    listener::{closed_port, BlackHole, Server},
    privileged,
};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn observed_destinations_count_their_outcomes_exactly() {
    if !privileged("observed_outcomes") {
        return;
    }
    let ok = Server::start("127.0.0.170:0");
    let hole = BlackHole::start("127.0.0.170");
    let closed = closed_port("127.0.0.170");
    // A policy that names something else: these three are only observed.
    let policy = "[[destination]]\nname = \"other\"\nmatch = [\"127.0.0.171:80\"]\n";
    let cg = Cgroup::new("observed");
    let pins = PinDir::new("observed");
    let d = Daemon::start("observed", cg.path(), &pins, policy, "2s");

    let good = connect_from(cg.path(), &[ok.addr], 10, SECOND);
    assert!(good.iter().all(|o| o.ok), "{good:?}");
    let refused = connect_from(cg.path(), &[closed], 10, SECOND);
    assert!(
        refused.iter().all(|o| o.errno == ECONNREFUSED),
        "{refused:?}"
    );
    let timed_out = connect_from(cg.path(), &[hole.addr], 2, Duration::from_millis(300));
    assert!(
        timed_out.iter().all(|o| o.errno == libc::ETIMEDOUT),
        "{timed_out:?}"
    );

    let observed = |addr: std::net::SocketAddr, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + 5 * SECOND;
        loop {
            let s = d.status();
            let entry = s["observed"]
                .as_array()
                .and_then(|a| a.iter().find(|o| o["address"] == addr.to_string()).cloned())
                .unwrap_or_default();
            if pred(&entry) || std::time::Instant::now() > deadline {
                return entry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let v = observed(ok.addr, &|v| v["closed"] == 10);
    assert_eq!(v["attempts"], 10, "{v:#}");
    assert_eq!(v["successes"], 10, "{v:#}");
    assert_eq!(v["closed"], 10, "{v:#}");
    assert_eq!(v["active"], 0, "{v:#}");
    let histogram: u64 = v["latency_histogram"]
        .as_array()
        .map(|h| h.iter().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(histogram, 10, "one latency entry per success: {v:#}");
    assert!(
        v["latency_ms"]["p50"].as_f64().is_some_and(|ms| ms > 0.0),
        "{v:#}"
    );
    let v = observed(closed, &|v| v["failures"]["refused"] == 10);
    assert_eq!(v["attempts"], 10, "{v:#}");
    assert_eq!(v["successes"], 0, "{v:#}");
    assert_eq!(v["failures"]["refused"], 10, "{v:#}");
    let v = observed(hole.addr, &|v| v["failures"]["timeout"] == 2);
    assert_eq!(v["attempts"], 2, "{v:#}");
    assert_eq!(v["failures"]["timeout"], 2, "{v:#}");
}

/// `resilience run` as an unprivileged user says it needs root, and names the capabilities,
/// instead of blaming the kernel.
#[test]
fn an_unprivileged_run_is_told_it_needs_root() {
    if !privileged("unprivileged_run") {
        return;
    }
    // A copy anyone may run, with a policy anyone may read.
    let dir = std::env::temp_dir().join(resilience_tests::unique("unprivileged"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("resilience");
    std::fs::copy(daemon_bin(), &bin).expect("copy the binary");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:1\"]\n",
    )
    .expect("policy");
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(&dir, 0o755), (&bin, 0o755), (&policy, 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let cg = Cgroup::new("unprivileged");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .arg("run")
        .arg("--config")
        .arg(&policy)
        .arg("--cgroup")
        .arg(cg.path())
        .arg("--pin-dir")
        .arg("/sys/fs/bpf/resilience-test-unprivileged")
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(err.contains("CAP_BPF"), "{err}");
    assert!(!err.contains("kernel lacks"), "{err}");
}
