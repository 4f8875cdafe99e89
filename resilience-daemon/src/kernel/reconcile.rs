//! At start: connections that closed while no daemon had the programs attached left their
//! tracking entries (and bulkhead places) behind. Entries whose socket no longer exists are
//! removed and their places given back; connections alive across the restart keep theirs.

use std::{path::Path, sync::atomic::Ordering};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use resilience_common::{
    conn::{
        CONN_CONNECTING, CONN_ESTABLISHED, PENDING_BUCKET_MASK, PENDING_SHIFT, SLOT_OBSERVED,
        TRACK_HELD, TRACK_PENDING, TRACK_ROOM,
    },
    maps, ConnTrack,
};

use super::{mmap::atomic_u64, sockdiag, Arrays};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Tracking entries whose socket was gone.
    pub removed: u64,
    /// Bulkhead places given back.
    pub places: u64,
    /// Entries kept (their sockets still exist).
    pub kept: u64,
}

/// Remove the entries of sockets that no longer exist among those tracked before `before_ns`
/// (CLOCK_MONOTONIC; later entries belong to connects made since the programs were attached,
/// which the dump may not show yet).
pub fn reconcile(pin_dir: &Path, arrays: &Arrays, before_ns: u64) -> Result<Reconciled> {
    let live = sockdiag::live_cookies()?;
    let mut r = Reconciled::default();
    for name in [maps::HOT_CONNS, maps::CONNS, maps::OBS_CONNS] {
        let path = pin_dir.join(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let mut map: HashMap<MapData, u64, ConnTrack> =
            HashMap::try_from(aya::maps::Map::from_map_data(data)?)
                .with_context(|| format!("map {name}"))?;
        let entries: Vec<(u64, ConnTrack)> = map.iter().filter_map(|e| e.ok()).collect();
        for (cookie, c) in entries {
            if c.start_ns >= before_ns || live.contains(&cookie) {
                r.kept += 1;
                continue;
            }
            // Whoever deletes the entry settles it: if a program got there first, it counted.
            if map.remove(&cookie).is_err() {
                continue;
            }
            r.removed += 1;
            let named = c.slot != SLOT_OBSERVED;
            if !named && c.flags & TRACK_ROOM != 0 {
                if let Some(live) = arrays.obs_live.atomic(0) {
                    let _ = live
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
                }
            }
            if named && c.state == CONN_CONNECTING && c.flags & TRACK_PENDING != 0 {
                arrays.unpend(
                    c.slot,
                    ((c.flags >> PENDING_SHIFT) & PENDING_BUCKET_MASK) as usize,
                );
            }
            if named && settle(arrays, &c) {
                r.places += 1;
            }
        }
    }
    Ok(r)
}

/// Give the place back and count the lost outcome, if the slot still belongs to the owner the
/// connection was admitted under. True if a place came back.
fn settle(arrays: &Arrays, c: &ConnTrack) -> bool {
    let set = arrays.active_set();
    let owned = arrays
        .policy(set, c.slot)
        .is_some_and(|p| p.generation == c.generation && p.name_id != 0);
    if !owned {
        return false;
    }
    if let Some(counters) = arrays.counters.ptr(c.slot) {
        // The connect's outcome was counted if it got established; only its close was missed.
        // SAFETY: aligned u64 fields of a mapped entry, which the programs also add to
        // atomically.
        unsafe {
            let field = if c.state == CONN_ESTABLISHED {
                &raw mut (*counters).closed
            } else {
                &raw mut (*counters).untracked
            };
            atomic_u64(field).fetch_add(1, Ordering::AcqRel);
        }
    }
    if c.flags & TRACK_HELD == 0 {
        return false;
    }
    if let Some(active) = arrays.active.atomic(c.slot) {
        // Never below zero: a count already given back by other means is left alone.
        let _ = active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        return true;
    }
    false
}
