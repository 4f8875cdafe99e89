//! Recent connect latencies per destination, for percentiles.

use std::collections::VecDeque;

/// The last `CAPACITY` successful connect latencies.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ns: VecDeque<u64>,
}

const CAPACITY: usize = 1024;

impl Samples {
    pub fn push(&mut self, latency_ns: u64) {
        if self.ns.len() == CAPACITY {
            self.ns.pop_front();
        }
        self.ns.push_back(latency_ns);
    }

    /// Nearest-rank quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        let mut v: Vec<u64> = self.ns.iter().copied().collect();
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] as f64 / 1e6)
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
