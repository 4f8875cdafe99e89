//! `resilience run`: load, apply the policy, keep the lease, serve, reload, detach on exit.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use resilience_common::{
    conn::{OUTCOME_SUCCESS, SLOT_OBSERVED},
    maps::MAX_SLOTS,
    OutcomeEvent,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    apply::{apply, Applied},
    config::{self, Policy},
    control::{self, Command},
    kernel::{Kernel, LoadOptions},
    latency::Samples,
    snapshot::{self, Snapshot},
};

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub policy: Policy,
}

struct State {
    kernel: Kernel,
    applied: Vec<Applied>,
    samples: HashMap<u32, Samples>,
    outcome_records: u64,
    lease: Duration,
}

pub async fn run(opts: RunOptions) -> Result<()> {
    let settings = opts.policy.daemon.clone();
    let cgroup = match &settings.cgroup {
        Some(c) => c.clone(),
        None => crate::kernel::fs::cgroup2_root()?,
    };
    let kernel = Kernel::load(&LoadOptions {
        cgroup: cgroup.clone(),
        pin_dir: settings.pin_dir.clone(),
        lease_ns: settings.lease.as_nanos() as u64,
    })?;
    let listener = control::bind(&settings.socket)?;
    let mut kernel = kernel;
    let ring = kernel.events.take().context("map EVENTS already taken")?;
    let mut state = State {
        kernel,
        applied: Vec::new(),
        samples: HashMap::new(),
        outcome_records: 0,
        lease: settings.lease,
    };
    state.applied = apply(&mut state.kernel.tables, &opts.policy).context("applying the policy")?;
    tracing::info!(
        cgroup = %cgroup.display(),
        pins = %settings.pin_dir.display(),
        socket = %settings.socket.display(),
        destinations = state.applied.len(),
        "resilience is guarding outbound connects"
    );

    let (tx, mut rx) = mpsc::channel(64);
    let server = tokio::spawn(control::serve(listener, tx));
    let mut heartbeat = tokio::time::interval(settings.lease / 4);
    let mut drain_tick = tokio::time::interval(Duration::from_millis(100));
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, for as long as it is
    // registered.
    let mut events = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching map EVENTS: {e}"))?;

    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = renew_lease(&mut state) {
                    tracing::error!(error = %format!("{e:#}"), "cannot renew the lease");
                }
            }
            ready = events.readable_mut() => {
                let Ok(mut guard) = ready else { continue };
                drain(&mut state, guard.get_inner_mut());
                guard.clear_ready();
            }
            // The kernel wakes us only when records pile up; the rest is read on this tick.
            _ = drain_tick.tick() => drain(&mut state, events.get_mut()),
            Some(cmd) = rx.recv() => match cmd {
                Command::Status(reply) => {
                    drain(&mut state, events.get_mut());
                    let v = match snapshot(&state) {
                        Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                        Err(e) => serde_json::json!({"error": format!("{e:#}")}),
                    };
                    let _ = reply.send(v);
                }
            },
            _ = hup.recv() => reload(&mut state, opts.config.as_deref()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    server.abort();
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!("detaching and exiting; pinned maps stay for the next start");
    Ok(())
}

fn renew_lease(state: &mut State) -> Result<()> {
    let tables = &mut state.kernel.tables;
    let c = tables.control()?;
    tables.set_control(resilience_common::Control {
        heartbeat_ns: crate::kernel::monotonic_ns(),
        lease_ns: state.lease.as_nanos() as u64,
        ..c
    })
}

fn reload(state: &mut State, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: running the built-in default policy, nothing to reload");
        return;
    };
    match config::load_file(path) {
        Err(e) => tracing::error!("reload rejected, the running policy stays: {e}"),
        Ok(policy) => match apply(&mut state.kernel.tables, &policy) {
            Ok(applied) => {
                tracing::info!(destinations = applied.len(), "policy reloaded");
                state.applied = applied;
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed"),
        },
    }
}

/// Read every pending outcome record.
fn drain(state: &mut State, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
    while let Some(item) = ring.next() {
        if let Some(ev) = parse_event(&item) {
            state.outcome_records += 1;
            if ev.outcome == OUTCOME_SUCCESS && ev.slot != SLOT_OBSERVED {
                state
                    .samples
                    .entry(ev.slot)
                    .or_default()
                    .push(ev.latency_ns);
            }
        }
    }
}

fn parse_event(bytes: &[u8]) -> Option<OutcomeEvent> {
    if bytes.len() < std::mem::size_of::<OutcomeEvent>() {
        return None;
    }
    // SAFETY: OutcomeEvent is plain old data and the length is checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OutcomeEvent>()) })
}

fn snapshot(state: &State) -> Result<Snapshot> {
    let tables = &state.kernel.tables;
    let mut destinations = Vec::new();
    for a in &state.applied {
        debug_assert!(a.slot < MAX_SLOTS);
        let c = tables.counters(a.slot)?;
        destinations.push(snapshot::destination(a, &c, state.samples.get(&a.slot)));
    }
    let mut observed: Vec<_> = tables.observed();
    observed.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    let observed = observed
        .iter()
        .map(|(ep, c)| snapshot::ObservedStatus {
            address: snapshot::show_endpoint(ep),
            counts: snapshot::Counts::new(c, None),
        })
        .collect();
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        lease_ms: state.lease.as_millis() as u64,
        destinations,
        observed,
        kernel: snapshot::kernel_stats(&tables.stats()?, state.outcome_records),
    })
}
