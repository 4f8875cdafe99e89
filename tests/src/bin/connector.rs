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
    /// Run on this CPU only (per-CPU kernel structures fill from one CPU).
    #[arg(long)]
    cpu: Option<usize>,
    /// When a connect fails, connect the same socket again, to this address.
    #[arg(long)]
    reconnect_to: Option<SocketAddr>,
    /// TCP_FASTOPEN_CONNECT: connect() returns at once with the SYN deferred to the first
    /// write; then close without writing.
    #[arg(long)]
    tfo_defer: bool,
    /// Bind to the address, then connect to it: a TCP simultaneous open with itself.
    #[arg(long)]
    self_connect: bool,
    /// Non-blocking connects: started and kept (in progress) until --hold-ms ends.
    #[arg(long)]
    nonblocking: bool,
    /// After joining the cgroup, run as this uid and gid (an unprivileged local user).
    #[arg(long)]
    user: Option<u32>,
    /// A plain blocking connect() with no application timeout at all (--timeout-ms is not
    /// used): how long it takes is up to the kernel. IPv4 only.
    #[arg(long)]
    blocking: bool,
    /// With --blocking: set TCP_USER_TIMEOUT to this before connecting; the value read back
    /// after a successful connect is printed as "uto".
    #[arg(long)]
    user_timeout_ms: Option<u32>,
    /// After a failed connect, connect again at once, up to this many times (a retry storm;
    /// each retry is a line of its own).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Addresses, in order.
    addrs: Vec<SocketAddr>,
}

/// One connect: did it succeed, its errno, when it started (CLOCK_MONOTONIC ns), how long.
struct Record {
    ok: bool,
    errno: i32,
    t: u64,
    ns: u64,
    /// TCP_USER_TIMEOUT after a successful --blocking connect; -1 otherwise.
    uto: i64,
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    if let Some(cpu) = args.cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_err()
            || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err()
        {
            eprintln!("connector: cannot run on CPU {cpu}");
            std::process::exit(2);
        }
    }
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
    if let Some(uid) = args.user {
        let id = nix::unistd::Uid::from_raw(uid);
        let gid = nix::unistd::Gid::from_raw(uid);
        let dropped = nix::unistd::setgroups(&[])
            .and_then(|()| nix::unistd::setgid(gid))
            .and_then(|()| nix::unistd::setuid(id));
        if let Err(e) = dropped {
            eprintln!("connector: cannot become uid {uid}: {e}");
            std::process::exit(2);
        }
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut held = Vec::new();
    // Results are printed at the end: a pipe write per connect would wake the reader and
    // disturb the timing.
    let mut out: Vec<(SocketAddr, Record)> = Vec::new();
    let (mut total, mut ok_total) = (0u64, 0u64);
    let begin = Instant::now();
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
            // An absolute schedule: a connect that ran late does not push the rest back.
            if let Some(every) = args.interval_us {
                let due = begin + Duration::from_micros(every.saturating_mul(total));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let t = monotonic_ns();
            let start = Instant::now();
            let special = args.reconnect_to.is_some()
                || args.tfo_defer
                || args.self_connect
                || args.nonblocking;
            let record = if args.blocking {
                let (ok, errno, uto) = blocking_connect(addr, args.user_timeout_ms, &mut held);
                Record {
                    ok,
                    errno,
                    t,
                    ns: start.elapsed().as_nanos() as u64,
                    uto,
                }
            } else if special {
                let (ok, errno) = socket_connect(&args, addr, &mut held);
                Record {
                    ok,
                    errno,
                    t,
                    ns: start.elapsed().as_nanos() as u64,
                    uto: -1,
                }
            } else if args.raw {
                let (ok, errno) = raw_connect(addr);
                Record {
                    ok,
                    errno,
                    t,
                    ns: start.elapsed().as_nanos() as u64,
                    uto: -1,
                }
            } else {
                // With --retries, a failure is connected again at once; each try is a record.
                let mut r = plain_connect(addr, timeout, &args, &mut held, t, start);
                for _ in 0..args.retries {
                    if r.ok {
                        break;
                    }
                    total += 1;
                    if !args.summary {
                        out.push((*addr, r));
                    }
                    let (t, start) = (monotonic_ns(), Instant::now());
                    r = plain_connect(addr, timeout, &args, &mut held, t, start);
                }
                r
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
            r#"{{"addr":"{addr}","ok":{},"errno":{},"t":{},"ns":{},"uto":{}}}"#,
            r.ok, r.errno, r.t, r.ns, r.uto
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

fn plain_connect(
    addr: &SocketAddr,
    timeout: Duration,
    args: &Args,
    held: &mut Vec<TcpStream>,
    t: u64,
    start: Instant,
) -> Record {
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
    Record {
        ok,
        errno,
        t,
        ns,
        uto: -1,
    }
}

/// A blocking connect with no timeout of the application's own (unless `user_timeout_ms`);
/// a socket that connected is kept in `held`. Returns (ok, errno, TCP_USER_TIMEOUT after).
fn blocking_connect(
    addr: &SocketAddr,
    user_timeout_ms: Option<u32>,
    held: &mut Vec<TcpStream>,
) -> (bool, i32, i64) {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        eprintln!("connector: --blocking takes IPv4 addresses");
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
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain syscalls on a socket this function owns (then the stream owns it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return (false, *libc::__errno_location(), -1);
        }
        if let Some(ms) = user_timeout_ms {
            let v = ms as libc::c_int;
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&v as *const libc::c_int).cast(),
                len,
            );
        }
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let errno = *libc::__errno_location();
            libc::close(fd);
            return (false, errno, -1);
        }
        let mut v: libc::c_int = -1;
        let mut l = len;
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&mut v as *mut libc::c_int).cast(),
            &mut l,
        );
        held.push(TcpStream::from_raw_fd(fd));
        (true, 0, i64::from(v))
    }
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

/// A socket address for libc.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the casts below fill the part that the
    // family uses.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// The socket-level modes: reconnect on failure, deferred Fast Open, self-connect. A socket
/// that connected is kept in `held` (closed with the others at the end) unless --tfo-defer.
fn socket_connect(args: &Args, addr: &SocketAddr, held: &mut Vec<TcpStream>) -> (bool, i32) {
    use std::os::fd::FromRawFd;
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscalls on a socket this function owns; it is closed or handed to a
    // TcpStream that owns it from then on.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return (false, errno());
        }
        let one: libc::c_int = 1;
        let opt = |level, name| {
            libc::setsockopt(
                fd,
                level,
                name,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if args.tfo_defer {
            // TCP_FASTOPEN_CONNECT
            opt(libc::IPPROTO_TCP, 30);
        }
        if args.nonblocking {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        }
        let (sa, len) = sockaddr(addr);
        if args.self_connect {
            opt(libc::SOL_SOCKET, libc::SO_REUSEADDR);
            if libc::bind(fd, (&raw const sa).cast(), len) != 0 {
                let e = errno();
                libc::close(fd);
                return (false, e);
            }
        }
        let mut rc = libc::connect(fd, (&raw const sa).cast(), len);
        let mut e = if rc == 0 { 0 } else { errno() };
        if args.nonblocking && e == libc::EINPROGRESS {
            // Under way: keep it, in SYN_SENT, until the hold ends.
            held.push(TcpStream::from_raw_fd(fd));
            return (true, 0);
        }
        if rc != 0 {
            if let Some(again) = &args.reconnect_to {
                let (sa2, len2) = sockaddr(again);
                rc = libc::connect(fd, (&raw const sa2).cast(), len2);
                e = if rc == 0 { 0 } else { errno() };
            }
        }
        if rc == 0 && !args.tfo_defer {
            held.push(TcpStream::from_raw_fd(fd));
        } else {
            libc::close(fd);
        }
        (rc == 0, e)
    }
}
