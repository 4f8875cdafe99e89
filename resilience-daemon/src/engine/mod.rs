//! The policy engine: one circuit breaker per destination. Pure: no I/O, time comes in as
//! nanoseconds and randomness through `Jitter`, so every transition is unit-tested.
//!
//! Kernel and engine split the work: the kernel counts, and enforces exactly what must be exact
//! under concurrency (half-open probe budget, token bucket, bulkhead); the engine decides the
//! breaker state from the outcomes and publishes it as a verdict.

mod breaker;
mod window;

pub use breaker::{Breaker, KernelVerdict, Outcome, Resume, State, Transition, Verdict, WindowArm};
pub use window::{Totals, WindowContents};

/// A source of jitter in [0, 1).
pub trait Jitter {
    fn unit(&mut self) -> f64;
}

/// xorshift64*: enough to spread reopen times apart; not for anything secret.
pub struct XorShift(pub u64);

impl Jitter for XorShift {
    fn unit(&mut self) -> f64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}
