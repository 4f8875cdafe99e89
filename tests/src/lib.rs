//! Harness for the privileged tests and the benchmark: child cgroups, the real daemon binary,
//! a client that connects from inside a cgroup, and loopback listeners.
//!
//! Rules it enforces: never attach to the root cgroup (every daemon here gets a child cgroup of
//! its own), only loopback addresses, and no test skips silently under CI.

pub mod bpf_sys;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod floor;
pub mod listener;
pub mod procfs;
pub mod soak;
pub mod tmux;

use std::path::PathBuf;

/// True when the privileged tests can run. Without root: under CI (CI=true) this panics, since
/// a privileged test that cannot run must fail there; elsewhere it says so and the test returns.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: needs root to load eBPF programs, and CI forbids skipping"
    );
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// The daemon binary under test: $RESILIENCE_BIN, else target/release/resilience.
pub fn daemon_bin() -> PathBuf {
    let path = std::env::var_os("RESILIENCE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/resilience")
        });
    assert!(
        path.exists(),
        "{} does not exist: build it with `cargo xtask build` (or set RESILIENCE_BIN)",
        path.display()
    );
    path
}

/// A tag unique to this process and call, for cgroup, socket and pin names.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace of the test's own (`ip netns add`), removed when dropped.
pub struct Netns(pub String);

impl Netns {
    /// A new namespace; with `lo_up`, its loopback is up.
    pub fn new(tag: &str, lo_up: bool) -> Netns {
        let name = format!("resilience-test-{}", unique(tag));
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name} failed");
        let ns = Netns(name);
        if lo_up {
            ns.exec(&["ip", "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Run a command inside the namespace; it must succeed.
    pub fn exec(&self, cmd: &[&str]) {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .status()
            .expect("ip netns exec");
        assert!(ok.success(), "{cmd:?} in {} failed", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The body of `GET /metrics` from the daemon's Prometheus endpoint.
pub fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}
