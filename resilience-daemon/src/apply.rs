//! Write a policy into the kernel maps: slots, verdicts, and the keys that lead to them.
//! New keys go in before stale ones come out, so a destination never loses its entry midway.

use std::{
    collections::HashMap,
    net::{SocketAddr, ToSocketAddrs},
};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use resilience_common::{
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    dest::{ACTION_ALLOW, ACTION_REJECT, FLAG_DRY_RUN},
    maps::MAX_SLOTS,
    CidrData, DestPolicy, Endpoint,
};

use crate::{
    config::{Destination, MatchKind, Mode, Policy},
    kernel::Tables,
    slots,
};

/// A destination as the daemon runs it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub dest: Destination,
    pub slot: u32,
}

pub fn apply(tables: &mut Tables, policy: &Policy) -> Result<Vec<Applied>> {
    let mut taken = Vec::new();
    for slot in 0..MAX_SLOTS {
        let p = tables.policy(slot)?;
        if p.name_id != 0 {
            taken.push((slot, p.name_id));
        }
    }
    let names: Vec<&str> = policy
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let plan = slots::plan(&taken, &names, MAX_SLOTS).map_err(anyhow::Error::msg)?;
    for &slot in &plan.fresh {
        tables.reset_counters(slot)?;
    }

    let mut exact: HashMap<Endpoint, u32> = HashMap::new();
    let mut cidr: HashMap<(u32, CidrData), u32> = HashMap::new();
    let mut applied = Vec::new();
    for (dest, &slot) in policy.destinations.iter().zip(&plan.slots) {
        tables.set_policy(slot, verdict(dest))?;
        for m in &dest.matches {
            match &m.kind {
                MatchKind::Exact(ep) => {
                    exact.insert(*ep, slot);
                }
                MatchKind::Cidr { addr, bits, port } => {
                    cidr.insert(
                        (CidrData::prefix_len(*bits), CidrData::new(*addr, *port)),
                        slot,
                    );
                }
                MatchKind::Host { host, port } => {
                    for ep in resolve(host, *port) {
                        exact.entry(ep).or_insert(slot);
                    }
                }
            }
        }
        applied.push(Applied {
            dest: dest.clone(),
            slot,
        });
    }

    for (ep, slot) in &exact {
        tables.set_exact(*ep, *slot)?;
    }
    for ((len, data), slot) in &cidr {
        tables.set_cidr(Key::new(*len, *data), *slot)?;
    }
    for (ep, _) in tables.exact_keys() {
        if !exact.contains_key(&ep) {
            tables.remove_exact(&ep)?;
        }
    }
    for (key, _) in tables.cidr_keys() {
        if !cidr.contains_key(&(key.prefix_len(), key.data())) {
            tables.remove_cidr(&key)?;
        }
    }
    for &slot in &plan.freed {
        tables.set_policy(slot, DestPolicy::default())?;
        tables.reset_counters(slot)?;
    }

    let mut flags = 0;
    if !exact.is_empty() {
        flags |= LOOKUP_EXACT;
    }
    if cidr.keys().any(|(_, d)| d.port != [0, 0]) {
        flags |= LOOKUP_CIDR_PORT;
    }
    if cidr.keys().any(|(_, d)| d.port == [0, 0]) {
        flags |= LOOKUP_CIDR_ANY;
    }
    let control = tables.control()?;
    tables
        .set_control(resilience_common::Control {
            lookup_flags: flags,
            ..control
        })
        .context("publishing lookup flags")?;
    Ok(applied)
}

/// The kernel verdict for a destination's mode. Breakers arrive with the policy engine; until
/// then only forced-open rejects.
pub fn verdict(dest: &Destination) -> DestPolicy {
    let (action, flags) = match dest.mode {
        Mode::ForcedOpen => (ACTION_REJECT, 0),
        Mode::DryRun => (ACTION_ALLOW, FLAG_DRY_RUN),
        Mode::Enforce | Mode::Disabled => (ACTION_ALLOW, 0),
    };
    DestPolicy {
        action,
        errno: dest.reject_errno.0 as u32,
        flags,
        _pad: 0,
        name_id: slots::name_id(&dest.name),
    }
}

/// Addresses of a DNS name through the system resolver; none (and a warning) if it fails.
fn resolve(host: &str, port: u16) -> Vec<Endpoint> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.map(|a| endpoint(&a)).collect(),
        Err(e) => {
            tracing::warn!(%host, error = %e, "cannot resolve; will retry on the next reload");
            Vec::new()
        }
    }
}

pub fn endpoint(a: &SocketAddr) -> Endpoint {
    match a {
        SocketAddr::V4(v4) => Endpoint::v4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => Endpoint::v6(v6.ip().octets(), v6.port()),
    }
}
