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
