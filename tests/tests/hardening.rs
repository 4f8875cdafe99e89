//! Privileged: what an unprivileged local user or hostile input can do to the daemon and its
//! tools (issue "Hardening against local users and hostile input").

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use resilience_tests::{
    cgroup::Cgroup,
    client::{spawn, Opts},
    daemon::{run_to_end, Daemon, PinDir, StartOpts},
    listener::{closed_port, BlackHole, Server},
    privileged,
};
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);
/// The unprivileged user the tests act as.
const NOBODY: u32 = 65534;

fn chown(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

/// Finding 1: a user without privileges flooding unanswered connects to unnamed destinations
/// from one CPU evicted the tracking entries that held another destination's places.
#[test]
fn an_unprivileged_flood_cannot_evict_a_bulkheads_places() {
    if !privileged("flood") {
        return;
    }
    let server = Server::start("127.0.0.140:0");
    let hole = BlackHole::start("0.0.0.0");
    let policy = format!(
        "[[destination]]\nname = \"db\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\n[destination.bulkhead]\nmax_concurrent = 5\n",
        server.addr
    );
    let cg = Cgroup::new("flood");
    let pins = PinDir::new("flood");
    let d = Daemon::start("flood", cg.path(), &pins, &policy, "2s");
    let on_cpu0 = |ms: u64| Opts {
        cpu: Some(0),
        hold: Some(Duration::from_millis(ms)),
        ..Opts::default()
    };
    let holders = spawn(cg.path(), &[server.addr], 5, &on_cpu0(60_000));
    d.wait_dest("db", |v| v["active"] == 5);
    // 35,000 connects left in progress (the black hole never answers), from CPU 0, as nobody.
    let flood: Vec<_> = (1..=2)
        .map(|i| {
            let a: SocketAddr = format!("127.0.2.{i}:{}", hole.addr.port())
                .parse()
                .expect("addr");
            spawn(
                cg.path(),
                &[a],
                17_500,
                &Opts {
                    nonblocking: true,
                    user: Some(NOBODY),
                    summary: true,
                    ..on_cpu0(2000)
                },
            )
        })
        .collect();
    for f in flood {
        assert_eq!(f.wait_summary(), (17_500, 17_500));
    }
    holders.kill();
    let v = d.wait_dest_for("db", 10 * SECOND, |v| v["active"] == 0);
    assert_eq!(v["active"], 0, "places lost to the flood: {v:#}");
    assert_eq!(d.status()["kernel"]["untracked"], 0);
    let again = spawn(cg.path(), &[server.addr], 5, &on_cpu0(500)).wait();
    assert!(
        again.iter().all(|o| o.ok),
        "the bulkhead is whole: {again:?}"
    );
}

/// Finding 2: a pin directory another user created (and so could change) was used.
#[test]
fn a_pin_directory_another_user_owns_is_refused() {
    if !privileged("pin_dir_owner") {
        return;
    }
    let cg = Cgroup::new("pinowner");
    let pins = PinDir::new("pinowner");
    std::fs::create_dir(&pins.path).expect("mkdir");
    chown(&pins.path, NOBODY);
    let socket = std::env::temp_dir().join(resilience_tests::unique("pinowner.sock"));
    let (code, _, err) = run_to_end(
        &[
            "run",
            "--cgroup",
            &cg.path().display().to_string(),
            "--pin-dir",
            &pins.path.display().to_string(),
            "--socket",
            &socket.display().to_string(),
        ],
        20 * SECOND,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "pin directory {} is owned by uid {NOBODY}",
            pins.path.display()
        )) && err.contains("Remove it"),
        "{err}"
    );
    // Owned by root but writable by others: refused too.
    chown(&pins.path, 0);
    std::fs::set_permissions(&pins.path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, _, err) = run_to_end(
        &[
            "run",
            "--cgroup",
            &cg.path().display().to_string(),
            "--pin-dir",
            &pins.path.display().to_string(),
            "--socket",
            &socket.display().to_string(),
        ],
        20 * SECOND,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mode 0777"), "{err}");
}

/// Finding 3: 3,000 connections to the metrics endpoint from an unprivileged user used up the
/// daemon's descriptors: reloads failed and the control socket stopped answering.
#[test]
fn metrics_connections_cannot_exhaust_the_daemons_descriptors() {
    if !privileged("fd_exhaustion") {
        return;
    }
    let metrics = closed_port("127.0.0.141");
    let cg = Cgroup::new("fds");
    let pins = PinDir::new("fds");
    let policy = format!("[daemon]\nmetrics = \"{metrics}\"\n\n[[destination]]\nname = \"a\"\nmatch = [\"127.0.0.142:1\"]\n");
    // The daemon's own limit stays at 1024 (a soft limit it cannot lift): bounds must hold.
    let d = Daemon::start_with(
        "fds",
        cg.path(),
        &pins,
        &policy,
        "2s",
        StartOpts {
            wrapper: vec!["prlimit".into(), "--nofile=1024:1024".into(), "--".into()],
            ..StartOpts::default()
        },
    );
    // The flood comes from outside the guarded cgroup, as nobody.
    let other = Cgroup::new("fds-client");
    let flood = spawn(
        other.path(),
        &[metrics],
        3000,
        &Opts {
            hold: Some(Duration::from_millis(4000)),
            user: Some(NOBODY),
            nonblocking: true,
            summary: true,
            ..Opts::default()
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(
        &d.config,
        format!("{policy}[[destination]]\nname = \"b\"\nmatch = [\"127.0.0.143:1\"]\n"),
    )
    .expect("write");
    let asked = Instant::now();
    let (ok, out, err) = d.cli(&["reload"]);
    assert!(ok, "reload during the flood: {err}");
    assert!(out.contains("2 destinations"), "{out}");
    for _ in 0..5 {
        let (ok, _, err) = d.cli(&["status"]);
        assert!(ok, "{err}");
    }
    assert!(asked.elapsed() < 5 * SECOND, "{:?}", asked.elapsed());
    let _ = flood.wait_summary();
    // The flood's connections still queued at the listener are accepted and closed first; a
    // scrape among them may be shed ("503 busy", as Prometheus would retry it). Served within
    // a few seconds, every time: no descriptor was lost.
    let scrape = || {
        let mut s = TcpStream::connect(metrics).expect("scrape after the flood");
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        line
    };
    let after = Instant::now();
    let mut line = scrape();
    while !line.starts_with("HTTP/1.1 200") && after.elapsed() < 3 * SECOND {
        std::thread::sleep(Duration::from_millis(100));
        line = scrape();
    }
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    for _ in 0..5 {
        let line = scrape();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    }
}

/// Finding 4: `events --follow` lost events right after the backlog (a reader that threw away
/// what it had buffered) and printed "trailing characters".
#[test]
fn events_follow_loses_nothing_at_15k_events_a_second() {
    if !privileged("events_follow_lossless") {
        return;
    }
    let cg = Cgroup::new("lossless");
    let pins = PinDir::new("lossless");
    let d = Daemon::start(
        "lossless",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.144:1\"]\n[[destination]]\nname = \"svc2\"\nmatch = [\"127.0.0.145:1\"]\n",
        "2s",
    );
    // Events flow from two connections at once (two destinations) for 3 s; the follower
    // joins half a second in, so that its backlog and the stream arrive together.
    let start = Instant::now();
    let load = |name: &'static str| {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let mut c = UnixStream::connect(&socket).expect("connect");
            let mut r = BufReader::new(c.try_clone().expect("clone"));
            let mut n = 0u64;
            while start.elapsed() < 3 * SECOND {
                let cmd = if n.is_multiple_of(2) { "trip" } else { "reset" };
                c.write_all(format!("{}\n", json!({"cmd": cmd, "name": name})).as_bytes())
                    .expect("write");
                let mut l = String::new();
                r.read_line(&mut l).expect("read");
                n += 1;
            }
            n
        })
    };
    let second = load("svc2");
    let first = load("svc");
    std::thread::sleep(Duration::from_millis(500));
    let mut cli = Command::new(resilience_tests::daemon_bin())
        .args(["events", "--follow", "--json", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("events --follow");
    // Read as it comes: a full pipe would stall the reader, not the daemon.
    let stdout = cli.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut n = first.join().expect("first client");
    n += second.join().expect("second client");
    let rate = n as f64 / 3.0;
    std::thread::sleep(Duration::from_millis(500));
    let _ = cli.kill();
    let out = cli.wait_with_output().expect("output");
    let lines = reader.join().expect("reader");
    let text = lines.join("\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("missed") && !err.contains("invalid JSON"),
        "{err}"
    );
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    let gaps: Vec<_> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(gaps.is_empty(), "gaps {gaps:?} at {rate:.0} events/s");
    // The follower joined late: it has the last 1000 before it joined, then everything.
    assert!(
        seqs.len() as u64 >= n / 2,
        "{} events printed of {n} made",
        seqs.len()
    );
    assert!(rate >= 5000.0, "only {rate:.0} events/s were made");
    eprintln!("{} events at {rate:.0} events/s, none lost", seqs.len());
}

/// Finding 5: the CLI hid the daemon's own refusal behind "Broken pipe", panicked when its
/// output was closed, and carried escape sequences from a policy to the terminal.
#[test]
fn the_cli_tells_the_daemons_refusal_ends_quietly_and_escapes_policy_text() {
    if !privileged("cli_honest") {
        return;
    }
    let cg = Cgroup::new("honest");
    let pins = PinDir::new("honest");
    let mut policy = String::new();
    for i in 0..400 {
        policy.push_str(&format!(
            "[[destination]]\nname = \"svc-{i}\"\nmatch = [\"127.3.{}.{}:1\"]\n",
            i / 256,
            i % 256
        ));
    }
    let d = Daemon::start("honest", cg.path(), &pins, &policy, "2s");
    // 64 clients that say nothing: the 65th is told why.
    let silent: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&d.socket).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, _, err) = d.cli(&["status"]);
    assert!(!ok);
    assert!(err.contains("more than 64 clients; try again"), "{err}");
    drop(silent);
    std::thread::sleep(Duration::from_millis(200));
    // A reader that stops early: no panic, exit 0 or 141 (SIGPIPE).
    for cmd in ["status", "status --json"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{} {cmd} --socket {} | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}",
                resilience_tests::daemon_bin().display(),
                d.socket.display()
            ))
            .output()
            .expect("bash");
        let rc = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(rc == "0" || rc == "141", "{cmd}: exit {rc}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{cmd}: {err}"
        );
    }
    // Escape sequences in a policy reach no terminal: check, reload, events, the log.
    let evil = format!("{policy}\"\\u001b]0;PWNED\\u0007\\u001b[2J\" = 1\n");
    let file = d.config.with_file_name("evil.toml");
    std::fs::write(&file, &evil).expect("write");
    let (code, _, err) = run_to_end(&["check", &file.display().to_string()], 10 * SECOND);
    assert_eq!(code, Some(1));
    assert!(err.contains("\\u{1b}]0;PWNED"), "{err}");
    std::fs::write(&d.config, &evil).expect("write");
    let (ok, _, err) = d.cli(&["reload"]);
    assert!(!ok);
    let (_, events, _) = d.cli(&["events"]);
    for (what, text) in [("check", err.as_str()), ("events", events.as_str())] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{what}: {text:?}"
        );
    }
    let log = d.log_text();
    assert!(
        log.contains("PWNED") && !log.contains("\u{1b}]0;"),
        "the log carries the raw bytes"
    );
}

/// Finding 6: `--log-file` followed a symlink planted in a world-writable directory, and
/// created the log 0644.
#[test]
fn the_log_file_is_never_opened_through_a_link_or_in_someone_elses_directory() {
    if !privileged("log_file") {
        return;
    }
    let cg = Cgroup::new("logfile");
    let pins = PinDir::new("logfile");
    let base = std::env::temp_dir().join(resilience_tests::unique("logfile"));
    std::fs::create_dir_all(&base).expect("dir");
    let victim = base.join("victim");
    std::fs::write(&victim, "keep\n").expect("victim");
    let run = |log: &std::path::Path| {
        let socket = base.join(resilience_tests::unique("s.sock"));
        run_to_end(
            &[
                "run",
                "--tui",
                "--cgroup",
                &cg.path().display().to_string(),
                "--pin-dir",
                &pins.path.display().to_string(),
                "--socket",
                &socket.display().to_string(),
                "--log-file",
                &log.display().to_string(),
            ],
            20 * SECOND,
        )
    };
    // A world-writable directory a user owns, with a link planted in it.
    let shared = base.join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    chown(&shared, NOBODY);
    std::os::unix::fs::symlink(&victim, shared.join("resilience.log")).expect("link");
    let (code, _, err) = run(&shared.join("resilience.log"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is writable by anyone and not owned by root"),
        "{err}"
    );
    // A link in root's own sticky /tmp-like directory: O_NOFOLLOW refuses it.
    let sticky = base.join("sticky");
    std::fs::create_dir(&sticky).expect("dir");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    std::os::unix::fs::symlink(&victim, sticky.join("resilience.log")).expect("link");
    let (code, _, err) = run(&sticky.join("resilience.log"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a symbolic link is refused"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep\n");
    // A new log file is for root's eyes only.
    let fresh = sticky.join("new.log");
    let _ = run(&fresh);
    let mode = std::fs::metadata(&fresh)
        .expect("created")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let _ = std::fs::remove_dir_all(&base);
}

/// Finding 10 (in part): a refresh below 100 ms is refused.
#[test]
fn top_refuses_a_refresh_below_100ms() {
    let (code, _, err) = run_to_end(&["top", "--refresh", "50ms"], 10 * SECOND);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refresh must be at least 100ms"), "{err}");
}
