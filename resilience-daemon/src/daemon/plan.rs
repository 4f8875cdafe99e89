//! The next state, planned before anything is written: which slot each destination has (and
//! under which generation), which keys the new policy set holds, which slots are freed. Reads
//! the kernel's active set; writes nothing.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use resilience_common::{
    maps::{MAX_EXACT_PER_SET, MAX_SLOTS},
    service::SLOT_SERVICES,
    Endpoint,
};

use super::{
    cgroups::{service_key, Cgroups},
    resolver::Resolver,
};
use crate::{
    config::{Destination, MatchKind, Mode, Policy, Service},
    kernel::{
        keys::{Route, SetKeys},
        Arrays,
    },
    slots,
};

/// A freed slot waits this long before a new owner gets it, and a policy set this long after
/// it stopped being the active one before it is written again: a connect hook that read the
/// old state just before a flip has long finished by then.
pub const GRACE: Duration = Duration::from_millis(200);

/// What the daemon wants to enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The policy file's (or the built-in default): shared by the wanted, the tried and the
    /// committed inputs (with 10k destinations each copy was 8 MB).
    pub file: std::sync::Arc<Policy>,
    /// `resilience disable`: destinations the operator set to observe only.
    pub overrides: HashMap<String, Mode>,
}

impl Inputs {
    /// Each destination (one per service where it lists services) with the operator's mode
    /// over the file's, and the dispatch number of a scoped one (its place in the file).
    pub fn effective(&self) -> Vec<(Arc<Destination>, Option<Mode>, Option<u32>)> {
        let mut out = Vec::new();
        for (i, d) in self.file.destinations.iter().enumerate() {
            let over = self.overrides.get(&d.name).copied();
            let dispatch = (!d.services.is_empty()).then_some(i as u32);
            for u in d.units() {
                let u = match over {
                    Some(m) if u.mode != m => Arc::new(Destination {
                        mode: m,
                        ..(*u).clone()
                    }),
                    _ => u,
                };
                out.push((u, over, dispatch));
            }
        }
        out
    }
}

/// The per-service routes of guarded units (dispatch, service, slot).
pub fn service_routes<'a>(
    units: impl Iterator<Item = (Option<u32>, Option<&'a str>, u32)>,
) -> HashMap<Route, u32> {
    units
        .filter_map(|(dispatch, service, slot)| Some(((dispatch?, service_key(service?)), slot)))
        .collect()
}

/// The cgroup levels the hook must read for the services the guarded units name.
pub fn service_levels<'a>(
    units: impl Iterator<Item = Option<&'a str>>,
    services: &[Service],
    cgroups: &Cgroups,
) -> u32 {
    let used: std::collections::HashSet<&str> = units.flatten().collect();
    cgroups.levels(services.iter().filter(|s| used.contains(s.name.as_str())))
}

pub struct Planned {
    pub def: Arc<Destination>,
    /// A scoped destination's dispatch number (its EXACT and CIDR keys hold it).
    pub dispatch: Option<u32>,
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
    cgroups: &Cgroups,
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
    let keys_of: Vec<String> = wanted.iter().map(|(d, _, _)| d.slot_key()).collect();
    let names: Vec<&str> = keys_of.iter().map(String::as_str).collect();
    let available = |s: u32| {
        retired
            .get(&s)
            .is_none_or(|at| now.saturating_duration_since(*at) >= GRACE)
    };
    let plan = slots::plan(&taken, &names, MAX_SLOTS, available).map_err(Refusal::Wait)?;
    // The slots handed out are mapped before anything reads or writes them.
    // (Fresh slots are among `slots`.)
    let highest = plan.slots.iter().max().map_or(0, |s| s + 1);
    arrays
        .grow(highest)
        .map_err(|e| Refusal::Wait(format!("{e:#}")))?;
    for ((def, _, _), &slot) in wanted.iter().zip(&plan.slots) {
        if def.retry_budget.is_some() {
            arrays
                .map_retry(slot)
                .map_err(|e| Refusal::Wait(format!("{e:#}")))?;
        }
    }

    let mut keys = SetKeys::default();
    let mut dests = Vec::with_capacity(wanted.len());
    // Addresses written in the policy first: a DNS name's answer never takes one of them.
    let value = |slot: u32, dispatch: Option<u32>| dispatch.map_or(slot, |d| SLOT_SERVICES | d);
    for ((def, _, dispatch), &slot) in wanted.iter().zip(&plan.slots) {
        let slot = value(slot, *dispatch);
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
    keys.routes = service_routes(
        wanted
            .iter()
            .zip(&plan.slots)
            .map(|((d, _, dispatch), &slot)| (*dispatch, d.service.as_deref(), slot)),
    );
    keys.levels = service_levels(
        wanted.iter().map(|(d, _, _)| d.service.as_deref()),
        &inputs.file.services,
        cgroups,
    );
    for ((def, over, dispatch), &slot) in wanted.into_iter().zip(&plan.slots) {
        let mut resolved = Vec::new();
        for m in &def.matches {
            if let MatchKind::Host { host, port } = &m.kind {
                for ep in resolver.addresses(&(host.clone(), *port)) {
                    keys.exact.entry(*ep).or_insert(value(slot, dispatch));
                    resolved.push(*ep);
                }
            }
        }
        let fresh = plan.fresh.contains(&slot);
        let generation = current[slot as usize].generation;
        dests.push(Planned {
            def,
            dispatch,
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
