//! The three guards a destination can have, with their defaults (Resilience4j's where it has
//! one), and their TOML form.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last N calls.
    Count(u32),
    /// The calls of the last D, in one-second buckets.
    Time(Duration),
}

/// How a connect (or an established connection) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// SYN_SENT -> CLOSE on a reset (ECONNREFUSED).
    Refused,
    /// The kernel gave up on SYN retries, or the application did.
    Timeout,
    /// An ICMP error after the SYN went out.
    Unreachable,
    /// The connect failed before its SYN left the host (no route, no local port, refused by
    /// a program on an enclosing cgroup).
    Local,
    /// An established connection ended by a reset.
    Reset,
}

impl FailureClass {
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Refused,
        FailureClass::Timeout,
        FailureClass::Unreachable,
        FailureClass::Reset,
        FailureClass::Local,
    ];

    /// The name in the policy file, status JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Refused => "refused",
            FailureClass::Timeout => "timeout",
            FailureClass::Unreachable => "unreachable",
            FailureClass::Reset => "reset",
            FailureClass::Local => "local",
        }
    }

    pub fn from_name(s: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Which connect failures count against a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureClasses {
    pub refused: bool,
    pub timeout: bool,
    pub unreachable: bool,
    pub reset: bool,
    pub local: bool,
}

impl FailureClasses {
    pub fn counts(&self, c: FailureClass) -> bool {
        match c {
            FailureClass::Refused => self.refused,
            FailureClass::Timeout => self.timeout,
            FailureClass::Unreachable => self.unreachable,
            FailureClass::Reset => self.reset,
            FailureClass::Local => self.local,
        }
    }

    /// The classes counted, by name.
    pub fn names(&self) -> Vec<&'static str> {
        FailureClass::ALL
            .into_iter()
            .filter(|c| self.counts(*c))
            .map(FailureClass::name)
            .collect()
    }
}

impl Default for FailureClasses {
    /// A reset after the connect succeeded is the application protocol's business by default.
    fn default() -> Self {
        Self {
            refused: true,
            timeout: true,
            unreachable: true,
            reset: false,
            // A failure that never left the host says nothing about the destination.
            local: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: Window,
    pub minimum_calls: u32,
    /// Percent, in (0, 100].
    pub failure_rate: f64,
    pub slow_call_duration: Duration,
    /// Percent, in (0, 100].
    pub slow_call_rate: f64,
    /// Trip after this many failures in a row, whatever the window says; 0 = off.
    pub consecutive_failures: u32,
    pub open_duration: Duration,
    /// Repeated trips multiply the open time by `open_duration_multiplier`, up to this.
    pub open_duration_max: Duration,
    pub open_duration_multiplier: f64,
    pub half_open_probes: u32,
    /// How the probes decide.
    pub half_open_rule: HalfOpenRule,
    /// A half-open breaker still undecided after this long opens again; zero: no limit.
    pub max_half_open_duration: Duration,
    pub failures: FailureClasses,
}

/// How a half-open breaker decides from its probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfOpenRule {
    /// Resilience4j: once every probe has ended, their failure and slow-call rates against
    /// `failure_rate` and `slow_call_rate`.
    Rate,
    /// gobreaker: one failed or slow probe reopens; all must succeed to close.
    All,
}

impl HalfOpenRule {
    pub fn name(self) -> &'static str {
        match self {
            HalfOpenRule::Rate => "rate",
            HalfOpenRule::All => "all",
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count(10),
            minimum_calls: 5,
            failure_rate: 60.0,
            slow_call_duration: Duration::from_secs(60),
            slow_call_rate: 100.0,
            consecutive_failures: 0,
            open_duration: Duration::from_secs(30),
            open_duration_max: Duration::from_secs(30),
            open_duration_multiplier: 2.0,
            half_open_probes: 3,
            half_open_rule: HalfOpenRule::Rate,
            max_half_open_duration: Duration::from_secs(60),
            failures: FailureClasses::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// New connections per second (fractional allowed).
    pub rate: f64,
    pub burst: u32,
}

/// The smallest rate: one token every 11.6 days. Below it the bucket's nanosecond arithmetic
/// would leave no room for the burst.
pub const MIN_RATE: f64 = 1e-6;
/// How far ahead of now a full bucket's time may reach (about 146 years): the kernel adds it
/// to CLOCK_MONOTONIC nanoseconds without overflowing.
const MAX_SPAN_NS: u64 = 1 << 62;

impl RateLimit {
    /// Nanoseconds per token, rounded up so that the rate is never exceeded.
    pub fn ns_per_token(&self) -> u64 {
        (1e9 / self.rate).ceil().max(1.0) as u64
    }

    /// GCRA's tolerance, `(burst - 1) * ns_per_token`; None if it does not fit.
    pub fn tolerance_ns(&self) -> Option<u64> {
        let t = self.ns_per_token();
        u64::from(self.burst - 1)
            .checked_mul(t)
            .filter(|v| v.checked_add(t).is_some_and(|s| s <= MAX_SPAN_NS))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bulkhead {
    pub max_concurrent: u32,
}

/// `[destination.retry_budget]`: retries may add at most `ratio` of the original connects in
/// `window`, and `min_per_second * window` are always allowed (Linkerd's retryBudget).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: f64,
    pub window: Duration,
    pub retry_after_failure: Duration,
}

impl RetryBudget {
    /// Retries always allowed in a window.
    pub fn min_retries(&self) -> u64 {
        (self.min_per_second * self.window.as_secs_f64()).floor() as u64
    }

    pub fn ratio_milli(&self) -> u64 {
        (self.ratio * 1000.0).floor() as u64
    }
}

/// Shorter durations are refused: nothing in the daemon acts at a finer grain.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

impl BreakerConfig {
    /// A stable id of these settings: a restarted daemon restores a saved breaker only if it
    /// ran with the same ones.
    pub fn id(&self) -> u64 {
        crate::slots::name_id(&format!("{self:?}"))
    }
}

/// `[destination.breaker]` / `[defaults.breaker]` as written: every key optional, so that a
/// destination overrides the defaults key by key.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    window: Option<Spanned<String>>,
    window_size: Option<Spanned<u32>>,
    window_duration: Option<Spanned<String>>,
    minimum_calls: Option<Spanned<u32>>,
    failure_rate: Option<Spanned<f64>>,
    slow_call_duration: Option<Spanned<String>>,
    slow_call_rate: Option<Spanned<f64>>,
    consecutive_failures: Option<Spanned<u32>>,
    open_duration: Option<Spanned<String>>,
    open_duration_max: Option<Spanned<String>>,
    open_duration_multiplier: Option<Spanned<f64>>,
    half_open_probes: Option<Spanned<u32>>,
    half_open_rule: Option<Spanned<String>>,
    max_half_open_duration: Option<Spanned<String>>,
    failures: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    rate: Option<Spanned<f64>>,
    burst: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBulkhead {
    max_concurrent: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryBudget {
    ratio: Option<Spanned<f64>>,
    min_per_second: Option<Spanned<f64>>,
    window: Option<Spanned<String>>,
    retry_after_failure: Option<Spanned<String>>,
}

/// An error at a byte range of the file.
pub(super) type Located = (std::ops::Range<usize>, String);

macro_rules! overlay {
    ($base:expr, $top:expr, $($f:ident),+) => {{
        let mut out = $base.clone();
        $( if $top.$f.is_some() { out.$f = $top.$f.clone(); } )+
        out
    }};
}

impl RawBreaker {
    pub(super) fn over(&self, defaults: &RawBreaker) -> RawBreaker {
        overlay!(
            defaults,
            self,
            window,
            window_size,
            window_duration,
            minimum_calls,
            failure_rate,
            slow_call_duration,
            slow_call_rate,
            consecutive_failures,
            open_duration,
            open_duration_max,
            open_duration_multiplier,
            half_open_probes,
            half_open_rule,
            max_half_open_duration,
            failures
        )
    }

    pub(super) fn build(&self) -> Result<BreakerConfig, Located> {
        let d = BreakerConfig::default();
        let dur = |v: &Option<Spanned<String>>,
                   default: Duration,
                   name: &str|
         -> Result<Duration, Located> {
            match v {
                None => Ok(default),
                Some(s) => {
                    let d = parse_duration(s.get_ref()).map_err(|m| (s.span(), m))?;
                    if d.is_zero() {
                        return Err((s.span(), format!("{name} must be longer than 0")));
                    }
                    if d < MIN_DURATION {
                        return Err((
                            s.span(),
                            format!("{name} must be at least 1ms (the daemon's resolution)"),
                        ));
                    }
                    Ok(d)
                }
            }
        };
        let percent =
            |v: &Option<Spanned<f64>>, default: f64, name: &str| -> Result<f64, Located> {
                match v {
                    None => Ok(default),
                    Some(p) if *p.get_ref() > 0.0 && *p.get_ref() <= 100.0 => Ok(*p.get_ref()),
                    Some(p) => Err((
                        p.span(),
                        format!("{name} is a percentage in (0, 100], not {}", p.get_ref()),
                    )),
                }
            };
        let positive =
            |v: &Option<Spanned<u32>>, default: u32, name: &str| -> Result<u32, Located> {
                match v {
                    None => Ok(default),
                    Some(n) if *n.get_ref() > 0 => Ok(*n.get_ref()),
                    Some(n) => Err((n.span(), format!("{name} must be at least 1"))),
                }
            };

        let kind = self
            .window
            .as_ref()
            .map_or("count", |w| w.get_ref().as_str());
        let window = match kind {
            "count" => {
                if let Some(wd) = &self.window_duration {
                    return Err((
                        wd.span(),
                        "window_duration applies to window = \"time\"".into(),
                    ));
                }
                Window::Count(positive(&self.window_size, 10, "window_size")?)
            }
            "time" => {
                if let Some(ws) = &self.window_size {
                    return Err((
                        ws.span(),
                        "window_size applies to window = \"count\"".into(),
                    ));
                }
                let wd = dur(
                    &self.window_duration,
                    Duration::from_secs(60),
                    "window_duration",
                )?;
                let span = self.window_duration.as_ref().map_or(0..0, |w| w.span());
                if wd < Duration::from_secs(1) || wd > Duration::from_secs(3600) {
                    return Err((span, "window_duration must be between 1s and 1h".into()));
                }
                if wd.subsec_nanos() != 0 {
                    return Err((
                        span,
                        format!(
                            "window_duration must be a whole number of seconds (the window keeps \
                             one-second buckets), not {}ms",
                            wd.as_millis()
                        ),
                    ));
                }
                Window::Time(wd)
            }
            other => {
                let span = self.window.as_ref().map_or(0..0, |w| w.span());
                return Err((
                    span,
                    format!("unknown window {other:?}; \"count\" or \"time\""),
                ));
            }
        };
        let open_duration = dur(&self.open_duration, d.open_duration, "open_duration")?;
        let open_duration_max = dur(&self.open_duration_max, open_duration, "open_duration_max")?;
        if open_duration_max < open_duration {
            let span = self.open_duration_max.as_ref().map_or(0..0, |w| w.span());
            return Err((
                span,
                "open_duration_max is shorter than open_duration".into(),
            ));
        }
        let open_duration_multiplier = match &self.open_duration_multiplier {
            None => d.open_duration_multiplier,
            Some(m) if (1.0..=100.0).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => {
                return Err((
                    m.span(),
                    format!(
                        "open_duration_multiplier is between 1 and 100, not {}",
                        m.get_ref()
                    ),
                ))
            }
        };
        let half_open_rule = match self.half_open_rule.as_ref() {
            None => HalfOpenRule::Rate,
            Some(r) => match r.get_ref().as_str() {
                "rate" => HalfOpenRule::Rate,
                "all" => HalfOpenRule::All,
                other => {
                    return Err((
                        r.span(),
                        format!("unknown half_open_rule {other:?}; \"rate\" or \"all\""),
                    ))
                }
            },
        };
        // "0s" is allowed here: no limit.
        let max_half_open_duration = match &self.max_half_open_duration {
            None => open_duration.saturating_mul(2),
            Some(s) => match parse_duration(s.get_ref()).map_err(|m| (s.span(), m))? {
                d if d.is_zero() => Duration::ZERO,
                _ => dur(
                    &self.max_half_open_duration,
                    Duration::ZERO,
                    "max_half_open_duration",
                )?,
            },
        };
        let failures = match &self.failures {
            None => d.failures,
            Some(list) => {
                let mut f = FailureClasses {
                    refused: false,
                    timeout: false,
                    unreachable: false,
                    reset: false,
                    local: false,
                };
                for class in list.get_ref() {
                    match FailureClass::from_name(class.get_ref()) {
                        Some(FailureClass::Refused) => f.refused = true,
                        Some(FailureClass::Timeout) => f.timeout = true,
                        Some(FailureClass::Unreachable) => f.unreachable = true,
                        Some(FailureClass::Reset) => f.reset = true,
                        Some(FailureClass::Local) => f.local = true,
                        None => {
                            let known: Vec<String> = FailureClass::ALL
                                .iter()
                                .map(|c| format!("{:?}", c.name()))
                                .collect();
                            return Err((
                                class.span(),
                                format!(
                                    "unknown failure class {:?}; one of {}",
                                    class.get_ref(),
                                    known.join(", ")
                                ),
                            ));
                        }
                    }
                }
                f
            }
        };
        Ok(BreakerConfig {
            window,
            minimum_calls: positive(&self.minimum_calls, d.minimum_calls, "minimum_calls")?,
            failure_rate: percent(&self.failure_rate, d.failure_rate, "failure_rate")?,
            slow_call_duration: dur(
                &self.slow_call_duration,
                d.slow_call_duration,
                "slow_call_duration",
            )?,
            slow_call_rate: percent(&self.slow_call_rate, d.slow_call_rate, "slow_call_rate")?,
            consecutive_failures: self
                .consecutive_failures
                .as_ref()
                .map_or(0, |c| *c.get_ref()),
            open_duration,
            open_duration_max,
            open_duration_multiplier,
            half_open_probes: positive(
                &self.half_open_probes,
                d.half_open_probes,
                "half_open_probes",
            )?,
            half_open_rule,
            max_half_open_duration,
            failures,
        })
    }
}

impl RawRateLimit {
    pub(super) fn over(&self, defaults: &RawRateLimit) -> RawRateLimit {
        overlay!(defaults, self, rate, burst)
    }

    pub(super) fn build(&self, table: std::ops::Range<usize>) -> Result<RateLimit, Located> {
        let rate = self.rate.as_ref().ok_or((
            table,
            "rate_limit needs a rate (connections per second)".to_string(),
        ))?;
        let r = *rate.get_ref();
        if !(r > 0.0 && r <= 1e9) {
            return Err((
                rate.span(),
                format!("rate must be above 0 and at most 1e9 per second, not {r}"),
            ));
        }
        if r < MIN_RATE {
            return Err((
                rate.span(),
                format!(
                    "rate {r} is below the smallest rate the bucket can time, {MIN_RATE} per \
                     second (one connection every {} days)",
                    (1.0 / MIN_RATE / 86400.0).round()
                ),
            ));
        }
        let burst = match &self.burst {
            None => r.ceil().max(1.0) as u32,
            Some(b) if *b.get_ref() > 0 => *b.get_ref(),
            Some(b) => return Err((b.span(), "burst must be at least 1".into())),
        };
        let limit = RateLimit { rate: r, burst };
        if limit.tolerance_ns().is_none() {
            let span = self.burst.as_ref().map_or(rate.span(), |b| b.span());
            return Err((
                span,
                format!(
                    "burst {burst} at rate {r}/s spans more than {} years: lower the burst or \
                     raise the rate",
                    MAX_SPAN_NS / 1_000_000_000 / 86400 / 365
                ),
            ));
        }
        Ok(limit)
    }
}

impl RawRetryBudget {
    pub(super) fn over(&self, defaults: &RawRetryBudget) -> RawRetryBudget {
        overlay!(
            defaults,
            self,
            ratio,
            min_per_second,
            window,
            retry_after_failure
        )
    }

    pub(super) fn build(&self) -> Result<RetryBudget, Located> {
        let ratio = match &self.ratio {
            None => 0.2,
            Some(r) if (0.0..=100.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => return Err((r.span(), "ratio must be from 0 to 100".into())),
        };
        let min_per_second = match &self.min_per_second {
            None => 10.0,
            Some(m) if (0.0..=1e6).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => return Err((m.span(), "min_per_second must be from 0 to 1e6".into())),
        };
        let duration = |v: &Option<Spanned<String>>,
                        default: Duration,
                        key: &str,
                        (lo, hi): (Duration, Duration)|
         -> Result<Duration, Located> {
            let Some(v) = v else { return Ok(default) };
            let d = super::duration::parse_duration(v.get_ref()).map_err(|m| (v.span(), m))?;
            if d < lo || d > hi {
                return Err((
                    v.span(),
                    format!(
                        "{key} must be between {lo:?} and {hi:?}, not {:?}",
                        v.get_ref()
                    ),
                ));
            }
            Ok(d)
        };
        let window = duration(
            &self.window,
            Duration::from_secs(10),
            "window",
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )?;
        let retry_after_failure = duration(
            &self.retry_after_failure,
            Duration::from_secs(1),
            "retry_after_failure",
            (MIN_DURATION, Duration::from_secs(3600)),
        )?;
        Ok(RetryBudget {
            ratio,
            min_per_second,
            window,
            retry_after_failure,
        })
    }
}

impl RawBulkhead {
    pub(super) fn over(&self, defaults: &RawBulkhead) -> RawBulkhead {
        overlay!(defaults, self, max_concurrent)
    }

    pub(super) fn build(&self, table: std::ops::Range<usize>) -> Result<Bulkhead, Located> {
        match &self.max_concurrent {
            None => Err((table, "bulkhead needs max_concurrent".into())),
            Some(m) if *m.get_ref() > 0 => Ok(Bulkhead {
                max_concurrent: *m.get_ref(),
            }),
            Some(m) => Err((m.span(), "max_concurrent must be at least 1".into())),
        }
    }
}
