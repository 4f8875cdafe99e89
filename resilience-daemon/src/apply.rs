//! Write a policy into the kernel maps: slots, verdicts, guards, and the keys that lead to
//! them. New keys go in before stale ones come out, so a destination never loses its entry.

use std::{
    collections::HashMap,
    net::{SocketAddr, ToSocketAddrs},
};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use resilience_common::{
    control::{LOOKUP_CIDR_ANY, LOOKUP_CIDR_PORT, LOOKUP_EXACT},
    dest::{
        ACTION_ALLOW, ACTION_PROBE, ACTION_REJECT, FLAG_BULKHEAD, FLAG_COUNT_REFUSED,
        FLAG_COUNT_TIMEOUT, FLAG_COUNT_UNREACHABLE, FLAG_DRY_RUN, FLAG_RATE_LIMIT,
    },
    maps::MAX_SLOTS,
    Bucket, CidrData, DestPolicy, Endpoint,
};

use crate::{
    config::{Destination, MatchKind, Mode, Policy},
    engine::{KernelVerdict, Verdict},
    kernel::{monotonic_ns, Tables},
    slots,
};

/// A destination as the daemon runs it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub dest: Destination,
    pub slot: u32,
    /// Addresses its DNS names resolved to (empty when it has none, or none resolved).
    pub resolved: Vec<Endpoint>,
}

/// `verdict(dest)`: the breaker verdict to publish for each destination (a kept breaker may be
/// open across a reload).
pub fn apply(
    tables: &mut Tables,
    policy: &Policy,
    previous: &[Applied],
    mut verdict: impl FnMut(&Destination) -> KernelVerdict,
) -> Result<Vec<Applied>> {
    let mut taken = Vec::new();
    let mut generation = HashMap::new();
    for slot in 0..MAX_SLOTS {
        let p = tables.policy(slot)?;
        if p.name_id != 0 {
            taken.push((slot, p.name_id));
        }
        generation.insert(slot, p.generation);
    }
    let names: Vec<&str> = policy
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let plan = slots::plan(&taken, &names, MAX_SLOTS).map_err(anyhow::Error::msg)?;
    for &slot in &plan.fresh {
        tables.reset_counters(slot)?;
        tables.reset_active(slot)?;
    }

    let mut exact: HashMap<Endpoint, u32> = HashMap::new();
    let mut cidr: HashMap<(u32, CidrData), u32> = HashMap::new();
    let mut applied = Vec::new();
    for (dest, &slot) in policy.destinations.iter().zip(&plan.slots) {
        let fresh = plan.fresh.contains(&slot);
        let gen = generation.get(&slot).copied().unwrap_or(0);
        let gen = if fresh { gen.wrapping_add(1) } else { gen };
        let before = previous.iter().find(|a| a.slot == slot && !fresh);
        let rate_changed = before.is_none_or(|b| b.dest.rate_limit != dest.rate_limit);
        if dest.rate_limit.is_some() && (rate_changed || fresh) {
            // A full bucket from now on.
            let full = Bucket {
                tat_ns: monotonic_ns(),
                _pad: 0,
            };
            tables.set_bucket(slot, full)?;
        }
        publish(tables, slot, dest, gen, verdict(dest))?;
        let mut resolved = Vec::new();
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
                        resolved.push(ep);
                    }
                }
            }
        }
        applied.push(Applied {
            dest: dest.clone(),
            slot,
            resolved,
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
        let gen = generation.get(&slot).copied().unwrap_or(0);
        tables.set_policy(
            slot,
            DestPolicy {
                generation: gen,
                ..DestPolicy::default()
            },
        )?;
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

/// Publish a destination's verdict. For half-open the probe budget goes in first, so that the
/// hook never sees PROBE with last time's budget.
pub fn publish(
    tables: &mut Tables,
    slot: u32,
    dest: &Destination,
    generation: u32,
    kv: KernelVerdict,
) -> Result<()> {
    let action = match kv.verdict {
        Verdict::Allow => ACTION_ALLOW,
        Verdict::Reject => ACTION_REJECT,
        Verdict::Probe(n) => {
            if tables.policy(slot)?.action != ACTION_PROBE {
                tables.set_probes(slot, n)?;
            }
            ACTION_PROBE
        }
    };
    let mut p = kernel_policy(dest, action, generation);
    p.trip_after = kv.trip_after;
    tables.set_policy(slot, p)
}

pub fn kernel_policy(dest: &Destination, action: u32, generation: u32) -> DestPolicy {
    let mut flags = 0;
    if dest.mode == Mode::DryRun {
        flags |= FLAG_DRY_RUN;
    }
    let f = dest.breaker.failures;
    for (on, flag) in [
        (f.refused, FLAG_COUNT_REFUSED),
        (f.timeout, FLAG_COUNT_TIMEOUT),
        (f.unreachable, FLAG_COUNT_UNREACHABLE),
    ] {
        if on {
            flags |= flag;
        }
    }
    let (ns_per_token, tolerance_ns) = match dest.rate_limit {
        Some(r) => {
            flags |= FLAG_RATE_LIMIT;
            // Rounded up: the bucket never refills faster than the configured rate.
            let t = (1e9 / r.rate).ceil().max(1.0) as u64;
            (t, u64::from(r.burst - 1).saturating_mul(t))
        }
        None => (0, 0),
    };
    let max_concurrent = match dest.bulkhead {
        Some(b) => {
            flags |= FLAG_BULKHEAD;
            b.max_concurrent
        }
        None => 0,
    };
    let slow_ns = match dest.mode {
        Mode::Enforce | Mode::DryRun => dest.breaker.slow_call_duration.as_nanos() as u64,
        Mode::Disabled | Mode::ForcedOpen => 0,
    };
    DestPolicy {
        action,
        errno: dest.reject_errno.0 as u32,
        flags,
        max_concurrent,
        name_id: slots::name_id(&dest.name),
        ns_per_token,
        tolerance_ns,
        slow_ns,
        generation,
        trip_after: 0,
    }
}

/// Whole tokens left in a bucket now: connects that would conform back to back.
pub fn tokens_left(policy: &DestPolicy, b: &Bucket, now_ns: u64) -> u64 {
    let t = policy.ns_per_token.max(1);
    // Conforms while tat - now <= tolerance; each connect adds t.
    let ahead = b.tat_ns.saturating_sub(now_ns);
    if ahead > policy.tolerance_ns {
        return 0;
    }
    (policy.tolerance_ns - ahead) / t + 1
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_left_matches_the_hook() {
        // burst 5, one token per 100 ns: tolerance 400 ns.
        let p = DestPolicy {
            ns_per_token: 100,
            tolerance_ns: 400,
            ..DestPolicy::default()
        };
        // Idle: full.
        assert_eq!(tokens_left(&p, &Bucket { tat_ns: 0, _pad: 0 }, 10_000), 5);
        // Three taken at t = 1000: tat = 1300.
        let b = Bucket {
            tat_ns: 1300,
            _pad: 0,
        };
        assert_eq!(tokens_left(&p, &b, 1000), 2);
        assert_eq!(tokens_left(&p, &b, 1100), 3);
        assert_eq!(tokens_left(&p, &b, 1300), 5);
        // Five taken: none left until one interval has passed.
        let b = Bucket {
            tat_ns: 1500,
            _pad: 0,
        };
        assert_eq!(tokens_left(&p, &b, 1000), 0);
        assert_eq!(tokens_left(&p, &b, 1100), 1);
    }
}
