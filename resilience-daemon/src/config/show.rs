//! The effective policy, as `resilience check` prints it.

use serde_json::{json, Value};

use super::{BreakerConfig, Destination, Policy, ServiceCgroup, Window};

fn window(w: Window) -> String {
    match w {
        Window::Count(n) => format!("count({n})"),
        Window::Time(d) => format!("time({}s)", d.as_secs()),
    }
}

/// The minimum the breaker uses: a count window never waits for more calls than it holds.
fn effective_minimum(b: &BreakerConfig) -> u32 {
    match b.window {
        Window::Count(n) => b.minimum_calls.min(n),
        Window::Time(_) => b.minimum_calls,
    }
}

fn breaker_json(b: &BreakerConfig) -> Value {
    json!({
        "window": window(b.window),
        "minimum_calls": b.minimum_calls,
        "effective_minimum_calls": effective_minimum(b),
        "failure_rate": b.failure_rate,
        "slow_call_duration_ms": b.slow_call_duration.as_millis() as u64,
        "slow_call_rate": b.slow_call_rate,
        "consecutive_failures": b.consecutive_failures,
        "open_duration_ms": b.open_duration.as_millis() as u64,
        "open_duration_max_ms": b.open_duration_max.as_millis() as u64,
        "half_open_probes": b.half_open_probes,
        "half_open_rule": b.half_open_rule.name(),
        "max_half_open_duration_ms": b.max_half_open_duration.as_millis() as u64,
        "open_duration_multiplier": b.open_duration_multiplier,
        "failures": b.failures.names(),
    })
}

pub fn destination_json(d: &Destination) -> Value {
    json!({
        "name": d.name,
        "services": d.services,
        "match": d.matches.iter().map(|m| &m.text).collect::<Vec<_>>(),
        "mode": d.mode.as_str(),
        "reject_errno": d.reject_errno.name(),
        "connect_timeout_ms": d.connect_timeout.map(|t| t.as_millis() as u64),
        "breaker": breaker_json(&d.breaker),
        "rate_limit": d.rate_limit.map(|r| json!({"rate": r.rate, "burst": r.burst})),
        "bulkhead": d.bulkhead.map(|b| json!({"max_concurrent": b.max_concurrent})),
        "retry_budget": d.retry_budget.map(|r| json!({
            "ratio": r.ratio,
            "min_per_second": r.min_per_second,
            "window_ms": r.window.as_millis() as u64,
            "retry_after_failure_ms": r.retry_after_failure.as_millis() as u64,
        })),
    })
}

pub fn to_json(policy: &Policy) -> Value {
    let d = &policy.daemon;
    json!({
        "daemon": {
            "cgroup": d.cgroup.as_ref().map(|c| c.display().to_string()),
            "socket": d.socket.display().to_string(),
            "pin_dir": d.pin_dir.display().to_string(),
            "lease_ms": d.lease.as_millis() as u64,
            "metrics": d.metrics.map(|m| m.to_string()),
        },
        "services": policy.services.iter().map(|s| match &s.cgroup {
            ServiceCgroup::Path(p) => json!({"name": s.name, "cgroup": p.display().to_string()}),
            ServiceCgroup::Unit(u) => json!({"name": s.name, "unit": u}),
        }).collect::<Vec<_>>(),
        "destinations": policy.destinations.iter().map(|d| destination_json(d)).collect::<Vec<_>>(),
        "overlaps": super::overlaps(policy),
    })
}

pub fn to_text(policy: &Policy) -> String {
    use std::fmt::Write;
    let d = &policy.daemon;
    let mut out = String::new();
    let cgroup = d
        .cgroup
        .as_ref()
        .map_or("<cgroup2 root>".into(), |c| c.display().to_string());
    let _ = writeln!(
        out,
        "daemon: cgroup={cgroup} socket={} pin_dir={} lease={:?} metrics={}",
        d.socket.display(),
        d.pin_dir.display(),
        d.lease,
        d.metrics.map_or("off".to_string(), |m| m.to_string())
    );
    for s in &policy.services {
        let _ = writeln!(out, "service {}: {}", s.name, s.cgroup);
    }
    for dest in &policy.destinations {
        let m: Vec<&str> = dest.matches.iter().map(|m| m.text.as_str()).collect();
        let _ = writeln!(
            out,
            "{}: mode={} reject_errno={} match=[{}]{}{}",
            dest.name,
            dest.mode.as_str(),
            dest.reject_errno.name(),
            m.join(", "),
            dest.connect_timeout
                .map_or(String::new(), |t| format!(" connect_timeout={t:?}")),
            if dest.services.is_empty() {
                String::new()
            } else {
                format!(
                    " services=[{}] (each its own breaker)",
                    dest.services.join(", ")
                )
            },
        );
        let b = &dest.breaker;
        let streak = match b.consecutive_failures {
            0 => "off".to_string(),
            n => n.to_string(),
        };
        let _ = writeln!(
            out,
            "  breaker: window={} minimum_calls={} failure_rate={}% slow_call={}% >= {:?} consecutive_failures={streak} open={:?}..{:?} (x{}) half_open_probes={} rule={} half_open_max={} failures={}",
            window(b.window),
            if effective_minimum(b) < b.minimum_calls {
                format!("{} (of {}: the window holds {})", effective_minimum(b), b.minimum_calls, effective_minimum(b))
            } else {
                b.minimum_calls.to_string()
            },
            b.failure_rate,
            b.slow_call_rate,
            b.slow_call_duration,
            b.open_duration,
            b.open_duration_max,
            b.open_duration_multiplier,
            b.half_open_probes,
            b.half_open_rule.name(),
            if b.max_half_open_duration.is_zero() {
                "none".to_string()
            } else {
                format!("{:?}", b.max_half_open_duration)
            },
            b.failures.names().join(",")
        );
        if let Some(r) = dest.rate_limit {
            let _ = writeln!(out, "  rate_limit: {}/s burst {}", r.rate, r.burst);
        }
        if let Some(k) = dest.bulkhead {
            let _ = writeln!(out, "  bulkhead: max_concurrent {}", k.max_concurrent);
        }
        if let Some(r) = dest.retry_budget {
            let _ = writeln!(
                out,
                "  retry_budget: ratio {} min {}/s over {:?}, a retry within {:?} of a failure",
                r.ratio, r.min_per_second, r.window, r.retry_after_failure
            );
        }
    }
    for o in super::overlaps(policy) {
        let _ = writeln!(out, "{o}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_shows_the_minimum_the_breaker_uses() {
        let p = super::super::parse_str(
            "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\n[destination.breaker]\nwindow_size = 3\n",
            std::path::Path::new("p.toml"),
        )
        .expect("policy");
        let text = super::to_text(&p);
        assert!(
            text.contains("minimum_calls=3 (of 5: the window holds 3)"),
            "{text}"
        );
        let json = super::to_json(&p);
        assert_eq!(json["destinations"][0]["breaker"]["minimum_calls"], 5);
        assert_eq!(
            json["destinations"][0]["breaker"]["effective_minimum_calls"],
            3
        );
    }
}
