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
    /// How many times to connect to each address.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Benchmark mode: blocking socket() + connect() + close() with SO_LINGER 0 (no TIME_WAIT
    /// pile-up), timed as one iteration; the minimal syscall path, IPv4 only.
    #[arg(long)]
    raw: bool,
    /// Addresses, in order.
    addrs: Vec<SocketAddr>,
}

fn main() {
    let args = Args::parse();
    let procs = args.cgroup.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
        eprintln!("connector: cannot join {}: {e}", procs.display());
        std::process::exit(2);
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    for addr in &args.addrs {
        if args.raw {
            // Results are printed after the loop: a pipe write per connect would wake the
            // reader and disturb the timing.
            let results: Vec<_> = (0..args.count).map(|_| raw_connect(addr)).collect();
            for (ok, errno, ns) in results {
                println!(r#"{{"addr":"{addr}","ok":{ok},"errno":{errno},"ns":{ns}}}"#);
            }
            continue;
        }
        for _ in 0..args.count {
            let start = Instant::now();
            let result = TcpStream::connect_timeout(addr, timeout);
            let ns = start.elapsed().as_nanos() as u64;
            let (ok, errno) = match &result {
                Ok(_) => (true, 0),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => (false, libc::ETIMEDOUT),
                Err(e) => (false, e.raw_os_error().unwrap_or(-1)),
            };
            drop(result);
            println!(r#"{{"addr":"{addr}","ok":{ok},"errno":{errno},"ns":{ns}}}"#);
        }
    }
}

fn raw_connect(addr: &SocketAddr) -> (bool, i32, u64) {
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
    let start = Instant::now();
    // SAFETY: plain syscalls on a socket this function owns.
    let (ok, errno) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return (false, *libc::__errno_location(), 0);
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
    (ok, errno, start.elapsed().as_nanos() as u64)
}
