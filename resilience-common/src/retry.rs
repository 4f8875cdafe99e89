//! Retry budgets: per slot, the connects of a sliding window counted as originals and as
//! retries, and the budget's bounds. One entry of the memory-mapped RETRY array: the daemon
//! writes the bounds, the kernel the counts.
//!
//! Why this design: the window is 16 buckets of `window / 16`, each count a word that carries
//! its bucket's epoch (the low 24 bits of `now / bucket_ns`) above a 40-bit count. A CPU that
//! finds a stale epoch starts the bucket over with the same compare-and-swap that counts its
//! connect, so no count is ever lost to a reset and no lock is taken. A retry is admitted by
//! counting it first and then summing the window: over the bound, it is taken back and
//! rejected. Racing CPUs can then only reject more, never admit more.

/// Buckets in a retry budget's window.
pub const RETRY_BUCKETS: usize = 16;
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 24) - 1;

/// One slot's retry budget (RETRY[slot]).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryBudget {
    /// Width of a bucket: the window / 16, in ns; 0 = no budget (written by the daemon).
    pub bucket_ns: u64,
    /// A connect is a retry if the slot's last connect failure was at most this long ago.
    pub after_failure_ns: u64,
    /// Retries always allowed in a window (`min_per_second * window`, rounded down).
    pub min_retries: u64,
    /// Retries may add this many thousandths of the window's originals.
    pub ratio_milli: u64,
    /// (Kernel) `bpf_ktime_get_ns()` of the slot's last connect failure (refused, timed out,
    /// unreachable).
    pub last_failure_ns: u64,
    /// (Kernel) Retries rejected for the budget, and what a dry-run slot would have rejected.
    pub rejected: u64,
    pub would_reject: u64,
    /// (Kernel) Retries admitted, in all.
    pub retries_admitted: u64,
    /// (Kernel) Epoch-tagged counts, by bucket.
    pub originals: [u64; RETRY_BUCKETS],
    pub retries: [u64; RETRY_BUCKETS],
}

impl RetryBudget {
    /// The epoch tag of the bucket `now_ns` falls in, and that bucket's index.
    #[inline(always)]
    pub fn epoch(&self, now_ns: u64) -> (u64, usize) {
        let e = now_ns
            / if self.bucket_ns == 0 {
                1
            } else {
                self.bucket_ns
            };
        (e & EPOCH_MASK, (e % RETRY_BUCKETS as u64) as usize)
    }

    /// A tagged word's count if its bucket is still in the window at epoch `now_tag`.
    #[inline(always)]
    pub fn live(word: u64, now_tag: u64) -> u64 {
        let tag = word >> COUNT_BITS;
        let age = now_tag.wrapping_sub(tag) & EPOCH_MASK;
        if age < RETRY_BUCKETS as u64 {
            word & COUNT_MASK
        } else {
            0
        }
    }

    /// The word that counts one more in the bucket of `now_tag`, given what the bucket holds.
    #[inline(always)]
    pub fn bumped(word: u64, now_tag: u64) -> u64 {
        if word >> COUNT_BITS == now_tag {
            word + 1
        } else {
            (now_tag << COUNT_BITS) | 1
        }
    }

    /// The word with one fewer, if it is still the bucket of `now_tag` and above zero.
    #[inline(always)]
    pub fn dropped(word: u64, now_tag: u64) -> Option<u64> {
        (word >> COUNT_BITS == now_tag && word & COUNT_MASK > 0).then(|| word - 1)
    }

    pub fn window_sum(words: &[u64; RETRY_BUCKETS], now_tag: u64) -> u64 {
        words.iter().map(|w| Self::live(*w, now_tag)).sum()
    }

    /// Retries the window allows with `originals` in it.
    #[inline(always)]
    pub fn allowed(&self, originals: u64) -> u64 {
        // No overflow: 16 counts of 40 bits times at most 100000 stays below 2^61 (and a
        // checked multiply would need 128-bit arithmetic, which BPF has not).
        let by_ratio = originals.wrapping_mul(self.ratio_milli) / 1000;
        if by_ratio > self.min_retries {
            by_ratio
        } else {
            self.min_retries
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_over_in_a_new_epoch_and_expire_after_sixteen() {
        let b = RetryBudget {
            bucket_ns: 100,
            ..RetryBudget::default()
        };
        let (t0, i0) = b.epoch(1050);
        assert_eq!((t0, i0), (10, 10));
        let w = RetryBudget::bumped(0, t0);
        let w = RetryBudget::bumped(w, t0);
        assert_eq!(RetryBudget::live(w, t0), 2);
        // Still in the window 15 buckets later, gone at 16.
        assert_eq!(RetryBudget::live(w, t0 + 15), 2);
        assert_eq!(RetryBudget::live(w, t0 + 16), 0);
        // Reused by a later epoch: starts at one.
        assert_eq!(
            RetryBudget::live(RetryBudget::bumped(w, t0 + 16), t0 + 16),
            1
        );
        assert_eq!(
            RetryBudget::dropped(w, t0),
            Some(RetryBudget::bumped(0, t0))
        );
        assert_eq!(RetryBudget::dropped(w, t0 + 1), None);
    }

    #[test]
    fn allows_the_larger_of_the_minimum_and_the_ratio() {
        let b = RetryBudget {
            min_retries: 10,
            ratio_milli: 200,
            ..RetryBudget::default()
        };
        assert_eq!(b.allowed(0), 10);
        assert_eq!(b.allowed(49), 10);
        assert_eq!(b.allowed(100), 20);
    }
}
