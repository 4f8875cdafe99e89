//! The destinations being guarded: each one's definition, slot, breaker and history.

use std::collections::HashMap;

use resilience_common::Endpoint;

use crate::{
    config::{Destination, Mode},
    engine::Breaker,
    latency::Samples,
    snapshot::TransitionCounts,
};

/// A destination being guarded.
pub struct Dest {
    /// The effective definition: the file's (shared with the policy), with the operator's mode
    /// over it.
    pub def: std::sync::Arc<Destination>,
    /// `resilience disable`: the mode the operator put in force over the file's.
    pub override_mode: Option<Mode>,
    pub slot: u32,
    /// A scoped destination's dispatch number (see `plan::Planned`).
    pub dispatch: Option<u32>,
    /// The slot's generation for this owner: kernel records of other generations are dropped.
    pub generation: u32,
    pub breaker: Breaker,
    pub samples: Samples,
    pub transitions: TransitionCounts,
    /// The trip fuse last published.
    pub trip_after: u32,
    /// The window the kernel judges, as last published.
    pub window: Option<crate::engine::WindowArm>,
    /// What its DNS names resolved to.
    pub resolved: Vec<Endpoint>,
    /// The pending-age bucket boundary at the last look at its pending connects, if that
    /// look found none slow: until the boundary moves none can be (see `daemon::on_tick`).
    pub pending_mark: Option<u64>,
    /// CLOCK_MONOTONIC ns before which the tick has nothing to do for this destination (its
    /// breaker's next timer, the next boundary of its pending connects' ages); 0: look at the
    /// next tick. A transition or a new policy sets it back to 0.
    pub tick_due_ns: u64,
    /// What a snapshot last showed of it (a hash), and the snapshot `seq` that changed it.
    pub shown: u64,
    pub rev: u64,
}

const NONE: u32 = u32::MAX;

#[derive(Default)]
pub struct Guarded {
    pub dests: Vec<Dest>,
    /// Each destination's `tick_due_ns`, side by side: the tick reads these, not every
    /// destination, until a transition (`Journal::transitions` moved past `due_seen`) may have
    /// brought one forward.
    pub due: Vec<u64>,
    pub due_seen: u64,
    /// Slot -> index in `dests` (`NONE` for a slot nobody owns): a look-up per record.
    by_slot: Vec<u32>,
    by_name: HashMap<String, usize>,
    /// The services the destinations are scoped to, each once.
    services: Vec<String>,
}

impl Guarded {
    pub fn new(mut dests: Vec<Dest>) -> Guarded {
        // A new policy may change any timer: every destination is looked at the next tick.
        for d in &mut dests {
            d.tick_due_ns = 0;
        }
        let top = dests.iter().map(|d| d.slot as usize + 1).max().unwrap_or(0);
        let mut by_slot = vec![NONE; top];
        for (i, d) in dests.iter().enumerate() {
            by_slot[d.slot as usize] = i as u32;
        }
        let by_name = dests
            .iter()
            .enumerate()
            .map(|(i, d)| (d.def.slot_key(), i))
            .collect();
        let mut services: Vec<String> =
            dests.iter().filter_map(|d| d.def.service.clone()).collect();
        services.sort();
        services.dedup();
        Guarded {
            due: vec![0; dests.len()],
            due_seen: 0,
            dests,
            by_slot,
            by_name,
            services,
        }
    }

    /// The services the destinations are scoped to, each once.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(String::as_str)
    }

    pub fn by_slot(&self, slot: u32) -> Option<usize> {
        self.by_slot
            .get(slot as usize)
            .filter(|&&i| i != NONE)
            .map(|&i| i as usize)
    }

    /// The destination `name` (without services), or its copy for `service`.
    pub fn by_name(&self, name: &str, service: Option<&str>) -> Option<usize> {
        let key = crate::config::Destination::key_of(name, service);
        self.by_name.get(&key).copied()
    }

    /// Every guarded copy of the destination `name`: itself, or one per service.
    pub fn named(&self, name: &str) -> Vec<usize> {
        (0..self.dests.len())
            .filter(|&i| self.dests[i].def.name == name)
            .collect()
    }

    /// Every destination, by slot key, for the next state to take them from.
    pub fn into_map(self) -> HashMap<String, Dest> {
        self.dests
            .into_iter()
            .map(|d| (d.def.slot_key(), d))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.dests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }
}
