//! Recent connect latencies per destination, for percentiles.

use resilience_common::dest::LATENCY_BUCKETS;

/// The latencies of the last `CAPACITY` successful connects the kernel picked as samples (one
/// in `conn::SAMPLE_ONE_IN`, at random): a random eighth of about the last 1024.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// A ring of `code`s, made at the first sample: 256 bytes, most of what a busy destination
    /// costs the daemon (10k of them: 2.5 MiB).
    ring: Option<Box<[u16; CAPACITY]>>,
    /// Samples in the ring, and where the next one goes.
    len: u8,
    next: u8,
}

const CAPACITY: usize = 128;

/// Microseconds in 16 bits, in order: exact below 2048 µs, then 11 significant bits (at most
/// 1/2048 below: 0.05 ms at 100 ms, finer than the sampling itself), up to 2^42 µs.
fn code(us: u64) -> u16 {
    if us < 2048 {
        return us as u16;
    }
    // `us >> shift` has 12 bits: 2048..4096.
    let shift = 52 - us.leading_zeros();
    let e = shift + 1;
    if e > 31 {
        return u16::MAX;
    }
    ((e as u16) << 11) | ((us >> shift) - 2048) as u16
}

fn micros(c: u16) -> u64 {
    let (e, m) = (u64::from(c >> 11), u64::from(c & 0x7ff));
    if e == 0 {
        m
    } else {
        (2048 + m) << (e - 1)
    }
}

impl Samples {
    pub fn push(&mut self, latency_ns: u64) {
        let ring = self.ring.get_or_insert_with(|| Box::new([0; CAPACITY]));
        ring[usize::from(self.next) % CAPACITY] = code(latency_ns / 1000);
        self.next = ((usize::from(self.next) + 1) % CAPACITY) as u8;
        self.len = (usize::from(self.len) + 1).min(CAPACITY) as u8;
    }

    /// The quantile of the samples, or before the first of them an estimate from the kernel's
    /// latency histogram (read only then: see `snapshot::histogram_quantile_ms`).
    pub fn quantile_or_ms(
        &self,
        q: f64,
        histogram: impl FnOnce() -> [u64; LATENCY_BUCKETS],
    ) -> Option<f64> {
        self.quantile_ms(q)
            .or_else(|| crate::snapshot::histogram_quantile_ms(&histogram(), q))
    }

    /// Nearest-rank quantile in milliseconds (a selection on a copy, not a sort: linear in the
    /// samples; codes sort as their latencies do).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let ring = self.ring.as_ref()?;
        let n = usize::from(self.len).min(CAPACITY);
        if n == 0 {
            return None;
        }
        let mut v = **ring;
        let v = &mut v[..n];
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        let (_, nth, _) = v.select_nth_unstable(rank - 1);
        Some(micros(*nth) as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.quantile_ms(0.5), None);
        for ms in 1..=100u64 {
            s.push(ms * 1_000_000);
        }
        assert_eq!(s.quantile_ms(0.5), Some(50.0));
        // 99 ms in 11 significant bits: 32 µs steps.
        assert_eq!(s.quantile_ms(0.99), Some(98.976));
        for _ in 0..CAPACITY {
            s.push(7_000_000);
        }
        assert_eq!(s.quantile_ms(0.99), Some(7.0));
        assert_eq!(s.quantile_ms(0.01), Some(7.0), "the oldest are gone");
    }

    #[test]
    fn codes_keep_order_and_lose_under_1_in_2048() {
        let mut last = 0;
        let mut us = 0u64;
        while us < 1 << 42 {
            let c = code(us);
            assert!(c >= last, "{us} µs");
            last = c;
            let back = micros(c);
            assert!(
                back <= us && us - back <= us / 2048,
                "{us} µs came back as {back}"
            );
            if us < 4096 {
                assert_eq!(back, us);
            }
            us = us + 1 + us / 997;
        }
        assert_eq!(code(u64::MAX), u16::MAX);
        assert!(micros(u16::MAX) >= 1 << 41);
    }
}
