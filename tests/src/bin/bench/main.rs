//! `cargo xtask bench`: what the hooks cost an allowed connect beside the floor and nftables
//! (`datapath`), how far a breaker overshoots, how exact the bucket is, and whether the
//! lookup stays flat as the maps grow.

mod datapath;

use std::path::PathBuf;

use clap::Parser;
use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::{raw_loop, spawn, Opts},
    daemon::{Daemon, PinDir},
    listener::Server,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10000)]
    batch: u32,
    #[arg(long, default_value_t = 9)]
    rounds: u32,
    /// Markdown file the results are written to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only the two breaker-overshoot figures, printed (a quick check).
    #[arg(long)]
    overshoot_only: bool,
    /// Only the datapath comparison, printed.
    #[arg(long)]
    datapath_only: bool,
    /// Only the kernel's per-program statistics of each datapath condition (no timed rounds):
    /// a quick check of a change to the programs.
    #[arg(long)]
    stats_only: bool,
    /// With --stats-only: only the cells whose "placement: condition" label contains this
    /// (e.g. "client in the cgroup: resilience, destination named").
    #[arg(long)]
    only: Option<String>,
}

/// (rounds) x (ms of connects at 5k/s): how many connects reach a refusing destination after
/// the failure that trips its breaker.
fn overshoot(rounds: u32) -> String {
    let cg = Cgroup::new("overshoot");
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        let pins = PinDir::new("overshoot");
        let target = resilience_tests::listener::closed_port("127.0.0.21");
        let policy = format!(
            "[[destination]]\nname = \"down\"\nmatch = [\"{target}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nminimum_calls = 5\nfailure_rate = 50\n"
        );
        let d = Daemon::start("overshoot", cg.path(), &pins, &policy, "2s");
        let opts = Opts {
            interval: Some(Duration::from_micros(200)),
            ..Opts::default()
        };
        let got = spawn(cg.path(), &[target], 500, &opts).wait();
        drop(d);
        let refused = got.iter().filter(|o| o.errno == libc::ECONNREFUSED).count();
        let rejected = got.iter().filter(|o| o.errno == libc::EHOSTUNREACH).count();
        assert_eq!(refused + rejected, got.len(), "unexpected outcomes");
        // The 5th refusal trips it; every later refusal reached the destination after the trip.
        per_round.push(refused.saturating_sub(5));
    }
    per_round.sort_unstable();
    format!(
        "## Breaker overshoot\n\nA destination that refuses every connect; breaker `minimum_calls = 5`, `failure_rate = 50`. One client connects every 200 µs (5k/s, 500 connects). Overshoot = connects refused by the destination after the 5th refusal (the one that crosses the threshold); the rest were rejected by the hook. {rounds} rounds.\n\n| median | max | all rounds |\n|---:|---:|---|\n| {} | {} | {:?} |\n\nTarget (issue 3): <= 1.\n",
        per_round[per_round.len() / 2],
        per_round[per_round.len() - 1],
        per_round
    )
}

/// (rounds) of a trip completed by a success: four refusals, then a client connecting to a
/// healthy address of the same destination every 200 µs (5k/s). The first success brings the
/// window to its minimum with 80% failed: every success after it is overshoot.
fn success_overshoot(rounds: u32) -> String {
    let cg = Cgroup::new("success-overshoot");
    let server = Server::start("127.0.0.23:0");
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        let pins = PinDir::new("success-overshoot");
        let bad = resilience_tests::listener::closed_port("127.0.0.23");
        let policy = format!(
            "[[destination]]\nname = \"flaky\"\nmatch = [\"{}\", \"{bad}\"]\nreject_errno = \"EHOSTUNREACH\"\n[destination.breaker]\nminimum_calls = 5\nfailure_rate = 50\n",
            server.addr
        );
        let d = Daemon::start("success-overshoot", cg.path(), &pins, &policy, "2s");
        let refused = spawn(cg.path(), &[bad], 4, &Opts::default()).wait();
        assert!(
            refused.iter().all(|o| o.errno == libc::ECONNREFUSED),
            "{refused:?}"
        );
        let opts = Opts {
            interval: Some(Duration::from_micros(200)),
            ..Opts::default()
        };
        let got = spawn(cg.path(), &[server.addr], 500, &opts).wait();
        drop(d);
        let admitted = got.iter().filter(|o| o.ok).count();
        let rejected = got.iter().filter(|o| o.errno == libc::EHOSTUNREACH).count();
        assert_eq!(admitted + rejected, got.len(), "unexpected outcomes");
        per_round.push(admitted.saturating_sub(1));
    }
    per_round.sort_unstable();
    format!(
        "## Breaker overshoot, trip completed by a success\n\nBreaker `minimum_calls = 5`, `failure_rate = 50`; four refused connects, then one client connects to a healthy address of the same destination every 200 µs (5k/s, 500 connects). The first success brings the window to 5 calls, 80% failed: overshoot = successes admitted after it. {rounds} rounds.\n\n| median | max | all rounds |\n|---:|---:|---|\n| {} | {} | {:?} |\n\nTarget (issue 9): 0.\n",
        per_round[per_round.len() / 2],
        per_round[per_round.len() - 1],
        per_round
    )
}

/// Two processes saturating a token bucket: admitted versus `burst + rate * t`.
fn bucket_accuracy(rounds: u32) -> String {
    let server = Server::start("127.0.0.22:0");
    let cg = Cgroup::new("bucket");
    let (rate, burst) = (1000.0, 100.0);
    let mut rows = String::new();
    for _ in 0..rounds {
        let pins = PinDir::new("bucket");
        let policy = format!(
            "[[destination]]\nname = \"api\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.rate_limit]\nrate = {rate}\nburst = {burst}\n",
            server.addr
        );
        let d = Daemon::start("bucket", cg.path(), &pins, &policy, "2s");
        let opts = Opts {
            raw: true,
            for_time: Some(Duration::from_secs(2)),
            ..Opts::default()
        };
        let a = spawn(cg.path(), &[server.addr], u32::MAX, &opts);
        let b = spawn(cg.path(), &[server.addr], u32::MAX, &opts);
        let mut got = a.wait();
        got.extend(b.wait());
        drop(d);
        let admitted = got.iter().filter(|o| o.ok).count() as f64;
        // Admissions were decided inside [first start, end of the last admitted connect].
        let first = got.iter().map(|o| o.started_ns).min().unwrap_or(0);
        let last = got
            .iter()
            .filter(|o| o.ok)
            .map(|o| o.started_ns + o.elapsed.as_nanos() as u64)
            .max()
            .unwrap_or(first);
        let t = (last - first) as f64 / 1e9;
        let bound = burst + rate * t;
        rows.push_str(&format!(
            "| {} | {admitted:.0} | {t:.3} | {bound:.1} | {:.2}% |\n",
            got.len(),
            admitted / bound * 100.0
        ));
    }
    format!(
        "## Token bucket accuracy at saturation\n\n`rate = {rate}`, `burst = {burst}`; two processes connect back to back for 2 s. t = from the first connect's start to the end of the last admitted one.\n\n| attempts | admitted | t (s) | burst + rate*t | admitted / bound |\n|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// Connect cost to a named destination with 10, 10k and 100k exact entries in the map.
fn entries(batch: u32, rounds: u32) -> String {
    let server = Server::start("127.0.0.23:0");
    let cg = Cgroup::new("entries");
    let sizes = [10u32, 10_000, 100_000];
    let policies: Vec<String> = sizes
        .iter()
        .map(|&n| {
            let fill: Vec<String> = (0..n - 1)
                .map(|i| format!("\"10.{}.{}.{}:80\"", i >> 16 & 255, i >> 8 & 255, i & 255))
                .collect();
            format!(
                "[[destination]]\nname = \"target\"\nmatch = [\"{}\"]\n[[destination]]\nname = \"fill\"\nmatch = [{}]\n",
                server.addr,
                fill.join(", ")
            )
        })
        .collect();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); sizes.len()];
    for round in 0..rounds {
        for k in 0..sizes.len() {
            let i = (k + round as usize) % sizes.len();
            let pins = PinDir::new("entries");
            let d = Daemon::start("entries", cg.path(), &pins, &policies[i], "2s");
            let got = raw_loop(cg.path(), server.addr, batch);
            drop(d);
            assert!(got.iter().all(|o| o.ok), "connects failed");
            samples[i].extend(got.iter().map(|o| o.elapsed.as_nanos() as u64));
        }
    }
    let mut rows = String::new();
    for (i, n) in sizes.iter().enumerate() {
        let s = &mut samples[i];
        s.sort_unstable();
        rows.push_str(&format!(
            "| {n} | {:.2} | {:.2} |\n",
            s[s.len() / 2] as f64 / 1e3,
            s[s.len() * 9 / 10] as f64 / 1e3
        ));
    }
    format!(
        "## Hook cost by number of exact entries\n\nsocket+connect+close to a named destination (exact ip:port) while the EXACT map holds N entries; {rounds} interleaved rounds of {batch}.\n\n| entries | median µs | p90 µs |\n|---:|---:|---:|\n{rows}\nTarget (issue 3): flat.\n"
    )
}

fn main() {
    let args = Args::parse();
    assert!(
        resilience_tests::privileged("bench"),
        "the benchmark needs root"
    );
    if args.overshoot_only {
        print!("{}\n{}", overshoot(10), success_overshoot(10));
        return;
    }
    let before = std::env::var_os("RESILIENCE_BENCH_BEFORE").map(PathBuf::from);
    if args.stats_only {
        print!(
            "{}",
            datapath::stats_only(args.batch, before, args.only.as_deref())
        );
        return;
    }
    let mut report = String::new();
    report.push_str("# Benchmark results\n\n");
    report.push_str(&format!(
        "Command: `cargo xtask bench` (batch {}, rounds {}). Kernel {}, {} CPUs.",
        args.batch,
        args.rounds,
        kernel_release(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    if let Some(b) = &before {
        report.push_str(&format!(
            " \"Previous build\" rows run {} (RESILIENCE_BENCH_BEFORE) in the same rounds.",
            b.display()
        ));
    }
    report.push_str("\n\n");
    report.push_str(&datapath::run(args.batch, args.rounds, before));
    if args.datapath_only {
        print!("{report}");
        return;
    }
    eprintln!("bench: breaker overshoot ...");
    report.push_str(&overshoot(10));
    report.push('\n');
    eprintln!("bench: breaker overshoot, trip completed by a success ...");
    report.push_str(&success_overshoot(10));
    report.push('\n');
    eprintln!("bench: token bucket accuracy ...");
    report.push_str(&bucket_accuracy(3));
    report.push('\n');
    eprintln!("bench: cost by number of entries ...");
    report.push_str(&entries(args.batch, 5));
    print!("{report}");
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, &report).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("bench: written to {}", path.display());
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
}
