//! `resilience explain ADDR:PORT`: which destination and which of its matches govern a connect
//! to that address, by the hook's precedence, and what such a connect would get now. From the
//! running daemon's snapshot (its policy, its DNS answers, its state), or from a policy file
//! alone (`--config`, no daemon needed; DNS names resolved by this command).

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use resilience_common::Endpoint;
use serde_json::{json, Value};

use crate::{
    apply::endpoint,
    client::{Client, DEFAULT_TIMEOUT},
    config::{
        self,
        govern::{govern, Candidate, Governs, Rule},
        Match, MatchKind, Mode,
    },
    engine::State,
    protocol::Request,
    snapshot::{DestinationStatus, Snapshot},
};

/// How long a DNS name may take to resolve here.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);

/// The address as the hook looks it up, and a note when that differs from what was asked.
fn looked_up(addr: &str) -> Result<(SocketAddr, Endpoint, Option<String>)> {
    let a: SocketAddr = addr.parse().with_context(|| {
        format!("{addr:?} is not ADDR:PORT (e.g. 10.0.0.5:443 or [2001:db8::1]:443)")
    })?;
    if a.port() == 0 {
        bail!("{addr:?}: a connect needs a port");
    }
    let (ep, note) = match a.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => (
            Endpoint::v4([127, 0, 0, 1], a.port()),
            Some("a connect to 0.0.0.0 goes to the socket's bound address, else 127.0.0.1: explained as 127.0.0.1".to_string()),
        ),
        IpAddr::V4(v4) => (Endpoint::v4(v4.octets(), a.port()), None),
        IpAddr::V6(v6) if v6.is_unspecified() => (
            Endpoint::v6(std::net::Ipv6Addr::LOCALHOST.octets(), a.port()),
            Some("a connect to :: goes to ::1: explained as ::1".to_string()),
        ),
        IpAddr::V6(v6) => {
            let note = v6
                .to_ipv4_mapped()
                .map(|v4| format!("an IPv4-mapped address is looked up as {v4}"));
            (Endpoint::v6(v6.octets(), a.port()), note)
        }
    };
    Ok((a, ep, note))
}

/// Whose connect is being explained, for a destination with services.
enum Scope {
    /// The destination has no services: every process.
    Everyone,
    Service(String),
    /// `--service` names a service the destination does not list.
    NotListed(String),
    /// The destination has services and no `--service` was given.
    Unknown,
}

/// One destination's matches and DNS answers, as explain weighs them.
struct Dest {
    name: String,
    /// Empty: every process.
    services: Vec<String>,
    matches: Vec<Match>,
    resolved: Vec<(String, u16, Endpoint)>,
}

/// The daemon's DNS answers are listed per destination, not per name: each goes to the
/// destination's first name on the same port.
fn from_snapshot(d: &DestinationStatus) -> Dest {
    let matches: Vec<Match> = d
        .matches
        .iter()
        .filter_map(|t| Match::parse(t).ok())
        .collect();
    let resolved = d
        .resolved
        .iter()
        .filter_map(|r| r.parse::<SocketAddr>().ok())
        .filter_map(|a| {
            matches.iter().find_map(|m| match &m.kind {
                MatchKind::Host { host, port } if *port == a.port() => {
                    Some((host.clone(), *port, endpoint(&a)))
                }
                _ => None,
            })
        })
        .collect();
    Dest {
        name: d.name.clone(),
        services: d.service.iter().cloned().collect(),
        matches,
        resolved,
    }
}

/// Resolve a policy's names now, each within the deadline.
fn resolve_now(host: &str, port: u16) -> Vec<Endpoint> {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = format!("{host}:{port}");
    std::thread::spawn(move || {
        let got: Vec<SocketAddr> = target
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
        let _ = tx.send(got);
    });
    rx.recv_timeout(RESOLVE_DEADLINE)
        .unwrap_or_default()
        .into_iter()
        .map(|a| endpoint(&a))
        .collect()
}

/// What the destination's DNS names resolve to now: (host, port, address).
pub fn resolved_now(d: &config::Destination) -> Vec<(String, u16, Endpoint)> {
    let mut resolved = Vec::new();
    for m in &d.matches {
        if let MatchKind::Host { host, port } = &m.kind {
            for ep in resolve_now(host, *port) {
                resolved.push((host.clone(), *port, ep));
            }
        }
    }
    resolved
}

fn from_policy(d: &config::Destination) -> Dest {
    Dest {
        name: d.name.clone(),
        services: d.services.clone(),
        matches: d.matches.clone(),
        resolved: resolved_now(d),
    }
}

fn prefix_len(bits: u32, m: &str) -> u32 {
    // IPv4 prefixes are kept IPv4-mapped: 96 bits ahead of the written length.
    if m.contains('.') {
        bits.saturating_sub(96)
    } else {
        bits
    }
}

fn rule_json(g: &Governs) -> Value {
    match &g.rule {
        Rule::Exact => json!({"kind": "exact", "match": g.text}),
        Rule::Dns { host } => json!({"kind": "dns", "match": g.text, "host": host}),
        Rule::CidrOnPort { bits } => {
            json!({"kind": "cidr_port", "match": g.text, "prefix_len": prefix_len(*bits, &g.text)})
        }
        Rule::CidrAnyPort { bits } => {
            json!({"kind": "cidr_any_port", "match": g.text, "prefix_len": prefix_len(*bits, &g.text)})
        }
    }
}

fn rule_text(g: &Governs) -> String {
    match &g.rule {
        Rule::Exact => format!(
            "exact address {:?} (exact addresses written in the policy come first)",
            g.text
        ),
        Rule::Dns { host } => format!(
            "an address {host} resolved to (match {:?}; DNS answers come right after the exact addresses written in the policy)",
            g.text
        ),
        Rule::CidrOnPort { bits } => format!(
            "CIDR {:?}, /{} on this port (after exact addresses: the longest CIDR on the connect's port)",
            g.text,
            prefix_len(*bits, &g.text)
        ),
        Rule::CidrAnyPort { bits } => format!(
            "CIDR {:?}, /{} on any port (last: the longest CIDR on any port)",
            g.text,
            prefix_len(*bits, &g.text)
        ),
    }
}

/// What a connect would get now, by the daemon's last snapshot: (admitted, why).
fn verdict(d: &DestinationStatus) -> (bool, String) {
    let errno = &d.reject_errno;
    let reason = match d.mode {
        Mode::ForcedOpen => return (false, format!("rejected with {errno}: forced-open")),
        Mode::Disabled => return (true, "admitted: disabled (nothing is rejected)".into()),
        _ => match d.state {
            State::Open => Some(match d.retry_in {
                Some(s) => format!("breaker open, half-open in {s:.1}s"),
                None => "breaker open".into(),
            }),
            State::HalfOpen if d.probes_left.unwrap_or(0) == 0 => {
                Some("breaker half-open with no probe left".into())
            }
            _ if d
                .max_concurrent
                .is_some_and(|m| d.counts.active >= u64::from(m)) =>
            {
                Some("bulkhead full".into())
            }
            _ if d.tokens == Some(0) => Some("no token left in the bucket".into()),
            _ => None,
        },
    };
    match (reason, d.mode) {
        (None, _) if d.state == State::HalfOpen => (
            true,
            format!("admitted as a probe ({} left)", d.probes_left.unwrap_or(0)),
        ),
        (None, _) => (true, "admitted".into()),
        (Some(r), Mode::DryRun) => (true, format!("admitted: dry-run (would be rejected: {r})")),
        (Some(r), _) => (false, format!("rejected with {errno}: {r}")),
    }
}

fn now_json(d: &DestinationStatus) -> Value {
    let (admitted, why) = verdict(d);
    json!({
        "admitted": admitted,
        "why": why,
        "state": d.state,
        "mode": d.mode,
        "retry_in": d.retry_in,
        "tokens": d.tokens,
        "burst": d.burst,
        "active": d.counts.active,
        "max_concurrent": d.max_concurrent,
        "probes_left": d.probes_left,
    })
}

pub fn explain(
    addr: &str,
    config_file: Option<&Path>,
    service: Option<&str>,
    socket: &Path,
    as_json: bool,
) -> Result<String> {
    let (asked, ep, note) = looked_up(addr)?;
    let (source, dests, snapshot) = match config_file {
        Some(file) => {
            let policy = config::load_file(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let dests: Vec<Dest> = policy.destinations.iter().map(|d| from_policy(d)).collect();
            (format!("policy file {}", file.display()), dests, None)
        }
        None => {
            let mut c = Client::new(socket, DEFAULT_TIMEOUT);
            let mut reply = c
                .call(&Request::Snapshot {
                    since: None,
                    instance: None,
                    policy: None,
                })
                .with_context(|| {
                    format!(
                        "asking the daemon at {} (pass --config FILE to explain from a policy file without a daemon)",
                        socket.display()
                    )
                })?;
            let snap: Snapshot = serde_json::from_value(reply["snapshot"].take())
                .context("daemon sent an unexpected snapshot")?;
            // One entry per service of a destination with services: one candidate each.
            let mut dests: Vec<Dest> = Vec::new();
            for d in snap.destinations.iter().map(from_snapshot) {
                match dests.iter_mut().find(|x| x.name == d.name) {
                    Some(x) => x.services.extend(d.services),
                    None => dests.push(d),
                }
            }
            ("running daemon".to_string(), dests, Some(snap))
        }
    };
    let candidates: Vec<Candidate<'_>> = dests
        .iter()
        .map(|d| Candidate {
            matches: &d.matches,
            resolved: &d.resolved,
        })
        .collect();
    let g = govern(&candidates, &ep);
    // Which of the destination's entries governs this connect: its own, the service's, or
    // none (a process in none of its services is observed).
    let scoped = |d: &Dest| -> Scope {
        if d.services.is_empty() {
            return Scope::Everyone;
        }
        match service {
            Some(s) if d.services.iter().any(|x| x == s) => Scope::Service(s.to_string()),
            Some(s) => Scope::NotListed(s.to_string()),
            None => Scope::Unknown,
        }
    };
    let status = |name: &str, scope: &Scope| {
        let want = match scope {
            Scope::Everyone => None,
            Scope::Service(s) => Some(s.as_str()),
            Scope::NotListed(_) | Scope::Unknown => return None,
        };
        snapshot.as_ref().and_then(|s| {
            s.destinations
                .iter()
                .find(|d| d.name == name && d.service.as_deref() == want)
        })
    };
    if as_json {
        let v = json!({
            "address": asked.to_string(),
            "note": note,
            "source": if snapshot.is_some() { "daemon" } else { "policy_file" },
            "destination": g.as_ref().map(|g| dests[g.index].name.clone()),
            "services": g.as_ref().map(|g| dests[g.index].services.clone()),
            "service": g.as_ref().and_then(|g| match scoped(&dests[g.index]) {
                Scope::Service(s) => Some(s),
                _ => None,
            }),
            "guarded": g.as_ref().map(|g| match scoped(&dests[g.index]) {
                Scope::Everyone | Scope::Service(_) => json!(true),
                Scope::NotListed(_) => json!(false),
                Scope::Unknown => Value::Null,
            }),
            "rule": g.as_ref().map(rule_json),
            "shadowed": g.as_ref().map_or(Vec::new(), |g| g.shadowed.iter().map(|&i| dests[i].name.clone()).collect()),
            "now": g.as_ref().and_then(|g| status(&dests[g.index].name, &scoped(&dests[g.index]))).map(now_json),
        });
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    let mut out = String::new();
    if let Some(n) = &note {
        out.push_str(&format!("note: {n}\n"));
    }
    let Some(g) = g else {
        out.push_str(&format!(
            "{asked}: no destination of the {source} matches it: connects to it are observed (counted, never rejected)\n"
        ));
        return Ok(out);
    };
    let name = &dests[g.index].name;
    out.push_str(&format!(
        "{asked} -> destination {name:?} (from the {source})\n"
    ));
    out.push_str(&format!("  rule: {}\n", rule_text(&g)));
    for &i in &g.shadowed {
        out.push_str(&format!(
            "  also matches {:?}, which loses to the rule above\n",
            dests[i].name
        ));
    }
    let scope = scoped(&dests[g.index]);
    match &scope {
        Scope::Everyone => {}
        Scope::Service(s) => out.push_str(&format!(
            "  service {s:?}: guarded by its own breaker, bucket and bulkhead ({name}@{s})\n"
        )),
        Scope::NotListed(s) => {
            out.push_str(&format!(
                "  service {s:?} is not one of its services ({}): a connect from it is observed, never rejected\n",
                dests[g.index].services.join(", ")
            ));
            return Ok(out);
        }
        Scope::Unknown => {
            out.push_str(&format!(
                "  guarded per service: {} (each its own breaker); other processes are observed. Pass --service NAME for one.\n",
                dests[g.index].services.join(", ")
            ));
            return Ok(out);
        }
    }
    match status(name, &scope) {
        Some(d) => {
            let (_, why) = verdict(d);
            out.push_str(&format!(
                "  now: {why} (state {}, mode {})\n",
                serde_json::to_value(d.state)?.as_str().unwrap_or("?"),
                serde_json::to_value(d.mode)?.as_str().unwrap_or("?")
            ));
            if let (Some(t), Some(b)) = (d.tokens, d.burst) {
                out.push_str(&format!("  tokens: {t} of {b}\n"));
            }
            match d.max_concurrent {
                Some(m) => out.push_str(&format!("  places: {} of {m} in use\n", d.counts.active)),
                None => out.push_str(&format!("  connections open: {}\n", d.counts.active)),
            }
        }
        None if snapshot.is_none() => {
            out.push_str("  now: unknown (explained from the file; the daemon knows the state)\n")
        }
        None => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_looked_up_as_the_hook_does() {
        let (_, ep, note) = looked_up("[::ffff:10.0.0.1]:443").expect("parses");
        assert_eq!(ep, Endpoint::v4([10, 0, 0, 1], 443));
        assert!(note.is_some_and(|n| n.contains("10.0.0.1")));
        let (_, ep, _) = looked_up("0.0.0.0:80").expect("parses");
        assert_eq!(ep, Endpoint::v4([127, 0, 0, 1], 80));
        assert!(looked_up("10.0.0.1:0").is_err());
        assert!(looked_up("10.0.0.1").is_err());
    }

    #[test]
    fn explains_from_a_policy_file() {
        let dir = std::env::temp_dir().join(format!("resilience-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "[[destination]]\nname = \"internal\"\nmatch = [\"10.0.0.0/8\"]\n\n[[destination]]\nname = \"payments\"\nmatch = [\"10.20.0.0/16:443\"]\n",
        )
        .expect("write");
        let none = Path::new("/nonexistent.sock");
        let text = explain("10.20.1.1:443", Some(&file), None, none, false).expect("explains");
        assert!(text.contains("-> destination \"payments\""), "{text}");
        assert!(text.contains("/16 on this port"), "{text}");
        assert!(text.contains("also matches \"internal\""), "{text}");
        let text = explain("10.20.1.1:80", Some(&file), None, none, false).expect("explains");
        assert!(text.contains("-> destination \"internal\""), "{text}");
        assert!(text.contains("/8 on any port"), "{text}");
        let text = explain("192.168.1.1:80", Some(&file), None, none, true).expect("explains");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["destination"], Value::Null);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explains_a_destination_with_services_per_service() {
        let dir = std::env::temp_dir().join(format!("resilience-explain-s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "[[service]]\nname = \"checkout\"\ncgroup = \"a\"\n[[service]]\nname = \"batch\"\ncgroup = \"b\"\n[[destination]]\nname = \"payments\"\nmatch = [\"10.20.0.0/16:443\"]\nservices = [\"checkout\"]\n",
        )
        .expect("write");
        let none = Path::new("/nonexistent.sock");
        let text = explain("10.20.1.1:443", Some(&file), None, none, false).expect("explains");
        assert!(text.contains("guarded per service: checkout"), "{text}");
        let text =
            explain("10.20.1.1:443", Some(&file), Some("checkout"), none, false).expect("explains");
        assert!(text.contains("payments@checkout"), "{text}");
        let text =
            explain("10.20.1.1:443", Some(&file), Some("batch"), none, true).expect("explains");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["guarded"], false, "{v:#}");
        assert_eq!(v["services"], json!(["checkout"]), "{v:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
