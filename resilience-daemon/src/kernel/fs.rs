//! The filesystems the daemon needs: cgroup v2 (to attach to) and bpffs (to pin maps in).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC},
};

/// The root of the cgroup v2 hierarchy, from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 filesystem is mounted (the hooks need cgroup v2)")
}

pub fn check_cgroup2(dir: &Path) -> Result<()> {
    let st = statfs(dir).with_context(|| format!("cgroup {}", dir.display()))?;
    if st.filesystem_type() != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory", dir.display());
    }
    Ok(())
}

/// Make sure `pin_dir` lies on a bpffs, mounting one at /sys/fs/bpf when needed, and create it.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    let is_bpffs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if !is_bpffs(parent) {
        let default = Path::new("/sys/fs/bpf");
        if parent != default {
            bail!(
                "pin directory {}: {} is not a bpffs mount",
                pin_dir.display(),
                parent.display()
            );
        }
        std::fs::create_dir_all(default).ok();
        mount(
            Some("bpf"),
            default,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))
}
