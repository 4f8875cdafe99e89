//! Privileged: the operator surface against the real daemon: every control command, malformed
//! requests, the event stream, the Prometheus endpoint with exact counts, and the dashboard in
//! a real terminal (tmux).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    listener::{closed_port, closed_ports, Server},
    privileged,
    tmux::{exit_code, wait_screen, Session},
};
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

/// A connection to the control socket that sends raw bytes and reads reply lines.
struct Conn {
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl Conn {
    fn open(d: &Daemon) -> Conn {
        let s = UnixStream::connect(&d.socket).expect("connect control socket");
        s.set_read_timeout(Some(10 * SECOND)).expect("timeout");
        Conn {
            write: s.try_clone().expect("clone"),
            read: BufReader::new(s),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Value {
        self.write.write_all(bytes).expect("write request");
        self.reply()
    }

    fn send(&mut self, req: Value) -> Value {
        self.send_raw(format!("{req}\n").as_bytes())
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.read.read_line(&mut line).expect("read reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    }
}

fn error_of(v: &Value) -> String {
    assert_eq!(v["ok"], false, "expected an error reply: {v}");
    assert_eq!(v["v"], 1, "{v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_control_command_answers_and_acts() {
    if !privileged("every_control_command") {
        return;
    }
    let target = closed_port("127.0.0.70");
    let policy = format!(
        "[[destination]]\nname = \"svc\"\nmatch = [\"{target}\"]\nreject_errno = \"EHOSTUNREACH\"\n"
    );
    let cg = Cgroup::new("ctl");
    let pins = PinDir::new("ctl");
    let d = Daemon::start("ctl", cg.path(), &pins, &policy, "2s");
    let mut c = Conn::open(&d);

    let v = c.send(json!({"cmd": "version"}));
    assert_eq!((v["ok"].clone(), v["v"].clone()), (json!(true), json!(1)));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    // snapshot and status carry the same snapshot under their own names.
    let snap = c.send(json!({"cmd": "snapshot"}));
    assert_eq!(snap["snapshot"]["destinations"][0]["name"], "svc", "{snap}");
    let status = c.send(json!({"cmd": "status"}));
    assert_eq!(status["status"]["destinations"][0]["name"], "svc");

    let v = c.send(json!({"cmd": "trip", "name": "svc"}));
    assert_eq!(v["message"], "svc: closed -> open", "{v}");
    let got = connect_from(cg.path(), &[target], 1, SECOND);
    assert_eq!(got[0].errno, libc::EHOSTUNREACH, "tripped: {got:?}");

    // Disabled: observe only, whatever the breaker says; the kernel's own refusal comes back.
    let v = c.send(json!({"cmd": "disable", "name": "svc"}));
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("svc: disabled by operator"),
        "{v}"
    );
    let s = d.dest("svc");
    assert_eq!(
        (s["mode"].clone(), s["override"].clone()),
        (json!("disabled"), json!("disabled"))
    );
    let got = connect_from(cg.path(), &[target], 1, SECOND);
    assert_eq!(got[0].errno, libc::ECONNREFUSED, "disabled: {got:?}");

    // It stays disabled across a reload.
    let v = c.send(json!({"cmd": "reload"}));
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("policy reloaded"),
        "{v}"
    );
    assert_eq!(d.dest("svc")["mode"], "disabled");

    let v = c.send(json!({"cmd": "enable", "name": "svc"}));
    assert_eq!(
        v["message"], "svc: enabled, back to the policy's mode (enforce)",
        "{v}"
    );
    let s = d.dest("svc");
    assert_eq!(
        (s["mode"].clone(), s["override"].clone()),
        (json!("enforce"), Value::Null)
    );

    c.send(json!({"cmd": "trip", "name": "svc"}));
    let v = c.send(json!({"cmd": "reset", "name": "svc"}));
    assert_eq!(v["message"], "svc: open -> closed", "{v}");

    let v = c.send(json!({"cmd": "events"}));
    let messages: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    for want in [
        "svc: closed -> open: tripped by operator",
        "svc: disabled by operator",
        "policy reloaded",
        "svc: enabled",
        "svc: open -> closed: reset by operator",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(want)),
            "{want:?} not in {messages:#?}"
        );
    }
    let seqs: Vec<u64> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    for (req, want) in [
        (
            json!({"cmd": "trip", "name": "nope"}),
            "no destination named \"nope\"",
        ),
        (
            json!({"cmd": "disable", "name": "nope"}),
            "no destination named \"nope\"",
        ),
    ] {
        assert_eq!(error_of(&c.send(req)), want);
    }
}

/// The dashboard's `table` request: a page of rows in the order asked for, rates over the
/// last span, a tally of everything, and the whole status of the destination in detail only.
#[test]
fn table_pages_are_sorted_filtered_and_counted_from_the_kernel() {
    if !privileged("table_pages") {
        return;
    }
    let ip = "127.0.0.221";
    let addrs = closed_ports(ip, 30);
    let mut policy = String::new();
    for (i, a) in addrs.iter().enumerate() {
        policy.push_str(&format!(
            "[[destination]]\nname = \"svc-{i}\"\nmatch = [\"{a}\"]\n"
        ));
    }
    let cg = Cgroup::new("table");
    let pins = PinDir::new("table");
    let d = Daemon::start("table", cg.path(), &pins, &policy, "2s");
    let mut c = Conn::open(&d);
    // The first look sets the rates' baseline.
    let first = c.send(json!({"cmd": "table", "sort": "attempts", "limit": 5}));
    assert_eq!(first["snapshot"]["table"]["tally"]["named"], 30, "{first}");
    std::thread::sleep(Duration::from_millis(200));
    // Refused connects, fewer than a breaker's minimum calls: nothing trips.
    connect_from(cg.path(), &[addrs[3]], 4, SECOND);
    connect_from(cg.path(), &[addrs[7]], 2, SECOND);
    std::thread::sleep(SECOND);

    let v = c.send(json!({
        "cmd": "table", "sort": "attempts", "limit": 5, "detail": "svc-3"
    }));
    let s = &v["snapshot"];
    let page = &s["table"];
    assert_eq!(page["matched"], 30, "{v}");
    assert_eq!(page["offset"], 0);
    assert_eq!(page["tally"]["attempts"], 6, "{page}");
    let rows = page["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    assert_eq!(
        (rows[0]["name"].clone(), rows[1]["name"].clone()),
        (json!("svc-3"), json!("svc-7")),
        "busiest first: {page}"
    );
    // 4 connects over the span since the first look (about 1.2 s).
    let rate = rows[0]["attempts_per_s"].as_f64().expect("a rate");
    assert!((2.0..=4.0).contains(&rate), "attempts/s {rate}");
    assert_eq!(
        rows[0]["failures_per_s"], rows[0]["attempts_per_s"],
        "all refused"
    );
    assert_eq!(rows[0]["state"], "CLOSED");
    assert_eq!(rows[0]["destination"], "svc-3");
    // Only the destination in detail comes whole, with its policy.
    let dests = s["destinations"].as_array().expect("destinations");
    assert_eq!(dests.len(), 1, "{s}");
    assert_eq!(dests[0]["name"], "svc-3");
    assert_eq!(dests[0]["failures"]["refused"], 4);
    assert!(dests[0]["policy"].is_object(), "{}", dests[0]);
    assert_eq!(s["observed"], json!([]));

    // Filtered (svc-1 and svc-10..19), by name, the window moved back to end at the last row.
    let v = c.send(json!({
        "cmd": "table", "sort": "name", "filter": "SVC-1", "offset": 100, "limit": 4
    }));
    let page = &v["snapshot"]["table"];
    assert_eq!(page["matched"], 11, "{page}");
    assert_eq!(page["offset"], 7);
    let names: Vec<&str> = page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["svc-16", "svc-17", "svc-18", "svc-19"]);
    assert_eq!(page["tally"]["named"], 30, "the tally ignores the filter");

    assert!(error_of(&c.send(json!({"cmd": "table", "sort": "p99"}))).contains("unknown sort"));
}

#[test]
fn malformed_requests_get_errors_and_the_daemon_keeps_serving() {
    if !privileged("malformed_requests") {
        return;
    }
    let cg = Cgroup::new("malformed");
    let pins = PinDir::new("malformed");
    let d = Daemon::start(
        "malformed",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.71:1\"]\n",
        "2s",
    );
    // A follower that must keep receiving events through all of this.
    let mut follower = Conn::open(&d);
    let head = follower.send(json!({"cmd": "events", "follow": true}));
    assert_eq!(head["ok"], true, "{head}");

    let mut c = Conn::open(&d);
    let cases: [(&[u8], &str); 8] = [
        (b"{\"cmd\": \"stat\n", "not JSON: "),
        (b"\n", "not JSON: EOF while parsing"),
        (b"[\"status\"]\n", "a request is a JSON object"),
        (b"{\"cmd\": \"explode\"}\n", "unknown command \"explode\""),
        (b"{\"cmd\": 42}\n", "\"cmd\" must be a string, not a number"),
        (
            b"{\"cmd\": \"trip\", \"name\": 7}\n",
            "trip: \"name\" must be a string, not a number",
        ),
        (
            b"{\"cmd\": \"events\", \"follow\": \"yes\"}\n",
            "events: \"follow\" must be a bool",
        ),
        (b"\xff\xfe{}\n", "not JSON: "),
    ];
    for (bytes, want) in cases {
        let e = error_of(&c.send_raw(bytes));
        assert!(
            e.starts_with(want),
            "{:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
        // The same connection still works after each.
        assert_eq!(c.send(json!({"cmd": "version"}))["ok"], true);
    }

    // A 10 MB line: an error reply, then that connection is closed.
    let mut big = Conn::open(&d);
    let writer = {
        let mut w = big.write.try_clone().expect("clone");
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..10 {
                if w.write_all(&chunk).is_err() {
                    break; // the daemon stopped reading: expected
                }
            }
        })
    };
    let e = error_of(&big.reply());
    assert_eq!(e, "request longer than 1048576 bytes");
    let mut rest = Vec::new();
    let _ = big.read.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection is closed after the error");
    writer.join().expect("writer");

    // A client that connects and says nothing does not block others.
    let _silent = UnixStream::connect(&d.socket).expect("connect");
    let mut other = Conn::open(&d);
    assert_eq!(other.send(json!({"cmd": "status"}))["ok"], true);

    // Everyone else is still served, the follower included.
    let v = other.send(json!({"cmd": "trip", "name": "svc"}));
    assert_eq!(v["ok"], true, "{v}");
    let ev = follower.reply();
    assert!(
        ev["event"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("svc: closed -> open: tripped by operator")),
        "{ev}"
    );
}

#[test]
fn events_follow_prints_transitions_as_they_happen() {
    if !privileged("events_follow") {
        return;
    }
    let cg = Cgroup::new("follow");
    let pins = PinDir::new("follow");
    let d = Daemon::start(
        "follow",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.72:1\"]\n",
        "2s",
    );
    let mut child = Command::new(resilience_tests::daemon_bin())
        .args(["events", "--follow", "--json", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("resilience events --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Give the follower time to subscribe, then act.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = d.cli(&["trip", "svc"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + 5 * SECOND;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).expect("a JSON line per event");
                if v["to"] == "open" && v["name"] == "svc" {
                    break true;
                }
                seen.push(line);
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no open event in {seen:#?}");

    // The text form: one line per event, ISO time first.
    let (ok, out, err) = d.cli(&["events"]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.len() > 22 && last.as_bytes()[10] == b'T' && last.contains("  svc: closed -> open"),
        "{out}"
    );
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(5 * SECOND)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

fn sample(body: &str, metric: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_exactly_what_happened() {
    if !privileged("metrics_exact") {
        return;
    }
    let server = Server::start("127.0.0.73:0");
    let refusing = closed_port("127.0.0.74");
    let blocked = closed_port("127.0.0.75");
    let metrics = closed_port("127.0.0.1");
    let policy = format!(
        r#"
[daemon]
metrics = "{metrics}"

[[destination]]
name = "up"
match = ["{}"]

[[destination]]
name = "down"
match = ["{refusing}"]
[destination.breaker]
minimum_calls = 100

[[destination]]
name = "blocked"
match = ["{blocked}"]
mode = "forced-open"
"#,
        server.addr
    );
    let cg = Cgroup::new("metrics");
    let pins = PinDir::new("metrics");
    let d = Daemon::start("metrics", cg.path(), &pins, &policy, "2s");

    let got = connect_from(cg.path(), &[server.addr], 25, SECOND);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    let got = connect_from(cg.path(), &[refusing], 7, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    let got = connect_from(cg.path(), &[blocked], 5, SECOND);
    assert!(got.iter().all(|o| o.errno == libc::ECONNREFUSED), "{got:?}");
    // Closes finish asynchronously: wait until the kernel has seen them all.
    d.wait_dest("up", |v| v["closed"] == 25 && v["active"] == 0);

    let body = scrape(metrics);
    for (metric, want) in [
        (
            "resilience_connect_attempts_total{destination=\"up\"}",
            25.0,
        ),
        (
            "resilience_connect_successes_total{destination=\"up\"}",
            25.0,
        ),
        (
            "resilience_connect_duration_seconds_count{destination=\"up\"}",
            25.0,
        ),
        (
            "resilience_connect_duration_seconds_bucket{destination=\"up\",le=\"+Inf\"}",
            25.0,
        ),
        ("resilience_active_connections{destination=\"up\"}", 0.0),
        (
            "resilience_connect_attempts_total{destination=\"down\"}",
            7.0,
        ),
        (
            "resilience_connect_failures_total{destination=\"down\",reason=\"refused\"}",
            7.0,
        ),
        (
            "resilience_connect_failures_total{destination=\"down\",reason=\"timeout\"}",
            0.0,
        ),
        (
            "resilience_connect_successes_total{destination=\"down\"}",
            0.0,
        ),
        (
            "resilience_connect_attempts_total{destination=\"blocked\"}",
            5.0,
        ),
        (
            "resilience_connect_rejected_total{destination=\"blocked\",reason=\"breaker\"}",
            5.0,
        ),
        (
            "resilience_connect_rejected_total{destination=\"up\",reason=\"breaker\"}",
            0.0,
        ),
        (
            "resilience_breaker_state{destination=\"up\",state=\"closed\"}",
            1.0,
        ),
        (
            "resilience_breaker_state{destination=\"blocked\",state=\"open\"}",
            1.0,
        ),
        (
            "resilience_destination_mode{destination=\"blocked\",mode=\"forced-open\"}",
            1.0,
        ),
        ("resilience_ringbuf_lost_total", 0.0),
        ("resilience_fail_open_total", 0.0),
    ] {
        assert_eq!(sample(&body, metric), Some(want), "{metric}\n{body}");
    }
    let sum = sample(
        &body,
        "resilience_connect_duration_seconds_sum{destination=\"up\"}",
    )
    .expect("duration sum");
    assert!(
        sum > 0.0 && sum < 25.0 * 0.1,
        "25 loopback connects took {sum} s in all"
    );

    // A trip shows as a transition and a state.
    d.cli(&["trip", "up"]);
    let body = scrape(metrics);
    assert_eq!(
        sample(
            &body,
            "resilience_breaker_transitions_total{destination=\"up\",to=\"open\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "resilience_breaker_state{destination=\"up\",state=\"open\"}"
        ),
        Some(1.0)
    );

    // Anything but GET /metrics gets a plain error, and the endpoint keeps serving.
    let mut s = TcpStream::connect(metrics).expect("connect");
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(scrape(metrics).contains("resilience_connect_attempts_total"));
}

#[test]
fn dashboard_in_tmux_shows_a_trip_and_restores_the_terminal() {
    if !privileged("dashboard_in_tmux") {
        return;
    }
    let cg = Cgroup::new("tui");
    let pins = PinDir::new("tui");
    let d = Daemon::start(
        "tui",
        cg.path(),
        &pins,
        "[[destination]]\nname = \"checkout\"\nmatch = [\"127.0.0.76:443\"]\n",
        "2s",
    );
    let session = Session::new("tui");
    let name = session.0.as_str();
    let top = format!(
        "{} top --refresh 200ms --socket {}; echo top-exited-$?",
        resilience_tests::daemon_bin().display(),
        d.socket.display()
    );
    session.keys(&[&top, "Enter"]);
    wait_screen(name, "the dashboard", |s| {
        s.contains("checkout") && s.contains("CLOSED")
    });
    assert!(session.alternate_on());

    let (ok, _, err) = d.cli(&["trip", "checkout"]);
    assert!(ok, "{err}");
    let screen = wait_screen(name, "OPEN", |s| {
        s.lines()
            .any(|l| l.contains("checkout") && l.contains("OPEN"))
    });
    assert!(
        screen.contains("checkout: closed -> open: tripped by operator"),
        "{screen}"
    );

    // The detail view, and back.
    session.keys(&["Enter"]);
    wait_screen(name, "the detail view", |s| s.contains("Effective policy"));
    session.keys(&["Escape"]);
    wait_screen(name, "the table again", |s| s.contains("DESTINATION"));

    session.keys(&["q"]);
    let screen = wait_screen(name, "top to exit", |s| exit_code(s, "top").is_some());
    assert_eq!(exit_code(&screen, "top"), Some(0), "{screen}");
    // Restored: the main screen is back, with no dashboard left on it.
    assert!(!session.alternate_on(), "the terminal was not restored");
    assert!(!screen.contains("DESTINATION"), "{screen}");
}

#[test]
fn run_with_the_dashboard_logs_to_a_file_and_q_stops_the_daemon() {
    if !privileged("run_tui") {
        return;
    }
    let cg = Cgroup::new("runtui");
    let pins = PinDir::new("runtui");
    let dir = std::env::temp_dir().join(resilience_tests::unique("runtui"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[destination]]\nname = \"ledger\"\nmatch = [\"127.0.0.77:443\"]\n",
    )
    .expect("policy");
    let socket = dir.join("control.sock");
    let log = dir.join("daemon.log");
    let session = Session::new("runtui");
    let name = session.0.as_str();
    let run = format!(
        "{} run --tui --config {} --cgroup {} --socket {} --pin-dir {} --log-file {}; echo run-exited-$?",
        resilience_tests::daemon_bin().display(),
        policy.display(),
        cg.path().display(),
        socket.display(),
        pins.path.display(),
        log.display()
    );
    session.keys(&[&run, "Enter"]);
    let screen = wait_screen(name, "the dashboard", |s| {
        s.contains("ledger") && s.contains("CLOSED")
    });
    assert!(
        !screen.contains("INFO"),
        "a log line on the dashboard:\n{screen}"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("resilience is guarding outbound connects"),
        "{logged}"
    );

    session.keys(&["q"]);
    let screen = wait_screen(name, "run to exit", |s| exit_code(s, "run").is_some());
    assert_eq!(exit_code(&screen, "run"), Some(0), "{screen}");
    assert!(
        !socket.exists(),
        "the daemon removes its socket on the way out"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("detaching and exiting"), "{logged}");

    // SIGTERM (systemd's stop) ends the daemon, and the dashboard with it.
    session.keys(&["clear", "Enter"]);
    session.keys(&[&run, "Enter"]);
    wait_screen(name, "the dashboard again", |s| s.contains("ledger"));
    let killed = Command::new("pkill")
        .args([
            "-TERM",
            "-f",
            "--",
            &format!("--socket {}", socket.display()),
        ])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no process to signal");
    let screen = wait_screen(name, "run to exit on SIGTERM", |s| {
        exit_code(s, "run").is_some()
    });
    assert_eq!(exit_code(&screen, "run"), Some(0), "{screen}");
    assert!(!session.alternate_on(), "the terminal was not restored");
    let _ = std::fs::remove_dir_all(&dir);
}
