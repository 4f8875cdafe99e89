//! What the fuzz targets (fuzz/, `cargo xtask fuzz`) run, and what their saved findings replay
//! in ordinary tests: one input through what the daemon does with such input, with the checks
//! that must hold whatever the input.

use std::path::Path;

use resilience_common::OutcomeEvent;

use crate::{
    config::{self, BreakerConfig, Mode, Window},
    daemon::intake,
    engine::{Breaker, Jitter, State, Verdict},
    protocol,
};

/// A policy file: everything `check` does with it. An error points inside the text.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse_str(text, Path::new("fuzz.toml")) {
        Ok(p) => {
            let _ = config::to_text(&p);
            let _ = config::to_json(&p);
            for d in &p.destinations {
                assert!(config::check_name(&d.name).is_ok(), "{:?}", d.name);
                assert!(!d.matches.is_empty());
                if let Some(r) = d.rate_limit {
                    assert!(r.tolerance_ns().is_some(), "{r:?}");
                }
            }
            assert!(p.daemon.lease >= config::MIN_LEASE);
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "{e} ({lines} lines)");
            assert!(e.col >= 1, "{e}");
            assert!(!e.message.is_empty());
        }
    }
}

/// A control request line: parsed, and what parses survives its own wire form.
pub fn request(data: &[u8]) {
    match protocol::parse(data) {
        Ok(r) => assert_eq!(protocol::parse(r.line().as_bytes()), Ok(r)),
        Err(e) => assert!(!e.is_empty()),
    }
}

struct Fixed(u64);

impl Jitter for Fixed {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Kernel records, as the ring buffer would hand them over (any bytes, any times), decoded and
/// fed to breakers of both window kinds: nothing panics, and each breaker's verdict agrees
/// with its state after every record.
pub fn records(data: &[u8]) {
    let size = std::mem::size_of::<OutcomeEvent>();
    let configs = [
        BreakerConfig {
            consecutive_failures: 3,
            half_open_probes: 2,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            window: Window::Time(std::time::Duration::from_secs(5)),
            minimum_calls: 2,
            slow_call_duration: std::time::Duration::from_millis(1),
            ..BreakerConfig::default()
        },
    ];
    for cfg in configs {
        let failures = cfg.failures;
        let mut b = Breaker::new(cfg, Mode::Enforce, 0);
        let mut jitter = Fixed(1);
        for chunk in data.chunks(size) {
            let Some(ev) = intake::parse_event(chunk) else {
                continue;
            };
            if let Some(o) = intake::outcome(&ev, failures) {
                let _ = b.on_outcome(ev.ts_ns, o, &mut jitter);
            }
            let _ = b.on_tick(ev.ts_ns.wrapping_add(ev.latency_ns), &mut jitter);
            let kv = b.kernel_verdict(ev.ts_ns);
            let _ = b.window_contents(ev.ts_ns);
            match (b.state(), kv.verdict) {
                (State::Closed, Verdict::Allow)
                | (State::Open, Verdict::Reject)
                | (State::HalfOpen, Verdict::Probe(_)) => {}
                other => panic!("state and verdict disagree: {other:?}"),
            }
            if kv.verdict != Verdict::Allow {
                assert_eq!(kv.trip_after, 0, "a fuse on a breaker that is not closed");
            }
        }
    }
}
