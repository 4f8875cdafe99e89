//! A test client: moves itself into a cgroup, makes the connects it is told to, and prints one
//! JSON line per connect: {"addr", "ok", "errno", "ns"}. The tests run it so that only this
//! process, never the test runner, is inside the guarded cgroup.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// cgroup v2 directory to join before creating any socket.
    #[arg(long)]
    cgroup: std::path::PathBuf,
    /// Give up on a connect after this long (the socket is then closed, SYN_SENT -> CLOSE).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// How many times to connect to each address (at most, with --for-ms).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Keep connecting to each address for this long (bounded by --count too).
    #[arg(long)]
    for_ms: Option<u64>,
    /// Enter this network namespace (from `ip netns add`) after joining the cgroup.
    #[arg(long)]
    netns: Option<String>,
    /// Start connects this far apart (paced load), instead of back to back.
    #[arg(long)]
    interval_us: Option<u64>,
    /// Keep the connections that succeeded open this long after the last connect, then close.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Benchmark mode: blocking socket() + connect() + close() with SO_LINGER 0 (no TIME_WAIT
    /// pile-up), timed as one iteration; the minimal syscall path, IPv4 only.
    #[arg(long)]
    raw: bool,
    /// Go through the whole address list again and again (`--count` passes, `--for-ms` in all),
    /// instead of `--count` connects to each address in turn.
    #[arg(long)]
    cycle: bool,
    /// Print one summary line, {"count", "ok"}, instead of a line per connect (long runs).
    #[arg(long)]
    summary: bool,
    /// Addresses, in order.
    addrs: Vec<SocketAddr>,
}

/// One connect: did it succeed, its errno, when it started (CLOCK_MONOTONIC ns), how long.
struct Record {
    ok: bool,
    errno: i32,
    t: u64,
    ns: u64,
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    let procs = args.cgroup.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
        eprintln!("connector: cannot join {}: {e}", procs.display());
        std::process::exit(2);
    }
    if let Some(ns) = &args.netns {
        let path = format!("/run/netns/{ns}");
        let entered = std::fs::File::open(&path).and_then(|f| {
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
        if let Err(e) = entered {
            eprintln!("connector: cannot enter {path}: {e}");
            std::process::exit(2);
        }
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut held = Vec::new();
    // Results are printed at the end: a pipe write per connect would wake the reader and
    // disturb the timing.
    let mut out: Vec<(SocketAddr, Record)> = Vec::new();
    let (mut total, mut ok_total) = (0u64, 0u64);
    let deadline = args
        .for_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    // (address, connects to it) in the order they are made.
    let plan: Box<dyn Iterator<Item = (&SocketAddr, u32)>> = if args.cycle {
        Box::new((0..args.count).flat_map(|_| args.addrs.iter().map(|a| (a, 1))))
    } else {
        Box::new(args.addrs.iter().map(|a| (a, args.count)))
    };
    for (addr, count) in plan {
        if args.cycle && deadline.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let until = if args.cycle {
            deadline
        } else {
            args.for_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms))
        };
        for _ in 0..count {
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            let t = monotonic_ns();
            let start = Instant::now();
            let record = if args.raw {
                let (ok, errno) = raw_connect(addr);
                Record {
                    ok,
                    errno,
                    t,
                    ns: start.elapsed().as_nanos() as u64,
                }
            } else {
                let result = TcpStream::connect_timeout(addr, timeout);
                let ns = start.elapsed().as_nanos() as u64;
                let (ok, errno) = match &result {
                    Ok(_) => (true, 0),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => (false, libc::ETIMEDOUT),
                    Err(e) => (false, e.raw_os_error().unwrap_or(-1)),
                };
                if let (Ok(stream), true) = (result, args.hold_ms > 0) {
                    held.push(stream);
                }
                Record { ok, errno, t, ns }
            };
            total += 1;
            ok_total += u64::from(record.ok);
            if !args.summary {
                out.push((*addr, record));
            }
        }
    }
    if !held.is_empty() {
        std::thread::sleep(Duration::from_millis(args.hold_ms));
        drop(held);
    }
    if args.summary {
        println!(r#"{{"count":{total},"ok":{ok_total}}}"#);
        return;
    }
    for (addr, r) in out {
        println!(
            r#"{{"addr":"{addr}","ok":{},"errno":{},"t":{},"ns":{}}}"#,
            r.ok, r.errno, r.t, r.ns
        );
    }
}

/// Tests hold thousands of sockets: lift the soft descriptor limit to the hard one.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn raw_connect(addr: &SocketAddr) -> (bool, i32) {
    let SocketAddr::V4(v4) = addr else {
        eprintln!("connector: --raw takes IPv4 addresses");
        std::process::exit(2);
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: plain syscalls on a socket this function owns.
    let (ok, errno) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return (false, *libc::__errno_location());
        }
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let errno = if rc == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
        (rc == 0, errno)
    };
    (ok, errno)
}
