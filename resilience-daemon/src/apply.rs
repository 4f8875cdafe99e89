//! A destination's definition and its breaker's verdict as the kernel reads them. Pure.

use std::net::SocketAddr;

use resilience_common::{
    dest::{
        FLAG_BULKHEAD, FLAG_COUNT_LOCAL, FLAG_COUNT_REFUSED, FLAG_COUNT_TIMEOUT,
        FLAG_COUNT_UNREACHABLE, FLAG_DRY_RUN, FLAG_RATE_LIMIT, FLAG_RECORD_SUCCESSES,
        FLAG_RETRY_BUDGET,
    },
    Bucket, DestPolicy, Endpoint,
};

use crate::{
    config::{Destination, Mode},
    daemon::publish::action,
    engine::KernelVerdict,
    slots,
};

/// The POLICY entry of `dest` for the verdict `kv`.
///
/// `disabled` rejects nothing at all: the breaker is paused (its verdict is "allow"), and the
/// bucket and bulkhead only count what they would have rejected, as in dry-run.
pub fn kernel_policy(dest: &Destination, kv: KernelVerdict, generation: u32) -> DestPolicy {
    let mut flags = 0;
    if matches!(dest.mode, Mode::DryRun | Mode::Disabled) {
        flags |= FLAG_DRY_RUN;
    }
    let f = dest.breaker.failures;
    for (on, flag) in [
        (f.refused, FLAG_COUNT_REFUSED),
        (f.timeout, FLAG_COUNT_TIMEOUT),
        (f.unreachable, FLAG_COUNT_UNREACHABLE),
        (f.local, FLAG_COUNT_LOCAL),
    ] {
        if on {
            flags |= flag;
        }
    }
    let (ns_per_token, tolerance_ns) = match dest.rate_limit {
        Some(r) => {
            flags |= FLAG_RATE_LIMIT;
            (r.ns_per_token(), r.tolerance_ns().unwrap_or(u64::MAX))
        }
        None => (0, 0),
    };
    if dest.retry_budget.is_some() {
        flags |= FLAG_RETRY_BUDGET;
    }
    // A time window files each call under its second: successes cannot be counted in bulk.
    if matches!(dest.breaker.window, crate::config::Window::Time(_)) {
        flags |= FLAG_RECORD_SUCCESSES;
    }
    let max_concurrent = match dest.bulkhead {
        Some(b) => {
            flags |= FLAG_BULKHEAD;
            b.max_concurrent
        }
        None => 0,
    };
    let slow_ns = slow_ns(dest);
    DestPolicy {
        action: action(kv.verdict),
        errno: dest.reject_errno.0 as u32,
        flags,
        max_concurrent,
        name_id: slots::name_id(&dest.slot_key()),
        ns_per_token,
        tolerance_ns,
        slow_ns,
        generation,
        trip_after: kv.trip_after,
        window_epoch: kv.epoch,
        window_min: kv.window.map_or(0, |w| w.min),
        window_max_calls: kv.window.map_or(0, |w| w.max_calls),
        failure_milli: kv.window.map_or(0, |w| w.failure_milli),
        slow_milli: kv.window.map_or(0, |w| w.slow_milli),
        connect_timeout_ms: match dest.mode {
            // Disabled guards nothing; a forced-open destination admits nothing.
            Mode::Enforce | Mode::DryRun => dest
                .connect_timeout
                .map_or(0, |t| t.as_millis().min(u128::from(u16::MAX)) as u32),
            Mode::Disabled | Mode::ForcedOpen => 0,
        },
        window_until_ns: kv.window.map_or(0, |w| w.until_ns),
    }
}

/// The slow-call threshold the kernel is given (and counts pending connects by); 0 where the
/// breaker does not run.
pub fn slow_ns(dest: &Destination) -> u64 {
    match dest.mode {
        Mode::Enforce | Mode::DryRun => dest.breaker.slow_call_duration.as_nanos() as u64,
        Mode::Disabled | Mode::ForcedOpen => 0,
    }
}

/// The entry of a slot no destination owns: `generation` moved on, so that connections of its
/// last owner are charged to nobody.
pub fn retired_policy(generation: u32) -> DestPolicy {
    DestPolicy {
        generation,
        ..DestPolicy::default()
    }
}

/// Whole tokens left in a bucket now: connects that would conform back to back.
pub fn tokens_left(policy: &DestPolicy, b: &Bucket, now_ns: u64) -> u64 {
    let t = policy.ns_per_token.max(1);
    // Conforms while tat - now <= tolerance; each connect adds t.
    let ahead = b.tat_ns.saturating_sub(now_ns);
    if ahead > policy.tolerance_ns {
        return 0;
    }
    (policy.tolerance_ns - ahead) / t + 1
}

pub fn endpoint(a: &SocketAddr) -> Endpoint {
    match a {
        SocketAddr::V4(v4) => Endpoint::v4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => Endpoint::v6(v6.ip().octets(), v6.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_left_matches_the_hook() {
        // burst 5, one token per 100 ns: tolerance 400 ns.
        let p = DestPolicy {
            ns_per_token: 100,
            tolerance_ns: 400,
            ..DestPolicy::default()
        };
        // Idle: full.
        assert_eq!(tokens_left(&p, &Bucket { tat_ns: 0, _pad: 0 }, 10_000), 5);
        // Three taken at t = 1000: tat = 1300.
        let b = Bucket {
            tat_ns: 1300,
            _pad: 0,
        };
        assert_eq!(tokens_left(&p, &b, 1000), 2);
        assert_eq!(tokens_left(&p, &b, 1100), 3);
        assert_eq!(tokens_left(&p, &b, 1300), 5);
        // Five taken: none left until one interval has passed.
        let b = Bucket {
            tat_ns: 1500,
            _pad: 0,
        };
        assert_eq!(tokens_left(&p, &b, 1000), 0);
        assert_eq!(tokens_left(&p, &b, 1100), 1);
    }

    #[test]
    fn disabled_rejects_nothing_and_counts_what_it_would() {
        let policy = crate::config::parse_str(
            "[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.1:80\"]\nmode = \"disabled\"\n[destination.rate_limit]\nrate = 1\n[destination.bulkhead]\nmax_concurrent = 1\n",
            std::path::Path::new("p.toml"),
        )
        .expect("policy");
        let mut d = (*policy.destinations[0]).clone();
        let kv = KernelVerdict {
            verdict: crate::engine::Verdict::Allow,
            trip_after: 0,
            epoch: 1,
            window: None,
        };
        let p = kernel_policy(&d, kv, 1);
        assert_ne!(p.flags & FLAG_DRY_RUN, 0, "disabled counts as dry-run does");
        d.mode = Mode::Enforce;
        assert_eq!(kernel_policy(&d, kv, 1).flags & FLAG_DRY_RUN, 0);
    }
}
