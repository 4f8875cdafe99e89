//! The policy file: TOML in, a validated `Policy` out. Pure: no I/O beyond reading the file.

mod duration;
mod errno;
pub mod govern;
mod guards;
mod matcher;
mod overlap;
mod parse;
mod show;

pub use duration::parse_duration;
pub use errno::Errno;
pub use guards::{
    BreakerConfig, Bulkhead, FailureClass, FailureClasses, HalfOpenRule, RateLimit, RetryBudget,
    Window, MIN_DURATION, MIN_RATE,
};
pub use matcher::{ip, Match, MatchKind};
pub use overlap::overlaps;
pub use parse::{check_name, load_file, parse_metrics_addr, parse_str, printable};
pub use show::{destination_json, to_json, to_text};

use std::{path::PathBuf, sync::Arc, time::Duration};

/// The policy the daemon enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub daemon: DaemonSettings,
    /// `[[service]]`: groups of processes by cgroup, in the file's order.
    pub services: Vec<Service>,
    /// Shared with what the daemon guards (`units`): one copy of each definition, not two.
    pub destinations: Vec<Arc<Destination>>,
}

impl Policy {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// A group of processes: everything in a cgroup and below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub name: String,
    pub cgroup: ServiceCgroup,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceCgroup {
    /// Relative to the cgroup2 mount, or absolute.
    Path(PathBuf),
    /// A systemd unit: the cgroup directory systemd names after it, wherever its slice is.
    Unit(String),
}

impl std::fmt::Display for ServiceCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceCgroup::Path(p) => write!(f, "cgroup {}", p.display()),
            ServiceCgroup::Unit(u) => write!(f, "unit {u}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// cgroup v2 directory the hooks attach to; `None`: the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    pub socket: PathBuf,
    /// How long a heartbeat keeps the hook enforcing; past it, the hook fails open.
    pub lease: Duration,
    /// bpffs directory for pinned maps.
    pub pin_dir: PathBuf,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub metrics: Option<std::net::SocketAddr>,
    /// Connections to named destinations tracked at once (the size of the kernel's CONNS map).
    pub max_connections: u32,
}

pub const DEFAULT_SOCKET: &str = "/run/resilience/control.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/resilience";
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);
/// The heartbeat is renewed every lease / 4: shorter leases leave no room for scheduling.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_CONNECTIONS: u32 = resilience_common::maps::MAX_CONNS;
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<u32> = 1024..=4_194_304;

/// A lease the daemon can keep: `MIN_LEASE` or more.
pub fn check_lease(lease: Duration) -> Result<Duration, String> {
    if lease < MIN_LEASE {
        return Err(format!(
            "lease must be at least {}ms (the heartbeat runs every lease / 4), not {:?}",
            MIN_LEASE.as_millis(),
            lease
        ));
    }
    Ok(lease)
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            cgroup: None,
            socket: PathBuf::from(DEFAULT_SOCKET),
            lease: DEFAULT_LEASE,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            metrics: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Breakers, buckets and bulkheads decide.
    Enforce,
    /// Decide, count what would be rejected, reject nothing.
    DryRun,
    /// Observe only.
    Disabled,
    /// Reject every connect.
    ForcedOpen,
}

/// How a destination, or its copy for one service, is named to operators: "payments",
/// "payments@checkout" (status, dashboard, events, CLI messages).
pub fn label(name: &str, service: Option<&str>) -> String {
    match service {
        None => name.to_string(),
        Some(s) => format!("{name}@{s}"),
    }
}

impl Destination {
    /// What the daemon guards for this destination: itself (shared, not copied), or one copy
    /// per service.
    pub fn units(self: &Arc<Self>) -> Vec<Arc<Destination>> {
        if self.services.is_empty() {
            return vec![Arc::clone(self)];
        }
        self.services
            .iter()
            .map(|s| {
                Arc::new(Destination {
                    service: Some(s.clone()),
                    ..(**self).clone()
                })
            })
            .collect()
    }

    /// The identity of a guarded unit: its slot's owner, across reloads and restarts. The
    /// name alone for a destination without services, so that its slot is the one it had
    /// before services existed. (A name cannot hold a newline.)
    pub fn slot_key(&self) -> String {
        Self::key_of(&self.name, self.service.as_deref())
    }

    pub fn key_of(name: &str, service: Option<&str>) -> String {
        match service {
            None => name.to_string(),
            Some(s) => format!("{name}\n{s}"),
        }
    }

    /// "payments" or "payments@checkout", for messages and logs.
    pub fn label(&self) -> String {
        label(&self.name, self.service.as_deref())
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Enforce,
        Mode::DryRun,
        Mode::Disabled,
        Mode::ForcedOpen,
    ];

    pub fn from_name(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
            Mode::Disabled => "disabled",
            Mode::ForcedOpen => "forced-open",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub name: String,
    /// `services`: only these services' processes are guarded, each with its own breaker,
    /// bucket, bulkhead and retry budget; empty: every process, with one of each.
    pub services: Vec<String>,
    /// Set on the per-service copies the daemon guards (one per name in `services`).
    pub service: Option<String>,
    pub matches: Vec<Match>,
    pub mode: Mode,
    pub reject_errno: Errno,
    /// `connect_timeout`: a connect not established by then fails with ETIMEDOUT, enforced
    /// by the kernel.
    pub connect_timeout: Option<std::time::Duration>,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimit>,
    pub bulkhead: Option<Bulkhead>,
    pub retry_budget: Option<RetryBudget>,
}
