//! The lease: a thread of its own renews the heartbeat every `lease / 4`, so that nothing the
//! daemon's loop does (a slow resolver, a big reload, a slow client) can let it lapse. It renews
//! only while the loop shows it is alive: a loop stuck for longer than `STALL` lets the lease
//! lapse, and the hooks fail open rather than enforce verdicts nobody updates.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::kernel::{monotonic_ns, Arrays};

/// How long the loop may go without a sign of life before the lease is let go.
pub const STALL: Duration = Duration::from_secs(10);

pub struct Lease {
    alive: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    pub fn start(arrays: Arc<Arrays>, lease: Duration) -> Result<Lease> {
        let alive = Arc::new(AtomicU64::new(monotonic_ns()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (alive.clone(), stop.clone());
        let lease_ns = lease.as_nanos() as u64;
        let every = lease / 4;
        let stall_ns = (STALL + lease).as_nanos() as u64;
        let thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let mut lapsed = false;
                while !s.load(Ordering::Acquire) {
                    let now = monotonic_ns();
                    let quiet = now.saturating_sub(a.load(Ordering::Acquire));
                    if quiet <= stall_ns {
                        if let Err(e) = arrays.heartbeat(now, lease_ns) {
                            tracing::error!(error = %e, "cannot renew the lease");
                        }
                        if lapsed {
                            tracing::warn!("the daemon's loop is running again: lease renewed");
                            lapsed = false;
                        }
                    } else if !lapsed {
                        tracing::error!(
                            stuck_for_ms = quiet / 1_000_000,
                            "the daemon's loop is stuck: letting the lease lapse (the hooks fail open)"
                        );
                        lapsed = true;
                    }
                    std::thread::park_timeout(every);
                }
            })
            .context("starting the lease thread")?;
        Ok(Lease {
            alive,
            stop,
            thread: Some(thread),
        })
    }

    /// The loop's sign of life.
    pub fn alive(&self) {
        self.alive.store(monotonic_ns(), Ordering::Release);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
