//! Runs the `connector` binary inside a cgroup and reads what each connect returned.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub addr: String,
    pub ok: bool,
    pub errno: i32,
    /// CLOCK_MONOTONIC nanoseconds when the connect started.
    pub started_ns: u64,
    pub elapsed: Duration,
    /// With `blocking`: the socket's TCP_USER_TIMEOUT once connected; -1 otherwise.
    pub user_timeout_ms: i64,
}

/// What to ask of the connector beyond addresses and count.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub timeout: Option<Duration>,
    /// Keep connecting for this long (bounded by the count).
    pub for_time: Option<Duration>,
    /// Keep successful connections open this long after the last connect.
    pub hold: Option<Duration>,
    pub raw: bool,
    /// Start connects this far apart.
    pub interval: Option<Duration>,
    /// Cycle through the addresses (`count` passes) under one `for_time` deadline.
    pub cycle: bool,
    /// Only a summary: `wait_summary`.
    pub summary: bool,
    /// Run on this CPU only.
    pub cpu: Option<usize>,
    /// After a failed connect, connect the same socket to this address.
    pub reconnect_to: Option<SocketAddr>,
    /// TCP_FASTOPEN_CONNECT, closed before any write.
    pub tfo_defer: bool,
    /// Bind to the address and connect to it (simultaneous open).
    pub self_connect: bool,
    /// Enter this network namespace (from `ip netns add`) after joining the cgroup.
    pub netns: Option<String>,
    /// Non-blocking connects, kept in progress until the hold ends.
    pub nonblocking: bool,
    /// Run as this uid (and gid) after joining the cgroup.
    pub user: Option<u32>,
    /// Blocking connects with no application timeout (`timeout` is not used).
    pub blocking: bool,
    /// With `blocking`: the application's own TCP_USER_TIMEOUT, set before connecting.
    pub user_timeout: Option<Duration>,
    /// After a failed connect, connect again at once, up to this many times.
    pub retries: u32,
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
    let opts = Opts {
        timeout: Some(timeout),
        ..Opts::default()
    };
    spawn(cgroup, addrs, count, &opts).wait()
}

/// Benchmark loop: `count` blocking socket+connect+close iterations, each timed, from a
/// client pinned to CPU 0.
pub fn raw_loop(cgroup: &Path, addr: SocketAddr, count: u32) -> Vec<Outcome> {
    spawn(
        cgroup,
        &[addr],
        count,
        &Opts {
            raw: true,
            cpu: Some(0),
            ..Opts::default()
        },
    )
    .wait()
}

/// A connector running in the background.
pub struct Running(std::process::Child);

/// Start a connector; `wait()` for its outcomes. Several can run at once.
pub fn spawn(cgroup: &Path, addrs: &[SocketAddr], count: u32, opts: &Opts) -> Running {
    let mut cmd = Command::new(connector_bin());
    if opts.raw {
        cmd.arg("--raw");
    }
    if opts.cycle {
        cmd.arg("--cycle");
    }
    if opts.summary {
        cmd.arg("--summary");
    }
    if let Some(c) = opts.cpu {
        cmd.args(["--cpu", &c.to_string()]);
    }
    if let Some(a) = opts.reconnect_to {
        cmd.args(["--reconnect-to", &a.to_string()]);
    }
    if opts.tfo_defer {
        cmd.arg("--tfo-defer");
    }
    if opts.self_connect {
        cmd.arg("--self-connect");
    }
    if let Some(ns) = &opts.netns {
        cmd.args(["--netns", ns]);
    }
    if opts.nonblocking {
        cmd.arg("--nonblocking");
    }
    if let Some(u) = opts.user {
        cmd.args(["--user", &u.to_string()]);
    }
    if opts.blocking {
        cmd.arg("--blocking");
    }
    if opts.retries > 0 {
        cmd.args(["--retries", &opts.retries.to_string()]);
    }
    if let Some(t) = opts.user_timeout {
        cmd.args(["--user-timeout-ms", &t.as_millis().to_string()]);
    }
    if let Some(t) = opts.for_time {
        cmd.args(["--for-ms", &t.as_millis().to_string()]);
    }
    if let Some(i) = opts.interval {
        cmd.args(["--interval-us", &i.as_micros().to_string()]);
    }
    if let Some(h) = opts.hold {
        cmd.args(["--hold-ms", &h.as_millis().to_string()]);
    }
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(1));
    let child = cmd
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--count", &count.to_string()])
        .args(["--timeout-ms", &timeout.as_millis().to_string()])
        .args(addrs.iter().map(|a| a.to_string()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running connector");
    Running(child)
}

impl Running {
    /// Stop a connector early.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// For a connector started with `summary`: (connects, successful ones).
    pub fn wait_summary(self) -> (u64, u64) {
        let out = self.0.wait_with_output().expect("waiting for connector");
        assert!(
            out.status.success(),
            "connector failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("connector summary JSON");
        (
            v["count"].as_u64().unwrap_or(0),
            v["ok"].as_u64().unwrap_or(0),
        )
    }

    pub fn wait(self) -> Vec<Outcome> {
        let out = self.0.wait_with_output().expect("waiting for connector");
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
                    started_ns: v["t"].as_u64().unwrap_or(0),
                    elapsed: Duration::from_nanos(v["ns"].as_u64().unwrap_or(0)),
                    user_timeout_ms: v["uto"].as_i64().unwrap_or(-1),
                }
            })
            .collect()
    }
}

/// The median of the elapsed times.
pub fn median(outcomes: &[Outcome]) -> Duration {
    let mut t: Vec<Duration> = outcomes.iter().map(|o| o.elapsed).collect();
    t.sort();
    t[t.len() / 2]
}

/// `connect(fd, AF_UNSPEC)`: the kernel's disconnect. A TCP socket goes to CLOSE and stays
/// open; it may connect again.
pub fn disconnect(fd: i32) -> std::io::Result<()> {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid sockaddr of its own size.
    let rc = unsafe {
        libc::connect(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
