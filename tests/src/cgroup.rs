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
