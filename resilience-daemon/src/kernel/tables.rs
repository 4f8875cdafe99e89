//! Typed handles on the object's maps, and the only code that reads or writes them.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, PerCpuArray,
};
use resilience_common::{
    maps, Bucket, CidrData, Control, DestCounters, DestPolicy, Endpoint, Stats,
};

pub struct Tables {
    pub exact: HashMap<MapData, Endpoint, u32>,
    pub cidr: LpmTrie<MapData, CidrData, u32>,
    pub policy: Array<MapData, DestPolicy>,
    pub counters: Array<MapData, DestCounters>,
    pub active: Array<MapData, u64>,
    pub probes: Array<MapData, u64>,
    pub buckets: Array<MapData, Bucket>,
    pub streaks: Array<MapData, u64>,
    pub observed: HashMap<MapData, Endpoint, DestCounters>,
    pub control: Array<MapData, Control>,
    pub stats: PerCpuArray<MapData, Stats>,
}

impl Tables {
    /// Take every map out of the loaded object.
    pub fn take_from(src: &mut aya::Ebpf) -> Result<Tables> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            src: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<T> {
            let map = src
                .take_map(name)
                .with_context(|| format!("map {name} missing from the object"))?;
            T::try_from(map).with_context(|| format!("map {name} has the wrong type"))
        }
        Ok(Tables {
            exact: typed(src, maps::EXACT)?,
            cidr: typed(src, maps::CIDR)?,
            policy: typed(src, maps::POLICY)?,
            counters: typed(src, maps::COUNTERS)?,
            active: typed(src, maps::ACTIVE)?,
            probes: typed(src, maps::PROBES)?,
            buckets: typed(src, maps::BUCKETS)?,
            streaks: typed(src, maps::STREAKS)?,
            observed: typed(src, maps::OBSERVED)?,
            control: typed(src, maps::CONTROL)?,
            stats: typed(src, maps::STATS)?,
        })
    }

    pub fn set_control(&mut self, c: Control) -> Result<()> {
        self.control.set(0, c, 0).context("writing map CONTROL")
    }

    pub fn control(&self) -> Result<Control> {
        self.control.get(&0, 0).context("reading map CONTROL")
    }

    /// The global counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let per_cpu = self.stats.get(&0, 0).context("reading map STATS")?;
        Ok(per_cpu.iter().fold(Stats::default(), |a, s| Stats {
            fail_open: a.fail_open + s.fail_open,
            ringbuf_lost: a.ringbuf_lost + s.ringbuf_lost,
            untracked: a.untracked + s.untracked,
            hook_errors: a.hook_errors + s.hook_errors,
        }))
    }

    pub fn policy(&self, slot: u32) -> Result<DestPolicy> {
        self.policy
            .get(&slot, 0)
            .with_context(|| format!("reading map POLICY[{slot}]"))
    }

    pub fn set_policy(&mut self, slot: u32, p: DestPolicy) -> Result<()> {
        self.policy
            .set(slot, p, 0)
            .with_context(|| format!("writing map POLICY[{slot}]"))
    }

    pub fn counters(&self, slot: u32) -> Result<DestCounters> {
        self.counters
            .get(&slot, 0)
            .with_context(|| format!("reading map COUNTERS[{slot}]"))
    }

    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        self.counters
            .set(slot, DestCounters::default(), 0)
            .with_context(|| format!("writing map COUNTERS[{slot}]"))
    }

    /// Connections admitted and not yet closed.
    pub fn active(&self, slot: u32) -> Result<u64> {
        self.active
            .get(&slot, 0)
            .with_context(|| format!("reading map ACTIVE[{slot}]"))
    }

    /// Only for a slot nobody can be holding places of (a fresh owner: see generations).
    pub fn reset_active(&mut self, slot: u32) -> Result<()> {
        self.active
            .set(slot, 0, 0)
            .with_context(|| format!("writing map ACTIVE[{slot}]"))
    }

    /// Write the half-open budget (only while the slot's action is not PROBE).
    pub fn set_probes(&mut self, slot: u32, n: u32) -> Result<()> {
        self.probes
            .set(slot, u64::from(n), 0)
            .with_context(|| format!("writing map PROBES[{slot}]"))
    }

    pub fn streak(&self, slot: u32) -> Result<u64> {
        self.streaks
            .get(&slot, 0)
            .with_context(|| format!("reading map STREAKS[{slot}]"))
    }

    pub fn reset_streak(&mut self, slot: u32) -> Result<()> {
        self.streaks
            .set(slot, 0, 0)
            .with_context(|| format!("writing map STREAKS[{slot}]"))
    }

    pub fn bucket(&self, slot: u32) -> Result<Bucket> {
        self.buckets
            .get(&slot, 0)
            .with_context(|| format!("reading map BUCKETS[{slot}]"))
    }

    pub fn set_bucket(&mut self, slot: u32, b: Bucket) -> Result<()> {
        self.buckets
            .set(slot, b, 0)
            .with_context(|| format!("writing map BUCKETS[{slot}]"))
    }

    pub fn observed(&self) -> Vec<(Endpoint, DestCounters)> {
        self.observed.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn exact_keys(&self) -> Vec<(Endpoint, u32)> {
        self.exact.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn set_exact(&mut self, ep: Endpoint, slot: u32) -> Result<()> {
        self.exact.insert(ep, slot, 0).context("writing map EXACT")
    }

    pub fn remove_exact(&mut self, ep: &Endpoint) -> Result<()> {
        self.exact.remove(ep).context("removing from map EXACT")
    }

    pub fn cidr_keys(&self) -> Vec<(Key<CidrData>, u32)> {
        self.cidr.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn set_cidr(&mut self, key: Key<CidrData>, slot: u32) -> Result<()> {
        self.cidr.insert(&key, slot, 0).context("writing map CIDR")
    }

    pub fn remove_cidr(&mut self, key: &Key<CidrData>) -> Result<()> {
        self.cidr.remove(key).context("removing from map CIDR")
    }
}

/// Refuse to reuse pinned maps that differ from this build's (left by another version): loading
/// would succeed and then every read would be garbage, or a map would keep an old size.
pub fn check_pinned_layout(pin_dir: &Path, object: &[u8]) -> Result<()> {
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
        let pinned = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let built = (
            def.key_size(),
            def.value_size(),
            def.max_entries(),
            def.map_flags(),
        );
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
