//! `resilience run`: load, keep the lease, apply the policy, run the breakers on the kernel's
//! outcome records, serve the control socket, reload, detach on exit.
//!
//! The parts, each taking only what it needs:
//! - `lease`: a thread of its own renews the heartbeat; nothing the loop does delays it.
//! - `lifecycle` and `plan`: the policy's lifecycle, a reload as one transaction.
//! - `resolver`: DNS off the loop, with deadlines and last good addresses.
//! - `intake`: kernel records into the breakers; `publish`: verdicts out, in a safe order.
//! - `journal`: the event log; `view`: snapshots.
//!
//! This file wires them to one loop: every slow thing (a key write, a file read, a lookup)
//! runs elsewhere and comes back as a message.

pub mod cgroups;
pub mod guarded;
pub mod intake;
pub mod journal;
pub mod lease;
pub mod lifecycle;
pub mod page;
pub mod plan;
pub mod publish;
pub mod quiet;
pub mod resolver;
pub mod rows;
pub mod tap;
pub mod view;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use resilience_common::OutcomeEvent;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{broadcast, mpsc, oneshot},
};

use self::{
    cgroups::Cgroups,
    guarded::Guarded,
    intake::Intake,
    journal::Journal,
    lease::Lease,
    lifecycle::{Lifecycle, Want},
    resolver::{Resolved, Resolver, LOOKUP_TIMEOUT, RESOLVE_EVERY},
};
use crate::{
    config::{self, MatchKind, Mode, Policy},
    control::{self, Command},
    engine::{Jitter, XorShift},
    kernel::{
        attach::{Attachment, CgroupChange},
        monotonic_ns, reconcile, Kernel, LoadOptions, Tables,
    },
    protocol::{Reply, Request},
};

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub policy: Policy,
    /// Stops the daemon as SIGTERM does (the dashboard's quit).
    pub stop: Option<oneshot::Receiver<()>>,
    /// The dashboard runs in this process's terminal: a SIGHUP that comes with a lost terminal
    /// is a hangup (stop), not a request to reload.
    pub tui: bool,
}

/// How often breakers are checked for open -> half-open, and records drained.
const TICK: Duration = Duration::from_millis(50);
/// How long every success gets a record after a recorder asked, before it listens.
const RECORD_GRACE_NS: u64 = 5_000_000_000;
/// How often the policy file is checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long reading the policy file may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The state the loop's parts share.
pub struct Daemon {
    pub tables: Tables,
    pub guarded: Guarded,
    pub life: Lifecycle,
    pub intake: Intake,
    /// Tracked connections found closed at start.
    pub reconciled: u64,
    /// Where the services' processes are.
    pub cgroups: Cgroups,
    /// When the kernel's SERVICES and WATCH were last made to agree with `cgroups`.
    pub services_synced: Option<Instant>,
    /// The successes counted without a record already fed to the breakers.
    pub quiet: quiet::QuietBook,
    /// Until when every success gets a record though nobody may listen yet (a recorder
    /// that asked for a recording and is about to subscribe).
    pub record_until_ns: u64,
}

/// A policy file read off the loop.
struct FileLoaded {
    path: PathBuf,
    policy: Result<Policy, String>,
    reply: Option<oneshot::Sender<Reply>>,
}

/// What tells a changed file: modification time, size and inode.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
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
        max_connections: settings.max_connections,
    })?;
    let ring = kernel.events.take().context("map EVENTS already taken")?;
    // This daemon's breakers start new windows: none of the kernel's window counts apply.
    kernel.tables.arrays.clear_windows();
    let mut attachment = kernel.attachment;
    let features = kernel.features;
    let arrays = kernel.tables.arrays.clone();
    let lease = Lease::start(arrays.clone(), settings.lease)?;

    // Connections that closed while no daemon ran still hold places: give them back before
    // anything else counts. Connects made from now on are not touched.
    let since = monotonic_ns();
    let (pins, a) = (settings.pin_dir.clone(), arrays.clone());
    let reconciled = tokio::task::spawn_blocking(move || reconcile::reconcile(&pins, &a, since))
        .await
        .context("reconciling tracked connections")??;

    let listener = control::bind(&settings.socket)?;
    let metrics = match settings.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    let (events_tx, _) = broadcast::channel(4096);
    let mut journal = Journal::new(events_tx.clone());
    if !features.retval {
        journal.warn(
            "kernel",
            "reject_errno is not available on this kernel (bpf_set_retval needs Linux 5.18): \
             rejected connects get EPERM"
                .into(),
        );
    }
    if reconciled.removed > 0 {
        journal.note(
            "kernel",
            format!(
                "{} tracked connections closed while no daemon ran: {} bulkhead places given back",
                reconciled.removed, reconciled.places
            ),
        );
    }
    let (dns_tx, mut dns_rx) = mpsc::channel::<Resolved>(256);
    let mut resolver = Resolver::new(dns_tx, LOOKUP_TIMEOUT);
    let mut life = Lifecycle::new(opts.policy);
    life.restore_overrides(&arrays);
    let mut d = Daemon {
        tables: kernel.tables,
        guarded: Guarded::default(),
        life,
        intake: Intake::default(),
        reconciled: reconciled.removed,
        cgroups: Cgroups::new(
            crate::kernel::fs::cgroup2_root().unwrap_or_else(|_| cgroup.clone()),
            cgroup.clone(),
        ),
        services_synced: None,
        quiet: quiet::QuietBook::default(),
        record_until_ns: 0,
    };
    resolve_all(&d.life.wanted.file, &mut resolver);

    // The first state, before anyone is served.
    // Services' cgroups first: the first policy set is built with their levels and the
    // kernel knows their cgroups before any connect is judged by it.
    watch_services(&mut d, &mut journal);
    d.life
        .poll(&mut d.tables, &resolver, &d.cgroups, &mut journal);
    let built = d.life.built().await;
    d.life
        .finish(built, &mut d.tables, &mut d.guarded, &mut journal);
    let units: usize = d
        .life
        .wanted
        .file
        .destinations
        .iter()
        .map(|x| x.services.len().max(1))
        .sum();
    if d.guarded.len() != units {
        anyhow::bail!("applying the policy failed (see the log above)");
    }
    tracing::info!(
        cgroup = %cgroup.display(),
        pins = %settings.pin_dir.display(),
        socket = %settings.socket.display(),
        destinations = d.guarded.len(),
        metrics = %settings.metrics.map_or("off".into(), |m| m.to_string()),
        "resilience is guarding outbound connects"
    );

    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let (file_tx, mut file_rx) = mpsc::channel::<FileLoaded>(8);
    let metrics = metrics.map(|l| tokio::spawn(crate::metrics::serve(l, tx.clone())));
    let server = tokio::spawn(control::serve(
        listener,
        tx,
        events_tx,
        journal.tap.sender(),
    ));
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
    let mut jitter = XorShift(monotonic_ns() | 1);
    let mut losses = Losses::new(&d.tables);
    let started = Instant::now();
    let config_path = opts.config.clone();
    let mut revisions = view::Revisions::new();
    let mut rate_book = page::RateBook::default();

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
        lease.alive();
        if d.life.due() {
            // A build reads the services' cgroups as they are now.
            watch_services(&mut d, &mut journal);
        }
        d.life
            .poll(&mut d.tables, &resolver, &d.cgroups, &mut journal);
        tokio::select! {
            _ = &mut stop => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if opts.tui && !crate::tui::terminal_alive() {
                    tracing::warn!("terminal lost: stopping");
                    break;
                }
                read_policy(config_path.as_deref(), None, &file_tx);
            }
            built = d.life.built() => {
                d.life.finish(built, &mut d.tables, &mut d.guarded, &mut journal);
                let used = names(&d.life.wanted.file);
                resolver.retain(&used);
            }
            ready = events.readable_mut() => {
                let Ok(mut guard) = ready else { continue };
                let records = drain(guard.get_inner_mut());
                guard.clear_ready();
                feed(&records, &mut d, &mut journal, &mut jitter);
            }
            // The kernel wakes us at once for failures, probes and slow calls; the rest of the
            // records are read here.
            _ = tick.tick() => {
                let records = drain(events.get_mut());
                feed(&records, &mut d, &mut journal, &mut jitter);
                on_tick(&mut d, &mut journal, &mut jitter);
                losses.note(&d.tables, &mut journal);
            }
            // Polling rather than inotify: it also sees an editor's rename-over and a config
            // management tool's replace, and costs one stat per second.
            _ = watch.tick() => {
                watch_cgroup(&mut attachment, &mut journal);
                let now = config_path.as_deref().and_then(file_stamp);
                if now.is_some() && now != stamp {
                    stamp = now;
                    tracing::info!("policy file changed");
                    read_policy(config_path.as_deref(), None, &file_tx);
                }
            }
            _ = resolve.tick() => resolve_all(&d.life.wanted.file, &mut resolver),
            Some(r) = dns_rx.recv() => {
                let change = resolver.on_result(r);
                if let Some(m) = change.message {
                    journal.warn("dns", m);
                }
                if change.addresses {
                    d.life.request(Want::Dns);
                }
            }
            Some(f) = file_rx.recv() => match f.policy {
                Ok(policy) => {
                    resolve_new(&policy, &mut resolver);
                    d.life.set_file(policy);
                    d.life.request(Want::Reload { path: f.path, reply: f.reply });
                }
                Err(e) => {
                    d.life.reload_failures += 1;
                    let m = format!("reload rejected, the running policy stays: {e}");
                    journal.warn("reload", m.clone());
                    if let Some(r) = f.reply {
                        let _ = r.send(Reply::Error(m));
                    }
                }
            },
            Some(cmd) = rx.recv() => {
                let Command { req, reply } = cmd;
                match req {
                    Request::Snapshot { .. } | Request::Status => {
                        let (field, since, instance, policy) = match req {
                            Request::Snapshot { since, instance, policy } => ("snapshot", since, instance, policy.unwrap_or(true)),
                            _ => ("status", None, None, true),
                        };
                        let records = drain(events.get_mut());
                        feed(&records, &mut d, &mut journal, &mut jitter);
                        sweep_quiet(&mut d, &mut journal, &mut jitter);
                        let info = view::Info::new(started, settings.lease, config_path.as_deref(), &attachment, features.retval);
                        let r = match view::snapshot(&mut d, &mut revisions, &journal, &info, since, instance, policy) {
                            Ok(s) => Reply::Snapshot { field, snapshot: Box::new(s) },
                            Err(e) => Reply::Error(format!("{e:#}")),
                        };
                        let _ = reply.send(r);
                    }
                    Request::Table { sort, filter, offset, limit, detail, events_after, instance } => {
                        let records = drain(events.get_mut());
                        feed(&records, &mut d, &mut journal, &mut jitter);
                        sweep_quiet(&mut d, &mut journal, &mut jitter);
                        let info = view::Info::new(started, settings.lease, config_path.as_deref(), &attachment, features.retval);
                        let q = crate::table::Query {
                            sort,
                            filter,
                            offset,
                            limit,
                            detail,
                            events_after: events_after.zip(instance),
                        };
                        let r = match page::table(&mut d, &mut rate_book, &journal, &info, revisions.instance, &q) {
                            Ok(s) => Reply::Snapshot { field: "snapshot", snapshot: Box::new(s) },
                            Err(e) => Reply::Error(format!("{e:#}")),
                        };
                        let _ = reply.send(r);
                    }
                    Request::Events { .. } => {
                        let _ = reply.send(Reply::Events(journal.all()));
                    }
                    Request::Record => {
                        // Every success gets a record from now: the recorder subscribes next.
                        let now = monotonic_ns();
                        d.record_until_ns = now.saturating_add(RECORD_GRACE_NS);
                        ask_every_success(&d, &mut journal, now);
                        let h = recording_header(&d, config_path.as_deref());
                        let _ = reply.send(Reply::Recording(Box::new(h)));
                    }
                    Request::Version => {
                        let _ = reply.send(Reply::Version(env!("CARGO_PKG_VERSION").into()));
                    }
                    Request::Trip { name, service } => {
                        let r = operate(&mut d, &mut journal, &mut jitter, &name, service.as_deref(), true);
                        let _ = reply.send(r);
                    }
                    Request::Reset { name, service } => {
                        let r = operate(&mut d, &mut journal, &mut jitter, &name, service.as_deref(), false);
                        let _ = reply.send(r);
                    }
                    Request::Disable { name } => set_override(&mut d, &name, Some(Mode::Disabled), reply),
                    Request::Enable { name } => set_override(&mut d, &name, None, reply),
                    Request::Reload => read_policy(config_path.as_deref(), Some(reply), &file_tx),
                }
            }
        }
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = control::unlink(&settings.socket);
    tracing::info!("detaching and exiting; pinned maps stay for the next start");
    drop(lease);
    Ok(())
}

/// The header of a new recording: the destinations as they are now.
fn recording_header(d: &Daemon, config: Option<&Path>) -> crate::recording::Header {
    let arrays = &d.tables.arrays;
    crate::recording::Header {
        format: crate::recording::FORMAT.into(),
        version: crate::recording::VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        started_ns: monotonic_ns(),
        started_unix: crate::snapshot::epoch_secs(),
        policy_file: config.map(|p| p.display().to_string()),
        destinations: d
            .guarded
            .dests
            .iter()
            .map(|x| crate::recording::DestHeader {
                destination: x.def.name.clone(),
                service: x.def.service.clone(),
                policy: crate::config::destination_json(&x.def),
                counts: tap::counts(x, arrays),
            })
            .collect(),
        max_bytes: 0,
    }
}

/// Every DNS name of the policy.
fn names(p: &Policy) -> HashSet<resolver::Name> {
    p.destinations
        .iter()
        .flat_map(|d| &d.matches)
        .filter_map(|m| match &m.kind {
            MatchKind::Host { host, port } => Some((host.clone(), *port)),
            _ => None,
        })
        .collect()
}

fn resolve_all(p: &Policy, resolver: &mut Resolver) {
    for n in names(p) {
        resolver.request(n);
    }
}

/// Names a new policy brings: looked up at once.
fn resolve_new(p: &Policy, resolver: &mut Resolver) {
    for n in names(p) {
        if !resolver.known(&n) {
            resolver.request(n);
        }
    }
}

/// Read and check the policy file off the loop; the result comes back as a message.
fn read_policy(
    path: Option<&Path>,
    reply: Option<oneshot::Sender<Reply>>,
    file_tx: &mpsc::Sender<FileLoaded>,
) {
    let Some(path) = path.map(Path::to_path_buf) else {
        tracing::warn!("reload: running the built-in default policy, nothing to reload");
        if let Some(r) = reply {
            let _ = r.send(Reply::Error(
                "the daemon runs the built-in default policy: no file to reload".into(),
            ));
        }
        return;
    };
    let tx = file_tx.clone();
    tokio::spawn(async move {
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || config::load_file(&p));
        let policy = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("reading {}: {e}", path.display())),
            Err(_) => Err(format!(
                "{}: not read within {READ_TIMEOUT:?}",
                path.display()
            )),
        };
        let _ = tx
            .send(FileLoaded {
                path,
                policy,
                reply,
            })
            .await;
    });
}

fn set_override(d: &mut Daemon, name: &str, mode: Option<Mode>, reply: oneshot::Sender<Reply>) {
    if !d
        .life
        .wanted
        .file
        .destinations
        .iter()
        .any(|x| x.name == name)
    {
        let _ = reply.send(Reply::Error(format!("no destination named {name:?}")));
        return;
    }
    d.life.request(Want::Override {
        name: name.to_string(),
        mode,
        reply: Some(reply),
    });
}

/// Trip (open) or reset (close) a destination's breaker by hand.
fn operate(
    d: &mut Daemon,
    journal: &mut Journal,
    jitter: &mut XorShift,
    name: &str,
    service: Option<&str>,
    trip: bool,
) -> Reply {
    let which = match service {
        Some(s) => d.guarded.by_name(name, Some(s)).into_iter().collect(),
        None => d.guarded.named(name),
    };
    if which.is_empty() {
        return Reply::Error(match service {
            Some(s) => format!("no destination named {name:?} for service {s:?}"),
            None => format!("no destination named {name:?}"),
        });
    }
    let now = monotonic_ns();
    let mut lines = Vec::new();
    for i in which {
        let dest = &mut d.guarded.dests[i];
        let label = dest.def.label();
        let t = if trip {
            dest.breaker.trip(now, jitter)
        } else {
            dest.breaker.reset(now)
        };
        lines.push(match t {
            Some(t) => {
                let message = format!("{label}: {} -> {}", t.from.as_str(), t.to.as_str());
                publish::transition(&d.tables.arrays, journal, dest, &t);
                message
            }
            None => format!("{label}: already {}", dest.breaker.state().as_str()),
        });
    }
    Reply::Message(lines.join("\n"))
}

/// Every pending outcome record.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<OutcomeEvent> {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(ev) = intake::parse_event(&item) {
            records.push(ev);
        }
    }
    records
}

fn feed(records: &[OutcomeEvent], d: &mut Daemon, journal: &mut Journal, jitter: &mut XorShift) {
    if records.is_empty() {
        return;
    }
    let arrays = d.tables.arrays.clone();
    intake::feed(
        records,
        &mut d.guarded,
        &mut d.quiet,
        &arrays,
        journal,
        jitter,
        &mut d.intake,
    );
}

/// The successes the kernel counted without a record, into the breakers (see `quiet`).
fn sweep_quiet(d: &mut Daemon, journal: &mut Journal, jitter: &mut impl Jitter) {
    let arrays = d.tables.arrays.clone();
    quiet::sweep(
        &mut d.quiet,
        &mut d.guarded,
        monotonic_ns(),
        &arrays,
        journal,
        jitter,
    );
}

/// Every success gets a record while someone records, or is about to (`record_until_ns`).
fn ask_every_success(d: &Daemon, journal: &mut Journal, now: u64) {
    let arrays = &d.tables.arrays;
    let want = journal.tap.active() || now < d.record_until_ns;
    if want != (arrays.control().record_all != 0) {
        if let Err(e) = arrays.set_record_all(want) {
            journal.fault("cannot ask the kernel for every success", &e);
        }
    }
}

/// Open -> half-open with the clock; a time window's fuse moves with the clock too.
/// A removed cgroup takes the programs with it (systemd removes a service's cgroup when it
/// stops and makes a new one when it starts): say so, and attach to the new one.
fn watch_cgroup(attachment: &mut Attachment, journal: &mut Journal) {
    let cg = attachment.cgroup().display().to_string();
    match attachment.watch() {
        None => {}
        Some(Ok(CgroupChange::Removed)) => journal.warn(
            "cgroup",
            format!(
                "guarded cgroup {cg} was removed: no connect is guarded until a cgroup is \
                 created there again"
            ),
        ),
        Some(Ok(CgroupChange::Attached)) => journal.note(
            "cgroup",
            format!("guarded cgroup {cg} was created again: programs attached to it"),
        ),
        Some(Err(e)) => journal.warn(
            "cgroup",
            format!("cannot attach to the cgroup at {cg}: {e:#} (retrying every second)"),
        ),
    }
}

/// Look at the services' cgroups again and say what changed; whether anything did.
fn refresh_services(d: &mut Daemon, journal: &mut Journal) -> bool {
    let changes = d
        .cgroups
        .refresh(&d.life.wanted.file.services, Instant::now());
    for c in &changes {
        let who = format!("service {}", c.service());
        if c.is_warning() {
            journal.warn(&who, c.message());
        } else {
            journal.note(&who, c.message());
        }
    }
    !changes.is_empty()
}

/// Keep the kernel's view of the services where their cgroups are now: a unit restarted
/// since the last look has a new cgroup id (the mkdir tracepoint has usually added it
/// already). Slots, and with them breakers, belong to the service's name and stay.
fn watch_services(d: &mut Daemon, journal: &mut Journal) {
    let changed = refresh_services(d, journal);
    let now = Instant::now();
    let services = &d.life.wanted.file.services;
    // The maps are read back once a second anyway: the tracepoint writes them too.
    let due = d
        .services_synced
        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
    if changed || due {
        d.services_synced = Some(now);
        let (ids, paths) = d.cgroups.kernel_view(services);
        if let Err(e) = d.tables.services.sync(&ids, &paths) {
            tracing::warn!(error = %format!("{e:#}"), "cannot update the services' cgroups (retrying)");
        }
    }
    // The levels the hook reads: a unit found later may live at a level not read yet. While a
    // build holds the keys, the next tick does it (and the build reads the levels itself).
    let Some(keys) = d.tables.keys.as_mut() else {
        return;
    };
    let active = d.tables.arrays.active_set();
    let levels = plan::service_levels(d.guarded.services().map(Some), services, &d.cgroups);
    if keys.keys(active).levels != levels {
        keys.set_levels(active, levels);
        let _ = d
            .tables
            .arrays
            .set_lookup_flags(active, keys.keys(active).lookup_flags());
    }
}

fn on_tick(d: &mut Daemon, journal: &mut Journal, jitter: &mut impl Jitter) {
    watch_services(d, journal);
    // Before anything is judged: the windows hold every success, as if each had a record.
    sweep_quiet(d, journal, jitter);
    let now = monotonic_ns();
    let arrays = d.tables.arrays.clone();
    ask_every_success(d, journal, now);
    let g = &mut d.guarded;
    if g.due_seen != journal.transitions || g.due.len() != g.dests.len() {
        g.due = g.dests.iter().map(|d| d.tick_due_ns).collect();
    }
    for (dest, due) in g.dests.iter_mut().zip(g.due.iter_mut()) {
        // Most destinations have nothing due: a closed breaker with no slow connects
        // pending. Skipping them, with a look at one word each side by side, keeps the
        // tick's cost with what is due, not with how many destinations there are.
        if now < *due {
            continue;
        }
        if let Some(t) = dest.breaker.on_tick(now, jitter) {
            publish::transition(&arrays, journal, dest, &t);
        }
        // The kernel counts pending connects by age with the slow threshold it was given.
        // Which of its buckets are old enough changes only when `mark` does, and connects
        // only ever join the youngest: a look that found none slow holds until then.
        let slow_ns = crate::apply::slow_ns(&dest.def);
        let width = resilience_common::dest::PendingAges::width(slow_ns);
        let mark = now.saturating_sub(slow_ns).checked_div(width);
        // (Only a closed breaker judges pending connects.)
        if dest.breaker.state() == crate::engine::State::Closed
            && mark.is_some()
            && mark != dest.pending_mark
        {
            let pending_slow = arrays.pending_slow(dest.slot, slow_ns, now);
            dest.pending_mark = mark.filter(|_| pending_slow == 0);
            if let Some(t) = dest.breaker.on_pending(now, pending_slow, jitter) {
                publish::transition(&arrays, journal, dest, &t);
            }
        }
        let time_window = matches!(dest.def.breaker.window, config::Window::Time(_));
        if time_window {
            if let Err(e) = publish::refresh_fuse(&arrays, dest, now) {
                tracing::error!(error = %format!("{e:#}"), "cannot move a trip fuse");
            }
        }
        // When to look next: a time window's fuse moves with the clock (every tick); pending
        // connects when their ages cross the next boundary, or every tick while some are slow;
        // the breaker at its next timer.
        let pending_due = match mark {
            _ if dest.breaker.state() != crate::engine::State::Closed => u64::MAX,
            Some(m) if dest.pending_mark.is_some() => {
                (m + 1).saturating_mul(width).saturating_add(slow_ns)
            }
            Some(_) => 0,
            None => u64::MAX,
        };
        dest.tick_due_ns = if time_window {
            0
        } else {
            pending_due.min(dest.breaker.next_timer_ns().unwrap_or(u64::MAX))
        };
        *due = dest.tick_due_ns;
    }
    // This tick's own transitions are in `due` already.
    g.due_seen = journal.transitions;
    journal.tap.counts(now, &d.guarded.dests, &arrays);
}

/// What the kernel counted that the operator must hear of: lost ring-buffer records and
/// connects let through unguarded (fail-open). An event when a count grows.
struct Losses {
    lost: u64,
    fail_open: u64,
    untracked: u64,
    hook_errors: u64,
}

impl Losses {
    fn new(tables: &Tables) -> Losses {
        let s = tables.stats().unwrap_or_default();
        Losses {
            lost: s.ringbuf_lost,
            fail_open: s.fail_open,
            untracked: s.untracked,
            hook_errors: s.hook_errors,
        }
    }

    fn note(&mut self, tables: &Tables, journal: &mut Journal) {
        let Ok(stats) = tables.stats() else {
            return;
        };
        if let Some(n) = grew(stats.ringbuf_lost, &mut self.lost) {
            journal.warn(
                "kernel",
                format!("{n} outcome records lost (ring buffer full): breakers saw fewer calls"),
            );
        }
        if let Some(n) = grew(stats.fail_open, &mut self.fail_open) {
            journal.warn(
                "kernel",
                format!(
                    "fail-open: {n} connects let through unguarded (the daemon missed its lease)"
                ),
            );
        }
        if let Some(n) = grew(stats.untracked, &mut self.untracked) {
            journal.warn(
                "kernel",
                format!(
                    "{n} connects let through untracked (the tracking map is full: raise \
                     max_connections); bulkheads do not count them"
                ),
            );
        }
        if let Some(n) = grew(stats.hook_errors, &mut self.hook_errors) {
            journal.warn(
                "kernel",
                format!("{n} internal errors in the connect hook (each connect was allowed)"),
            );
        }
    }
}

/// How much a kernel counter grew since `before`, which moves up to it.
fn grew(now: u64, before: &mut u64) -> Option<u64> {
    let n = now.checked_sub(*before).filter(|n| *n > 0)?;
    *before = now;
    Some(n)
}
