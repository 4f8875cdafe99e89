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

/// Which connect failures count against a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureClasses {
    pub refused: bool,
    pub timeout: bool,
    pub unreachable: bool,
    pub reset: bool,
}

impl FailureClasses {
    /// The classes counted, by name.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.refused, "refused"),
            (self.timeout, "timeout"),
            (self.unreachable, "unreachable"),
            (self.reset, "reset"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
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
    /// Repeated trips double the open time up to this.
    pub open_duration_max: Duration,
    pub half_open_probes: u32,
    pub failures: FailureClasses,
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
            half_open_probes: 3,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bulkhead {
    pub max_concurrent: u32,
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
    half_open_probes: Option<Spanned<u32>>,
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
            half_open_probes,
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
                if wd < Duration::from_secs(1) || wd > Duration::from_secs(3600) {
                    let span = self.window_duration.as_ref().map_or(0..0, |w| w.span());
                    return Err((span, "window_duration must be between 1s and 1h".into()));
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
        let failures = match &self.failures {
            None => d.failures,
            Some(list) => {
                let mut f = FailureClasses {
                    refused: false,
                    timeout: false,
                    unreachable: false,
                    reset: false,
                };
                for class in list.get_ref() {
                    match class.get_ref().as_str() {
                        "refused" => f.refused = true,
                        "timeout" => f.timeout = true,
                        "unreachable" => f.unreachable = true,
                        "reset" => f.reset = true,
                        other => {
                            return Err((class.span(), format!(
                                "unknown failure class {other:?}; one of \"refused\", \"timeout\", \"unreachable\", \"reset\""
                            )))
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
            half_open_probes: positive(
                &self.half_open_probes,
                d.half_open_probes,
                "half_open_probes",
            )?,
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
        let burst = match &self.burst {
            None => r.ceil().max(1.0) as u32,
            Some(b) if *b.get_ref() > 0 => *b.get_ref(),
            Some(b) => return Err((b.span(), "burst must be at least 1".into())),
        };
        Ok(RateLimit { rate: r, burst })
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
