//! `resilience replay`: a candidate policy's breakers, token buckets and bulkheads run over a
//! recording, with the daemon's own engine, on the recorded clock. Pure: the recording and the
//! candidate's DNS answers come in, a report goes out.
//!
//! Each connect of the recording is an attempt at `ns - latency_ns` and an outcome at `ns`.
//! The candidate's destination for it is chosen by the hook's precedence (exact, DNS answer,
//! longest CIDR); its breaker judges the attempt as the kernel would (closed, open, half-open
//! with its probe budget), then its bulkhead and its bucket (GCRA, the kernel's arithmetic).
//! An admitted attempt's outcome goes to the breaker as the daemon's intake gives it.
//!
//! What a recording cannot tell, and how replay takes it:
//! - connects the policy in force rejected have no outcome: they are counted as "unknown"
//!   and not replayed;
//! - closes of established connections are not recorded: the bulkhead is judged against the
//!   open connections the kernel counted under the policy in force, read once a second;
//! - a connect still pending at a breaker's slow threshold is judged only when it ends (the
//!   live daemon judges it while it waits), and retry budgets are not replayed.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
};

use resilience_common::{conn, Endpoint, OutcomeEvent};
use serde::Serialize;

use crate::{
    config::{
        govern::{govern, Candidate},
        Destination, Mode, Policy,
    },
    daemon::intake,
    engine::{Breaker, Outcome, State, Verdict, XorShift},
    recording::{self, Line, OutcomeLine, Recording},
    snapshot::Rejected,
};

/// One breaker state change, in seconds from the recording's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub at_s: f64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// What one policy did (or would have done) to one destination's connects.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Side {
    pub transitions: Vec<Change>,
    /// The first move to open, in seconds from the recording's start.
    pub first_open_s: Option<f64>,
    pub admitted: u64,
    pub rejected: Rejected,
}

/// One guarded unit of the candidate policy (a destination, or one service of it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestReport {
    pub destination: String,
    pub service: Option<String>,
    /// Recorded connects this unit governs.
    pub connects: u64,
    pub candidate: Side,
    /// The destinations of the policy in force these connects were charged to.
    pub in_force_as: Vec<String>,
    pub in_force: Side,
    /// Connects the policy in force rejected: no outcome was recorded, so they are not
    /// replayed.
    pub unknown: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub started_unix: f64,
    pub destinations: Vec<DestReport>,
    /// Recorded connects no candidate destination governs (they would be observed only).
    pub unguarded: u64,
    /// The recording has no end line (its recorder was killed) or lost lines.
    pub cut: bool,
    pub lagged: u64,
}

/// A candidate's DNS answers: (host, port, address).
pub type Resolved = Vec<(String, u16, Endpoint)>;

/// Replay `rec` under `candidate`. `resolved[i]` holds the DNS answers of destination `i`.
pub fn replay(rec: &Recording, candidate: &Policy, resolved: &[Resolved]) -> Report {
    let t0 = rec.header.started_ns;
    let secs = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    let cands: Vec<Candidate<'_>> = candidate
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| Candidate {
            matches: &d.matches,
            resolved: resolved.get(i).map_or(&[], |r| r.as_slice()),
        })
        .collect();

    // Each recorded connect to the candidate unit that governs it.
    let mut units: BTreeMap<(usize, Option<String>), Vec<&OutcomeLine>> = BTreeMap::new();
    let mut unguarded = 0;
    for line in &rec.lines {
        let Line::Outcome(o) = line else { continue };
        let Some(ep) = endpoint(&o.address) else {
            unguarded += 1;
            continue;
        };
        let Some(g) = govern(&cands, &ep) else {
            unguarded += 1;
            continue;
        };
        let d = &candidate.destinations[g.index];
        let service = if d.services.is_empty() {
            None
        } else {
            match &o.service {
                Some(s) if d.services.contains(s) => Some(s.clone()),
                // A process in none of its services (or not known to be): observed.
                _ => {
                    unguarded += 1;
                    continue;
                }
            }
        };
        units.entry((g.index, service)).or_default().push(o);
    }

    let mut destinations = Vec::new();
    for ((index, service), lines) in units {
        let def = &candidate.destinations[index];
        // The destinations of the policy in force these connects were charged to.
        let mut in_force_as: Vec<(String, Option<String>)> = Vec::new();
        for o in &lines {
            let k = (o.destination.clone(), o.service.clone());
            if !in_force_as.contains(&k) {
                in_force_as.push(k);
            }
        }
        let mut unit = (**def).clone();
        unit.service = service.clone();
        let active = active_readings(rec, &in_force_as);
        let candidate_side = simulate(&unit, &lines, &active, t0);
        // A reset is a second record of a connect, not a connect.
        let connects = lines.iter().filter(|o| o.result != "reset").count() as u64;
        let in_force = in_force_side(rec, &in_force_as, connects, &secs);
        let unknown = in_force.rejected.total();
        destinations.push(DestReport {
            destination: def.name.clone(),
            service,
            connects,
            candidate: Side {
                transitions: candidate_side
                    .transitions
                    .into_iter()
                    .map(|c| Change {
                        at_s: secs(c.0),
                        ..c.1
                    })
                    .collect(),
                first_open_s: candidate_side.first_open.map(secs),
                admitted: candidate_side.admitted,
                rejected: candidate_side.rejected,
            },
            in_force_as: in_force_as
                .iter()
                .map(|(n, s)| crate::config::label(n, s.as_deref()))
                .collect(),
            in_force,
            unknown,
        });
    }
    let end = rec.end();
    Report {
        duration_s: secs(rec.last_ns()),
        started_unix: rec.header.started_unix,
        destinations,
        unguarded,
        cut: rec.cut,
        lagged: end.map_or(0, |e| e.lagged),
    }
}

fn endpoint(address: &str) -> Option<Endpoint> {
    let a: SocketAddr = address.parse().ok()?;
    Some(crate::apply::endpoint(&a))
}

/// The policy in force, from the recording: its transitions and the rejections its counters
/// show between the start and the last reading.
fn in_force_side(
    rec: &Recording,
    labels: &[(String, Option<String>)],
    connects: u64,
    secs: &impl Fn(u64) -> f64,
) -> Side {
    let is = |d: &str, s: &Option<String>| labels.iter().any(|(n, x)| n == d && x == s);
    // Every recorded connect was one the policy in force admitted.
    let mut side = Side {
        admitted: connects,
        ..Side::default()
    };
    for line in &rec.lines {
        if let Line::Transition(t) = line {
            if is(&t.destination, &t.service) {
                if t.to == "open" && side.first_open_s.is_none() {
                    side.first_open_s = Some(secs(t.ns));
                }
                side.transitions.push(Change {
                    at_s: secs(t.ns),
                    from: t.from.clone(),
                    to: t.to.clone(),
                    reason: t.reason.clone(),
                });
            }
        }
    }
    for (name, service) in labels {
        let first = rec
            .header
            .destinations
            .iter()
            .find(|d| &d.destination == name && &d.service == service)
            .map(|d| d.counts.rejected)
            .unwrap_or_default();
        let last = rec
            .lines
            .iter()
            .rev()
            .find_map(|l| match l {
                Line::Counts(c) if &c.destination == name && &c.service == service => {
                    Some(c.counts.rejected)
                }
                _ => None,
            })
            .unwrap_or(first);
        side.rejected.add(&last.since(&first));
    }
    side
}

/// The candidate unit's run, times in recording nanoseconds.
#[derive(Default)]
struct Run {
    transitions: Vec<(u64, Change)>,
    first_open: Option<u64>,
    admitted: u64,
    rejected: Rejected,
}

/// Open connections the kernel counted for these in-force destinations, by time.
fn active_readings(rec: &Recording, labels: &[(String, Option<String>)]) -> Vec<(u64, u64)> {
    let mut by_time: BTreeMap<u64, u64> = BTreeMap::new();
    for l in &rec.lines {
        if let Line::Counts(c) = l {
            if labels
                .iter()
                .any(|(n, s)| *n == c.destination && *s == c.service)
            {
                *by_time.entry(c.ns).or_default() += c.counts.active;
            }
        }
    }
    by_time.into_iter().collect()
}

/// `active`: the places held under the policy in force, by time (`active_readings`).
fn simulate(def: &Destination, lines: &[&OutcomeLine], active: &[(u64, u64)], t0: u64) -> Run {
    // (time, 0 = outcome before 1 = attempt at the same time, index)
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(lines.len() * 2);
    for (i, o) in lines.iter().enumerate() {
        events.push((o.ns, 0, i));
        if o.result != "reset" {
            events.push((o.ns.saturating_sub(o.latency_ns), 1, i));
        }
    }
    events.sort_unstable();
    let start = events.first().map_or(t0, |e| e.0.min(t0));
    let mut jitter = XorShift(0x5eed);
    let mut breaker = Breaker::new(def.breaker.clone(), def.mode, start);
    let mut run = Run::default();
    let mut admitted = vec![false; lines.len()];
    let mut probe = vec![false; lines.len()];
    // Successes admitted, by their time: a reset turns that call into a failure.
    let mut successes: HashSet<u64> = HashSet::new();
    let mut probes_used = 0u32;
    let mut round = breaker.since_ns();
    let mut tat = 0u64;

    let note = |run: &mut Run, t: Option<crate::engine::Transition>| {
        if let Some(t) = t {
            if t.to == State::Open && run.first_open.is_none() {
                run.first_open = Some(t.at_ns);
            }
            run.transitions.push((
                t.at_ns,
                Change {
                    at_s: 0.0,
                    from: t.from.as_str().into(),
                    to: t.to.as_str().into(),
                    reason: t.reason,
                },
            ));
        }
    };
    for (t, kind, i) in events {
        // Timed transitions due before `t`, at their own time, then the daemon's tick at `t`.
        for _ in 0..64 {
            let due = match breaker.state() {
                State::Open => breaker.open_until_ns(),
                State::HalfOpen if !def.breaker.max_half_open_duration.is_zero() => {
                    Some(breaker.since_ns() + def.breaker.max_half_open_duration.as_nanos() as u64)
                }
                _ => None,
            };
            match due {
                Some(d) if d <= t => {
                    let tr = breaker.on_tick(d, &mut jitter);
                    let moved = tr.is_some();
                    note(&mut run, tr);
                    if !moved {
                        break;
                    }
                }
                _ => break,
            }
        }
        let tr = breaker.on_tick(t, &mut jitter);
        note(&mut run, tr);
        if breaker.state() == State::HalfOpen && breaker.since_ns() != round {
            round = breaker.since_ns();
            probes_used = 0;
        }
        let o = lines[i];
        if kind == 1 {
            // The attempt: breaker, bulkhead, bucket, in the kernel's order.
            let verdict = match def.mode {
                Mode::Disabled => Verdict::Allow,
                Mode::ForcedOpen => Verdict::Reject,
                Mode::Enforce | Mode::DryRun => breaker.verdict(),
            };
            let rejected = match verdict {
                Verdict::Allow => None,
                Verdict::Reject => Some(&mut run.rejected.breaker),
                Verdict::Probe(n) if probes_used < n => {
                    probes_used += 1;
                    probe[i] = true;
                    None
                }
                Verdict::Probe(_) => Some(&mut run.rejected.breaker),
            };
            let rejected = rejected.or_else(|| {
                let open = active
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= t)
                    .map_or(0, |a| a.1);
                def.bulkhead
                    .filter(|b| open >= u64::from(b.max_concurrent))
                    .map(|_| &mut run.rejected.bulkhead)
            });
            let rejected = rejected.or_else(|| {
                let rl = def.rate_limit?;
                let tolerance = rl.tolerance_ns()?;
                let begin = tat.max(t);
                if begin - t <= tolerance {
                    tat = begin.saturating_add(rl.ns_per_token());
                    None
                } else {
                    Some(&mut run.rejected.rate_limit)
                }
            });
            match rejected {
                Some(count) => *count += 1,
                None => {
                    admitted[i] = true;
                    run.admitted += 1;
                }
            }
            continue;
        }
        // The outcome, if the candidate admitted its connect.
        let reset = o.result == "reset";
        let ok = if reset {
            o.established_ns.is_some_and(|e| successes.contains(&e))
        } else {
            admitted[i]
        };
        if !ok {
            continue;
        }
        let Some(code) = recording::result_code(&o.result) else {
            continue;
        };
        if code == conn::OUTCOME_SUCCESS {
            successes.insert(o.ns);
        }
        let ev = OutcomeEvent {
            ts_ns: o.ns,
            latency_ns: o.latency_ns,
            endpoint: Endpoint::v4([0; 4], 0),
            slot: 0,
            outcome: code,
            sk_err: 0,
            flags: if probe[i] { conn::TRACK_PROBE } else { 0 },
            generation: 0,
            epoch: 0,
            // A recording has a record of every success.
            quiet: 0,
            established_ns: o.established_ns.unwrap_or(0),
        };
        let out = intake::outcome(&ev, def.breaker.failures);
        let judged = matches!(
            out,
            Some(Outcome::Success { .. } | Outcome::Failure { counted: true, .. })
        );
        // An ignored probe gives its place back, as the daemon does.
        if probe[i] && !judged && !reset && breaker.returns_probe(o.ns - o.latency_ns) {
            probes_used = probes_used.saturating_sub(1);
        }
        if let Some(out) = out {
            let tr = breaker.on_outcome(o.ns, out, &mut jitter);
            note(&mut run, tr);
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Counts, CountsLine, DestHeader, Header, TransitionLine};

    const S: u64 = 1_000_000_000;

    fn header(names: &[&str]) -> Header {
        Header {
            format: recording::FORMAT.into(),
            version: recording::VERSION,
            daemon_version: "test".into(),
            started_ns: 10 * S,
            started_unix: 1.7e9,
            policy_file: None,
            destinations: names
                .iter()
                .map(|n| DestHeader {
                    destination: n.to_string(),
                    service: None,
                    policy: serde_json::Value::Null,
                    counts: Counts::default(),
                })
                .collect(),
            max_bytes: 0,
        }
    }

    fn outcome(ns: u64, result: &str, address: &str) -> Line {
        Line::Outcome(OutcomeLine {
            ns,
            latency_ns: 1_000_000,
            destination: "api".into(),
            service: None,
            address: address.into(),
            result: result.into(),
            probe: false,
            slow: false,
            established_ns: None,
        })
    }

    fn policy(text: &str) -> Policy {
        crate::config::parse_str(text, std::path::Path::new("candidate.toml")).unwrap()
    }

    /// 40 refused connects, one every 100 ms, starting 1 s into the recording.
    fn failing() -> Recording {
        connects("refused")
    }

    fn connects(result: &str) -> Recording {
        let mut lines: Vec<Line> = (0..40)
            .map(|i| outcome(11 * S + i * S / 10, result, "127.0.0.1:9"))
            .collect();
        lines.push(Line::Counts(CountsLine {
            ns: 15 * S,
            destination: "api".into(),
            service: None,
            counts: Counts::default(),
        }));
        Recording {
            header: header(&["api"]),
            lines,
            cut: false,
        }
    }

    #[test]
    fn a_stricter_breaker_opens_at_the_failure_that_crosses_it() {
        let p = policy(
            r#"
            [[destination]]
            name = "strict"
            match = ["127.0.0.1:9"]
            [destination.breaker]
            consecutive_failures = 5
            open_duration = "2s"
            "#,
        );
        let r = replay(&failing(), &p, &[vec![]]);
        assert_eq!(r.destinations.len(), 1);
        let d = &r.destinations[0];
        assert_eq!(d.destination, "strict");
        assert_eq!(d.in_force_as, vec!["api".to_string()]);
        assert_eq!(d.connects, 40);
        // The 5th failure ends at 1.4 s.
        let open = d.candidate.first_open_s.unwrap();
        assert!((open - 1.4).abs() < 1e-6, "{open}");
        // Open 2 s: the connects of 1.4..3.4 s are rejected (20); at 3.4 s half-open, three
        // probes fail and it opens again (for 4 s, doubled): the rest are rejected.
        let c = &d.candidate;
        assert_eq!(c.admitted + c.rejected.breaker, 40);
        assert_eq!(c.admitted, 5 + 3, "{c:?}");
        let to: Vec<&str> = c.transitions.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(to, ["open", "half_open", "open"], "{:?}", c.transitions);
        assert!(d.in_force.first_open_s.is_none());
        assert_eq!(d.in_force.admitted, 40);
    }

    #[test]
    fn a_token_bucket_is_replayed_with_the_kernels_arithmetic() {
        let p = policy(
            r#"
            [[destination]]
            name = "limited"
            match = ["127.0.0.0/8"]
            [destination.rate_limit]
            rate = 2.0
            burst = 2
            "#,
        );
        let r = replay(&connects("success"), &p, &[vec![]]);
        let c = &r.destinations[0].candidate;
        // 10 a second offered over 4 s, 2 a second allowed after a burst of 2: 2 + 2 * 3.9.
        assert_eq!(c.admitted, 9, "{c:?}");
        assert_eq!(c.rejected.rate_limit, 31);
    }

    #[test]
    fn the_in_force_side_comes_from_the_recorded_transitions_and_counters() {
        let mut rec = failing();
        rec.lines.push(Line::Transition(TransitionLine {
            ns: 12 * S,
            destination: "api".into(),
            service: None,
            from: "closed".into(),
            to: "open".into(),
            reason: "r".into(),
        }));
        rec.lines.push(Line::Counts(CountsLine {
            ns: 16 * S,
            destination: "api".into(),
            service: None,
            counts: Counts {
                rejected: Rejected {
                    breaker: 7,
                    ..Rejected::default()
                },
                ..Counts::default()
            },
        }));
        let p = policy("[[destination]]\nname = \"x\"\nmatch = [\"127.0.0.1:9\"]\n");
        let r = replay(&rec, &p, &[vec![]]);
        let d = &r.destinations[0];
        assert_eq!(d.in_force.first_open_s, Some(2.0));
        assert_eq!(d.in_force.rejected.breaker, 7);
        assert_eq!(d.unknown, 7);
    }

    #[test]
    fn connects_no_candidate_governs_are_counted_apart() {
        let p = policy("[[destination]]\nname = \"x\"\nmatch = [\"10.0.0.1:80\"]\n");
        let r = replay(&failing(), &p, &[vec![]]);
        assert!(r.destinations.is_empty());
        assert_eq!(r.unguarded, 40);
    }

    #[test]
    fn a_bulkhead_is_judged_against_the_recorded_open_connections() {
        let mut rec = connects("success");
        rec.lines.push(Line::Counts(CountsLine {
            ns: 12 * S,
            destination: "api".into(),
            service: None,
            counts: Counts {
                active: 3,
                ..Counts::default()
            },
        }));
        rec.lines.push(Line::Counts(CountsLine {
            ns: 13 * S,
            destination: "api".into(),
            service: None,
            counts: Counts::default(),
        }));
        let p = policy(
            "[[destination]]\nname = \"x\"\nmatch = [\"127.0.0.1:9\"]\n[destination.bulkhead]\nmax_concurrent = 3\n",
        );
        let r = replay(&rec, &p, &[vec![]]);
        // The connects that began in [2 s, 3 s): ten.
        assert_eq!(r.destinations[0].candidate.rejected.bulkhead, 10);
    }
}
