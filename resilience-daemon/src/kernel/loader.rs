//! Load the object, reuse or create the pinned maps, attach the programs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{maps::RingBuf, EbpfLoader};
use resilience_common::maps;

use super::{
    attach::Attachment,
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
    pub features: features::Features,
    /// The programs, attached to the guarded cgroup; dropping it detaches them.
    pub attachment: Attachment,
    _lock: PinLock,
    pub tables: Tables,
    /// Taken by the daemon's event loop.
    pub events: Option<RingBuf<aya::maps::MapData>>,
}

impl Kernel {
    pub fn load(opts: &LoadOptions) -> Result<Kernel> {
        let features = features::check()?;
        fs::check_cgroup2(&opts.cgroup)?;
        fs::ensure_pin_dir(&opts.pin_dir)?;
        let lock = fs::lock_pin_dir(&opts.pin_dir)?;
        super::layout::check_pinned_layout(&opts.pin_dir, OBJECT, opts.max_connections)?;

        // The kernel's BTF, parsed, is about 10 MB: gone before aya parses it again for the
        // loader (the start-up's peak of memory).
        let (sk_err, sk_cookie, offsets) = {
            let btf = Btf::from_sys_fs()?;
            let sk_err = btf.member_offset("sock", "sk_err")?;
            // Without it the hooks look for a tracking entry where none can be (slower only).
            let sk_cookie = btf
                .member_offset("sock", "__sk_common")
                .and_then(|c| Ok(c + btf.member_offset("sock_common", "skc_cookie")?))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %format!("{e:#}"), "socket cookies not found in BTF");
                    0
                });
            // For the cgroup_mkdir tracepoint; without them it does nothing (services' new
            // cgroups are then found by the daemon's look every tick).
            let offsets = [
                ("cgroup", "kn"),
                ("kernfs_node", "id"),
                ("cgroup", "root"),
                ("cgroup_root", "hierarchy_id"),
            ]
            .map(|(s, m)| btf.member_offset(s, m));
            (sk_err, sk_cookie, offsets)
        };
        let [kn, kn_id, root, hierarchy] = match offsets {
            [Ok(a), Ok(b), Ok(c), Ok(d)] => [a, b, c, d],
            other => {
                let missing: Vec<String> = other
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| format!("{e:#}")))
                    .collect();
                tracing::warn!(
                    ?missing,
                    "struct cgroup, cgroup_root or kernfs_node not as expected in the kernel's \
                     BTF: a service's recreated cgroup is found by the daemon's look only"
                );
                [0; 4]
            }
        };
        let (hz, hz_from) = super::hz::detect();
        if hz_from.starts_with("nowhere") {
            tracing::warn!(
                hz,
                "the kernel's HZ is not in /boot/config-* nor readable from /proc/timer_list: \
                 connect deadlines below 1s may retransmit their SYN early"
            );
        } else {
            tracing::debug!(hz, from = %hz_from, "kernel HZ");
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .override_global(maps::GLOBAL_SK_ERR_OFFSET, &sk_err, true)
            .override_global(maps::GLOBAL_SK_COOKIE_OFFSET, &sk_cookie, true)
            .override_global(maps::GLOBAL_HAVE_RETVAL, &u32::from(features.retval), true)
            .override_global(maps::GLOBAL_HZ, &hz, true)
            .override_global(maps::GLOBAL_OBS_CAP, &(opts.max_connections / 2), true)
            .override_global(maps::GLOBAL_CGROUP_KN_OFFSET, &kn, true)
            .override_global(maps::GLOBAL_KERNFS_ID_OFFSET, &kn_id, true)
            .override_global(maps::GLOBAL_CGROUP_ROOT_OFFSET, &root, true)
            .override_global(maps::GLOBAL_HIERARCHY_ID_OFFSET, &hierarchy, true)
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

        let attachment = Attachment::new(ebpf, &opts.cgroup)?;
        Ok(Kernel {
            features,
            attachment,
            _lock: lock,
            tables,
            events: Some(events),
        })
    }
}
