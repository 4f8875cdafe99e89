//! The filesystems the daemon needs: cgroup v2 (to attach to) and bpffs (to pin maps in), a
//! pin directory no one else can write, and one daemon per pin directory.

use std::{
    fs::File,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

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

/// Make sure `pin_dir` lies on a bpffs (mounting one at /sys/fs/bpf when needed, mode 0755),
/// create it (mode 0700), and refuse it if anyone but root could change what is pinned there.
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
        // Not the kernel's default 1777: only root creates anything at the top.
        mount(
            Some("bpf"),
            default,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755"),
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf (mode 0755)");
    }
    if !pin_dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    }
    check_owned_by_root(pin_dir, true)?;
    for entry in
        std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?
    {
        let entry = entry.with_context(|| format!("listing {}", pin_dir.display()))?;
        check_owned_by_root(&entry.path(), false)?;
    }
    Ok(())
}

/// Refuse a path root does not own, or that others may write.
fn check_owned_by_root(path: &Path, dir: bool) -> Result<()> {
    let m =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    let what = if dir { "pin directory" } else { "pinned map" };
    if m.file_type().is_symlink() || (dir && !m.is_dir()) {
        bail!(
            "{what} {} is not a {}: remove it (`rm -r {}`) and start again",
            path.display(),
            if dir { "directory" } else { "map" },
            path.display()
        );
    }
    let mode = m.permissions().mode() & 0o7777;
    if m.uid() != 0 || mode & 0o022 != 0 {
        bail!(
            "{what} {} is owned by uid {} with mode {mode:04o}: another user could change what \
             the hooks enforce. Remove it (`rm -r {}`) and start again; the daemon creates it \
             owned by root, mode 0700",
            path.display(),
            m.uid(),
            path.display()
        );
    }
    Ok(())
}

/// Held for the daemon's life: one daemon per pin directory.
pub struct PinLock {
    _dir: File,
}

/// Take the pin directory's lock, or say which process holds it.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<PinLock> {
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    let ino = dir.metadata().map(|m| m.ino()).unwrap_or(0);
    // SAFETY: flock on a descriptor we own; the lock goes with it.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    let err = std::io::Error::last_os_error();
    match rc {
        0 => Ok(PinLock { _dir: dir }),
        _ if err.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            let holder = lock_holder(ino).map_or("another process".to_string(), |pid| {
                format!("another resilience daemon (pid {pid})")
            });
            bail!(
                "pin directory {} is in use by {holder}: one daemon per pin_dir; stop it, or give \
                 this one its own --pin-dir",
                pin_dir.display()
            )
        }
        _ => Err(err).with_context(|| format!("locking {}", pin_dir.display())),
    }
}

/// The pid holding a flock on the inode `ino`, from /proc/locks.
fn lock_holder(ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 12613 00:28:295468 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        let (kind, pid, dev_ino) = (f.get(1)?, f.get(4)?, f.get(5)?);
        let i: u64 = dev_ino.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && i == ino).then(|| pid.parse().ok())?
    })
}
