//! A child cgroup per test, removed when the test ends.

use std::path::{Path, PathBuf};

pub struct Cgroup {
    pub path: PathBuf,
}

/// The cgroup2 mount point, from /proc/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount: these tests need cgroup v2")
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let path = cgroup2_root().join(format!("resilience-test-{}", crate::unique(tag)));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// A cgroup inside this one (drop it before its parent).
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with this whole process in the cgroup, then moves it back where it was: the
    /// sockets `f` creates belong to the cgroup for good (a socket's cgroup is its creator's).
    pub fn while_in<T>(&self, f: impl FnOnce() -> T) -> T {
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup2 line");
        let home = cgroup2_root().join(rel.trim_start_matches('/'));
        let me = std::process::id().to_string();
        std::fs::write(self.path.join("cgroup.procs"), &me).expect("joining the cgroup");
        let out = f();
        std::fs::write(home.join("cgroup.procs"), &me).expect("leaving the cgroup");
        out
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Clients have exited by now; a cgroup can only be removed once empty.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}
