//! The policy keys (EXACT and CIDR) of the two policy sets. A reload writes the keys of the
//! inactive set, where no connect looks, and only then does the daemon flip the active set: the
//! hooks see the old policy or the new one, never a mix. A failed write is undone, so the
//! inactive set stays as it was.

use std::collections::HashMap;

use anyhow::{Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap as BpfHashMap, MapData,
};
use resilience_common::{
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    endpoint::CIDR_HEAD_BITS,
    service::level_flags,
    CidrData, Endpoint, ServiceRoute,
};

/// A CIDR key without its set: (bits of the IPv6 or IPv4-mapped address, address, port or 0).
pub type Cidr = (u32, [u8; 16], u16);

/// A ROUTES key without its set: (scoped destination's dispatch number, service key).
pub type Route = (u32, u64);

/// The keys one policy set holds (endpoints without their set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetKeys {
    pub exact: HashMap<Endpoint, u32>,
    pub cidr: HashMap<Cidr, u32>,
    /// Per-service slots of scoped destinations.
    pub routes: HashMap<Route, u32>,
    /// Levels (bit l = level l) where this set's services live: the hook reads only those.
    pub levels: u32,
}

impl SetKeys {
    /// Which kinds of keys exist, for the hook to skip lookups that cannot match.
    pub fn lookup_flags(&self) -> u32 {
        let mut flags = 0;
        if !self.exact.is_empty() {
            flags |= LOOKUP_EXACT;
        }
        if self.cidr.keys().any(|&(_, _, port)| port != 0) {
            flags |= LOOKUP_CIDR_PORT;
        }
        if self.cidr.keys().any(|&(_, _, port)| port == 0) {
            flags |= LOOKUP_CIDR_ANY;
        }
        flags | level_flags(self.levels)
    }
}

pub struct KeySets {
    exact: BpfHashMap<MapData, Endpoint, u32>,
    cidr: LpmTrie<MapData, CidrData, u32>,
    routes: BpfHashMap<MapData, ServiceRoute, u32>,
    /// What each set holds in the kernel.
    sets: [SetKeys; 2],
}

/// One key write, and how to undo it.
enum Undo {
    Exact(Endpoint, Option<u32>),
    Cidr(Cidr, Option<u32>),
    Route(Route, Option<u32>),
}

fn route_key(set: u32, &(dispatch, service): &Route) -> ServiceRoute {
    ServiceRoute {
        service,
        dispatch,
        set: set & 1,
    }
}

/// A testing seam: with `RESILIENCE_FAULT_KEY_WRITE=N` in the environment, the N-th key write
/// of this process fails (once), as a kernel that ran out of memory would. It shows that a
/// reload refused midway leaves the running policy untouched.
fn injected_fault() -> Result<()> {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    };
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let Some(at) = *AT.get_or_init(|| {
        std::env::var("RESILIENCE_FAULT_KEY_WRITE")
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return Ok(());
    };
    if WRITES.fetch_add(1, Ordering::Relaxed) + 1 == at {
        anyhow::bail!("injected fault at key write {at} (RESILIENCE_FAULT_KEY_WRITE)");
    }
    Ok(())
}

fn cidr_key(set: u32, &(bits, addr, port): &Cidr) -> Key<CidrData> {
    Key::new(
        CIDR_HEAD_BITS + bits,
        CidrData::new((set & 1) as u8, addr, port),
    )
}

impl KeySets {
    /// Read what both sets hold now (left by a previous daemon, or empty).
    pub fn load(
        exact: BpfHashMap<MapData, Endpoint, u32>,
        cidr: LpmTrie<MapData, CidrData, u32>,
        routes: BpfHashMap<MapData, ServiceRoute, u32>,
    ) -> Result<KeySets> {
        let mut sets = [SetKeys::default(), SetKeys::default()];
        for item in exact.iter() {
            let (ep, slot) = item.context("reading map EXACT")?;
            sets[(ep.set & 1) as usize].exact.insert(ep.in_set(0), slot);
        }
        for item in cidr.iter() {
            let (key, slot) = item.context("reading map CIDR")?;
            let data = key.data();
            let bits = key.prefix_len().saturating_sub(CIDR_HEAD_BITS);
            let port = u16::from_be_bytes(data.port);
            sets[(data.set & 1) as usize]
                .cidr
                .insert((bits, data.addr, port), slot);
        }
        for item in routes.iter() {
            let (key, slot) = item.context("reading map ROUTES")?;
            sets[(key.set & 1) as usize]
                .routes
                .insert((key.dispatch, key.service), slot);
        }
        Ok(KeySets {
            exact,
            cidr,
            routes,
            sets,
        })
    }

    pub fn keys(&self, set: u32) -> &SetKeys {
        &self.sets[(set & 1) as usize]
    }

    /// Make set `set` hold exactly `want`. The set must not be the active one. On error every
    /// write made is undone and the error returned.
    pub fn write(&mut self, set: u32, want: &SetKeys) -> Result<()> {
        let mut undo = Vec::new();
        let result = self.apply(set, want, &mut undo);
        if result.is_err() {
            for u in undo.into_iter().rev() {
                // Best effort: the set is inactive, and the mirror is restored from what was
                // there before.
                let _ = self.revert(set, u);
            }
        } else {
            self.sets[(set & 1) as usize] = want.clone();
        }
        result
    }

    fn apply(&mut self, set: u32, want: &SetKeys, undo: &mut Vec<Undo>) -> Result<()> {
        let have = self.sets[(set & 1) as usize].clone();
        let s = (set & 1) as u16;
        for (ep, &slot) in &want.exact {
            let before = have.exact.get(ep).copied();
            if before != Some(slot) {
                injected_fault()?;
                self.exact
                    .insert(ep.in_set(s), slot, 0)
                    .with_context(|| format!("writing map EXACT ({} keys)", want.exact.len()))?;
                undo.push(Undo::Exact(*ep, before));
            }
        }
        for (c, &slot) in &want.cidr {
            let before = have.cidr.get(c).copied();
            if before != Some(slot) {
                injected_fault()?;
                self.cidr
                    .insert(&cidr_key(set, c), slot, 0)
                    .with_context(|| format!("writing map CIDR ({} keys)", want.cidr.len()))?;
                undo.push(Undo::Cidr(*c, before));
            }
        }
        for (r, &slot) in &want.routes {
            let before = have.routes.get(r).copied();
            if before != Some(slot) {
                injected_fault()?;
                self.routes
                    .insert(route_key(set, r), slot, 0)
                    .with_context(|| format!("writing map ROUTES ({} keys)", want.routes.len()))?;
                undo.push(Undo::Route(*r, before));
            }
        }
        for (r, &slot) in &have.routes {
            if !want.routes.contains_key(r) {
                injected_fault()?;
                self.routes
                    .remove(&route_key(set, r))
                    .context("removing from map ROUTES")?;
                undo.push(Undo::Route(*r, Some(slot)));
            }
        }
        for (ep, &slot) in &have.exact {
            if !want.exact.contains_key(ep) {
                injected_fault()?;
                self.exact
                    .remove(&ep.in_set(s))
                    .context("removing from map EXACT")?;
                undo.push(Undo::Exact(*ep, Some(slot)));
            }
        }
        for (c, &slot) in &have.cidr {
            if !want.cidr.contains_key(c) {
                injected_fault()?;
                self.cidr
                    .remove(&cidr_key(set, c))
                    .context("removing from map CIDR")?;
                undo.push(Undo::Cidr(*c, Some(slot)));
            }
        }
        Ok(())
    }

    fn revert(&mut self, set: u32, u: Undo) -> Result<()> {
        let s = (set & 1) as u16;
        match u {
            Undo::Exact(ep, Some(slot)) => self.exact.insert(ep.in_set(s), slot, 0)?,
            Undo::Exact(ep, None) => self.exact.remove(&ep.in_set(s))?,
            Undo::Cidr(c, Some(slot)) => self.cidr.insert(&cidr_key(set, &c), slot, 0)?,
            Undo::Cidr(c, None) => self.cidr.remove(&cidr_key(set, &c))?,
            Undo::Route(r, Some(slot)) => self.routes.insert(route_key(set, &r), slot, 0)?,
            Undo::Route(r, None) => self.routes.remove(&route_key(set, &r))?,
        }
        Ok(())
    }

    /// Record that set `set`'s services now live at `levels` (its lookup flags are the
    /// caller's to write).
    pub fn set_levels(&mut self, set: u32, levels: u32) {
        self.sets[(set & 1) as usize].levels = levels;
    }
}
