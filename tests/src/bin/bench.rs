//! `cargo xtask bench`: what the hooks cost an allowed connect, and how fast a rejection is.
//!
//! A client process in a child cgroup runs blocking socket+connect+close loops to a loopback
//! server. Conditions, interleaved round by round in rotating order so that drift hits all
//! alike: no programs loaded (daemon stopped), daemon attached with the destination unnamed
//! (observed path), daemon attached with the destination named by an enforce policy, and a
//! forced-open destination (the rejection the application sees).

use std::path::PathBuf;

use clap::Parser;
use resilience_tests::{
    cgroup::Cgroup,
    client::raw_loop,
    daemon::{Daemon, PinDir},
    listener::Server,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    batch: u32,
    #[arg(long, default_value_t = 15)]
    rounds: u32,
    /// Markdown file the results are written to.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq)]
enum Cond {
    Off,
    Observed,
    Named,
    Rejected,
}

const CONDS: [Cond; 4] = [Cond::Off, Cond::Observed, Cond::Named, Cond::Rejected];

impl Cond {
    fn label(self) -> &'static str {
        match self {
            Cond::Off => "no programs (daemon stopped)",
            Cond::Observed => "attached, destination observed (no policy)",
            Cond::Named => "attached, destination named (enforce, allowed)",
            Cond::Rejected => "attached, forced-open (rejected)",
        }
    }
}

fn main() {
    let args = Args::parse();
    assert!(
        resilience_tests::privileged("bench"),
        "the benchmark needs root"
    );
    let server = Server::start("127.0.0.7:0");
    let cg = Cgroup::new("bench");
    let pins = PinDir::new("bench");
    let policy_observed =
        "[[destination]]\nname = \"elsewhere\"\nmatch = [\"127.0.0.8:1\"]\n".to_string();
    let policy_named = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{}\"]\nmode = \"enforce\"\n",
        server.addr
    );
    let policy_rejected = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\n",
        server.addr
    );

    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); CONDS.len()];
    let mut round_medians: Vec<Vec<u64>> = vec![Vec::new(); CONDS.len()];
    // Warm-up: caches, the server thread, the connector binary.
    let _ = raw_loop(cg.path(), server.addr, args.batch / 4);
    for round in 0..args.rounds {
        for k in 0..CONDS.len() {
            let i = (k + round as usize) % CONDS.len();
            let cond = CONDS[i];
            let daemon = match cond {
                Cond::Off => None,
                Cond::Observed => Some(Daemon::start(
                    "bench",
                    cg.path(),
                    &pins,
                    &policy_observed,
                    "2s",
                )),
                Cond::Named => Some(Daemon::start(
                    "bench",
                    cg.path(),
                    &pins,
                    &policy_named,
                    "2s",
                )),
                Cond::Rejected => Some(Daemon::start(
                    "bench",
                    cg.path(),
                    &pins,
                    &policy_rejected,
                    "2s",
                )),
            };
            let got = raw_loop(cg.path(), server.addr, args.batch);
            drop(daemon);
            let want_ok = cond != Cond::Rejected;
            let bad = got.iter().filter(|o| o.ok != want_ok).count();
            assert_eq!(
                bad,
                0,
                "{}: {bad} connects had the wrong outcome",
                cond.label()
            );
            let mut ns: Vec<u64> = got.iter().map(|o| o.elapsed.as_nanos() as u64).collect();
            ns.sort_unstable();
            round_medians[i].push(ns[ns.len() / 2]);
            samples[i].extend(ns);
        }
        eprintln!("bench: round {}/{} done", round + 1, args.rounds);
    }

    let stats: Vec<(u64, u64)> = samples
        .iter_mut()
        .map(|s| {
            s.sort_unstable();
            (s[s.len() / 2], s[s.len() * 9 / 10])
        })
        .collect();
    let off = stats[0].0 as f64;
    let mut report = String::new();
    report.push_str("# Benchmark results\n\n");
    report.push_str(&format!(
        "Command: `cargo xtask bench` (batch {}, rounds {}). Kernel {}, {} CPUs.\n\n",
        args.batch,
        args.rounds,
        kernel_release(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    report.push_str("One iteration = blocking `socket()` + `connect()` to a loopback server + `close()` (SO_LINGER 0), timed in the client, which runs in a child cgroup. Conditions are interleaved round by round.\n\n");
    report.push_str("| condition | median µs | p90 µs | median of round medians µs | vs. no programs |\n|---|---:|---:|---:|---:|\n");
    for (i, c) in CONDS.iter().enumerate() {
        let (med, p90) = stats[i];
        let mut rm = round_medians[i].clone();
        rm.sort_unstable();
        let delta = med as f64 - off;
        report.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:+.0} ns ({:+.1}%) |\n",
            c.label(),
            med as f64 / 1e3,
            p90 as f64 / 1e3,
            rm[rm.len() / 2] as f64 / 1e3,
            delta,
            delta / off * 100.0
        ));
    }
    report.push_str(
        "\nTarget (issue 2): hook overhead on the allowed path <= 2% of a loopback connect.\n",
    );
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
