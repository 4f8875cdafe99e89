//! Privileged: enforcement never lapses because the daemon is busy, and its tools never hang
//! (issue "Liveness").

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts},
    daemon::{Daemon, PinDir, StartOpts},
    listener::Server,
    privileged,
    tmux::{capture, exit_code, wait_screen, wait_screen_for, Session},
};

const SECOND: Duration = Duration::from_secs(1);

/// A nameserver that reads every query and never answers.
struct SilentResolver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentResolver {
    fn start(addr: &str) -> SilentResolver {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let _ = sock.recv_from(&mut buf);
            }
        });
        SilentResolver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A daemon whose resolver never answers (its own mount namespace, with a resolv.conf naming
/// a silent loopback nameserver; the host's resolver configuration is not touched) keeps
/// enforcing through a reload that adds a DNS name: the reload answers at once, no connect
/// fails open, and an event says the name does not resolve.
#[test]
fn a_silent_resolver_never_turns_enforcement_off() {
    if !privileged("a_silent_resolver_never_turns_enforcement_off") {
        return;
    }
    let _ns = SilentResolver::start("127.0.0.153:53");
    let dir = std::env::temp_dir().join(resilience_tests::unique("resolv"));
    std::fs::create_dir_all(&dir).expect("dir");
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.153\noptions timeout:3 attempts:3\n",
    )
    .expect("resolv.conf");
    let server = Server::start("127.0.0.120:0");
    let blocked = format!(
        "[[destination]]\nname = \"blocked\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\n",
        server.addr
    );
    let cg = Cgroup::new("silentdns");
    let pins = PinDir::new("silentdns");
    let d = Daemon::start_with(
        "silentdns",
        cg.path(),
        &pins,
        &blocked,
        "2s",
        StartOpts {
            wrapper: vec![
                "unshare".into(),
                "-m".into(),
                "--propagation".into(),
                "private".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#.into(),
                resolv.display().to_string(),
            ],
            ..StartOpts::default()
        },
    );
    // Connects to the forced-open destination all along, for 8 s.
    let load = spawn(
        cg.path(),
        &[server.addr],
        400,
        &Opts {
            interval: Some(Duration::from_millis(20)),
            timeout: Some(SECOND),
            ..Opts::default()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &d.config,
        format!("{blocked}[[destination]]\nname = \"by-name\"\nmatch = [\"silent.resilience.test:443\"]\n"),
    )
    .expect("write policy");
    let asked = Instant::now();
    let (ok, out, err) = d.cli(&["reload"]);
    let took = asked.elapsed();
    assert!(ok, "{err}");
    assert!(out.contains("2 destinations"), "{out}");
    assert!(took < SECOND, "the reload took {took:?}");
    // The control socket answers while the lookup hangs.
    let asked = Instant::now();
    assert_eq!(d.dest("by-name")["resolved"], serde_json::json!([]));
    assert!(asked.elapsed() < SECOND);

    let got = load.wait();
    assert_eq!(got.len(), 400);
    let through: Vec<_> = got
        .iter()
        .filter(|o| o.errno != libc::ECONNREFUSED)
        .collect();
    assert!(through.is_empty(), "connects not rejected: {through:?}");
    assert_eq!(server.accepted(), 0);
    let s = d.status();
    assert_eq!(s["kernel"]["fail_open"], 0, "{:#}", s["kernel"]);
    // The lookup's deadline (5 s) passed: the operator hears of it.
    let deadline = Instant::now() + 10 * SECOND;
    let said = loop {
        let events = d.status()["events"].to_string();
        if events.contains("cannot resolve silent.resilience.test:443") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(said, "no event about the name: {:#}", d.status()["events"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `resilience top` against a daemon that stops answering (SIGSTOP): within 3 s the dashboard
/// says `not responding`, and `q` exits at once.
#[test]
fn the_dashboard_says_when_the_daemon_stops_answering_and_still_quits() {
    if !privileged("dashboard_not_responding") {
        return;
    }
    let cg = Cgroup::new("stopped");
    let pins = PinDir::new("stopped");
    let d = Daemon::start(
        "stopped",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"ledger\"\nmatch = [\"127.0.0.121:443\"]\n",
        "2s",
    );
    let session = Session::new("stopped");
    let name = session.0.as_str();
    let top = format!(
        "{} top --refresh 200ms --socket {}; echo top-exited-$?",
        resilience_tests::daemon_bin().display(),
        d.socket.display()
    );
    session.keys(&[&top, "Enter"]);
    wait_screen(name, "the dashboard", |s| {
        s.contains("ledger") && s.contains("CLOSED")
    });
    d.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let screen = wait_screen_for(name, "'not responding'", 3 * SECOND, |s| {
        s.contains("not responding")
    });
    let shown = stopped.elapsed();
    assert!(
        screen.contains("ledger"),
        "the last picture stays: {screen}"
    );
    session.keys(&["q"]);
    let quit = Instant::now();
    let screen = wait_screen_for(name, "top to exit", 2 * SECOND, |s| {
        exit_code(s, "top").is_some()
    });
    let took = quit.elapsed();
    d.signal(Signal::SIGCONT);
    assert_eq!(exit_code(&screen, "top"), Some(0), "{screen}");
    assert!(took < SECOND, "q took {took:?}");
    assert!(shown <= 3 * SECOND, "{shown:?}");
    assert!(!capture(name).contains("DESTINATION"), "terminal restored");
}

/// A bulkhead's places come back however many connections are in flight: with the tracking
/// map smaller than the connections open, the ones that cannot be tracked give their place
/// back at once and are counted, and every place comes back when they close.
#[test]
fn places_never_leak_beyond_the_tracking_capacity() {
    if !privileged("places_never_leak_beyond_capacity") {
        return;
    }
    let server = Server::start("127.0.0.122:0");
    let policy = format!(
        "[daemon]\nmax_connections = 1024\n\n[[destination]]\nname = \"many\"\nmatch = [\"{}\"]\n[destination.bulkhead]\nmax_concurrent = 100000\n",
        server.addr
    );
    let cg = Cgroup::new("capacity");
    let pins = PinDir::new("capacity");
    let d = Daemon::start("capacity", cg.path(), &pins, &policy, "2s");
    // max_connections and the 4096 of the small map the hooks try first: 5120 tracked.
    let holders: Vec<_> = (0..52)
        .map(|_| {
            let opts = Opts {
                hold: Some(Duration::from_millis(5000)),
                timeout: Some(5 * SECOND),
                ..Opts::default()
            };
            spawn(cg.path(), &[server.addr], 100, &opts)
        })
        .collect();
    let v = d.wait_dest_for("many", 10 * SECOND, |v| v["attempts"] == 5200);
    assert_eq!(v["attempts"], 5200, "{v:#}");
    assert_eq!(
        v["active"], 5120,
        "only what is tracked holds a place: {v:#}"
    );
    assert_eq!(v["untracked"], 80, "{v:#}");
    assert_eq!(d.status()["kernel"]["untracked"], 80);
    // The operator hears of it, with what to do (the loop notes it within a tick).
    std::thread::sleep(Duration::from_millis(300));
    let events = d.status()["events"].to_string();
    assert!(events.contains("raise max_connections"), "{events}");
    for h in holders {
        assert!(h.wait().iter().all(|o| o.ok));
    }
    let v = d.wait_dest("many", |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "{v:#}");
    assert_eq!(v["closed"], 5120, "{v:#}");
}

/// Connections to observed destinations share the tracking map but hold at most half of it:
/// past that they are let through with their attempt counted but not their outcome, the named
/// destinations' connections keep their room, and the room comes back when they close.
#[test]
fn observed_connections_hold_at_most_half_of_the_tracking_map() {
    if !privileged("observed_share") {
        return;
    }
    let named = Server::start("127.0.0.222:0");
    let seen = Server::start("127.0.0.223:0");
    let policy = format!(
        "[daemon]\nmax_connections = 1024\n\n[[destination]]\nname = \"db\"\nmatch = [\"{}\"]\n[destination.bulkhead]\nmax_concurrent = 100000\n",
        named.addr
    );
    let cg = Cgroup::new("observed-share");
    let pins = PinDir::new("observed-share");
    let d = Daemon::start("observed-share", cg.path(), &pins, &policy, "2s");
    let hold = |ms: u64| Opts {
        hold: Some(Duration::from_millis(ms)),
        timeout: Some(5 * SECOND),
        ..Opts::default()
    };
    let observed_of = |d: &Daemon| {
        let s = d.status();
        let entry = s["observed"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|o| o["address"] == seen.addr.to_string())
                    .cloned()
            })
            .unwrap_or(serde_json::Value::Null);
        (s["kernel"]["observed_tracked"].clone(), entry)
    };
    // 700 connections to an address no policy names, held open.
    let watchers: Vec<_> = (0..7)
        .map(|_| spawn(cg.path(), &[seen.addr], 100, &hold(4000)))
        .collect();
    let deadline = Instant::now() + 10 * SECOND;
    let (tracked, entry) = loop {
        let (tracked, entry) = observed_of(&d);
        if entry["attempts"] == 700 && entry["successes"] == 512 || Instant::now() > deadline {
            break (tracked, entry);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(entry["attempts"], 700, "every attempt counted: {entry:#}");
    assert_eq!(entry["successes"], 512, "half the map tracked: {entry:#}");
    assert_eq!(tracked, 512, "observed_tracked");
    // Named connections still find the other half while the observed ones hold theirs.
    let clients: Vec<_> = (0..5)
        .map(|_| spawn(cg.path(), &[named.addr], 100, &hold(1000)))
        .collect();
    let v = d.wait_dest_for("db", 10 * SECOND, |v| v["active"] == 500);
    assert_eq!(v["active"], 500, "{v:#}");
    assert_eq!(v["untracked"], 0, "{v:#}");
    assert_eq!(d.status()["kernel"]["untracked"], 0);
    for c in clients.into_iter().chain(watchers) {
        assert!(c.wait().iter().all(|o| o.ok));
    }
    // Every entry given back: the same share is there for the next ones.
    let deadline = Instant::now() + 10 * SECOND;
    let (tracked, entry) = loop {
        let (tracked, entry) = observed_of(&d);
        if tracked == 0 && entry["closed"] == 512 || Instant::now() > deadline {
            break (tracked, entry);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(tracked, 0, "room given back: {entry:#}");
    assert_eq!(entry["closed"], 512, "{entry:#}");
    let v = d.wait_dest("db", |v| v["active"] == 0);
    assert_eq!(v["closed"], 500, "{v:#}");
}
