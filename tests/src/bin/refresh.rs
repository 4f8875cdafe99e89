//! `cargo xtask bench` (refresh): what one dashboard refresh costs the daemon with 10,000
//! named destinations: daemon CPU per refresh and bytes per refresh, for whole snapshots and
//! for deltas (`since`), with no traffic, with traffic to 100 of them, and with traffic to all.
//!
//! Windows of `--window` seconds are interleaved round by round: no client, a client asking
//! for whole snapshots at 1 Hz, a client asking for deltas at 1 Hz. Daemon CPU per refresh =
//! (CPU in a client window - CPU in the neighbouring no-client window) / refreshes.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::Parser;
use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts, Running},
    daemon::{Daemon, PinDir},
    procfs::{cpu_seconds as cpu, rss_mib},
};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    destinations: u32,
    /// Seconds per window.
    #[arg(long, default_value_t = 5)]
    window: u64,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Markdown file the results are written to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also measure this (earlier) daemon binary, in the same run, for a before/after table.
    #[arg(long)]
    before: Option<PathBuf>,
}

fn addr(i: u32) -> String {
    format!("127.{}.{}.{}:9", 2 + i / 65536, (i / 256) % 256, i % 256)
}

fn policy(n: u32) -> String {
    // Refusals are not counted as failures: the traffic below changes counters but trips
    // nothing.
    let mut p = String::from("[defaults.breaker]\nfailures = [\"timeout\"]\n\n");
    for i in 0..n {
        p.push_str(&format!(
            "[[destination]]\nname = \"svc-{i}\"\nmatch = [\"{}\"]\n",
            addr(i)
        ));
    }
    p
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Idle,
    Full,
    Delta,
    /// What `resilience top` asks for: a `table` page of 200 rows.
    Page,
}

/// One window: (daemon CPU seconds, refreshes, bytes received, worst reply latency).
fn window(socket: &Path, pid: u32, mode: Mode, secs: u64) -> (f64, u32, u64, Duration) {
    let (mut n, mut bytes, mut worst) = (0u32, 0u64, Duration::ZERO);
    let mut conn = (mode != Mode::Idle).then(|| {
        let s = UnixStream::connect(socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let r = BufReader::new(s.try_clone().expect("clone"));
        (s, r)
    });
    let mut since: Option<(u64, u64)> = None;
    if let (Mode::Delta, Some((w, r))) = (mode, conn.as_mut()) {
        // A dashboard's first fetch is whole; it is not what a refresh costs.
        w.write_all(b"{\"cmd\":\"snapshot\"}\n").expect("request");
        let mut line = String::new();
        r.read_line(&mut line).expect("reply");
        let v: Value = serde_json::from_str(&line).expect("JSON");
        let s = &v["snapshot"];
        since = Some((
            s["seq"].as_u64().unwrap_or(0),
            s["instance"].as_u64().unwrap_or(0),
        ));
    }
    let start_cpu = cpu(pid);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some((w, r)) = conn.as_mut() {
            if Instant::now() >= next {
                let req = match (mode, since) {
                    (Mode::Delta, Some((s, i))) => {
                        format!("{{\"cmd\":\"snapshot\",\"since\":{s},\"instance\":{i}}}\n")
                    }
                    (Mode::Page, _) => "{\"cmd\":\"table\",\"limit\":200}\n".to_string(),
                    _ => "{\"cmd\":\"snapshot\"}\n".to_string(),
                };
                let asked = Instant::now();
                w.write_all(req.as_bytes()).expect("request");
                let mut line = String::new();
                r.read_line(&mut line).expect("reply");
                worst = worst.max(asked.elapsed());
                bytes += line.len() as u64;
                n += 1;
                let v: Value = serde_json::from_str(&line).expect("JSON");
                let s = &v["snapshot"];
                since = Some((
                    s["seq"].as_u64().unwrap_or(0),
                    s["instance"].as_u64().unwrap_or(0),
                ));
                next += Duration::from_secs(1);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (cpu(pid) - start_cpu, n, bytes, worst)
}

struct Row {
    cpu_ms: Vec<f64>,
    bytes: Vec<f64>,
    worst_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn scenario(args: &Args, name: &str, traffic: Option<u32>) -> (String, f64) {
    let cg = Cgroup::new("refresh");
    let pins = PinDir::new("refresh");
    let d = Daemon::start(
        "refresh",
        cg.path(),
        &pins,
        &policy(args.destinations),
        "2s",
    );
    let pid = d.pid().expect("pid");
    // Traffic: refused connects cycling through the first `k` destinations, for the whole run.
    let total = args.window * 3 * u64::from(args.rounds) + 10;
    let load: Option<Running> = traffic.map(|k| {
        let addrs: Vec<std::net::SocketAddr> =
            (0..k).map(|i| addr(i).parse().expect("addr")).collect();
        spawn(
            cg.path(),
            &addrs,
            1_000_000,
            &Opts {
                raw: true,
                cycle: true,
                summary: true,
                for_time: Some(Duration::from_secs(total)),
                ..Opts::default()
            },
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut full = Row {
        cpu_ms: vec![],
        bytes: vec![],
        worst_ms: 0.0,
    };
    let mut delta = Row {
        cpu_ms: vec![],
        bytes: vec![],
        worst_ms: 0.0,
    };
    let mut page = Row {
        cpu_ms: vec![],
        bytes: vec![],
        worst_ms: 0.0,
    };
    for r in 0..args.rounds {
        let order = match r % 3 {
            0 => [Mode::Idle, Mode::Full, Mode::Delta, Mode::Page],
            1 => [Mode::Idle, Mode::Delta, Mode::Page, Mode::Full],
            _ => [Mode::Idle, Mode::Page, Mode::Full, Mode::Delta],
        };
        let mut idle = 0.0;
        for m in order {
            let (c, n, b, worst) = window(&d.socket, pid, m, args.window);
            match m {
                Mode::Idle => idle = c,
                Mode::Full | Mode::Delta | Mode::Page => {
                    let row = match m {
                        Mode::Full => &mut full,
                        Mode::Delta => &mut delta,
                        _ => &mut page,
                    };
                    row.cpu_ms
                        .push((c - idle).max(0.0) * 1000.0 / f64::from(n.max(1)));
                    row.bytes.push(b as f64 / f64::from(n.max(1)));
                    row.worst_ms = row.worst_ms.max(worst.as_secs_f64() * 1000.0);
                }
            }
        }
    }
    let rss = rss_mib(pid);
    if let Some(l) = load {
        l.kill();
    }
    let text = format!(
        "| {name} | whole | {:.1} | {:.0} | {:.1} |\n| {name} | delta | {:.1} | {:.0} | {:.1} |\n\
         | {name} | table page (200 rows) | {:.1} | {:.0} | {:.1} |\n",
        median(full.cpu_ms),
        median(full.bytes),
        full.worst_ms,
        median(delta.cpu_ms),
        median(delta.bytes),
        delta.worst_ms,
        median(page.cpu_ms),
        median(page.bytes),
        page.worst_ms,
    );
    (text, rss)
}

fn table(args: &Args) -> (String, f64) {
    let mut rows = String::new();
    let mut rss = 0.0f64;
    for (name, traffic) in [
        ("no traffic", None),
        ("traffic to 100", Some(100)),
        ("traffic to all", Some(args.destinations)),
    ] {
        eprintln!("refresh: {name} ...");
        let (t, r) = scenario(args, name, traffic);
        rows.push_str(&t);
        rss = rss.max(r);
    }
    (rows, rss)
}

fn main() {
    let args = Args::parse();
    let header = "| traffic | snapshot | daemon CPU ms / refresh | bytes / refresh | slowest reply ms |\n|---|---|---:|---:|---:|\n";
    let before = args.before.as_ref().map(|bin| {
        let now = std::env::var_os("RESILIENCE_BIN");
        // SAFETY (set_var): single-threaded here; the harness reads it when starting daemons.
        unsafe { std::env::set_var("RESILIENCE_BIN", bin) };
        let (rows, rss) = table(&args);
        match now {
            Some(v) => unsafe { std::env::set_var("RESILIENCE_BIN", v) },
            None => unsafe { std::env::remove_var("RESILIENCE_BIN") },
        }
        format!(
            "\n## Before: {}\n\nThe same measurement of that binary (it knows no `since`: its \"delta\" rows are whole snapshots too).\n\n{header}{rows}\nDaemon RSS at the end: {rss:.1} MiB.\n",
            bin.display()
        )
    });
    let (rows, rss) = table(&args);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let text = format!(
        "# Dashboard refresh cost\n\nMeasured by `cargo xtask bench` (tests/src/bin/refresh.rs), kernel {}, 2 CPUs. The real daemon with {} named destinations; one client refreshing at 1 Hz, asking for whole snapshots, for deltas (`since`, after one whole snapshot), or for a `table` page of 200 rows (what `resilience top` asks for). Windows of {} s interleaved with no-client windows, {} rounds; daemon CPU per refresh = CPU in the window minus CPU in the no-client window, divided by the refreshes (medians; the kernel counts CPU in 10 ms ticks). Traffic: refused connects from one process cycling through the first N destinations, so that their counters change between refreshes (refusals are not counted as breaker failures: nothing trips).\n\n{header}{rows}\nDaemon RSS at the end: {rss:.1} MiB.\n{}",
        kernel.trim(),
        args.destinations,
        args.window,
        args.rounds,
        before.unwrap_or_default()
    );
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("writing results");
    }
}
