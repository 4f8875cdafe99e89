//! Pinned maps left by another build are refused: loading would succeed and then every read
//! would be garbage, or a map would keep an old size.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::MapData;
use resilience_common::maps;

pub fn check_pinned_layout(pin_dir: &Path, object: &[u8], max_connections: u32) -> Result<()> {
    let obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    for (name, def) in &obj.maps {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = data
            .info()
            .with_context(|| format!("map {}", path.display()))?;
        let entries = if name == maps::CONNS {
            max_connections
        } else {
            def.max_entries()
        };
        let pinned = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let built = (def.key_size(), def.value_size(), entries, def.map_flags());
        if name == maps::CONNS && pinned.0 == built.0 && pinned.1 == built.1 && pinned.2 != built.2
        {
            anyhow::bail!(
                "pinned map {} tracks {} connections but max_connections is {}: a new size takes \
                 new maps. Stop the daemon, remove {} (its counters are lost) and start again, or \
                 keep max_connections = {}",
                path.display(),
                pinned.2,
                built.2,
                pin_dir.display(),
                pinned.2
            );
        }
        if pinned != built {
            anyhow::bail!(
                "pinned map {} has (key, value, entries, flags) {pinned:?} but this build uses \
                 {built:?}; it was left by another version: remove {} (its counters are lost) \
                 and restart",
                path.display(),
                pin_dir.display()
            );
        }
    }
    Ok(())
}
