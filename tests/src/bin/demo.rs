//! `cargo xtask demo`: resilience guarding five local services that misbehave on a schedule,
//! with the dashboard in the foreground. Loopback only, bounded in time (10 minutes at most)
//! and in traffic (about 100 connects a second). `q` stops everything; what the demo created
//! (client processes, its cgroup, its pinned maps, its files) is removed on the way out.
//!
//! - catalog: healthy.
//! - payments: refuses every connect for 5 s out of every 13 (its listener closes).
//! - search: healthy for 20 s, then a black hole for 25 s (connects hang until the client
//!   gives up after 2 s), and again.
//! - partner-api: healthy, but its policy allows 20 new connections a second and the client
//!   wants 40.
//! - orders-db: holds each connection 2 s; a bulkhead of 8 against 12 clients.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};

/// The demo ends by itself after this long.
const LIMIT: Duration = Duration::from_secs(600);

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// (internal) One client: joins the cgroup, then connects in a paced loop.
    Client {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        addr: SocketAddr,
        /// Connects per second, per worker.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Keep each connection open this long.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Give up on a connect after this long.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() {
    let args = Args::parse();
    let result = match args.mode {
        Some(Mode::Client {
            cgroup,
            addr,
            rate,
            workers,
            hold_ms,
            timeout_ms,
        }) => client(&cgroup, addr, rate, workers, hold_ms, timeout_ms),
        None => demo(),
    };
    if let Err(e) = result {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

fn client(
    cgroup: &Path,
    addr: SocketAddr,
    rate: f64,
    workers: u32,
    hold_ms: u64,
    timeout_ms: u64,
) -> Result<()> {
    // Dies with the demo, whatever happens to it.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("joining {}: {e}", cgroup.display()))?;
    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                // Workers start spread over one interval.
                std::thread::sleep(every * w / workers.max(1));
                let mut next = Instant::now();
                while started.elapsed() < LIMIT {
                    if let Ok(s) =
                        TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms))
                    {
                        if hold_ms > 0 {
                            std::thread::sleep(Duration::from_millis(hold_ms));
                        }
                        drop(s);
                    }
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A listener that accepts and closes (or holds) every connection, in a thread.
fn serve(listener: TcpListener, hold: Duration, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        let mut held: Vec<(Instant, TcpStream)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => held.push((Instant::now(), s)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            held.retain(|(t, _)| t.elapsed() < hold);
        }
    });
}

/// payments: a listener that exists 8 s, then is gone 5 s (connects refused), and again.
fn flaky(addr: SocketAddr, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(l) = TcpListener::bind(addr) {
                let _ = l.set_nonblocking(true);
                let until = Instant::now() + Duration::from_secs(8);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => drop(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
}

/// search: healthy 20 s, then a black hole 25 s (its accept queue full: SYNs are dropped),
/// and again. The queue is filled from this process, outside the guarded cgroup.
fn black_hole(listener: TcpListener, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let addr = listener.local_addr().expect("local address");
        let _ = listener.set_nonblocking(true);
        while !stop.load(Ordering::Relaxed) {
            let healthy_until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < healthy_until && !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let mut fillers = Vec::new();
            for _ in 0..8 {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(s) => fillers.push(s),
                    Err(_) => break,
                }
            }
            let hole_until = Instant::now() + Duration::from_secs(25);
            while Instant::now() < hole_until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(fillers);
        }
    });
}

fn listen(ip: &str, backlog: i32) -> Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let l = TcpListener::bind(format!("{ip}:0")).map_err(|e| format!("binding {ip}: {e}"))?;
    let fd = l.into_raw_fd();
    // SAFETY: a listening socket we own; listen() again only changes its backlog.
    unsafe { libc::listen(fd, backlog) };
    // SAFETY: the descriptor came from into_raw_fd above.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .ok_or_else(|| "no cgroup2 mount".to_string())
}

/// Everything the demo made, removed when it ends, however it ends.
struct Made {
    clients: Vec<Child>,
    cgroup: PathBuf,
    pins: PathBuf,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Made {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..100 {
            if !self.cgroup.exists() || std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
        let left: Vec<String> = [&self.cgroup, &self.pins, &self.dir]
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if left.is_empty() {
            eprintln!("demo: stopped; its clients, cgroup, pinned maps and files are removed");
        } else {
            eprintln!("demo: stopped, but could not remove: {}", left.join(", "));
        }
    }
}

fn demo() -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err("the demo shows the dashboard: run it in a terminal".into());
    }
    let bin = std::env::var_os("RESILIENCE_BIN")
        .map(PathBuf::from)
        .ok_or("RESILIENCE_BIN is not set (cargo xtask demo sets it)")?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let tag = format!("resilience-demo-{}", std::process::id());
    let cgroup = cgroup2_root()?.join(&tag);
    let pins = PathBuf::from("/sys/fs/bpf").join(&tag);
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::create_dir(&cgroup).map_err(|e| format!("creating {}: {e}", cgroup.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut made = Made {
        clients: Vec::new(),
        cgroup: cgroup.clone(),
        pins: pins.clone(),
        dir: dir.clone(),
        stop: stop.clone(),
    };

    let catalog = listen("127.0.0.201", 128)?;
    let payments = listen("127.0.0.202", 128)?;
    let search = listen("127.0.0.203", 0)?;
    let partner = listen("127.0.0.204", 128)?;
    let orders = listen("127.0.0.205", 128)?;
    let addr = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let (catalog_a, payments_a, search_a, partner_a, orders_a) = (
        addr(&catalog)?,
        addr(&payments)?,
        addr(&search)?,
        addr(&partner)?,
        addr(&orders)?,
    );
    drop(payments); // flaky() binds it again, on and off
    serve(catalog, Duration::ZERO, stop.clone());
    flaky(payments_a, stop.clone());
    black_hole(search, stop.clone());
    serve(partner, Duration::ZERO, stop.clone());
    serve(orders, Duration::from_secs(10), stop.clone());

    let policy = format!(
        r#"# The demo's policy (cargo xtask demo).
[daemon]
cgroup = "{cg}"
pin_dir = "{pins}"
socket = "{sock}"

[defaults.breaker]
window_size = 10
minimum_calls = 5
failure_rate = 50
open_duration = "5s"
half_open_probes = 2

[[destination]]
name = "catalog"
match = ["{catalog_a}"]

[[destination]]
name = "payments"
match = ["{payments_a}"]

[[destination]]
name = "search"
match = ["{search_a}"]
reject_errno = "ETIMEDOUT"

[[destination]]
name = "partner-api"
match = ["{partner_a}"]
[destination.rate_limit]
rate = 20.0
burst = 10

[[destination]]
name = "orders-db"
match = ["{orders_a}"]
reject_errno = "EAGAIN"
[destination.bulkhead]
max_concurrent = 8
"#,
        cg = cgroup.display(),
        pins = pins.display(),
        sock = dir.join("control.sock").display(),
    );
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).map_err(|e| e.to_string())?;

    // (address, connects/s per worker, workers, hold ms, timeout ms)
    let load: [(SocketAddr, f64, u32, u64, u64); 5] = [
        (catalog_a, 10.0, 1, 0, 2000),
        (payments_a, 10.0, 2, 0, 2000),
        (search_a, 2.0, 2, 0, 2000),
        (partner_a, 20.0, 2, 0, 2000),
        (orders_a, 1.0, 12, 2000, 2000),
    ];
    for (a, rate, workers, hold, timeout) in load {
        let child = Command::new(&me)
            .arg("client")
            .arg("--cgroup")
            .arg(&cgroup)
            .args(["--addr", &a.to_string(), "--rate", &rate.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--hold-ms", &hold.to_string()])
            .args(["--timeout-ms", &timeout.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a client: {e}"))?;
        made.clients.push(child);
    }
    eprintln!(
        "demo: 5 services on 127.0.0.201-205, 5 client processes in {}; policy {}; q quits",
        cgroup.display(),
        policy_path.display()
    );

    // The terminal's Ctrl-C goes to the dashboard (it stops the daemon); this process waits
    // for it and cleans up.
    // SAFETY: ignoring SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut daemon = Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(&policy_path)
        .arg("--tui")
        .arg("--log-file")
        .arg(dir.join("daemon.log"))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let started = Instant::now();
    loop {
        match daemon.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                    eprintln!("demo: the daemon exited with {status}");
                }
                break;
            }
            Ok(None) if started.elapsed() > LIMIT => {
                // SAFETY: a signal to our own child.
                unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
                let _ = daemon.wait();
                eprintln!("demo: {} minutes are up", LIMIT.as_secs() / 60);
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for the daemon: {e}")),
        }
    }
    drop(made);
    Ok(())
}
