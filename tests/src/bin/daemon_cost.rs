//! `cargo xtask bench` (daemon cost, issue 10 item 4): the daemon's own CPU and memory at
//! 20k connects/s spread over 10,000 named destinations, with the dashboard (`resilience top`,
//! in a tmux session) attached and refreshing.
//!
//! One listener on 0.0.0.0 accepts and closes; every destination is an exact 127.x.y.z address
//! on its port, so each connect succeeds and is charged to its own destination. Two clients
//! (one per CPU) cycle through all the addresses at the given rate. After a warm-up, the
//! daemon's CPU (utime + stime from /proc) is read over a measured window, with the rate the
//! daemon itself counted in that window (sum of `attempts`), RSS at the end and its peak.
//!
//! With `--before BIN` (an earlier build), each round runs both builds one after the other, so
//! that they are compared on the same machine at the same time (its speed drifts by a third).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Parser;
use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts},
    daemon::{Daemon, PinDir, StartOpts},
    listener::Server,
    procfs::{cpu_seconds as cpu, rss_parts, vm_mib},
    tmux::{self, Session},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    destinations: u32,
    /// Connects per second, all clients together.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Seconds of warm-up before the measured window.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// Markdown file the results are written to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rounds (each one runs every build once).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// An earlier `resilience` build, run in the same rounds.
    #[arg(long)]
    before: Option<PathBuf>,
}

/// One run's figures.
struct Measured {
    rate: f64,
    daemon_pct: f64,
    rss: f64,
    hwm: f64,
    top_pct: f64,
    top_rss: f64,
    parts: resilience_tests::procfs::RssParts,
}

const CLIENTS: u32 = 2;

fn addr(i: u32, port: u16) -> SocketAddr {
    format!(
        "127.{}.{}.{}:{port}",
        2 + i / 65536,
        (i / 256) % 256,
        i % 256
    )
    .parse()
    .expect("address")
}

/// Sum of every destination's `attempts`, as the daemon reports them: the tally of a
/// one-row `table` page (a whole status would itself cost the daemon a pass over everything).
fn attempts(d: &Daemon) -> u64 {
    let v = d
        .request(&serde_json::json!({"cmd": "table", "limit": 1}))
        .expect("table request");
    v["snapshot"]["table"]["tally"]["attempts"]
        .as_u64()
        .expect("a tally of attempts")
}

/// The pid of the `resilience top` running in the tmux session's pane: the pane's shell
/// `exec`s it, so it is the pane's own pid.
fn top_pid(session: &str) -> Option<u32> {
    tmux::tmux(&["display-message", "-p", "-t", session, "#{pane_pid}"])
        .trim()
        .parse()
        .ok()
}

fn main() {
    let args = Args::parse();
    assert!(
        resilience_tests::privileged("daemon_cost"),
        "the benchmark needs root"
    );
    let server = Server::start("0.0.0.0:0");
    let port = server.addr.port();
    let addrs: Vec<SocketAddr> = (0..args.destinations).map(|i| addr(i, port)).collect();
    let mut policy = String::new();
    for (i, a) in addrs.iter().enumerate() {
        policy.push_str(&format!(
            "[[destination]]\nname = \"svc-{i}\"\nmatch = [\"{a}\"]\n"
        ));
    }
    let this = resilience_tests::daemon_bin();
    let mut builds: Vec<(&str, PathBuf)> = vec![("this build", this)];
    if let Some(b) = &args.before {
        builds.push(("previous build", b.clone()));
    }
    let mut runs: Vec<(u32, &str, Measured)> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for (label, bin) in &builds {
            eprintln!("daemon_cost: round {round}, {label} ({})", bin.display());
            runs.push((round, label, measure(&args, &addrs, &policy, bin)));
        }
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let interval = interval(&args);
    let mut text = format!(
        "# Daemon cost under load\n\n\
         Measured by `cargo xtask bench` (tests/src/bin/daemon_cost.rs), kernel {}, {} CPUs. \
         The real daemon with {} named destinations (exact 127.x.y.z addresses, one listener \
         on 0.0.0.0 that accepts and closes); {CLIENTS} clients in the guarded cgroup cycle \
         through all of them, a connect every {:?} each (target {} connects/s); the dashboard \
         (`resilience top`, 1 s refresh) runs in a tmux session the whole time. {} s of \
         warm-up, then {} s measured. The rate is what the daemon itself counted (sum of \
         `attempts`) in the window; CPU is utime + stime from /proc (10 ms ticks). {} round(s){}; \
         RSS by kind of mapping from /proc/PID/smaps at the end.\n\n\
         | round | build | connects/s counted | daemon CPU, % of one core | daemon RSS MiB (end) | daemon peak RSS MiB | BPF maps MiB | heap + anon MiB | binary MiB | dashboard CPU % | dashboard RSS MiB |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.destinations,
        interval,
        args.rate,
        args.warmup,
        args.window,
        args.rounds.max(1),
        match &args.before {
            Some(b) => format!(
                ", each running this build and the previous one ({}), one after the other",
                b.display()
            ),
            None => String::new(),
        },
    );
    for (round, label, m) in &runs {
        text.push_str(&format!(
            "| {round} | {label} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
            m.rate,
            m.daemon_pct,
            m.rss,
            m.hwm,
            m.parts.bpf_maps,
            m.parts.anon,
            m.parts.file,
            m.top_pct,
            m.top_rss
        ));
    }
    let median = |label: &str, f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| r.1 == label)
            .map(|r| f(&r.2))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    text.push('\n');
    for (label, _) in &builds {
        text.push_str(&format!(
            "Median, {label}: {:.2}% of one core, RSS {:.1} MiB at the end (peak {:.1}).\n",
            median(label, |m| m.daemon_pct),
            median(label, |m| m.rss),
            median(label, |m| m.hwm),
        ));
    }
    let (cpu_m, rss_m, hwm_m) = (
        median("this build", |m| m.daemon_pct),
        median("this build", |m| m.rss),
        median("this build", |m| m.hwm),
    );
    text.push_str(&format!(
        "\nTargets (issue 10), this build's medians: at most 2% of one core: {}; at most 40 MiB \
         RSS: {} (peak {}).\n",
        verdict(cpu_m <= 2.0),
        verdict(rss_m <= 40.0),
        verdict(hwm_m <= 40.0),
    ));
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("writing results");
    }
}

fn interval(args: &Args) -> Duration {
    Duration::from_nanos(1_000_000_000 * u64::from(CLIENTS) / u64::from(args.rate))
}

/// One run of `bin` under the load, with its dashboard.
fn measure(args: &Args, addrs: &[SocketAddr], policy: &str, bin: &Path) -> Measured {
    let cg = Cgroup::new("daemon-cost");
    let pins = PinDir::new("daemon-cost");
    let d = Daemon::start_with(
        "daemon-cost",
        &cg.path,
        &pins,
        policy,
        "2s",
        StartOpts {
            bin: Some(bin.to_path_buf()),
            ..StartOpts::default()
        },
    );
    let pid = d.pid().expect("daemon pid");

    eprintln!(
        "daemon_cost: dashboard attached (tmux), {} destinations",
        args.destinations
    );
    let session = Session::new("daemon-cost");
    session.keys(&[
        &format!("exec {} top --socket {}", bin.display(), d.socket.display()),
        "Enter",
    ]);
    tmux::wait_screen(&session.0, "the dashboard's rows", |s| s.contains("svc-"));
    let top = top_pid(&session.0).expect("dashboard pid");

    let total = Duration::from_secs(args.warmup + args.window + 2);
    let interval = interval(args);
    eprintln!(
        "daemon_cost: {} clients, a connect every {:?} each, for {:?}",
        CLIENTS, interval, total
    );
    let n = addrs.len() as u32;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            // Each client starts at its own place in the cycle, so that together they spread
            // over every destination.
            let mut mine = addrs.to_vec();
            mine.rotate_left((c * n / CLIENTS) as usize);
            spawn(
                &cg.path,
                &mine,
                u32::MAX,
                &Opts {
                    raw: true,
                    cycle: true,
                    summary: true,
                    cpu: Some(c as usize),
                    for_time: Some(total),
                    interval: Some(interval),
                    ..Opts::default()
                },
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.warmup));

    let (c0, t0, a0, start) = (cpu(pid), cpu(top), attempts(&d), Instant::now());
    std::thread::sleep(Duration::from_secs(args.window));
    let (c1, t1, a1, wall) = (cpu(pid), cpu(top), attempts(&d), start.elapsed());
    let (rss, hwm) = (vm_mib(pid, "VmRSS:"), vm_mib(pid, "VmHWM:"));
    let parts = rss_parts(pid);
    let top_rss = vm_mib(top, "VmRSS:");
    for c in clients {
        c.wait_summary();
    }
    let screen = tmux::capture(&session.0);
    session.kill();
    if !screen.contains("svc-") {
        eprintln!("daemon_cost: the dashboard's last screen showed no rows:\n{screen}");
    }
    let secs = wall.as_secs_f64();
    Measured {
        rate: (a1 - a0) as f64 / secs,
        daemon_pct: 100.0 * (c1 - c0) / secs,
        rss,
        hwm,
        top_pct: 100.0 * (t1 - t0) / secs,
        top_rss,
        parts,
    }
}
