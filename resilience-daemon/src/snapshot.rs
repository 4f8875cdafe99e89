//! An immutable picture of everything the daemon knows, for the control socket and the CLI.
//! Field names are part of the control protocol: add, do not rename.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use resilience_common::{dest::REJECT_BREAKER, DestCounters, Endpoint, Stats};
use serde::{Deserialize, Serialize};

use crate::{apply::Applied, config::Mode, latency::Samples};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub lease_ms: u64,
    pub destinations: Vec<DestinationStatus>,
    /// Destinations no policy names, busiest first.
    pub observed: Vec<ObservedStatus>,
    pub kernel: KernelStats,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestinationStatus {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    pub mode: String,
    pub state: String,
    pub reject_errno: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObservedStatus {
    pub address: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub attempts: u64,
    pub successes: u64,
    pub failures: Failures,
    pub rejected: Rejected,
    pub would_reject: u64,
    pub fail_open: u64,
    pub active: u64,
    pub closed: u64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failures {
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub reset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rejected {
    pub breaker: u64,
    pub rate_limit: u64,
    pub bulkhead: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// From the most recent successful connects; null before the first.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Over every success the kernel counted.
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelStats {
    pub fail_open: u64,
    pub ringbuf_lost: u64,
    pub untracked: u64,
    pub hook_errors: u64,
    pub outcome_records: u64,
}

impl Counts {
    pub fn new(c: &DestCounters, samples: Option<&Samples>) -> Counts {
        use resilience_common::dest::{REJECT_BULKHEAD, REJECT_RATE_LIMIT};
        Counts {
            attempts: c.attempts,
            successes: c.successes,
            failures: Failures {
                refused: c.refused,
                timeout: c.timeout,
                unreachable: c.unreachable,
                reset: c.reset,
            },
            rejected: Rejected {
                breaker: c.rejected[REJECT_BREAKER],
                rate_limit: c.rejected[REJECT_RATE_LIMIT],
                bulkhead: c.rejected[REJECT_BULKHEAD],
            },
            would_reject: c.would_reject,
            fail_open: c.fail_open,
            active: c.active(),
            closed: c.closed,
            latency_ms: Latency {
                p50: samples.and_then(|s| s.quantile_ms(0.50)),
                p99: samples.and_then(|s| s.quantile_ms(0.99)),
                mean: (c.successes > 0).then(|| c.latency_sum_ns as f64 / c.successes as f64 / 1e6),
            },
        }
    }
}

pub fn destination(a: &Applied, c: &DestCounters, samples: Option<&Samples>) -> DestinationStatus {
    let state = match a.dest.mode {
        Mode::ForcedOpen => "open",
        _ => "closed",
    };
    DestinationStatus {
        name: a.dest.name.clone(),
        matches: a.dest.matches.iter().map(|m| m.text.clone()).collect(),
        mode: a.dest.mode.as_str().to_string(),
        state: state.to_string(),
        reject_errno: a.dest.reject_errno.name().to_string(),
        counts: Counts::new(c, samples),
    }
}

pub fn kernel_stats(s: &Stats, outcome_records: u64) -> KernelStats {
    KernelStats {
        fail_open: s.fail_open,
        ringbuf_lost: s.ringbuf_lost,
        untracked: s.untracked,
        hook_errors: s.hook_errors,
        outcome_records,
    }
}

/// "127.0.0.1:80" or "[::1]:443".
pub fn show_endpoint(ep: &Endpoint) -> String {
    let v6 = Ipv6Addr::from(ep.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, ep.port).to_string()
}
