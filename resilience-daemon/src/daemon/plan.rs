//! The next state, planned before anything is written: which slot each destination has (and
//! under which generation), which keys the new policy set holds, which slots are freed. Reads
//! the kernel's active set; writes nothing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use resilience_common::{
    maps::{MAX_EXACT_PER_SET, MAX_SLOTS},
    Endpoint,
};

use super::resolver::Resolver;
use crate::{
    config::{Destination, MatchKind, Mode, Policy},
    kernel::{keys::SetKeys, Arrays},
    slots,
};

/// A freed slot waits this long before a new owner gets it, and a policy set this long after
/// it stopped being the active one before it is written again: a connect hook that read the
/// old state just before a flip has long finished by then.
pub const GRACE: Duration = Duration::from_millis(200);

/// What the daemon wants to enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The policy file's (or the built-in default).
    pub file: Policy,
    /// `resilience disable`: destinations the operator set to observe only.
    pub overrides: HashMap<String, Mode>,
}

impl Inputs {
    /// Each destination with the operator's mode over the file's.
    pub fn effective(&self) -> Vec<(Destination, Option<Mode>)> {
        self.file
            .destinations
            .iter()
            .map(|d| {
                let over = self.overrides.get(&d.name).copied();
                let mut d = d.clone();
                if let Some(m) = over {
                    d.mode = m;
                }
                (d, over)
            })
            .collect()
    }
}

pub struct Planned {
    pub def: Destination,
    pub override_mode: Option<Mode>,
    pub slot: u32,
    pub generation: u32,
    /// A slot new to this destination: its counts start from zero.
    pub fresh: bool,
    pub resolved: Vec<Endpoint>,
}

pub struct Plan {
    /// The policy set to build (the inactive one).
    pub set: u32,
    pub keys: SetKeys,
    pub dests: Vec<Planned>,
    /// Slots whose destination is gone: retired with the next generation.
    pub freed: Vec<u32>,
    pub inputs: Inputs,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not now (slots freed a moment ago): try again shortly.
    Wait(String),
    /// Never, with these inputs.
    Refused(String),
}

pub fn prepare(
    inputs: &Inputs,
    resolver: &Resolver,
    arrays: &Arrays,
    retired: &HashMap<u32, Instant>,
    now: Instant,
) -> Result<Plan, Refusal> {
    let active = arrays.active_set();
    let current: Vec<_> = (0..MAX_SLOTS)
        .map(|s| arrays.policy(active, s).unwrap_or_default())
        .collect();
    let taken: Vec<(u32, u64)> = current
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name_id != 0)
        .map(|(s, p)| (s as u32, p.name_id))
        .collect();
    let wanted = inputs.effective();
    let names: Vec<&str> = wanted.iter().map(|(d, _)| d.name.as_str()).collect();
    let available = |s: u32| {
        retired
            .get(&s)
            .is_none_or(|at| now.saturating_duration_since(*at) >= GRACE)
    };
    let plan = slots::plan(&taken, &names, MAX_SLOTS, available).map_err(Refusal::Wait)?;

    let mut keys = SetKeys::default();
    let mut dests = Vec::with_capacity(wanted.len());
    // Addresses written in the policy first: a DNS name's answer never takes one of them.
    for ((def, _), &slot) in wanted.iter().zip(&plan.slots) {
        for m in &def.matches {
            match &m.kind {
                MatchKind::Exact(ep) => {
                    keys.exact.insert(*ep, slot);
                }
                MatchKind::Cidr { addr, bits, port } => {
                    keys.cidr.insert((*bits, *addr, *port), slot);
                }
                MatchKind::Host { .. } => {}
            }
        }
    }
    for ((def, over), &slot) in wanted.into_iter().zip(&plan.slots) {
        let mut resolved = Vec::new();
        for m in &def.matches {
            if let MatchKind::Host { host, port } = &m.kind {
                for ep in resolver.addresses(&(host.clone(), *port)) {
                    keys.exact.entry(*ep).or_insert(slot);
                    resolved.push(*ep);
                }
            }
        }
        let fresh = plan.fresh.contains(&slot);
        let generation = current[slot as usize].generation;
        dests.push(Planned {
            def,
            override_mode: over,
            slot,
            generation: if fresh {
                generation.wrapping_add(1)
            } else {
                generation
            },
            fresh,
            resolved,
        });
    }
    if keys.exact.len() > MAX_EXACT_PER_SET as usize {
        return Err(Refusal::Refused(format!(
            "{} exact addresses (DNS names included) are more than the {MAX_EXACT_PER_SET} a \
             policy may hold",
            keys.exact.len()
        )));
    }
    Ok(Plan {
        set: active ^ 1,
        keys,
        dests,
        freed: plan.freed,
        inputs: inputs.clone(),
    })
}
