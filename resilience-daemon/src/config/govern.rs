//! Which destination governs a connect to an address, by the hook's own precedence: an exact
//! ip:port written in the policy, then an address a DNS name resolved to (the first
//! destination in policy order that resolved it), then the longest CIDR on the connect's port,
//! then the longest CIDR on any port. Used by `resilience explain`.

use resilience_common::Endpoint;

use super::matcher::{mask, Match, MatchKind};

/// How a destination's match covers the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Exact,
    /// An address the named host resolved to.
    Dns {
        host: String,
    },
    CidrOnPort {
        bits: u32,
    },
    CidrAnyPort {
        bits: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governs {
    /// Index into the candidates given.
    pub index: usize,
    pub rule: Rule,
    /// The match as written in the policy.
    pub text: String,
    /// Other destinations whose matches cover the address too, and lose.
    pub shadowed: Vec<usize>,
}

/// One destination as explain sees it: its matches and what its DNS names resolved to.
pub struct Candidate<'a> {
    pub matches: &'a [Match],
    /// (host, port) -> addresses; a host absent here resolved to nothing (yet).
    pub resolved: &'a [(String, u16, Endpoint)],
}

/// The rank of a rule: lower wins; among CIDRs, the longer prefix.
fn rank(rule: &Rule) -> (u32, u32) {
    match rule {
        Rule::Exact => (0, 0),
        Rule::Dns { .. } => (1, 0),
        Rule::CidrOnPort { bits } => (2, 128 - bits),
        Rule::CidrAnyPort { bits } => (3, 128 - bits),
    }
}

/// How `m` covers `ep`, if it does.
fn covers(m: &Match, resolved: &[(String, u16, Endpoint)], ep: &Endpoint) -> Option<Rule> {
    match &m.kind {
        MatchKind::Exact(e) => (e == ep).then_some(Rule::Exact),
        MatchKind::Host { host, port } => resolved
            .iter()
            .any(|(h, p, e)| h == host && p == port && e == ep)
            .then(|| Rule::Dns { host: host.clone() }),
        MatchKind::Cidr { addr, bits, port } => {
            if mask(ep.addr, *bits) != *addr {
                return None;
            }
            match *port {
                0 => Some(Rule::CidrAnyPort { bits: *bits }),
                p if p == ep.port => Some(Rule::CidrOnPort { bits: *bits }),
                _ => None,
            }
        }
    }
}

/// The governing destination among `candidates` (in policy order), or None: the address is
/// only observed.
pub fn govern(candidates: &[Candidate<'_>], ep: &Endpoint) -> Option<Governs> {
    // (rank, index, rule, text) of every destination's best covering match.
    let mut hits: Vec<((u32, u32), usize, Rule, String)> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let best = c
            .matches
            .iter()
            .filter_map(|m| covers(m, c.resolved, ep).map(|r| (rank(&r), r, m.text.clone())))
            .min_by_key(|(k, _, _)| *k);
        if let Some((k, r, t)) = best {
            hits.push((k, i, r, t));
        }
    }
    // Stable: on equal rank the earlier destination wins (a DNS answer is kept by the first
    // destination that claimed it).
    hits.sort_by_key(|(k, i, _, _)| (*k, *i));
    let mut it = hits.into_iter();
    let (_, index, rule, text) = it.next()?;
    Some(Governs {
        index,
        rule,
        text,
        shadowed: it.map(|(_, i, _, _)| i).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(texts: &[&str]) -> Vec<Match> {
        texts.iter().map(|t| Match::parse(t).expect(t)).collect()
    }

    fn ep(s: &str) -> Endpoint {
        crate::apply::endpoint(&s.parse().expect(s))
    }

    #[test]
    fn precedence_is_the_hooks() {
        let wide = m(&["10.0.0.0/8"]);
        let on_port = m(&["10.1.0.0/16:443"]);
        let narrow_any = m(&["10.1.2.0/24"]);
        let exact = m(&["10.1.2.3:443"]);
        let none: Vec<(String, u16, Endpoint)> = Vec::new();
        let c = |ms| Candidate {
            matches: ms,
            resolved: &none,
        };
        let all = [c(&wide), c(&on_port), c(&narrow_any), c(&exact)];
        let g = govern(&all, &ep("10.1.2.3:443")).expect("governed");
        assert_eq!((g.index, g.rule.clone()), (3, Rule::Exact));
        assert_eq!(g.shadowed, vec![1, 2, 0]);
        // A CIDR on the port beats a longer CIDR on any port.
        let g = govern(&all, &ep("10.1.2.4:443")).expect("governed");
        assert_eq!((g.index, g.rule), (1, Rule::CidrOnPort { bits: 96 + 16 }));
        let g = govern(&all, &ep("10.1.2.4:80")).expect("governed");
        assert_eq!((g.index, g.rule), (2, Rule::CidrAnyPort { bits: 96 + 24 }));
        assert!(govern(&all, &ep("192.168.0.1:80")).is_none());
    }

    #[test]
    fn a_dns_answer_loses_to_a_written_address_and_goes_to_the_first_claimant() {
        let api = m(&["api.internal:443"]);
        let also = m(&["other.internal:443"]);
        let written = m(&["10.0.0.5:443"]);
        let resolved = vec![("api.internal".to_string(), 443, ep("10.0.0.5:443"))];
        let resolved2 = vec![("other.internal".to_string(), 443, ep("10.0.0.6:443"))];
        let both = vec![
            ("api.internal".to_string(), 443, ep("10.0.0.6:443")),
            ("api.internal".to_string(), 443, ep("10.0.0.5:443")),
        ];
        let g = govern(
            &[
                Candidate {
                    matches: &api,
                    resolved: &resolved,
                },
                Candidate {
                    matches: &written,
                    resolved: &[],
                },
            ],
            &ep("10.0.0.5:443"),
        )
        .expect("governed");
        assert_eq!(g.index, 1);
        let g = govern(
            &[
                Candidate {
                    matches: &api,
                    resolved: &both,
                },
                Candidate {
                    matches: &also,
                    resolved: &resolved2,
                },
            ],
            &ep("10.0.0.6:443"),
        )
        .expect("governed");
        assert_eq!(
            (g.index, g.rule),
            (
                0,
                Rule::Dns {
                    host: "api.internal".into()
                }
            )
        );
    }
}
