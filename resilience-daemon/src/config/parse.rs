//! TOML -> `Policy`, with every error located at file:line:col.

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use resilience_common::maps::{MAX_CIDR_PER_SET, MAX_DESTINATIONS, MAX_EXACT_PER_SET};

use super::{
    duration::parse_duration,
    errno::Errno,
    guards::{RawBreaker, RawBulkhead, RawRateLimit, RawRetryBudget},
    matcher::Match,
    DaemonSettings, Destination, MatchKind, Mode, Policy, Service, ServiceCgroup,
};

/// A policy file that cannot be used, with the place that makes it so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<RawDaemon>,
    defaults: Option<RawDefaults>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    destination: Vec<Spanned<RawDestination>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    cgroup: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
}

/// Applies to every destination; each key can be overridden per destination.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    mode: Option<Spanned<String>>,
    reject_errno: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    breaker: RawBreaker,
    rate_limit: Option<Spanned<RawRateLimit>>,
    bulkhead: Option<Spanned<RawBulkhead>>,
    retry_budget: Option<Spanned<RawRetryBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    cgroup: Option<String>,
    socket: Option<String>,
    lease: Option<Spanned<String>>,
    pin_dir: Option<String>,
    metrics: Option<Spanned<String>>,
    max_connections: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: Spanned<String>,
    #[serde(rename = "match")]
    matches: Spanned<Vec<Spanned<String>>>,
    mode: Option<Spanned<String>>,
    reject_errno: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    services: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    breaker: RawBreaker,
    rate_limit: Option<Spanned<RawRateLimit>>,
    bulkhead: Option<Spanned<RawBulkhead>>,
    retry_budget: Option<Spanned<RawRetryBudget>>,
}

/// A `[[service]]` table: a name and exactly one of `cgroup` and `unit`.
fn service(raw: RawService) -> Result<Service, (Range<usize>, String)> {
    let name = raw.name.get_ref().trim().to_string();
    check_name(&name).map_err(|m| (raw.name.span(), m))?;
    let cgroup = match (raw.cgroup, raw.unit) {
        (Some(c), None) => {
            let path = PathBuf::from(c.get_ref().trim());
            let bad = path.as_os_str().is_empty()
                || path
                    .components()
                    .any(|p| matches!(p, Component::ParentDir | Component::CurDir));
            if bad {
                return Err((
                    c.span(),
                    format!(
                        "cgroup must be a path relative to the cgroup2 mount (or absolute) \
                         without \".\" or \"..\", not {:?}",
                        c.get_ref()
                    ),
                ));
            }
            ServiceCgroup::Path(path)
        }
        (None, Some(u)) => {
            let unit = u.get_ref().trim();
            if unit.is_empty() || unit.contains('/') || check_name(unit).is_err() {
                return Err((
                    u.span(),
                    format!(
                        "unit must be a systemd unit name such as \"checkout.service\", not {:?}",
                        u.get_ref()
                    ),
                ));
            }
            ServiceCgroup::Unit(unit.to_string())
        }
        (Some(_), Some(u)) => {
            return Err((
                u.span(),
                "a service has a cgroup or a unit, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                raw.name.span(),
                format!("service {name:?} needs a cgroup or a unit"),
            ));
        }
    };
    Ok(Service { name, cgroup })
}

/// A destination's `services`: each one defined, none twice.
fn scoped_to(
    list: Option<Spanned<Vec<Spanned<String>>>>,
    services: &[Service],
) -> Result<Vec<String>, (Range<usize>, String)> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.get_ref().is_empty() {
        return Err((
            list.span(),
            "services needs at least one service (leave it out to guard every process)".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for s in list.into_inner() {
        let name = s.get_ref().trim().to_string();
        if !services.iter().any(|x| x.name == name) {
            let known: Vec<String> = services.iter().map(|x| format!("{:?}", x.name)).collect();
            let hint = if known.is_empty() {
                "no [[service]] is defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            return Err((s.span(), format!("unknown service {name:?} ({hint})")));
        }
        if names.contains(&name) {
            return Err((s.span(), format!("service {name:?} is listed twice")));
        }
        names.push(name);
    }
    Ok(names)
}

/// Longest connect deadline: the kernel keeps it in 16 bits of milliseconds per connection,
/// and the kernel's own SYN retries give up well before it anyway.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

fn connect_timeout(s: &Spanned<String>) -> Result<Duration, (Range<usize>, String)> {
    let d = parse_duration(s.get_ref()).map_err(|m| (s.span(), m))?;
    if d < Duration::from_millis(1) || d > MAX_CONNECT_TIMEOUT {
        return Err((
            s.span(),
            format!(
                "connect_timeout must be between 1ms and {}s, not {:?}",
                MAX_CONNECT_TIMEOUT.as_secs(),
                s.get_ref()
            ),
        ));
    }
    Ok(d)
}

/// A destination's table over the defaults' one, keeping the span of whichever was written.
fn table_over<T: Clone>(
    own: &Option<Spanned<T>>,
    defaults: &Option<Spanned<T>>,
    over: impl Fn(&T, &T) -> T,
) -> Option<(Range<usize>, T)> {
    match (own, defaults) {
        (Some(o), Some(d)) => Some((o.span(), over(o.get_ref(), d.get_ref()))),
        (Some(o), None) => Some((o.span(), o.get_ref().clone())),
        (None, Some(d)) => Some((d.span(), d.get_ref().clone())),
        (None, None) => None,
    }
}

/// "127.0.0.1:9464", "[::1]:9464", or a bare port, which listens on 127.0.0.1: metrics stay
/// on the host unless an address says otherwise.
pub fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("metrics address {s:?} is not IP:PORT or PORT (e.g. \"127.0.0.1:9464\")")
    })
}

/// Policy files larger than this are refused: a real one is kilobytes.
pub const MAX_POLICY_BYTES: u64 = 16 * 1024 * 1024;

pub fn load_file(path: &Path) -> Result<Policy, ConfigError> {
    let text = read_policy(path).map_err(|message| ConfigError {
        file: printable(&path.display().to_string()),
        line: 0,
        col: 0,
        message,
    })?;
    parse_str(&text, path)
}

/// The file's text, if it is a regular file of a sane size. Opened without blocking (a FIFO
/// would otherwise wait for a writer forever) and checked on the open descriptor.
fn read_policy(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "{} bytes: larger than the {} MiB a policy file may have",
            meta.len(),
            MAX_POLICY_BYTES >> 20
        ));
    }
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(text)
}

pub fn parse_str(text: &str, path: &Path) -> Result<Policy, ConfigError> {
    let at = |span: Range<usize>, message: String| locate(text, path, span.start, message);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let start = e.span().map_or(0, |s| s.start);
        // toml's message repeats the location and the source line; keep the first line.
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        locate(text, path, start, message)
    })?;

    let mut daemon = DaemonSettings::default();
    if let Some(d) = raw.daemon {
        daemon.cgroup = d.cgroup.map(PathBuf::from);
        if let Some(s) = d.socket {
            daemon.socket = PathBuf::from(s);
        }
        if let Some(p) = d.pin_dir {
            daemon.pin_dir = PathBuf::from(p);
        }
        if let Some(l) = d.lease {
            let lease = parse_duration(l.get_ref()).map_err(|m| at(l.span(), m))?;
            if lease.is_zero() {
                return Err(at(l.span(), "lease must be longer than 0".into()));
            }
            daemon.lease = super::check_lease(lease).map_err(|m| at(l.span(), m))?;
        }
        if let Some(m) = d.metrics {
            daemon.metrics = Some(parse_metrics_addr(m.get_ref()).map_err(|e| at(m.span(), e))?);
        }
        if let Some(n) = d.max_connections {
            let range = super::MAX_CONNECTIONS_RANGE;
            if !range.contains(n.get_ref()) {
                return Err(at(
                    n.span(),
                    format!(
                        "max_connections must be between {} and {}, not {}",
                        range.start(),
                        range.end(),
                        n.get_ref()
                    ),
                ));
            }
            daemon.max_connections = *n.get_ref();
        }
    }

    let defaults = raw.defaults.unwrap_or_default();
    let located = |(span, m): (Range<usize>, String)| at(span, m);
    let mut services: Vec<Service> = Vec::new();
    for raw in raw.service {
        let name_span = raw.get_ref().name.span();
        let s = service(raw.into_inner()).map_err(located)?;
        if services.iter().any(|x| x.name == s.name) {
            return Err(at(
                name_span,
                format!("service {:?} is defined twice", s.name),
            ));
        }
        services.push(s);
    }
    // Every (destination, service) pair takes a slot.
    let mut units = 0u32;
    // Exact sizes: the parsed policy lives as long as the daemon.
    let mut destinations = Vec::with_capacity(raw.destination.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut owners: HashMap<MatchKind, String> = HashMap::new();
    // DNS names count as exact keys here (at least one address each); what they resolve to is
    // checked again when it is known.
    let (mut exact_keys, mut cidr_keys) = (0u32, 0u32);
    for d in raw.destination {
        let span = d.span();
        let d = d.into_inner();
        let name = d.name.get_ref().trim().to_string();
        if let Err(m) = check_name(&name) {
            return Err(at(d.name.span(), m));
        }
        let scoped = scoped_to(d.services, &services).map_err(located)?;
        units += (scoped.len() as u32).max(1);
        if units > MAX_DESTINATIONS {
            return Err(at(
                d.name.span(),
                format!(
                    "more than {MAX_DESTINATIONS} destinations (each service a destination \
                     lists counts as one)"
                ),
            ));
        }
        if names.insert(name.clone(), span.start).is_some() {
            return Err(at(
                d.name.span(),
                format!("destination {name:?} is defined twice"),
            ));
        }
        if d.matches.get_ref().is_empty() {
            return Err(at(
                d.matches.span(),
                "match needs at least one address".into(),
            ));
        }
        let mut matches = Vec::with_capacity(d.matches.get_ref().len());
        for m in d.matches.into_inner() {
            let parsed = Match::parse(m.get_ref()).map_err(|e| at(m.span(), e))?;
            let (count, max, what) = match parsed.kind {
                MatchKind::Cidr { .. } => (&mut cidr_keys, MAX_CIDR_PER_SET, "CIDR"),
                _ => (&mut exact_keys, MAX_EXACT_PER_SET, "exact address"),
            };
            *count += 1;
            if *count > max {
                return Err(at(
                    m.span(),
                    format!("more than {max} {what} matches in one policy"),
                ));
            }
            if let Some(other) = owners.insert(parsed.kind.clone(), name.clone()) {
                let msg = if other == name {
                    format!("{:?} is listed twice", m.get_ref())
                } else {
                    format!(
                        "{:?} is already matched by destination {other:?}",
                        m.get_ref()
                    )
                };
                return Err(at(m.span(), msg));
            }
            matches.push(parsed);
        }
        let mode = match d.mode.as_ref().or(defaults.mode.as_ref()) {
            None => Mode::Enforce,
            Some(m) => match Mode::from_name(m.get_ref()) {
                Some(mode) => mode,
                None => {
                    let other = m.get_ref();
                    return Err(at(
                        m.span(),
                        format!(
                            "unknown mode {other:?}; one of \"enforce\", \"dry-run\", \"disabled\", \"forced-open\""
                        ),
                    ));
                }
            },
        };
        let reject_errno = match d.reject_errno.as_ref().or(defaults.reject_errno.as_ref()) {
            None => Errno::default(),
            Some(e) => Errno::from_name(e.get_ref()).map_err(|m| at(e.span(), m))?,
        };
        let connect_timeout = match d
            .connect_timeout
            .as_ref()
            .or(defaults.connect_timeout.as_ref())
        {
            None => None,
            Some(t) => Some(connect_timeout(t).map_err(|(span, m)| at(span, m))?),
        };
        let breaker = d.breaker.over(&defaults.breaker).build().map_err(located)?;
        let rate_limit = table_over(&d.rate_limit, &defaults.rate_limit, RawRateLimit::over)
            .map(|(span, r)| r.build(span))
            .transpose()
            .map_err(located)?;
        let bulkhead = table_over(&d.bulkhead, &defaults.bulkhead, RawBulkhead::over)
            .map(|(span, b)| b.build(span))
            .transpose()
            .map_err(located)?;
        let retry_budget = table_over(
            &d.retry_budget,
            &defaults.retry_budget,
            RawRetryBudget::over,
        )
        .map(|(_, r)| r.build())
        .transpose()
        .map_err(located)?;
        destinations.push(std::sync::Arc::new(Destination {
            name,
            services: scoped,
            service: None,
            matches,
            mode,
            reject_errno,
            connect_timeout,
            breaker,
            rate_limit,
            bulkhead,
            retry_budget,
        }));
    }
    Ok(Policy {
        daemon,
        services,
        destinations,
    })
}

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// 1 to 64 characters, none of them a control character or an invisible or bidirectional
/// formatting character (which would let two names look alike, or reorder what a terminal
/// shows).
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters, not {chars}"
        ));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || invisible(c)) {
        return Err(format!(
            "name must be printable: U+{:04X} is a control or invisible character",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode format (Cf) and separator characters that render as nothing or reorder text.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x205F..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// 1-based line and column (in characters) of a byte offset.
fn locate(text: &str, path: &Path, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    ConfigError {
        file: printable(&path.display().to_string()),
        line,
        col,
        message: printable(&message),
    }
}

/// `s` with control characters escaped (`\u{1b}`): a policy's text ends up in error messages,
/// events and logs, and must never reach a terminal as escape sequences.
pub fn printable(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, ConfigError> {
        parse_str(text, Path::new("p.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    #[test]
    fn minimal_and_defaults() {
        let p = parse("").unwrap();
        assert_eq!(p.daemon, DaemonSettings::default());
        assert!(p.destinations.is_empty());

        let p = parse(
            "[daemon]\nlease = \"500ms\"\ncgroup = \"/sys/fs/cgroup/x\"\n\n[[destination]]\nname = \"db\"\nmatch = [\"127.0.0.2:5432\", \"10.0.0.0/8\"]\nmode = \"forced-open\"\nreject_errno = \"ETIMEDOUT\"\n",
        )
        .unwrap();
        assert_eq!(p.daemon.lease, std::time::Duration::from_millis(500));
        assert_eq!(p.daemon.cgroup, Some(PathBuf::from("/sys/fs/cgroup/x")));
        let d = &p.destinations[0];
        assert_eq!(d.name, "db");
        assert_eq!(d.mode, Mode::ForcedOpen);
        assert_eq!(d.reject_errno, Errno(libc::ETIMEDOUT));
        assert_eq!(d.matches.len(), 2);
    }

    #[test]
    fn connect_timeout_per_destination_over_the_defaults() {
        let p = parse(
            "[defaults]\nconnect_timeout = \"1s\"\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nconnect_timeout = \"300ms\"\n[[destination]]\nname = \"b\"\nmatch = [\"127.0.0.2:80\"]\n",
        )
        .unwrap();
        let t: Vec<_> = p.destinations.iter().map(|d| d.connect_timeout).collect();
        assert_eq!(
            t,
            [
                Some(Duration::from_millis(300)),
                Some(Duration::from_secs(1))
            ]
        );
    }

    #[test]
    fn services_scope_a_destination_one_copy_each() {
        let p = parse(
            "[[service]]\nname = \"checkout\"\ncgroup = \"system.slice/checkout.service\"\n\
             [[service]]\nname = \"batch\"\nunit = \"batch.service\"\n\
             [[destination]]\nname = \"payments\"\nmatch = [\"10.20.0.0/16:443\"]\n\
             services = [\"checkout\", \"batch\"]\n\
             [[destination]]\nname = \"all\"\nmatch = [\"10.0.0.1:80\"]\n",
        )
        .expect("policy");
        assert_eq!(p.services.len(), 2);
        assert_eq!(
            p.service("batch").map(|s| &s.cgroup),
            Some(&super::ServiceCgroup::Unit("batch.service".into()))
        );
        let units = p.destinations[0].units();
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].service.as_deref(), Some("batch"));
        assert_eq!(units[1].label(), "payments@batch");
        assert_ne!(units[0].slot_key(), units[1].slot_key());
        // Without services: one unit, keyed by its name alone (its slot from before).
        let all = p.destinations[1].units();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].slot_key(), "all");
    }

    #[test]
    fn default_mode_and_errno() {
        let p = parse("[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.2:80\"]\n").unwrap();
        assert_eq!(p.destinations[0].mode, Mode::Enforce);
        assert_eq!(p.destinations[0].reject_errno, Errno(libc::ECONNREFUSED));
    }

    /// A destination with `extra` appended (line 4 on).
    fn dest(extra: &str) -> String {
        format!("[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n{extra}")
    }

    #[test]
    fn guard_errors_name_line_and_column() {
        let cases: &[(String, &str)] = &[
            (dest("[destination.breaker]\nfailure_rate = 150\n"), "p.toml:5:16: failure_rate is a percentage in (0, 100], not 150"),
            (dest("[destination.breaker]\nslow_call_rate = 0\n"), "p.toml:5:18: slow_call_rate is a percentage in (0, 100], not 0"),
            (dest("[destination.breaker]\nwindow_size = 0\n"), "p.toml:5:15: window_size must be at least 1"),
            (dest("[destination.breaker]\nwindow_size = -3\n"), "p.toml:5:15: invalid value: integer `-3`, expected u32"),
            (dest("[destination.breaker]\nminimum_calls = 0\n"), "p.toml:5:17: minimum_calls must be at least 1"),
            (dest("[destination.breaker]\nhalf_open_probes = 0\n"), "p.toml:5:20: half_open_probes must be at least 1"),
            (dest("[destination.breaker]\nwindow = \"sliding\"\n"), "p.toml:5:10: unknown window \"sliding\"; \"count\" or \"time\""),
            (dest("[destination.breaker]\nwindow_duration = \"10s\"\n"), "p.toml:5:19: window_duration applies to window = \"time\""),
            (dest("[destination.breaker]\nwindow = \"time\"\nwindow_size = 10\n"), "p.toml:6:15: window_size applies to window = \"count\""),
            (dest("[destination.breaker]\nwindow = \"time\"\nwindow_duration = \"0s\"\n"), "p.toml:6:19: window_duration must be longer than 0"),
            (dest("[destination.breaker]\nopen_duration = \"10s\"\nopen_duration_max = \"5s\"\n"), "p.toml:6:21: open_duration_max is shorter than open_duration"),
            (dest("[destination.breaker]\nopen_duration = \"soon\"\n"), "p.toml:5:17: duration \"soon\" does not start with a number"),
            (dest("[destination.breaker]\nfailures = [\"refused\", \"eaten\"]\n"), "p.toml:5:24: unknown failure class \"eaten\""),
            (dest("[destination.breaker]\nthreshold = 5\n"), "p.toml:5:1: unknown field `threshold`"),
            (dest("[destination.rate_limit]\nrate = -5.0\n"), "p.toml:5:8: rate must be above 0 and at most 1e9 per second, not -5"),
            (dest("[destination.rate_limit]\nrate = 0\n"), "p.toml:5:8: rate must be above 0 and at most 1e9 per second, not 0"),
            (dest("[destination.rate_limit]\nrate = 10.0\nburst = 0\n"), "p.toml:6:9: burst must be at least 1"),
            (dest("[destination.rate_limit]\nburst = 5\n"), "p.toml:4:1: rate_limit needs a rate (connections per second)"),
            (dest("[destination.bulkhead]\nmax_concurrent = 0\n"), "p.toml:5:18: max_concurrent must be at least 1"),
            (dest("[destination.bulkhead]\n"), "p.toml:4:1: bulkhead needs max_concurrent"),
            (format!("[defaults.breaker]\nfailure_rate = 101.5\n{}", dest("")), "p.toml:2:16: failure_rate is a percentage in (0, 100], not 101.5"),
            (format!("[defaults]\nmode = \"sometimes\"\n{}", dest("")), "p.toml:2:8: unknown mode \"sometimes\""),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"10.0.0.0/8\"]\n[[destination]]\nname = \"b\"\nmatch = [\"10.0.0.0/8\"]\n".to_string(),
                "p.toml:6:10: \"10.0.0.0/8\" is already matched by destination \"a\"",
            ),
            (dest("match_extra = 1\n"), "p.toml:4:1: unknown field `match_extra`"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with(want), "\n{text}\ngot:  {got}\nwant: {want}");
        }
    }

    #[test]
    fn guards_with_defaults_overridden_key_by_key() {
        let p = parse(
            "[defaults.breaker]\nfailure_rate = 40\nopen_duration = \"10s\"\n[defaults.rate_limit]\nrate = 2.5\n\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[destination.breaker]\nopen_duration = \"1m\"\nwindow = \"time\"\nwindow_duration = \"30s\"\n[destination.bulkhead]\nmax_concurrent = 7\n",
        )
        .unwrap();
        let d = &p.destinations[0];
        assert_eq!(d.breaker.failure_rate, 40.0);
        assert_eq!(d.breaker.open_duration, std::time::Duration::from_secs(60));
        assert_eq!(
            d.breaker.open_duration_max,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            d.breaker.window,
            super::super::Window::Time(std::time::Duration::from_secs(30))
        );
        assert_eq!(d.breaker.minimum_calls, 5);
        assert_eq!(d.breaker.half_open_probes, 3);
        assert_eq!(
            d.rate_limit,
            Some(super::super::RateLimit {
                rate: 2.5,
                burst: 3
            })
        );
        assert_eq!(
            d.bulkhead,
            Some(super::super::Bulkhead { max_concurrent: 7 })
        );
        assert_eq!(d.breaker.failures, super::super::FailureClasses::default());
    }

    #[test]
    fn control_characters_in_the_policy_never_reach_a_message() {
        // TOML's own escapes put ESC and BEL into a key; its error then quotes the key.
        let e = err("\"\\u001b]0;PWNED\\u0007\\u001b[2J\" = 1\n");
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert!(e.contains("\\u{1b}]0;PWNED\\u{7}"), "{e}");
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("[daemon]\nlease = 5\n", "p.toml:2:9: invalid type: integer `5`, expected a string"),
            ("[daemon]\nlease = \"5\"\n", "p.toml:2:9: duration \"5\" needs a unit: ms, s, m or h"),
            ("[daemon]\nlease = \"0s\"\n", "p.toml:2:9: lease must be longer than 0"),
            ("[daemon]\nmetrics = \"localhost:9464\"\n", "p.toml:2:11: metrics address \"localhost:9464\" is not IP:PORT or PORT"),
            ("[deamon]\n", "p.toml:1:2: unknown field `deamon`, expected one of `daemon`, `defaults`, `service`, `destination`"),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"10.1.0.0/8\"]\n",
                "p.toml:3:10: \"10.1.0.0/8\": host bits are set; did you mean 10.0.0.0/8?",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = []\n",
                "p.toml:3:9: match needs at least one address",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nmode = \"open\"\n",
                "p.toml:4:8: unknown mode \"open\"; one of \"enforce\", \"dry-run\", \"disabled\", \"forced-open\"",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.2:80\"]\n",
                "p.toml:5:8: destination \"a\" is defined twice",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[[destination]]\nname = \"b\"\nmatch = [\"127.0.0.1:80\"]\n",
                "p.toml:6:10: \"127.0.0.1:80\" is already matched by destination \"a\"",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nreject_errno = \"ENOPE\"\n",
                "p.toml:4:16: unknown errno \"ENOPE\"",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\ncolour = \"red\"\n",
                "p.toml:4:1: unknown field `colour`",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nconnect_timeout = \"2m\"\n",
                "p.toml:4:19: connect_timeout must be between 1ms and 60s, not \"2m\"",
            ),
            (
                "[defaults]\nconnect_timeout = \"0ms\"\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n",
                "p.toml:2:19: connect_timeout must be between 1ms and 60s",
            ),
            ("[[destination]]\nmatch = [\"127.0.0.1:80\"]\n", "p.toml:1:1: missing field `name`"),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nservices = [\"web\", \"bacth\"]\n",
                "p.toml:7:20: unknown service \"bacth\" (defined: \"web\")",
            ),
            (
                "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nservices = [\"web\"]\n",
                "p.toml:4:13: unknown service \"web\" (no [[service]] is defined)",
            ),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nservices = [\"web\", \"web\"]\n",
                "p.toml:7:20: service \"web\" is listed twice",
            ),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nservices = []\n",
                "p.toml:7:12: services needs at least one service",
            ),
            ("[[service]]\nname = \"web\"\n", "p.toml:2:8: service \"web\" needs a cgroup or a unit"),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\nunit = \"web.service\"\n",
                "p.toml:4:8: a service has a cgroup or a unit, not both",
            ),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a/../b\"\n",
                "p.toml:3:10: cgroup must be a path relative to the cgroup2 mount",
            ),
            (
                "[[service]]\nname = \"web\"\nunit = \"a/b.service\"\n",
                "p.toml:3:8: unit must be a systemd unit name",
            ),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\n[[service]]\nname = \"web\"\ncgroup = \"b\"\n",
                "p.toml:5:8: service \"web\" is defined twice",
            ),
            (
                "[[service]]\nname = \"web\"\ncgroup = \"a\"\ncolour = 1\n",
                "p.toml:4:1: unknown field `colour`",
            ),
            ("[daemon\n", "p.toml:1:8: "),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with(want), "\n{text}\ngot:  {got}\nwant: {want}");
        }
    }
}
