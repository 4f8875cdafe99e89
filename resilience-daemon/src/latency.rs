//! Recent connect latencies per destination, for percentiles.

use std::collections::VecDeque;

use resilience_common::dest::LATENCY_BUCKETS;

/// The latencies of the last `CAPACITY` successful connects the kernel picked as samples (one
/// in `conn::SAMPLE_ONE_IN`, at random): a random quarter of about the last 1024.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Microseconds, saturated at u32::MAX (71 minutes): half the memory of nanoseconds, and
    /// finer than the two decimals of milliseconds anything shows. This ring is most of what a
    /// busy destination costs the daemon: 1 KiB.
    us: VecDeque<u32>,
}

const CAPACITY: usize = 256;

impl Samples {
    pub fn push(&mut self, latency_ns: u64) {
        if self.us.len() == CAPACITY {
            self.us.pop_front();
        }
        self.us
            .push_back(u32::try_from(latency_ns / 1000).unwrap_or(u32::MAX));
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

    /// Nearest-rank quantile in milliseconds (a selection, not a sort: linear in the samples).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.us.is_empty() {
            return None;
        }
        let mut v: Vec<u32> = self.us.iter().copied().collect();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        let (_, nth, _) = v.select_nth_unstable(rank - 1);
        Some(f64::from(*nth) / 1e3)
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
        assert_eq!(s.quantile_ms(0.99), Some(99.0));
        for _ in 0..CAPACITY {
            s.push(7_000_000);
        }
        assert_eq!(s.quantile_ms(0.99), Some(7.0));
    }
}
