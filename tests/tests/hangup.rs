//! Privileged: the dashboard's terminal going away (a closed window, a dropped SSH
//! connection: here, a killed tmux session) ends `run --tui` and `top` cleanly, at once.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::PinDir,
    listener::Server,
    privileged,
    tmux::{wait_screen, Session},
};

const SECOND: Duration = Duration::from_secs(1);

/// Pids of processes whose command line contains `pattern`.
fn pids(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "--", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Wait until no process matches `pattern`; how long it took, or None after `within`.
fn gone_within(pattern: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if pids(pattern).is_empty() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// CPU seconds used so far by `pid` (utime + stime).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn run_tui_stops_and_detaches_when_its_terminal_goes_away() {
    if !privileged("run_tui_terminal_lost") {
        return;
    }
    let server = Server::start("127.0.0.123:0");
    let cg = Cgroup::new("hangup");
    let pins = PinDir::new("hangup");
    let dir = std::env::temp_dir().join(resilience_tests::unique("hangup"));
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[destination]]\nname = \"blocked\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\n",
            server.addr
        ),
    )
    .expect("policy");
    let socket = dir.join("control.sock");
    let log = dir.join("daemon.log");
    let session = Session::new("hangup");
    let run = format!(
        "{} run --tui --config {} --cgroup {} --socket {} --pin-dir {} --log-file {}",
        resilience_tests::daemon_bin().display(),
        policy.display(),
        cg.path().display(),
        socket.display(),
        pins.path.display(),
        log.display()
    );
    session.keys(&[&run, "Enter"]);
    wait_screen(&session.0, "the dashboard", |s| s.contains("blocked"));
    assert_eq!(
        connect_from(cg.path(), &[server.addr], 1, SECOND)[0].errno,
        libc::ECONNREFUSED
    );
    let pattern = format!("--socket {}", socket.display());
    let pid = *pids(&pattern).first().expect("the daemon's pid");
    let before = cpu_secs(pid);
    session.kill();
    let took = gone_within(&pattern, 2 * SECOND);
    if took.is_none() {
        let spun = cpu_secs(pid) - before;
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--", &pattern])
            .status();
        panic!("run --tui still runs 2 s after its terminal went away ({spun:.2} s of CPU since)");
    }
    // Detached, as `q` would: the forced-open destination admits again; pins kept.
    assert!(connect_from(cg.path(), &[server.addr], 1, SECOND)[0].ok);
    assert!(pins.path.join("POLICY").exists(), "the pins stay");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("terminal lost: stopping"), "{logged}");
    assert!(logged.contains("detaching and exiting"), "{logged}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_exits_when_its_terminal_goes_away() {
    if !privileged("top_terminal_lost") {
        return;
    }
    let cg = Cgroup::new("tophup");
    let pins = PinDir::new("tophup");
    let d = resilience_tests::daemon::Daemon::start(
        "tophup",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.124:443\"]\n",
        "2s",
    );
    let session = Session::new("tophup");
    let top = format!(
        "{} top --refresh 200ms --socket {}",
        resilience_tests::daemon_bin().display(),
        d.socket.display()
    );
    session.keys(&[&top, "Enter"]);
    wait_screen(&session.0, "the dashboard", |s| s.contains("svc"));
    let pattern = format!("top --refresh 200ms --socket {}", d.socket.display());
    assert!(!pids(&pattern).is_empty());
    session.kill();
    let took = gone_within(&pattern, 2 * SECOND);
    if took.is_none() {
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--", &pattern])
            .status();
        panic!("top still runs 2 s after its terminal went away");
    }
    // The daemon it watched is untouched.
    assert_eq!(d.dest("svc")["state"], "closed");
}
