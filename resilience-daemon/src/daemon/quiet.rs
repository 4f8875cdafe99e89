//! Successes the kernel counted without a record (`QUIET`), back into the breakers in their
//! place: before each record that carries a higher count, and on every tick (as the records
//! were drained), so that a window is as fresh as when each success had its own record.

use super::{guarded::Guarded, journal::Journal, publish};
use crate::{engine::Jitter, kernel::Arrays};

/// Per slot: the (epoch, count) of `QUIET` already fed to the slot's breaker.
#[derive(Default)]
pub struct QuietBook {
    seen: Vec<(u32, u32)>,
    /// Successes fed so far (the status's `kernel.quiet_successes`).
    pub fed: u64,
}

impl QuietBook {
    /// The successes numbered `first..first + n` of `epoch` not yet fed, for the kernel's
    /// count `count`; marks them fed. None if there are none (or `count` is an older look).
    fn take(&mut self, slot: u32, epoch: u32, count: u32) -> Option<(u32, u32)> {
        let i = slot as usize;
        if i >= self.seen.len() {
            self.seen.resize(i + 1, (0, 0));
        }
        let seen = &mut self.seen[i];
        if seen.0 != epoch {
            *seen = (epoch, 0);
        }
        let n = count.wrapping_sub(seen.1);
        // A count behind the one fed: a record written before a later look.
        if n == 0 || n > i32::MAX as u32 {
            return None;
        }
        let first = seen.1.wrapping_add(1);
        seen.1 = count;
        Some((first, n))
    }

    /// Whether `slot`'s count is the one last fed (nothing to do).
    fn fed(&self, slot: u32, epoch: u32, count: u32) -> bool {
        self.seen.get(slot as usize) == Some(&(epoch, count))
    }
}

/// Feed destination `i` the successes of its slot up to `count` of window epoch `epoch` (a
/// record's `quiet`, or the kernel's count now), as of `now_ns`. Only the breaker's own epoch
/// counts: the kernel's count of another is a window that is gone or not yet published.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    book: &mut QuietBook,
    guarded: &mut Guarded,
    i: usize,
    epoch: u32,
    count: u32,
    now_ns: u64,
    arrays: &Arrays,
    journal: &mut Journal,
    jitter: &mut impl Jitter,
) {
    let d = &mut guarded.dests[i];
    if epoch != d.breaker.epoch() {
        return;
    }
    let Some((first, n)) = book.take(d.slot, epoch, count) else {
        return;
    };
    book.fed += u64::from(n);
    if let Some(t) = d.breaker.on_quiet(now_ns, epoch, first, n, jitter) {
        publish::transition(arrays, journal, d, &t);
    }
}

/// Every slot whose kernel count moved since the last look: its destination's breaker gets
/// the new successes and its trip fuse moves. One pass over a small array, then only the
/// destinations that changed.
pub fn sweep(
    book: &mut QuietBook,
    guarded: &mut Guarded,
    now_ns: u64,
    arrays: &Arrays,
    journal: &mut Journal,
    jitter: &mut impl Jitter,
) {
    let mut moved = Vec::new();
    arrays.quiet.scan(|slot, q| {
        let (epoch, count) = (q.epoch as u32, q.successes as u32);
        if count != 0 && !book.fed(slot, epoch, count) {
            moved.push((slot, epoch, count));
        }
    });
    for (slot, epoch, count) in moved {
        let Some(i) = guarded.by_slot(slot) else {
            // No owner: remember the count, so that the next pass skips it.
            let _ = book.take(slot, epoch, count);
            continue;
        };
        fold(
            book, guarded, i, epoch, count, now_ns, arrays, journal, jitter,
        );
        if let Err(e) = publish::refresh_fuse(arrays, &mut guarded.dests[i], now_ns) {
            tracing::error!(error = %format!("{e:#}"), "cannot move a trip fuse");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_success_is_fed_once_in_order() {
        let mut b = QuietBook::default();
        assert_eq!(b.take(3, 7, 5), Some((1, 5)));
        assert!(b.fed(3, 7, 5));
        // An older look (a record written before the last count was read): nothing.
        assert_eq!(b.take(3, 7, 4), None);
        assert_eq!(b.take(3, 7, 5), None);
        assert_eq!(b.take(3, 7, 8), Some((6, 3)));
        // A new epoch counts from its own start.
        assert_eq!(b.take(3, 9, 2), Some((1, 2)));
        assert!(!b.fed(3, 7, 8));
        // Counts wrap with the kernel's 32 bits.
        let mut b = QuietBook {
            seen: vec![(1, u32::MAX - 1)],
            fed: 0,
        };
        assert_eq!(b.take(0, 1, 1), Some((u32::MAX, 3)));
    }
}
