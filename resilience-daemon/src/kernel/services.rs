//! SERVICES (cgroup id -> service) and WATCH (cgroup path -> service): where the services'
//! processes are. The daemon makes both hold what it found; the `cgroup_mkdir` tracepoint
//! adds a SERVICES entry itself when a watched cgroup is created, so the maps are read back
//! rather than mirrored.

use std::collections::HashMap;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use resilience_common::CgroupPath;

pub struct ServiceMaps {
    services: BpfHashMap<MapData, u64, u64>,
    watch: BpfHashMap<MapData, CgroupPath, u64>,
}

impl ServiceMaps {
    pub fn new(
        services: BpfHashMap<MapData, u64, u64>,
        watch: BpfHashMap<MapData, CgroupPath, u64>,
    ) -> ServiceMaps {
        ServiceMaps { services, watch }
    }

    /// Make SERVICES hold `ids` and WATCH hold `paths`: new entries first, then the others
    /// go (a cgroup removed, a service no longer in the policy).
    pub fn sync(
        &mut self,
        ids: &HashMap<u64, u64>,
        paths: &HashMap<CgroupPath, u64>,
    ) -> Result<()> {
        sync_map(&mut self.watch, paths).context("map WATCH")?;
        sync_map(&mut self.services, ids).context("map SERVICES")
    }
}

fn sync_map<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut BpfHashMap<MapData, K, u64>,
    want: &HashMap<K, u64>,
) -> Result<()> {
    let have: HashMap<K, u64> = map.iter().filter_map(|r| r.ok()).collect();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0).context("writing")?;
        }
    }
    for k in have.keys() {
        if !want.contains_key(k) {
            map.remove(k).context("removing")?;
        }
    }
    Ok(())
}
