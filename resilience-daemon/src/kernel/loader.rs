//! Load the object, reuse or create the pinned maps, attach the programs.

use std::{fs::File, path::PathBuf};

use anyhow::{Context, Result};
use aya::{
    maps::RingBuf,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps},
    EbpfLoader,
};
use resilience_common::maps;

use super::{
    btf::Btf,
    features,
    fs::{self, PinLock},
    Tables, OBJECT,
};

pub struct LoadOptions {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub lease_ns: u64,
    /// Entries of the CONNS map (connections to named destinations tracked at once).
    pub max_connections: u32,
}

/// The loaded programs (attached while this lives) and their maps.
pub struct Kernel {
    /// Dropping it detaches every program.
    _ebpf: aya::Ebpf,
    _lock: PinLock,
    pub tables: Tables,
    /// Taken by the daemon's event loop.
    pub events: Option<RingBuf<aya::maps::MapData>>,
}

impl Kernel {
    pub fn load(opts: &LoadOptions) -> Result<Kernel> {
        features::check()?;
        fs::check_cgroup2(&opts.cgroup)?;
        fs::ensure_pin_dir(&opts.pin_dir)?;
        let lock = fs::lock_pin_dir(&opts.pin_dir)?;
        super::layout::check_pinned_layout(&opts.pin_dir, OBJECT, opts.max_connections)?;

        let sk_err = Btf::from_sys_fs()?.member_offset("sock", "sk_err")?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .override_global(maps::GLOBAL_SK_ERR_OFFSET, &sk_err, true)
            .map_max_entries(maps::CONNS, opts.max_connections)
            .load(OBJECT)
            .context("loading the eBPF object")?;

        let events = ebpf
            .take_map(maps::EVENTS)
            .context("map EVENTS missing from the object")?;
        let events = RingBuf::try_from(events).context("map EVENTS")?;
        let tables = Tables::take_from(&mut ebpf)?;
        // A fresh lease before the hooks can see a connect.
        tables
            .arrays
            .heartbeat(super::monotonic_ns(), opts.lease_ns)?;

        let cgroup = File::open(&opts.cgroup)
            .with_context(|| format!("opening cgroup {}", opts.cgroup.display()))?;
        let attach_error = |name: &str| {
            format!(
                "attaching program {name} to cgroup {}",
                opts.cgroup.display()
            )
        };
        // Outcome trackers first: no connect is let through before its outcome can be counted.
        let ops: &mut SockOps = ebpf
            .program_mut("sock_ops")
            .context("program sock_ops missing")?
            .try_into()?;
        ops.load().context("loading program sock_ops")?;
        ops.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| attach_error("sock_ops"))?;
        let release: &mut CgroupSock = ebpf
            .program_mut("sock_release")
            .context("program sock_release missing")?
            .try_into()?;
        release.load().context("loading program sock_release")?;
        release
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| attach_error("sock_release"))?;
        for name in ["connect4", "connect6"] {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name}"))?;
            // A bpf_link attach always coexists with other programs on the cgroup; the kernel
            // refuses the legacy BPF_F_ALLOW_MULTI flag on links, so the mode is "Single" (0).
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| attach_error(name))?;
        }
        Ok(Kernel {
            _ebpf: ebpf,
            _lock: lock,
            tables,
            events: Some(events),
        })
    }
}
