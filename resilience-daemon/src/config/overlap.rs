//! Matches of different destinations that share addresses, and which destination a connect in
//! the shared part goes to. The hook's precedence: an exact ip:port first, then the longest
//! CIDR on the connect's port, then the longest CIDR on any port. `check` prints each overlap
//! with its winner, so that no precedence comes as a surprise.

use std::collections::{BTreeSet, HashMap};

use super::{
    matcher::{mask, Match, MatchKind},
    Policy,
};

/// Overlaps listed at most (then a count of the rest).
const SHOWN: usize = 100;

struct Cidr<'a> {
    owner: &'a str,
    m: &'a Match,
    addr: [u8; 16],
    bits: u32,
    port: u16,
}

/// The IPv4-mapped range, ::ffff:0:0/96.
const V4_MAPPED: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

fn is_v4(addr: &[u8; 16], bits: u32) -> bool {
    bits >= 96 && addr[..12] == V4_MAPPED[..12]
}

pub fn overlaps(p: &Policy) -> Vec<String> {
    let mut cidrs = Vec::new();
    let mut exact = Vec::new();
    for d in &p.destinations {
        for m in &d.matches {
            match &m.kind {
                MatchKind::Cidr { addr, bits, port } => cidrs.push(Cidr {
                    owner: &d.name,
                    m,
                    addr: *addr,
                    bits: *bits,
                    port: *port,
                }),
                MatchKind::Exact(ep) => exact.push((d.name.as_str(), m, *ep)),
                // What a name resolves to is known only at run time.
                MatchKind::Host { .. } => {}
            }
        }
    }
    let lengths: BTreeSet<u32> = cidrs.iter().map(|c| c.bits).collect();
    let index: HashMap<(u32, [u8; 16]), Vec<usize>> =
        cidrs
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut h, (i, c)| {
                h.entry((c.bits, c.addr)).or_default().push(i);
                h
            });
    let covering = |addr: &[u8; 16], below: u32| -> Vec<usize> {
        lengths
            .iter()
            .filter(|&&b| b <= below)
            .flat_map(|&b| {
                index
                    .get(&(b, mask(*addr, b)))
                    .into_iter()
                    .flatten()
                    .copied()
            })
            .collect()
    };
    let mut out = Vec::new();
    for (owner, m, ep) in &exact {
        for i in covering(&ep.addr, 128) {
            let c = &cidrs[i];
            if c.owner == *owner || (c.port != 0 && c.port != ep.port) {
                continue;
            }
            out.push(format!(
                "overlap: {owner}'s {:?} lies inside {}'s {:?}: connects to {} go to {owner} (an exact address before any CIDR)",
                m.text,
                c.owner,
                c.m.text,
                crate::snapshot::show_endpoint(ep)
            ));
        }
    }
    for (j, narrow) in cidrs.iter().enumerate() {
        for i in covering(&narrow.addr, narrow.bits) {
            let wide = &cidrs[i];
            if i == j || wide.owner == narrow.owner {
                continue;
            }
            // Same bits: one key, already refused as a duplicate unless the ports differ.
            if wide.bits == narrow.bits && wide.port != 0 && narrow.port != 0 {
                continue;
            }
            if wide.port != 0 && narrow.port != 0 && wide.port != narrow.port {
                continue;
            }
            let line = if wide.port == narrow.port {
                format!(
                    "overlap: {}'s {:?} lies inside {}'s {:?}: connects to its addresses go to {} (the longest prefix first)",
                    narrow.owner, narrow.m.text, wide.owner, wide.m.text, narrow.owner
                )
            } else {
                let (on_port, any) = if wide.port != 0 {
                    (wide, narrow)
                } else {
                    (narrow, wide)
                };
                if !is_v4(&on_port.addr, on_port.bits) && is_v4(&any.addr, any.bits) {
                    format!(
                        "overlap: {}'s {:?} covers IPv4 too (IPv4-mapped): IPv4 connects to port {} go to {}, ahead of {}'s {:?} (a CIDR on the port before a CIDR on any port)",
                        on_port.owner, on_port.m.text, on_port.port, on_port.owner, any.owner, any.m.text
                    )
                } else {
                    format!(
                        "overlap: {}'s {:?} and {}'s {:?} share addresses: connects to port {} in both go to {} (a CIDR on the port before a CIDR on any port)",
                        on_port.owner, on_port.m.text, any.owner, any.m.text, on_port.port, on_port.owner
                    )
                }
            };
            out.push(line);
        }
    }
    if out.len() > SHOWN {
        let more = out.len() - SHOWN;
        out.truncate(SHOWN);
        out.push(format!("overlap: ... and {more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Vec<String> {
        overlaps(&super::super::parse_str(text, std::path::Path::new("p.toml")).expect("policy"))
    }

    #[test]
    fn each_kind_of_overlap_names_its_winner() {
        let o = of("[[destination]]\nname = \"net\"\nmatch = [\"127.0.0.0/8\"]\n[[destination]]\nname = \"one\"\nmatch = [\"127.0.0.1:80\"]\n[[destination]]\nname = \"all-v6\"\nmatch = [\"[::/0]:443\"]\n[[destination]]\nname = \"sub\"\nmatch = [\"127.1.0.0/16\"]\n[[destination]]\nname = \"other\"\nmatch = [\"10.0.0.0/8\"]\n");
        // one in net; all-v6 ahead of net, sub and other; sub in net.
        assert_eq!(o.len(), 5, "{o:#?}");
        for want in [
            "one's \"127.0.0.1:80\" lies inside net's",
            "all-v6's \"[::/0]:443\" covers IPv4 too (IPv4-mapped): IPv4 connects to port 443 go to all-v6, ahead of net's",
            "sub's \"127.1.0.0/16\" lies inside net's \"127.0.0.0/8\"",
        ] {
            assert!(o.iter().any(|l| l.contains(want)), "{want}: {o:#?}");
        }
        assert!(
            of("[[destination]]\nname = \"a\"\nmatch = [\"10.0.0.0/8\", \"10.1.0.0/16\"]\n")
                .is_empty(),
            "within one destination"
        );
        assert!(of("[[destination]]\nname = \"a\"\nmatch = [\"10.0.0.0/8:80\"]\n[[destination]]\nname = \"b\"\nmatch = [\"10.1.0.0/16:81\"]\n").is_empty(), "other ports");
    }
}
