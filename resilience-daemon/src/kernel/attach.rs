//! The programs' attachment to the guarded cgroup, and keeping it. A cgroup directory can be
//! removed and created again under the same path (systemd does that to a service's cgroup on
//! every restart); the programs go with the old one. The daemon watches the path and attaches
//! to the new directory, so that a restarted service is guarded again.

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        cgroup_sock::CgroupSockLinkId, cgroup_sock_addr::CgroupSockAddrLinkId,
        sock_ops::SockOpsLinkId, BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr,
        SockOps,
    },
    Ebpf,
};

/// The `cgroup_mkdir` tracepoint, attached host-wide (it only ever adds a service's new cgroup
/// to SERVICES). Optional: without it a recreated service cgroup is found by the daemon's
/// look every tick, up to a tick late.
fn watch_mkdir(ebpf: &mut Ebpf) {
    let result = (|| -> Result<()> {
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut("cgroup_mkdir")
            .context("program cgroup_mkdir missing")?
            .try_into()?;
        prog.load("cgroup_mkdir", &btf)
            .context("loading program cgroup_mkdir (tp_btf)")?;
        prog.attach()
            .context("attaching to tracepoint cgroup_mkdir")?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(
            error = %format!("{e:#}"),
            "no cgroup_mkdir tracepoint: a service's recreated cgroup is guarded from the \
             daemon's next tick (50 ms) rather than from its creation"
        );
    }
}

/// Device and inode: a directory created again under the same path has a new inode.
pub(crate) type DirId = (u64, u64);

pub(crate) fn dir_id(path: &Path) -> Option<DirId> {
    let m = std::fs::metadata(path).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

struct Links {
    sock_ops: SockOpsLinkId,
    sock_release: CgroupSockLinkId,
    connect: [CgroupSockAddrLinkId; 2],
}

const CONNECT: [&str; 2] = ["connect4", "connect6"];

/// What changed about the guarded cgroup since the last look.
#[derive(Debug, PartialEq, Eq)]
pub enum CgroupChange {
    /// The directory is gone (or is another one, not yet attached): nothing is guarded.
    Removed,
    /// A directory exists at the path again and the programs are attached to it.
    Attached,
}

/// The loaded programs (attached while this lives) and where.
pub struct Attachment {
    /// Dropping it detaches every program.
    ebpf: Ebpf,
    cgroup: PathBuf,
    /// The directory the programs are attached to; None while it is gone.
    attached: Option<DirId>,
    links: Option<Links>,
    /// A directory attaching to failed: reported once, retried quietly.
    failed: Option<DirId>,
}

impl Attachment {
    /// Load the programs and attach them to `cgroup`. Outcome trackers first: no connect is
    /// let through before its outcome can be counted.
    pub fn new(mut ebpf: Ebpf, cgroup: &Path) -> Result<Attachment> {
        let missing = |name: &str| format!("program {name} missing");
        let loading = |name: &str| format!("loading program {name}");
        let ops: &mut SockOps = ebpf
            .program_mut("sock_ops")
            .with_context(|| missing("sock_ops"))?
            .try_into()?;
        ops.load().with_context(|| loading("sock_ops"))?;
        let release: &mut CgroupSock = ebpf
            .program_mut("sock_release")
            .with_context(|| missing("sock_release"))?
            .try_into()?;
        release.load().with_context(|| loading("sock_release"))?;
        for name in CONNECT {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| missing(name))?
                .try_into()?;
            prog.load().with_context(|| loading(name))?;
        }
        watch_mkdir(&mut ebpf);
        let mut a = Attachment {
            ebpf,
            cgroup: cgroup.to_path_buf(),
            attached: None,
            links: None,
            failed: None,
        };
        a.attach()?;
        Ok(a)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Whether the programs are on the directory now at the cgroup's path.
    pub fn attached(&self) -> bool {
        self.attached.is_some()
    }

    fn attach(&mut self) -> Result<()> {
        let id = dir_id(&self.cgroup)
            .with_context(|| format!("cgroup {} is not a directory", self.cgroup.display()))?;
        let dir = File::open(&self.cgroup)
            .with_context(|| format!("opening cgroup {}", self.cgroup.display()))?;
        let cg = self.cgroup.display().to_string();
        let err = |name: &str| format!("attaching program {name} to cgroup {cg}");
        // A bpf_link attach always coexists with other programs on the cgroup; the kernel
        // refuses the legacy BPF_F_ALLOW_MULTI flag on links, so the mode is "Single" (0).
        let mode = CgroupAttachMode::Single;
        let ops: &mut SockOps = self
            .ebpf
            .program_mut("sock_ops")
            .context("program sock_ops missing")?
            .try_into()?;
        let sock_ops = ops.attach(&dir, mode).with_context(|| err("sock_ops"))?;
        let release: &mut CgroupSock = self
            .ebpf
            .program_mut("sock_release")
            .context("program sock_release missing")?
            .try_into()?;
        let sock_release = release
            .attach(&dir, mode)
            .with_context(|| err("sock_release"))?;
        let mut connect = Vec::with_capacity(2);
        for name in CONNECT {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            connect.push(prog.attach(&dir, mode).with_context(|| err(name))?);
        }
        let connect: [CgroupSockAddrLinkId; 2] = connect
            .try_into()
            .map_err(|_| anyhow::anyhow!("two connect programs"))?;
        self.links = Some(Links {
            sock_ops,
            sock_release,
            connect,
        });
        self.attached = Some(id);
        Ok(())
    }

    /// Let go of the links to a removed directory (the kernel has detached them already).
    fn release_links(&mut self) {
        let Some(links) = self.links.take() else {
            return;
        };
        if let Some(Ok(p)) = self
            .ebpf
            .program_mut("sock_ops")
            .map(<&mut SockOps>::try_from)
        {
            let _ = p.detach(links.sock_ops);
        }
        if let Some(Ok(p)) = self
            .ebpf
            .program_mut("sock_release")
            .map(<&mut CgroupSock>::try_from)
        {
            let _ = p.detach(links.sock_release);
        }
        for (name, id) in CONNECT.into_iter().zip(links.connect) {
            if let Some(Ok(p)) = self
                .ebpf
                .program_mut(name)
                .map(<&mut CgroupSockAddr>::try_from)
            {
                let _ = p.detach(id);
            }
        }
    }

    /// Look at the cgroup's path: report a removal once, and attach to a directory created
    /// there again.
    pub fn watch(&mut self) -> Option<Result<CgroupChange>> {
        let now = dir_id(&self.cgroup);
        if now.is_some() && now == self.attached {
            return None;
        }
        let was_attached = self.attached.take().is_some();
        self.release_links();
        if now.is_none() {
            return was_attached.then_some(Ok(CgroupChange::Removed));
        }
        match self.attach() {
            Ok(()) => {
                self.failed = None;
                Some(Ok(CgroupChange::Attached))
            }
            Err(_) if self.failed == now => None,
            Err(e) => {
                self.failed = now;
                Some(Err(e))
            }
        }
    }
}
