//! `resilience run`: load, apply the policy, keep the lease, run the breakers on the kernel's
//! outcome records, serve the control socket, reload, detach on exit.

use std::{collections::HashMap, collections::VecDeque, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use resilience_common::{conn, maps::MAX_SLOTS, OutcomeEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{broadcast, mpsc},
};

use crate::{
    apply::{self, apply, Applied},
    config::{self, Destination, Mode, Policy},
    control::{self, Command},
    engine::{Breaker, KernelVerdict, Outcome, Transition, XorShift},
    kernel::{monotonic_ns, Kernel, LoadOptions},
    latency::Samples,
    snapshot::{self, EventRecord, Snapshot, TransitionCounts},
};

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub policy: Policy,
    /// Stops the daemon as SIGTERM does (the dashboard's quit).
    pub stop: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// A destination being guarded.
pub struct Running {
    pub applied: Applied,
    pub breaker: Breaker,
    pub samples: Samples,
    pub generation: u32,
    /// The trip fuse last published.
    pub trip_after: u32,
    pub transitions: TransitionCounts,
}

pub struct State {
    kernel: Kernel,
    pub dests: Vec<Running>,
    by_slot: HashMap<u32, usize>,
    pub outcome_records: u64,
    pub lease: Duration,
    pub events: VecDeque<EventRecord>,
    /// Every event as it happens, for `events --follow` and the dashboard.
    pub events_tx: broadcast::Sender<EventRecord>,
    next_seq: u64,
    /// The policy as the file (or the built-in default) says, before operator overrides.
    policy: Policy,
    /// Destinations the operator disabled at run time; they stay disabled across reloads.
    overrides: HashMap<String, Mode>,
    reloads: u64,
    reload_failures: u64,
    lost_before: u64,
    fail_open_before: u64,
    config_path: Option<PathBuf>,
    started: std::time::Instant,
    jitter: XorShift,
}

/// State changes, reloads and errors kept for the control socket.
const EVENTS_KEPT: usize = 1000;
/// How often breakers are checked for open -> half-open, and records drained.
const TICK: Duration = Duration::from_millis(50);
/// How often DNS names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// How often the policy file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What tells a changed file: modification time, size and inode.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub async fn run(mut opts: RunOptions) -> Result<()> {
    let settings = opts.policy.daemon.clone();
    let cgroup = match &settings.cgroup {
        Some(c) => c.clone(),
        None => crate::kernel::fs::cgroup2_root()?,
    };
    let mut kernel = Kernel::load(&LoadOptions {
        cgroup: cgroup.clone(),
        pin_dir: settings.pin_dir.clone(),
        lease_ns: settings.lease.as_nanos() as u64,
    })?;
    let ring = kernel.events.take().context("map EVENTS already taken")?;
    let listener = control::bind(&settings.socket)?;
    let metrics = match settings.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    let (lost_before, fail_open_before) = kernel
        .tables
        .stats()
        .map_or((0, 0), |s| (s.ringbuf_lost, s.fail_open));
    let (events_tx, _) = broadcast::channel(1024);
    let mut state = State {
        kernel,
        dests: Vec::new(),
        by_slot: HashMap::new(),
        outcome_records: 0,
        lease: settings.lease,
        events: VecDeque::new(),
        events_tx: events_tx.clone(),
        next_seq: 1,
        policy: opts.policy.clone(),
        overrides: HashMap::new(),
        reloads: 0,
        reload_failures: 0,
        lost_before,
        fail_open_before,
        config_path: opts.config.clone(),
        started: std::time::Instant::now(),
        jitter: XorShift(monotonic_ns() | 1),
    };
    install(&mut state, &opts.policy).context("applying the policy")?;
    tracing::info!(
        cgroup = %cgroup.display(),
        pins = %settings.pin_dir.display(),
        socket = %settings.socket.display(),
        destinations = state.dests.len(),
        metrics = %settings.metrics.map_or("off".into(), |m| m.to_string()),
        "resilience is guarding outbound connects"
    );

    let (tx, mut rx) = mpsc::channel(64);
    let metrics = metrics.map(|l| tokio::spawn(crate::metrics::serve(l, tx.clone())));
    let server = tokio::spawn(control::serve(listener, tx, events_tx));
    let mut heartbeat = tokio::time::interval(settings.lease / 4);
    let mut tick = tokio::time::interval(TICK);
    let mut resolve = tokio::time::interval(RESOLVE_EVERY);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut stamp = opts.config.as_deref().and_then(file_stamp);
    resolve.tick().await;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, for as long as it is
    // registered.
    let mut events = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching map EVENTS: {e}"))?;

    let stop = async {
        match opts.stop.take() {
            // A dropped sender stops it too: nobody is left to ask.
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = heartbeat.tick() => {
                if let Err(e) = renew_lease(&mut state) {
                    fault(&mut state, "cannot renew the lease (the hooks will fail open)", &e);
                }
                note_losses(&mut state);
            }
            ready = events.readable_mut() => {
                let Ok(mut guard) = ready else { continue };
                drain(&mut state, guard.get_inner_mut());
                guard.clear_ready();
            }
            // The kernel wakes us at once for failures, probes and slow calls; the rest of the
            // records are read here.
            _ = tick.tick() => {
                drain(&mut state, events.get_mut());
                let now = monotonic_ns();
                for i in 0..state.dests.len() {
                    if let Some(t) = state.dests[i].breaker.on_tick(now) {
                        transition(&mut state, i, t);
                    }
                    // A time window's failures expire with the clock: so does its fuse.
                    let timed = matches!(state.dests[i].applied.dest.breaker.window, config::Window::Time(_));
                    if timed {
                        if let Err(e) = refresh_fuse(&mut state, i) {
                            tracing::error!(error = %format!("{e:#}"), "cannot move a trip fuse");
                        }
                    }
                }
            }
            // Polling rather than inotify: it also sees an editor's rename-over and a config
            // management tool's replace, and costs one stat per second.
            _ = watch.tick() => {
                let now = opts.config.as_deref().and_then(file_stamp);
                if now.is_some() && now != stamp {
                    stamp = now;
                    tracing::info!("policy file changed");
                    let _ = reload(&mut state, opts.config.as_deref());
                }
            }
            _ = resolve.tick() => {
                if state.dests.iter().any(|d| has_hosts(&d.applied.dest)) {
                    let policy = state.policy.clone();
                    if let Err(e) = install(&mut state, &policy) {
                        fault(&mut state, "re-resolving DNS names failed", &e);
                    }
                }
            }
            Some(cmd) = rx.recv() => match cmd {
                Command::Snapshot(reply) => {
                    drain(&mut state, events.get_mut());
                    let _ = reply.send(snapshot(&mut state).map_err(|e| format!("{e:#}")));
                }
                Command::Events(reply) => {
                    let _ = reply.send(state.events.iter().cloned().collect());
                }
                Command::Disable(name, reply) => {
                    let _ = reply.send(set_override(&mut state, &name, Some(Mode::Disabled)));
                }
                Command::Enable(name, reply) => {
                    let _ = reply.send(set_override(&mut state, &name, None));
                }
                Command::Trip(name, reply) => {
                    let _ = reply.send(operate(&mut state, &name, true));
                }
                Command::Reset(name, reply) => {
                    let _ = reply.send(operate(&mut state, &name, false));
                }
                Command::Reload(reply) => {
                    let _ = reply.send(reload(&mut state, opts.config.as_deref()));
                }
            },
            _ = hup.recv() => {
                let _ = reload(&mut state, opts.config.as_deref());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!("detaching and exiting; pinned maps stay for the next start");
    Ok(())
}

fn has_hosts(d: &Destination) -> bool {
    d.matches
        .iter()
        .any(|m| matches!(m.kind, config::MatchKind::Host { .. }))
}

/// The file's policy with the operator's overrides over it.
fn effective(policy: &Policy, overrides: &HashMap<String, Mode>) -> Policy {
    let mut p = policy.clone();
    for d in &mut p.destinations {
        if let Some(&m) = overrides.get(&d.name) {
            d.mode = m;
        }
    }
    p
}

/// Apply `file` (with the overrides), keeping the breaker of every destination whose
/// definition did not change.
fn install(state: &mut State, file: &Policy) -> Result<()> {
    state
        .overrides
        .retain(|name, _| file.destinations.iter().any(|d| &d.name == name));
    let policy = &effective(file, &state.overrides);
    let now = monotonic_ns();
    let mut kept: HashMap<String, Running> = state
        .dests
        .drain(..)
        .map(|r| (r.applied.dest.name.clone(), r))
        .collect();
    let mut breakers: HashMap<String, Breaker> = policy
        .destinations
        .iter()
        .map(|d| {
            let b = match kept.get(&d.name) {
                Some(r) if r.applied.dest == *d => r.breaker.clone(),
                _ => Breaker::new(d.breaker.clone(), d.mode, now),
            };
            (d.name.clone(), b)
        })
        .collect();
    let previous: Vec<Applied> = kept.values().map(|r| r.applied.clone()).collect();
    let mut fuses: HashMap<String, u32> = HashMap::new();
    let applied = apply(&mut state.kernel.tables, policy, &previous, |d| {
        let kv = breakers.get_mut(&d.name).map_or(
            KernelVerdict {
                verdict: crate::engine::Verdict::Allow,
                trip_after: 0,
            },
            |b| b.kernel_verdict(now),
        );
        fuses.insert(d.name.clone(), kv.trip_after);
        kv
    })?;
    for a in applied {
        let generation = state.kernel.tables.policy(a.slot)?.generation;
        let old = kept.remove(&a.dest.name);
        let breaker = breakers
            .remove(&a.dest.name)
            .unwrap_or_else(|| Breaker::new(a.dest.breaker.clone(), a.dest.mode, now));
        let kept_breaker = old
            .as_ref()
            .is_some_and(|o| o.applied.slot == a.slot && o.applied.dest == a.dest);
        let transitions = old
            .as_ref()
            .filter(|_| kept_breaker)
            .map(|o| o.transitions)
            .unwrap_or_default();
        let samples = old
            .filter(|o| o.applied.slot == a.slot)
            .map(|o| o.samples)
            .unwrap_or_default();
        let trip_after = fuses.get(&a.dest.name).copied().unwrap_or(0);
        if !kept_breaker {
            // A new breaker starts with no streak; the kernel's must match it.
            state.kernel.tables.reset_streak(a.slot)?;
        }
        state.dests.push(Running {
            applied: a,
            breaker,
            samples,
            generation,
            trip_after,
            transitions,
        });
    }
    state.by_slot = state
        .dests
        .iter()
        .enumerate()
        .map(|(i, d)| (d.applied.slot, i))
        .collect();
    state.policy = file.clone();
    Ok(())
}

/// Put an operator's mode over a destination's (`None`: back to the file's).
fn set_override(state: &mut State, name: &str, mode: Option<Mode>) -> Result<String, String> {
    if !state.policy.destinations.iter().any(|d| d.name == name) {
        return Err(format!("no destination named {name:?}"));
    }
    let before = state.overrides.clone();
    match mode {
        Some(m) => state.overrides.insert(name.to_string(), m),
        None => state.overrides.remove(name),
    };
    let policy = state.policy.clone();
    if let Err(e) = install(state, &policy) {
        state.overrides = before;
        return Err(format!("{e:#}"));
    }
    let message = match mode {
        Some(m) => format!(
            "{name}: {} by operator until `resilience enable {name}`",
            m.as_str()
        ),
        None => {
            let m = policy
                .destinations
                .iter()
                .find(|d| d.name == name)
                .map_or("enforce", |d| d.mode.as_str());
            format!("{name}: enabled, back to the policy's mode ({m})")
        }
    };
    tracing::info!("{message}");
    push_event(state, EventRecord::note(name, message.clone()));
    Ok(message)
}

/// Log an error and show it in the event list (once while it repeats).
fn fault(state: &mut State, what: &str, e: &anyhow::Error) {
    tracing::error!(error = %format!("{e:#}"), "{what}");
    let message = format!("error: {what}: {e:#}");
    if state
        .events
        .back()
        .is_none_or(|last| last.message != message)
    {
        push_event(state, EventRecord::note("daemon", message));
    }
}

/// What the kernel counted that the operator must hear of: lost ring-buffer records and
/// connects let through unguarded (fail-open). An event when a count grows.
fn note_losses(state: &mut State) {
    let Ok(stats) = state.kernel.tables.stats() else {
        return;
    };
    if let Some(n) = grew(stats.ringbuf_lost, &mut state.lost_before) {
        kernel_warning(
            state,
            format!("{n} outcome records lost (ring buffer full): breakers saw fewer calls"),
        );
    }
    if let Some(n) = grew(stats.fail_open, &mut state.fail_open_before) {
        kernel_warning(
            state,
            format!("fail-open: {n} connects let through unguarded (the daemon missed its lease)"),
        );
    }
}

/// How much a kernel counter grew since `before`, which moves up to it.
fn grew(now: u64, before: &mut u64) -> Option<u64> {
    let n = now.checked_sub(*before).filter(|n| *n > 0)?;
    *before = now;
    Some(n)
}

fn kernel_warning(state: &mut State, message: String) {
    tracing::warn!("{message}");
    push_event(state, EventRecord::note("kernel", message));
}

fn renew_lease(state: &mut State) -> Result<()> {
    let tables = &mut state.kernel.tables;
    let c = tables.control()?;
    tables.set_control(resilience_common::Control {
        heartbeat_ns: monotonic_ns(),
        lease_ns: state.lease.as_nanos() as u64,
        ..c
    })
}

/// Trip (open) or reset (close) a destination's breaker by hand.
fn operate(state: &mut State, name: &str, trip: bool) -> Result<String, String> {
    let i = state
        .dests
        .iter()
        .position(|d| d.applied.dest.name == name)
        .ok_or_else(|| format!("no destination named {name:?}"))?;
    let now = monotonic_ns();
    let d = &mut state.dests[i];
    let t = if trip {
        d.breaker.trip(now, &mut state.jitter)
    } else {
        d.breaker.reset(now)
    };
    let state_now = d.breaker.state().as_str();
    match t {
        Some(t) => {
            let message = format!("{name}: {} -> {}", t.from.as_str(), t.to.as_str());
            transition(state, i, t);
            Ok(message)
        }
        None => Ok(format!("{name}: already {state_now}")),
    }
}

/// Reload the policy file: validated whole first; on any error the running policy stays.
fn reload(state: &mut State, path: Option<&std::path::Path>) -> Result<String, String> {
    let Some(path) = path else {
        tracing::warn!("reload: running the built-in default policy, nothing to reload");
        return Err("the daemon runs the built-in default policy: no file to reload".into());
    };
    let result = config::load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|policy| {
            install(state, &policy).map_err(|e| format!("{e:#}"))?;
            Ok(policy.destinations.len())
        });
    let (message, out) = match result {
        Ok(n) => {
            state.reloads += 1;
            tracing::info!(destinations = n, "policy reloaded");
            let m = format!("policy reloaded from {}: {n} destinations", path.display());
            (m.clone(), Ok(m))
        }
        Err(e) => {
            state.reload_failures += 1;
            tracing::error!("reload rejected, the running policy stays: {e}");
            let m = format!("reload rejected, the running policy stays: {e}");
            (m.clone(), Err(m))
        }
    };
    push_event(state, EventRecord::note("reload", message));
    out
}

/// Read every pending outcome record and feed the breakers.
fn drain(state: &mut State, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(ev) = parse_event(&item) {
            records.push(ev);
        }
    }
    let mut touched = Vec::new();
    for ev in records {
        state.outcome_records += 1;
        let Some(&i) = state.by_slot.get(&ev.slot) else {
            continue;
        };
        if !touched.contains(&i) {
            touched.push(i);
        }
        let probe = ev.flags & conn::TRACK_PROBE != 0;
        let d = &mut state.dests[i];
        let f = d.applied.dest.breaker.failures;
        let failure = |class, counted| Outcome::Failure {
            class,
            counted,
            probe,
        };
        let outcome = match ev.outcome {
            conn::OUTCOME_SUCCESS => {
                d.samples.push(ev.latency_ns);
                Outcome::Success {
                    latency_ns: ev.latency_ns,
                    probe,
                }
            }
            conn::OUTCOME_REFUSED => failure("refused", f.refused),
            conn::OUTCOME_TIMEOUT => failure("timeout", f.timeout),
            conn::OUTCOME_UNREACHABLE => failure("unreachable", f.unreachable),
            conn::OUTCOME_RESET => failure("reset", f.reset),
            _ => continue,
        };
        if let Some(t) = d.breaker.on_outcome(ev.ts_ns, outcome, &mut state.jitter) {
            transition(state, i, t);
        }
    }
    for i in touched {
        if let Err(e) = refresh_fuse(state, i) {
            tracing::error!(error = %format!("{e:#}"), "cannot move a trip fuse");
        }
    }
}

/// Publish a breaker's new verdict and record why.
fn transition(state: &mut State, i: usize, t: Transition) {
    let name = state.dests[i].applied.dest.name.clone();
    // A new state starts a new streak. Order matters: a breaker that opens must be rejecting
    // before the streak that tripped it is cleared (else one connect slips through); one that
    // closes must have its streak cleared before the fuse is armed (else an old streak trips it).
    let slot = state.dests[i].applied.slot;
    let result = if t.to == crate::engine::State::Closed {
        state
            .kernel
            .tables
            .reset_streak(slot)
            .and_then(|()| publish_verdict(state, i))
    } else {
        publish_verdict(state, i).and_then(|()| state.kernel.tables.reset_streak(slot))
    };
    if let Err(e) = result {
        fault(state, &format!("{name}: cannot publish the verdict"), &e);
    }
    state.dests[i].transitions.count(t.to);
    tracing::info!(
        "{name}: {} -> {}: {}",
        t.from.as_str(),
        t.to.as_str(),
        t.reason
    );
    push_event(state, EventRecord::transition(&name, &t));
}

/// Publish destination `i`'s verdict and trip fuse.
fn publish_verdict(state: &mut State, i: usize) -> Result<()> {
    let now = monotonic_ns();
    let d = &mut state.dests[i];
    let kv = d.breaker.kernel_verdict(now);
    d.trip_after = kv.trip_after;
    apply::publish(
        &mut state.kernel.tables,
        d.applied.slot,
        &d.applied.dest,
        d.generation,
        kv,
    )
}

/// After records for destination `i` were read: move its trip fuse, and undo a kernel trip the
/// breaker does not agree with (a time window's old failures expired under a stale fuse).
fn refresh_fuse(state: &mut State, i: usize) -> Result<()> {
    let now = monotonic_ns();
    let d = &mut state.dests[i];
    let kv = d.breaker.kernel_verdict(now);
    let closed = kv.verdict == crate::engine::Verdict::Allow;
    // Stale only if the breaker itself has seen the whole streak and did not trip; a kernel
    // streak ahead of the breaker's means records still on their way.
    if closed && d.trip_after != 0 && d.breaker.streak() >= d.trip_after {
        let slot = d.applied.slot;
        if state.kernel.tables.streak(slot)? >= u64::from(d.trip_after) {
            tracing::debug!(destination = %d.applied.dest.name, "stale trip fuse undone");
            state.kernel.tables.reset_streak(slot)?;
        }
    }
    if kv.trip_after != state.dests[i].trip_after {
        publish_verdict(state, i)?;
    }
    Ok(())
}

fn push_event(state: &mut State, mut e: EventRecord) {
    e.seq = state.next_seq;
    state.next_seq += 1;
    if state.events.len() == EVENTS_KEPT {
        state.events.pop_front();
    }
    // No subscriber is not an error.
    let _ = state.events_tx.send(e.clone());
    state.events.push_back(e);
}

fn parse_event(bytes: &[u8]) -> Option<OutcomeEvent> {
    if bytes.len() < std::mem::size_of::<OutcomeEvent>() {
        return None;
    }
    // SAFETY: OutcomeEvent is plain old data and the length is checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OutcomeEvent>()) })
}

fn snapshot(state: &mut State) -> Result<Snapshot> {
    let tables = &state.kernel.tables;
    let now = monotonic_ns();
    let mut destinations = Vec::new();
    for d in &mut state.dests {
        let slot = d.applied.slot;
        debug_assert!(slot < MAX_SLOTS);
        let c = tables.counters(slot)?;
        let policy = tables.policy(slot)?;
        let tokens = match d.applied.dest.rate_limit {
            Some(_) => Some(apply::tokens_left(&policy, &tables.bucket(slot)?, now)),
            None => None,
        };
        let live = snapshot::Live {
            active: tables.active(slot)?,
            tokens,
            now_ns: now,
            override_mode: state.overrides.get(&d.applied.dest.name).copied(),
        };
        destinations.push(snapshot::destination(d, &c, &live));
    }
    let mut observed: Vec<_> = tables.observed();
    observed.sort_by_key(|o| std::cmp::Reverse(o.1.attempts));
    let observed = observed
        .iter()
        .map(|(ep, c)| snapshot::ObservedStatus {
            address: snapshot::show_endpoint(ep),
            counts: snapshot::Counts::new(c, None, c.active()),
        })
        .collect();
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION").to_string(),
        lease_ms: state.lease.as_millis() as u64,
        destinations,
        observed,
        kernel: snapshot::kernel_stats(&tables.stats()?, state.outcome_records),
        daemon: snapshot::DaemonStats {
            uptime: state.started.elapsed().as_secs_f64(),
            reloads: state.reloads,
            reload_failures: state.reload_failures,
            policy_file: state.config_path.as_ref().map(|p| p.display().to_string()),
        },
        events: state.events.iter().rev().take(100).rev().cloned().collect(),
    })
}
