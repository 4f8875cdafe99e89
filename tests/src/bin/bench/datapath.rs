//! What an allowed connect pays, beside the alternatives, in one interleaved run: no programs,
//! the floors (empty programs at our four hooks; with state callbacks; with the least an exact
//! per-connection tracker does, its entry in a hash map or in the socket's storage), the
//! daemon (observed, named, named with bucket and bulkhead), and nftables (a stateless meter,
//! and `ct count`, which needs conntrack). Each in two placements: the client alone in the guarded cgroup (the server is
//! elsewhere, as another host would be), and client and server both in it. Then, with the
//! kernel's program statistics on, how often each of our programs ran per connect and for how
//! long.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use resilience_tests::{
    bpf_sys::{enable_stats, hook_of, prog_fds, prog_stats, ProgStats},
    cgroup::Cgroup,
    client::raw_loop,
    daemon::{Daemon, PinDir, StartOpts},
    floor::{Floor, FloorKind},
    listener::Server,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cond {
    None,
    Floor,
    FloorState,
    FloorTrack,
    FloorStorage,
    Observed,
    Named,
    Limits,
    NftMeter,
    NftCount,
    /// The same as Observed and Named, run by the build in RESILIENCE_BENCH_BEFORE.
    ObservedBefore,
    NamedBefore,
}

impl Cond {
    fn label(self) -> &'static str {
        match self {
            Cond::None => "no programs",
            Cond::Floor => "floor: empty programs at our 4 hooks",
            Cond::FloorState => "floor + state callbacks (empty sock_ops that asks for them)",
            Cond::FloorTrack => {
                "floor + state callbacks + a tracking entry (insert, 2 lookups, delete)"
            }
            Cond::FloorStorage => {
                "floor + state callbacks + the entry in socket storage (create, 2 gets, delete)"
            }
            Cond::Observed => "resilience, destination observed",
            Cond::Named => "resilience, destination named, allowed",
            Cond::Limits => "resilience, named with token bucket and bulkhead",
            Cond::NftMeter => "nftables stateless meter",
            Cond::NftCount => "nftables `ct count` (conntrack)",
            Cond::ObservedBefore => "previous build, destination observed",
            Cond::NamedBefore => "previous build, destination named, allowed",
        }
    }

    fn has_programs(self) -> bool {
        !matches!(self, Cond::None | Cond::NftMeter | Cond::NftCount)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Placement {
    ClientOnly,
    Both,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::ClientOnly => "client in the cgroup",
            Placement::Both => "client and server in the cgroup",
        }
    }
}

/// What a condition keeps attached while it is measured.
enum Active {
    Nothing,
    Daemon(Daemon),
    /// Held for its links: dropping it detaches the programs.
    Floor(#[allow(dead_code)] Floor),
    Nft(#[allow(dead_code)] NftTable),
}

impl Active {
    /// The process holding the program descriptors, for their statistics.
    fn program_holder(&self) -> Option<u32> {
        match self {
            Active::Daemon(d) => d.pid(),
            Active::Floor(_) => Some(std::process::id()),
            _ => None,
        }
    }
}

/// An nftables table of ours, deleted on drop.
struct NftTable;

const NFT_TABLE: &str = "resilience_bench";

impl NftTable {
    fn add(rule: &str) -> NftTable {
        let _ = nft(&format!("delete table inet {NFT_TABLE}\n"));
        let script = format!(
            "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
        );
        nft(&script).unwrap_or_else(|e| panic!("nft: {e}\n{script}"));
        NftTable
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {NFT_TABLE}\n"));
    }
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (xtask bench installs nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The cgroup this process is in, as a path under the cgroup2 mount.
/// A server whose sockets belong to `cg`: the listener is created while this process is in
/// it (accepted sockets take the listener's cgroup).
fn server_in(cg: &Cgroup, addr: &str) -> Server {
    cg.while_in(|| Server::start(addr))
}

pub struct Setup {
    pub placement: Placement,
    pub cg: Cgroup,
    pub server: Server,
    pins: PinDir,
    pins_before: PinDir,
    before: Option<PathBuf>,
}

impl Setup {
    pub fn new(placement: Placement, before: Option<PathBuf>) -> Setup {
        let tag = match placement {
            Placement::ClientOnly => "dp-client",
            Placement::Both => "dp-both",
        };
        let cg = Cgroup::new(tag);
        let server = match placement {
            Placement::ClientOnly => Server::start("127.0.0.7:0"),
            Placement::Both => server_in(&cg, "127.0.0.7:0"),
        };
        Setup {
            placement,
            pins: PinDir::new(tag),
            pins_before: PinDir::new(&format!("{tag}-before")),
            cg,
            server,
            before,
        }
    }

    fn policy(&self, cond: Cond) -> String {
        let a = self.server.addr;
        match cond {
            Cond::Observed | Cond::ObservedBefore => {
                "[[destination]]\nname = \"elsewhere\"\nmatch = [\"127.0.0.8:1\"]\n".into()
            }
            Cond::Limits => format!(
                "[[destination]]\nname = \"svc\"\nmatch = [\"{a}\"]\n[destination.rate_limit]\nrate = 10000000\nburst = 10000000\n[destination.bulkhead]\nmax_concurrent = 100000\n"
            ),
            _ => format!("[[destination]]\nname = \"svc\"\nmatch = [\"{a}\"]\n"),
        }
    }

    fn start(&self, cond: Cond) -> Active {
        let port = self.server.addr.port();
        let tag = "datapath";
        match cond {
            Cond::None => Active::Nothing,
            Cond::Floor | Cond::FloorState | Cond::FloorTrack | Cond::FloorStorage => {
                let kind = match cond {
                    Cond::Floor => FloorKind::Empty,
                    Cond::FloorState => FloorKind::StateCallbacks,
                    Cond::FloorTrack => FloorKind::Tracking,
                    _ => FloorKind::SocketStorage,
                };
                Active::Floor(
                    Floor::attach(self.cg.path(), kind)
                        .unwrap_or_else(|e| panic!("attaching the floor's programs: {e}")),
                )
            }
            Cond::Observed | Cond::Named | Cond::Limits => Active::Daemon(Daemon::start(
                tag,
                self.cg.path(),
                &self.pins,
                &self.policy(cond),
                "2s",
            )),
            Cond::ObservedBefore | Cond::NamedBefore => Active::Daemon(Daemon::start_with(
                tag,
                self.cg.path(),
                &self.pins_before,
                &self.policy(cond),
                "2s",
                StartOpts {
                    bin: self.before.clone(),
                    ..StartOpts::default()
                },
            )),
            Cond::NftMeter => Active::Nft(NftTable::add(&format!(
                "ip daddr 127.0.0.7 tcp dport {port} meter m {{ ip daddr . tcp dport limit rate over 100000000/second }} drop"
            ))),
            Cond::NftCount => Active::Nft(NftTable::add(&format!(
                "ip daddr 127.0.0.7 tcp dport {port} ct count over 10000000 drop"
            ))),
        }
    }
}

/// Samples of one condition in one placement.
#[derive(Default)]
struct Series {
    all: Vec<u64>,
    round_medians: Vec<u64>,
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Per hook: (runs per connect, ns per connect).
type HookCost = Vec<(&'static str, f64, f64)>;

fn hook_costs(active: &Active, run: impl FnOnce()) -> HookCost {
    let Some(pid) = active.program_holder() else {
        return Vec::new();
    };
    let read = || -> Vec<(&'static str, ProgStats)> {
        prog_fds(pid)
            .into_iter()
            .filter_map(|(fd, t, _)| Some((hook_of(t), prog_stats(pid, fd)?)))
            .collect()
    };
    let before = read();
    run();
    let after = read();
    let mut out: HookCost = Vec::new();
    for hook in ["connect", "sock_ops", "sock_release"] {
        let sum = |v: &[(&'static str, ProgStats)]| {
            v.iter()
                .filter(|(h, _)| *h == hook)
                .fold(ProgStats::default(), |a, (_, s)| ProgStats {
                    run_cnt: a.run_cnt + s.run_cnt,
                    run_time_ns: a.run_time_ns + s.run_time_ns,
                })
        };
        let (b, a) = (sum(&before), sum(&after));
        out.push((
            hook,
            (a.run_cnt - b.run_cnt) as f64,
            (a.run_time_ns - b.run_time_ns) as f64,
        ));
    }
    out
}

/// Per cell, each program's runs and ns per connect over `batch` connects, with the kernel's
/// run-time statistics on for the pass.
fn program_costs(setups: &[Setup], cells: &[(usize, Cond)], batch: u32) -> Vec<HookCost> {
    eprintln!("bench: per-program statistics ...");
    let _stats = enable_stats().expect("turning the kernel's program statistics on");
    let mut costs: Vec<HookCost> = Vec::new();
    for &(p, cond) in cells {
        let s = &setups[p];
        if !cond.has_programs() {
            costs.push(Vec::new());
            continue;
        }
        let active = s.start(cond);
        let _ = raw_loop(s.cg.path(), s.server.addr, batch / 4);
        let c = hook_costs(&active, || {
            let _ = raw_loop(s.cg.path(), s.server.addr, batch);
        });
        if let Active::Floor(f) = &active {
            // Every connection closed: the tracker floor must have dropped every entry.
            let left = f.tracked().expect("reading the tracker floor's map");
            assert_eq!(
                left,
                0,
                "{}: {}: entries left after every close",
                s.placement.label(),
                cond.label()
            );
        }
        drop(active);
        costs.push(
            c.into_iter()
                .map(|(h, runs, ns)| (h, runs / f64::from(batch), ns / f64::from(batch)))
                .collect(),
        );
    }
    costs
}

/// `conds` (with the previous build's beside them when there is one), both placements, and
/// every (placement, condition) cell.
fn layout(
    mut conds: Vec<Cond>,
    before: Option<PathBuf>,
) -> (Vec<Cond>, [Setup; 2], Vec<(usize, Cond)>) {
    if before.is_some() {
        conds.extend([Cond::ObservedBefore, Cond::NamedBefore]);
    }
    let setups = [
        Setup::new(Placement::ClientOnly, before.clone()),
        Setup::new(Placement::Both, before),
    ];
    let cells = (0..setups.len())
        .flat_map(|p| conds.iter().map(move |&c| (p, c)))
        .collect();
    (conds, setups, cells)
}

/// "runs, ns" of one hook in a cell's costs, or "-".
fn cost_cell(costs: &HookCost, hook: &str) -> String {
    costs
        .iter()
        .find(|(h, _, _)| *h == hook)
        .map_or("-".to_string(), |(_, runs, ns)| {
            format!("{runs:.1}, {ns:.0}")
        })
}

/// The conditions with programs, every placement, and their per-program statistics only (no
/// timed rounds): a quick look at what a change to the programs did.
pub fn stats_only(batch: u32, before: Option<PathBuf>, only: Option<&str>) -> String {
    let (_, setups, mut cells) = layout(
        vec![
            Cond::Floor,
            Cond::FloorState,
            Cond::FloorTrack,
            Cond::FloorStorage,
            Cond::Observed,
            Cond::Named,
            Cond::Limits,
        ],
        before,
    );
    if let Some(only) = only {
        cells.retain(|&(p, c)| {
            format!("{}: {}", setups[p].placement.label(), c.label()).contains(only)
        });
    }
    let costs = program_costs(&setups, &cells, batch);
    let mut out = format!("Per-program statistics, {batch} connects per condition\n\n| placement | condition | connect: runs, ns | sock_ops: runs, ns | sock_release: runs, ns | total ns |\n|---|---|---:|---:|---:|---:|\n");
    for (i, &(p, cond)) in cells.iter().enumerate() {
        let cell = |hook: &str| cost_cell(&costs[i], hook);
        let total: f64 = costs[i].iter().map(|(_, _, ns)| ns).sum();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {total:.0} |\n",
            setups[p].placement.label(),
            cond.label(),
            cell("connect"),
            cell("sock_ops"),
            cell("sock_release"),
        ));
    }
    out
}

/// Runs the comparison; returns the markdown section.
pub fn run(batch: u32, rounds: u32, before: Option<PathBuf>) -> String {
    // Every (placement, condition), interleaved round by round in rotating order.
    let (conds, setups, cells) = layout(
        vec![
            Cond::None,
            Cond::Floor,
            Cond::FloorState,
            Cond::FloorTrack,
            Cond::FloorStorage,
            Cond::Observed,
            Cond::Named,
            Cond::Limits,
            Cond::NftMeter,
            Cond::NftCount,
        ],
        before,
    );
    let mut series: Vec<Series> = (0..cells.len()).map(|_| Series::default()).collect();
    for s in &setups {
        let _ = raw_loop(s.cg.path(), s.server.addr, batch / 4);
    }
    for round in 0..rounds {
        for k in 0..cells.len() {
            let i = (k + round as usize) % cells.len();
            let (p, cond) = cells[i];
            let s = &setups[p];
            let active = s.start(cond);
            let got = raw_loop(s.cg.path(), s.server.addr, batch);
            drop(active);
            let bad = got.iter().filter(|o| !o.ok).count();
            assert_eq!(bad, 0, "{}: {bad} connects failed", cond.label());
            let mut ns: Vec<u64> = got.iter().map(|o| o.elapsed.as_nanos() as u64).collect();
            series[i].round_medians.push(median(&mut ns));
            series[i].all.extend(ns);
        }
        eprintln!("bench: datapath round {}/{rounds} done", round + 1);
    }

    // The kernel's own accounting, apart from the timed rounds (it costs two clock reads per
    // program run).
    let costs = program_costs(&setups, &cells, batch);

    let mut out = format!(
        "## Datapath cost\n\nOne iteration = blocking `socket()` + `connect()` to a loopback server + `close()` (SO_LINGER 0), timed in the client, pinned to CPU 0; the server accepts and closes on another thread. {rounds} rounds of {batch} per condition, every condition of both placements interleaved in rotating order. Spread = lowest to highest round median. Per-program figures come from a separate pass of {batch} connects with the kernel's run-time statistics on (BPF_ENABLE_STATS, what `kernel.bpf_stats_enabled=1` does; `run_cnt`, `run_time_ns` of each program): runs and ns per connect, for connect4 (\"connect\"), sock_ops and sock_release. nftables rules sit on the output hook and match the server's address and port only.\n\n"
    );
    for (p, setup) in setups.iter().enumerate() {
        let idx = |c: Cond| cells.iter().position(|&x| x == (p, c));
        let med = |c: Cond| idx(c).map(|i| median(&mut series[i].all.clone()) as f64);
        let none = med(Cond::None).unwrap_or(1.0);
        out.push_str(&format!(
            "### {}\n\n| condition | median µs | spread µs | vs none | connect: runs, ns | sock_ops: runs, ns | sock_release: runs, ns |\n|---|---:|---:|---:|---:|---:|---:|\n",
            setup.placement.label()
        ));
        for &c in &conds {
            let Some(i) = idx(c) else { continue };
            let m = med(c).unwrap_or(0.0);
            let mut rm = series[i].round_medians.clone();
            rm.sort_unstable();
            let cost = |hook: &str| cost_cell(&costs[i], hook);
            out.push_str(&format!(
                "| {} | {:.2} | {:.2}–{:.2} | {:+.1}% | {} | {} | {} |\n",
                c.label(),
                m / 1e3,
                rm[0] as f64 / 1e3,
                rm[rm.len() - 1] as f64 / 1e3,
                (m - none) / none * 100.0,
                cost("connect"),
                cost("sock_ops"),
                cost("sock_release"),
            ));
        }
        // The kernel's own figure: program time per connect, summed over the hooks. Far
        // steadier than the wall-clock medians on a machine whose rounds drift.
        let kernel_ns = |c: Cond| idx(c).map(|i| costs[i].iter().map(|(_, _, ns)| ns).sum::<f64>());
        let line =
            |c: Cond| kernel_ns(c).map_or(String::new(), |ns| format!("{}: {ns:.0} ns", c.label()));
        out.push_str(&format!(
            "\nProgram time per connect (all hooks, kernel statistics): {}; {}; {}; {}; {}; {}; {}.\n",
            line(Cond::Floor),
            line(Cond::FloorState),
            line(Cond::FloorTrack),
            line(Cond::FloorStorage),
            line(Cond::Observed),
            line(Cond::Named),
            line(Cond::Limits)
        ));
        let over = |c: Cond| med(c).map(|m| m - none);
        let (meter, count) = (over(Cond::NftMeter), over(Cond::NftCount));
        let floor = over(Cond::FloorState);
        // A wall-clock comparison means something only when the difference is larger than
        // how far the round medians of "no programs" alone wander in the same run.
        let noise = idx(Cond::None).map_or(f64::INFINITY, |i| {
            let rm = &series[i].round_medians;
            let (lo, hi) = (rm.iter().min(), rm.iter().max());
            match (lo, hi) {
                (Some(&lo), Some(&hi)) => (hi - lo) as f64,
                _ => f64::INFINITY,
            }
        });
        let judge = |cost: f64, bound: Option<f64>| match bound {
            Some(b) if (cost - b).abs() < noise => "cannot tell in this run",
            Some(b) if cost <= b => "met",
            Some(_) => "not met",
            None => "-",
        };
        out.push_str(&format!(
            "\nWall clock (round medians of no programs spread over {:.0} ns in this run; a \
             difference smaller than that is reported as \"cannot tell\"):\n",
            noise
        ));
        // The tracker floors first: what the least exact tracker would get.
        for c in [
            Cond::FloorTrack,
            Cond::FloorStorage,
            Cond::Observed,
            Cond::Named,
        ] {
            let Some(cost) = over(c) else { continue };
            out.push_str(&format!(
                "- {}: {:+.0} ns ({:+.1}%). At most 2% of a connect: {}. At most the nftables meter ({:+.0} ns): {}. At most a quarter of `ct count` ({:+.0} ns / 4): {}. Floor with state callbacks: {:+.0} ns.\n",
                c.label(),
                cost,
                cost / none * 100.0,
                judge(cost, Some(0.02 * none)),
                meter.unwrap_or(f64::NAN),
                judge(cost, meter),
                count.unwrap_or(f64::NAN),
                judge(cost, count.map(|n| n / 4.0)),
                floor.unwrap_or(f64::NAN),
            ));
        }
        // The kernel's figure leaves out what happens around the programs (their invocation,
        // freeing map elements), so it is a lower bound of the cost; but it is steady.
        out.push_str("\nKernel statistics (program time only, a lower bound):\n");
        let floor_ns = kernel_ns(Cond::FloorState).unwrap_or(0.0);
        for c in [
            Cond::FloorTrack,
            Cond::FloorStorage,
            Cond::Observed,
            Cond::Named,
            Cond::Limits,
        ] {
            let Some(ns) = kernel_ns(c) else { continue };
            out.push_str(&format!(
                "- {}: {ns:.0} ns = {:.1}% of the median connect without programs (2%: {}); {:.0} ns above the floor with state callbacks ({floor_ns:.0} ns, itself {:.1}%).\n",
                c.label(),
                ns / none * 100.0,
                if ns <= 0.02 * none { "met" } else { "not met" },
                ns - floor_ns,
                floor_ns / none * 100.0,
            ));
        }
        out.push('\n');
    }
    out
}
