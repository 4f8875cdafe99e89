//! Privileged: `resilience explain` names the destination the hook really charges, by the
//! hook's precedence, and what a connect gets now; with --config it gives the same answer
//! from the file alone.

use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    daemon_bin,
    listener::{closed_port, Server},
    privileged,
};
use serde_json::Value;

fn explain(d: &Daemon, addr: &str) -> Value {
    let (ok, out, err) = d.cli(&["explain", addr, "--json"]);
    assert!(ok, "explain {addr}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn explain_names_the_destination_the_hook_charges() {
    if !privileged("explain") {
        return;
    }
    let server = Server::start("127.0.0.150:0");
    let down = closed_port("127.0.0.152");
    let port = server.addr.port();
    let policy = format!(
        "[[destination]]\nname = \"wide\"\nmatch = [\"127.0.0.150\"]\n\n[[destination]]\nname = \"svc\"\nmatch = [\"127.0.0.0/24:{port}\"]\n\n[[destination]]\nname = \"down\"\nmatch = [\"{down}\"]\nmode = \"forced-open\"\nreject_errno = \"EHOSTUNREACH\"\n"
    );
    let cg = Cgroup::new("explain");
    let pins = PinDir::new("explain");
    let d = Daemon::start("explain", cg.path(), &pins, &policy, "2s");

    // The /24 on the connect's port beats the /32 on any port.
    let v = explain(&d, &server.addr.to_string());
    assert_eq!(v["destination"], "svc", "{v:#}");
    assert_eq!(v["rule"]["kind"], "cidr_port", "{v:#}");
    assert_eq!(v["rule"]["prefix_len"], 24, "{v:#}");
    assert_eq!(v["shadowed"], serde_json::json!(["wide"]), "{v:#}");
    assert_eq!(v["now"]["admitted"], true, "{v:#}");
    let got = connect_from(cg.path(), &[server.addr], 1, Duration::from_secs(1));
    assert!(got[0].ok, "{got:?}");
    let svc = d.wait_dest("svc", |v| v["attempts"] == 1);
    assert_eq!(svc["attempts"], 1, "{svc:#}");
    assert_eq!(d.dest("wide")["attempts"], 0);

    // Another port of the /32: the CIDR on any port.
    let v = explain(&d, "127.0.0.150:9");
    assert_eq!(v["destination"], "wide", "{v:#}");
    assert_eq!(v["rule"]["kind"], "cidr_any_port", "{v:#}");

    // Forced-open: rejected now, with its errno, as the application then sees.
    let v = explain(&d, &down.to_string());
    assert_eq!(v["destination"], "down", "{v:#}");
    assert_eq!(v["rule"]["kind"], "exact", "{v:#}");
    assert_eq!(v["now"]["admitted"], false, "{v:#}");
    assert!(
        v["now"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("EHOSTUNREACH")),
        "{v:#}"
    );
    let got = connect_from(cg.path(), &[down], 1, Duration::from_secs(1));
    assert_eq!(got[0].errno, libc::EHOSTUNREACH, "{got:?}");

    // Nothing matches: observed.
    let v = explain(&d, "127.0.0.151:80");
    assert_eq!(v["destination"], Value::Null, "{v:#}");

    // The text form says the same.
    let (ok, text, err) = d.cli(&["explain", &server.addr.to_string()]);
    assert!(ok, "{err}");
    assert!(text.contains("-> destination \"svc\""), "{text}");
    assert!(text.contains("also matches \"wide\""), "{text}");

    // Without a daemon, from the file: the same destination and rule, state unknown.
    let out = std::process::Command::new(daemon_bin())
        .args(["explain", &server.addr.to_string(), "--json", "--config"])
        .arg(&d.config)
        .args(["--socket", "/nonexistent/resilience.sock"])
        .output()
        .expect("running resilience");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(f["destination"], "svc", "{f:#}");
    assert_eq!(f["rule"], v_rule(&explain(&d, &server.addr.to_string())));
    assert_eq!(f["now"], Value::Null);

    // No daemon and no --config: told how to do without one.
    let out = std::process::Command::new(daemon_bin())
        .args([
            "explain",
            "127.0.0.1:80",
            "--socket",
            "/nonexistent/resilience.sock",
        ])
        .output()
        .expect("running resilience");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config FILE"), "{err}");
}

fn v_rule(v: &Value) -> Value {
    v["rule"].clone()
}
