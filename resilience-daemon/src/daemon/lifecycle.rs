//! The policy's lifecycle. A change (a reload, an override, a DNS answer) updates what the
//! daemon wants; a build then plans the next state, has a worker write its keys into the
//! inactive policy set, and commits it in one flip. The running state is never touched before
//! the flip: a failure anywhere leaves it whole, and the change is refused with its reason.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use resilience_common::{dest::ACTION_PROBE, maps::MAX_SLOTS, saved, Bucket};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{
    cgroups::Cgroups,
    guarded::{Dest, Guarded},
    journal::Journal,
    plan::{prepare, Inputs, Plan, Refusal, GRACE},
    publish,
    resolver::Resolver,
};
use crate::{
    apply,
    config::{Mode, Policy},
    engine::{Breaker, Resume, State, Verdict},
    kernel::{keys::KeySets, monotonic_ns, Arrays, Tables},
    latency::Samples,
    protocol::Reply,
    slots,
    snapshot::{EventRecord, TransitionCounts},
};

/// Why a state is being built, and who waits for it.
pub enum Want {
    Reload {
        path: PathBuf,
        reply: Option<oneshot::Sender<Reply>>,
    },
    Override {
        name: String,
        mode: Option<Mode>,
        reply: Option<oneshot::Sender<Reply>>,
    },
    /// DNS answers changed; nobody waits.
    Dns,
    /// The first build at start.
    Start,
}

type Job = JoinHandle<(KeySets, Result<()>)>;
pub type Built = Result<(KeySets, Result<()>), tokio::task::JoinError>;

pub struct Lifecycle {
    pub wanted: Inputs,
    committed: Inputs,
    /// Slots freed by a commit, and when (reused only after `GRACE`).
    retired: HashMap<u32, Instant>,
    last_flip: Option<Instant>,
    /// Changes waiting for the next build.
    queued: Vec<Want>,
    dirty: bool,
    /// The build in flight: its plan, the changes it carries, the key writer.
    building: Option<(Plan, Vec<Want>, Job)>,
    /// The next build waits until then (slots in their grace period).
    retry_at: Option<Instant>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Commits so far: a snapshot delta never spans one.
    pub commits: u64,
    /// Names and overrides a restarted daemon found saved, applied by the first build.
    started: bool,
}

impl Lifecycle {
    pub fn new(file: Policy) -> Lifecycle {
        let inputs = Inputs {
            file: file.into(),
            overrides: HashMap::new(),
        };
        Lifecycle {
            wanted: inputs.clone(),
            committed: inputs,
            retired: HashMap::new(),
            last_flip: None,
            queued: vec![Want::Start],
            dirty: true,
            building: None,
            retry_at: None,
            reloads: 0,
            reload_failures: 0,
            commits: 0,
            started: false,
        }
    }

    /// Overrides a previous daemon saved for destinations the file still has.
    pub fn restore_overrides(&mut self, arrays: &Arrays) {
        let active = arrays.active_set();
        let by_id: HashMap<u64, u32> = (0..MAX_SLOTS)
            .filter_map(|s| {
                let p = arrays.policy(active, s)?;
                (p.name_id != 0).then_some((p.name_id, s))
            })
            .collect();
        for d in self.wanted.file.destinations.iter().flat_map(|d| d.units()) {
            let id = slots::name_id(&d.slot_key());
            let Some(&slot) = by_id.get(&id) else {
                continue;
            };
            let s = arrays.saved(slot);
            let gen = arrays.policy(active, slot).map_or(0, |p| p.generation);
            if s.name_id == id && s.generation == gen && s.override_mode == saved::OVERRIDE_DISABLED
            {
                self.wanted.overrides.insert(d.name.clone(), Mode::Disabled);
            }
        }
    }

    /// Ask for a new state.
    pub fn request(&mut self, want: Want) {
        match &want {
            Want::Override { name, mode, .. } => match mode {
                Some(m) => {
                    self.wanted.overrides.insert(name.clone(), *m);
                }
                None => {
                    self.wanted.overrides.remove(name);
                }
            },
            Want::Reload { .. } | Want::Dns | Want::Start => {}
        }
        self.queued.push(want);
        self.dirty = true;
    }

    /// A new file's policy; overrides of destinations it no longer has are dropped.
    pub fn set_file(&mut self, file: Policy) {
        self.wanted
            .overrides
            .retain(|n, _| file.destinations.iter().any(|d| &d.name == n));
        self.wanted.file = file.into();
    }

    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    /// Start a build if one is wanted and none runs.
    /// A change waits for a build and none is in flight.
    pub fn due(&self) -> bool {
        self.dirty && self.building.is_none()
    }

    pub fn poll(
        &mut self,
        tables: &mut Tables,
        resolver: &Resolver,
        cgroups: &Cgroups,
        journal: &mut Journal,
    ) {
        let now = Instant::now();
        if !self.due() || self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        let plan = match prepare(
            &self.wanted,
            resolver,
            cgroups,
            &tables.arrays,
            &self.retired,
            now,
        ) {
            Ok(p) => p,
            Err(Refusal::Wait(why)) => {
                tracing::debug!("state change waits: {why}");
                self.retry_at = Some(now + GRACE / 4);
                return;
            }
            Err(Refusal::Refused(why)) => {
                self.dirty = false;
                let wants = std::mem::take(&mut self.queued);
                let inputs = self.wanted.clone();
                self.fail(wants, &inputs, &why, journal);
                return;
            }
        };
        let Some(mut keys) = tables.keys.take() else {
            // Only after a key writer panicked (see `finish`): nothing can be built any more.
            self.retry_at = Some(now + Duration::from_secs(60));
            journal.warn(
                "daemon",
                "a policy change cannot be applied: the key writer failed earlier; restart the daemon".into(),
            );
            return;
        };
        self.dirty = false;
        let wants = std::mem::take(&mut self.queued);
        // The set being written was active until the last flip: give any hook still reading
        // it time to finish.
        let wait = self
            .last_flip
            .map(|t| GRACE.saturating_sub(now.saturating_duration_since(t)))
            .unwrap_or(Duration::ZERO);
        let (set, want) = (plan.set, plan.keys.clone());
        let job = tokio::task::spawn_blocking(move || {
            std::thread::sleep(wait);
            let r = keys.write(set, &want);
            (keys, r)
        });
        self.building = Some((plan, wants, job));
    }

    /// Wait for the build in flight (pending forever when there is none).
    pub async fn built(&mut self) -> Built {
        match &mut self.building {
            Some((_, _, job)) => job.await,
            None => std::future::pending().await,
        }
    }

    /// The keys are written (or not): commit the new state, or keep the old one.
    pub fn finish(
        &mut self,
        built: Built,
        tables: &mut Tables,
        guarded: &mut Guarded,
        journal: &mut Journal,
    ) {
        let Some((plan, wants, _)) = self.building.take() else {
            return;
        };
        let written = match built {
            Ok((keys, written)) => {
                tables.keys = Some(keys);
                written
            }
            // A panic in the writer: its key handles went with it, so no later build can run;
            // the running state stays in force.
            Err(e) => Err(anyhow::anyhow!("the key writer failed: {e}")),
        };
        if let Err(e) = written {
            let inputs = plan.inputs.clone();
            self.fail(wants, &inputs, &format!("{e:#}"), journal);
            return;
        }
        let inputs = plan.inputs.clone();
        let n = plan.dests.len();
        let old = std::mem::take(guarded);
        *guarded = commit(
            plan,
            old,
            &tables.arrays,
            &mut self.retired,
            journal,
            !self.started,
        );
        self.last_flip = Some(Instant::now());
        self.commits += 1;
        self.started = true;
        self.committed = inputs;
        self.succeed(wants, n, journal);
        crate::memory::give_back();
    }

    fn succeed(&mut self, wants: Vec<Want>, n: usize, journal: &mut Journal) {
        for w in wants {
            match w {
                Want::Reload { path, reply } => {
                    self.reloads += 1;
                    let m = format!("policy reloaded from {}: {n} destinations", path.display());
                    journal.note("reload", m.clone());
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Message(m));
                    }
                }
                Want::Override { name, mode, reply } => {
                    let m = match mode {
                        Some(m) => format!(
                            "{name}: {} by operator until `resilience enable {name}`",
                            m.as_str()
                        ),
                        None => {
                            let m = self
                                .committed
                                .file
                                .destinations
                                .iter()
                                .find(|d| d.name == name)
                                .map_or("enforce", |d| d.mode.as_str());
                            format!("{name}: enabled, back to the policy's mode ({m})")
                        }
                    };
                    journal.note(&name, m.clone());
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Message(m));
                    }
                }
                Want::Dns | Want::Start => {}
            }
        }
    }

    /// A build failed: refuse what it carried, and stop wanting it (unless something newer
    /// replaced it meanwhile).
    fn fail(&mut self, wants: Vec<Want>, tried: &Inputs, why: &str, journal: &mut Journal) {
        for w in wants {
            match w {
                Want::Reload { reply, .. } => {
                    self.reload_failures += 1;
                    let m = format!("reload rejected, the running policy stays: {why}");
                    journal.warn("reload", m.clone());
                    if self.wanted.file == tried.file {
                        self.wanted.file = self.committed.file.clone();
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Error(m));
                    }
                }
                Want::Override { name, reply, .. } => {
                    if self.wanted.overrides.get(&name) == tried.overrides.get(&name) {
                        match self.committed.overrides.get(&name) {
                            Some(m) => self.wanted.overrides.insert(name.clone(), *m),
                            None => self.wanted.overrides.remove(&name),
                        };
                    }
                    let m = format!("{name}: not changed: {why}");
                    journal.warn(&name, m.clone());
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Error(m));
                    }
                }
                Want::Dns | Want::Start => {
                    journal.warn("daemon", format!("the policy could not be applied: {why}"));
                }
            }
        }
    }
}

/// Write the new state's policy entries into the inactive set and flip to it. Slots of new
/// owners are reset first (they are retired: nothing charges them), kept destinations keep
/// their breakers, counters and places.
fn commit(
    plan: Plan,
    old: Guarded,
    arrays: &Arrays,
    retired: &mut HashMap<u32, Instant>,
    journal: &mut Journal,
    first: bool,
) -> Guarded {
    let now_ns = monotonic_ns();
    let now = Instant::now();
    let active = arrays.active_set();
    let set = plan.set;
    let mut old = old.into_map();
    let mut owned = vec![false; MAX_SLOTS as usize];
    let mut dests = Vec::with_capacity(plan.dests.len());
    for p in plan.dests {
        owned[p.slot as usize] = true;
        if p.fresh {
            arrays.reset_slot(p.slot);
            retired.remove(&p.slot);
        }
        let before = arrays.policy(active, p.slot).unwrap_or_default();
        let prev = old.remove(&p.def.slot_key()).filter(|o| o.slot == p.slot);
        let (breaker, transitions, samples, kept) = carry(&p, prev, arrays, journal, first, now_ns);
        let mut d = Dest {
            shown: 0,
            rev: 0,
            def: p.def,
            override_mode: p.override_mode,
            slot: p.slot,
            dispatch: p.dispatch,
            generation: p.generation,
            breaker,
            samples,
            transitions,
            trip_after: 0,
            window: None,
            pending_mark: None,
            tick_due_ns: 0,
            resolved: p.resolved,
        };
        if !kept {
            // A new breaker starts with no streak; the kernel's must match it.
            arrays.reset_streak(d.slot);
        }
        let kv = d.breaker.kernel_verdict(now_ns);
        let entry = apply::kernel_policy(&d.def, kv, d.generation);
        // A bucket whose rate or size changed (or a new one) starts full; an unchanged one
        // keeps its level, across reloads and restarts alike.
        let same_bucket = !p.fresh
            && before.name_id == entry.name_id
            && before.ns_per_token == entry.ns_per_token
            && before.tolerance_ns == entry.tolerance_ns;
        if d.def.rate_limit.is_some() && !same_bucket {
            arrays.set_bucket(
                d.slot,
                Bucket {
                    tat_ns: now_ns,
                    _pad: 0,
                },
            );
        }
        if let Verdict::Probe(n) = kv.verdict {
            if p.fresh || before.action != ACTION_PROBE {
                arrays.set_probes(d.slot, n);
            }
        }
        d.trip_after = kv.trip_after;
        d.window = kv.window;
        // A new window's counts start from zero before any outcome is tagged with its epoch.
        if arrays.window_epoch(d.slot) != u64::from(kv.epoch) {
            arrays.reset_window(d.slot, kv.epoch);
        }
        arrays.set_retry_bounds(d.slot, d.def.retry_budget.as_ref());
        let _ = arrays.set_policy(set, d.slot, entry);
        dests.push(d);
    }
    for &slot in &plan.freed {
        let gen = arrays.policy(active, slot).map_or(0, |p| p.generation);
        let _ = arrays.set_policy(set, slot, apply::retired_policy(gen.wrapping_add(1)));
        owned[slot as usize] = true;
        retired.insert(slot, now);
    }
    // Every other slot is free in both sets: make the new set agree with the active one.
    for slot in 0..MAX_SLOTS {
        if owned[slot as usize] {
            continue;
        }
        let a = arrays.policy(active, slot).unwrap_or_default();
        if arrays.policy(set, slot) != Some(a) {
            let _ = arrays.set_policy(set, slot, a);
        }
    }
    let _ = arrays.set_lookup_flags(set, plan.keys.lookup_flags());
    let _ = arrays.flip(set);
    for (_, d) in old {
        let name = d.def.label();
        journal.note(&name, format!("{name}: removed from the policy"));
    }
    retired.retain(|_, at| now.saturating_duration_since(*at) < GRACE * 10);
    for d in &dests {
        publish::save(arrays, d);
    }
    Guarded::new(dests)
}

/// The breaker, transition counts and samples of a destination in the new state: kept if its
/// breaker settings are unchanged, resumed from what a previous daemon saved, or new. Every
/// state change this makes is an event.
fn carry(
    p: &super::plan::Planned,
    prev: Option<Dest>,
    arrays: &Arrays,
    journal: &mut Journal,
    first: bool,
    now_ns: u64,
) -> (Breaker, TransitionCounts, Samples, bool) {
    let name = &p.def.label();
    let cfg = p.def.breaker.clone();
    if let Some(o) = prev {
        if o.def.breaker == cfg {
            let mut b = o.breaker;
            b.set_mode(p.def.mode);
            return (b, o.transitions, o.samples, true);
        }
        let mut transitions = o.transitions;
        if o.breaker.state() != State::Closed {
            let from = o.breaker.state();
            journal.push(EventRecord::transition(
                name,
                &crate::engine::Transition {
                    from,
                    to: State::Closed,
                    reason: "breaker settings changed by reload: a new breaker starts closed"
                        .into(),
                    at_ns: now_ns,
                },
            ));
            transitions.count(State::Closed);
        }
        return (
            Breaker::new(cfg, p.def.mode, now_ns),
            transitions,
            o.samples,
            false,
        );
    }
    if p.fresh || !first {
        return (
            Breaker::new(cfg, p.def.mode, now_ns),
            TransitionCounts::default(),
            Samples::default(),
            false,
        );
    }
    // A restarted daemon: what the previous one saved for this slot.
    let s = arrays.saved(p.slot);
    if s.name_id != slots::name_id(&p.def.slot_key()) || s.generation != p.generation {
        return (
            Breaker::new(cfg, p.def.mode, now_ns),
            TransitionCounts::default(),
            Samples::default(),
            false,
        );
    }
    let transitions = TransitionCounts {
        open: s.transitions[0],
        half_open: s.transitions[1],
        closed: s.transitions[2],
    };
    let state = match s.state {
        saved::SAVED_OPEN => State::Open,
        saved::SAVED_HALF_OPEN => State::HalfOpen,
        _ => State::Closed,
    };
    if s.config_id != cfg.id() {
        if state != State::Closed {
            journal.note(
                name,
                format!(
                    "{name}: was {} before the restart, but its breaker settings changed: a new \
                     breaker starts closed",
                    state.as_str()
                ),
            );
        }
        return (
            Breaker::new(cfg, p.def.mode, now_ns),
            transitions,
            Samples::default(),
            false,
        );
    }
    let b = Breaker::resumed(
        cfg,
        p.def.mode,
        Resume {
            state,
            since_ns: s.since_ns,
            open_until_ns: s.open_until_ns,
            trips: s.trips,
            probes_ok: s.probes_ok,
            probes_failed: u32::from(s.probes_failed),
            probes_slow: u32::from(s.probes_slow),
        },
    );
    let detail = match state {
        State::Open => format!(
            "open, half-open in {:.1}s",
            s.open_until_ns.saturating_sub(now_ns) as f64 / 1e9
        ),
        State::HalfOpen => format!("half-open, {} probes left", arrays.probes(p.slot)),
        State::Closed => "closed".into(),
    };
    let over = if s.override_mode == saved::OVERRIDE_DISABLED {
        " (disabled by operator)"
    } else {
        ""
    };
    journal.note(
        name,
        format!("{name}: restored after restart: {detail}{over}"),
    );
    (b, transitions, Samples::default(), true)
}
