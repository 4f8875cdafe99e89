//! Privileged: what changes on older kernels, forced here by the daemon's debug switch. Before
//! Linux 5.18 cgroup programs have no bpf_set_retval: a rejected connect gets EPERM, and the
//! daemon says so.

use std::time::Duration;

use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir, StartOpts},
    listener::Server,
    privileged,
};

#[test]
fn without_bpf_set_retval_a_rejected_connect_gets_eperm() {
    if !privileged("no_retval") {
        return;
    }
    let server = Server::start("127.0.0.190:0");
    let policy = format!(
        "[[destination]]\nname = \"down\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\nreject_errno = \"EHOSTUNREACH\"\n",
        server.addr
    );
    let cg = Cgroup::new("no-retval");
    let pins = PinDir::new("no-retval");
    let opts = StartOpts {
        env: vec![("RESILIENCE_DEBUG_NO_RETVAL".into(), "1".into())],
        ..StartOpts::default()
    };
    let d = Daemon::start_with("no-retval", cg.path(), &pins, &policy, "2s", opts);
    let got = connect_from(cg.path(), &[server.addr], 3, Duration::from_secs(1));
    assert!(got.iter().all(|o| o.errno == libc::EPERM), "{got:?}");
    let s = d.status();
    assert_eq!(s["daemon"]["reject_errno"], false, "{:#}", s["daemon"]);
    assert_eq!(d.dest("down")["rejected"]["breaker"], 3);
    let events = s["events"].to_string();
    assert!(
        events.contains("reject_errno is not available on this kernel (bpf_set_retval needs Linux 5.18): rejected connects get EPERM"),
        "{events}"
    );
    drop(d);
    // The same policy on this kernel, as it is: the chosen errno.
    let d = Daemon::start("no-retval", cg.path(), &pins, &policy, "2s");
    let got = connect_from(cg.path(), &[server.addr], 1, Duration::from_secs(1));
    assert_eq!(got[0].errno, libc::EHOSTUNREACH, "{got:?}");
    assert_eq!(d.status()["daemon"]["reject_errno"], true);
}
