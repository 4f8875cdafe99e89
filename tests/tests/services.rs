//! Privileged: services (issue "Per-service policies, kernel-enforced connect deadlines,
//! early slow-call detection, retry budgets", item 1). Two services in sibling cgroups under
//! the guarded one; a destination scoped to services guards each one's processes with its own
//! breaker and leaves every other process observed.

use std::time::{Duration, Instant};

use libc::{EAGAIN, ECONNREFUSED};
use resilience_tests::{
    cgroup::Cgroup,
    client::connect_from,
    daemon::{Daemon, PinDir},
    listener::{closed_port, Server},
    privileged,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn services(cg: &Cgroup) -> String {
    format!(
        "[[service]]\nname = \"checkout\"\ncgroup = \"{}\"\n\n[[service]]\nname = \"batch\"\ncgroup = \"{}\"\n\n",
        cg.path().join("checkout").display(),
        cg.path().join("batch").display(),
    )
}

/// A forced-open destination scoped to one service rejects only that service's processes;
/// the other service's connects, and those of processes in no service, reach the address.
#[test]
fn a_destination_scoped_to_one_service_rejects_only_its_processes() {
    if !privileged("services") {
        return;
    }
    let server = Server::start("127.0.0.215:0");
    let cg = Cgroup::new("services-scope");
    let checkout = cg.child("checkout");
    let batch = cg.child("batch");
    let pins = PinDir::new("services-scope");
    let policy = format!(
        "{}[[destination]]\nname = \"payments\"\nmatch = [\"{}\"]\nmode = \"forced-open\"\nreject_errno = \"EAGAIN\"\nservices = [\"checkout\"]\n",
        services(&cg),
        server.addr
    );
    let d = Daemon::start("services-scope", cg.path(), &pins, &policy, "2s");

    let got = connect_from(checkout.path(), &[server.addr], 3, TIMEOUT);
    assert!(
        got.iter().all(|o| !o.ok && o.errno == EAGAIN),
        "checkout's connects are rejected: {got:?}"
    );
    let got = connect_from(batch.path(), &[server.addr], 3, TIMEOUT);
    assert!(
        got.iter().all(|o| o.ok),
        "batch's connects reach the address: {got:?}"
    );
    // A process in the guarded cgroup but in no service.
    let got = connect_from(cg.path(), &[server.addr], 2, TIMEOUT);
    assert!(got.iter().all(|o| o.ok), "unscoped processes too: {got:?}");
    assert_eq!(server.wait_accepted(5), 5);

    let v = d.dest("payments@checkout");
    assert_eq!(v["service"], "checkout", "{v:#}");
    assert_eq!(v["rejected"]["breaker"], 3, "{v:#}");
    assert_eq!(v["attempts"], 3, "only checkout's connects are its: {v:#}");
    // The others' are observed, under the address.
    let s = d.status();
    let observed = s["observed"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|o| o["address"] == server.addr.to_string())
                .cloned()
        })
        .unwrap_or_else(|| panic!("{} not observed: {s:#}", server.addr));
    assert_eq!(observed["attempts"], 5, "{observed:#}");
    assert!(
        s["destinations"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["service"] == "checkout")),
        "one entry, for checkout: {s:#}"
    );
    drop(d);
    drop((checkout, batch));
}

/// One destination, two services: a breaker tripped by one service's failures leaves the
/// other service's connects admitted, and each shows as its own entry, metric series and
/// dashboard row.
#[test]
fn each_service_has_its_own_breaker() {
    if !privileged("services") {
        return;
    }
    let server = Server::start("127.0.0.216:0");
    let refusing = closed_port("127.0.0.216");
    let metrics = closed_port("127.0.0.1");
    let cg = Cgroup::new("services-breakers");
    let checkout = cg.child("checkout");
    let batch = cg.child("batch");
    let pins = PinDir::new("services-breakers");
    let policy = format!(
        "[daemon]\nmetrics = \"{metrics}\"\n\n{}[[destination]]\nname = \"api\"\nmatch = [\"{}\", \"{refusing}\"]\nreject_errno = \"EAGAIN\"\nservices = [\"checkout\", \"batch\"]\n[destination.breaker]\nconsecutive_failures = 3\nopen_duration = \"60s\"\n",
        services(&cg),
        server.addr
    );
    let d = Daemon::start("services-breakers", cg.path(), &pins, &policy, "2s");

    // checkout's failures trip checkout's breaker.
    let got = connect_from(checkout.path(), &[refusing], 3, TIMEOUT);
    assert!(got.iter().all(|o| o.errno == ECONNREFUSED), "{got:?}");
    let v = d.wait_dest("api@checkout", |v| v["state"] == "open");
    assert_eq!(v["state"], "open", "{v:#}");
    let got = connect_from(checkout.path(), &[server.addr], 2, TIMEOUT);
    assert!(
        got.iter().all(|o| o.errno == EAGAIN),
        "checkout is rejected: {got:?}"
    );
    // batch's breaker is its own: closed, and its connects are admitted.
    let got = connect_from(batch.path(), &[server.addr, refusing], 2, TIMEOUT);
    let ok = got.iter().filter(|o| o.ok).count();
    let refused = got.iter().filter(|o| o.errno == ECONNREFUSED).count();
    assert_eq!((ok, refused), (2, 2), "batch is admitted: {got:?}");
    let b = d.wait_dest("api@batch", |v| v["successes"] == 2);
    assert_eq!(b["state"], "closed", "{b:#}");
    assert_eq!(b["successes"], 2, "{b:#}");
    assert_eq!(b["rejected"]["breaker"], 0, "{b:#}");
    let c = d.dest("api@checkout");
    assert_eq!(c["rejected"]["breaker"], 2, "{c:#}");

    // `trip --service` acts on one service's breaker only; `reset` without it on all.
    let (ok, out, err) = d.cli(&["trip", "api", "--service", "batch"]);
    assert!(ok, "{out}{err}");
    assert_eq!(d.dest("api@batch")["state"], "open");
    let (ok, out, err) = d.cli(&["reset", "api"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("api@checkout: open -> closed"), "{out}");
    assert!(out.contains("api@batch: open -> closed"), "{out}");

    // Metrics: one series per service.
    let text = resilience_tests::scrape_metrics(metrics);
    for svc in ["checkout", "batch"] {
        let series =
            format!("resilience_connect_attempts_total{{destination=\"api\",service=\"{svc}\"}}");
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
    drop(d);
    drop((checkout, batch));
}

/// A service's cgroup removed and created again (a restarted unit) stays guarded, with its
/// breaker as it was: an open breaker still rejects the new cgroup's first connect.
#[test]
fn a_services_recreated_cgroup_stays_guarded() {
    if !privileged("services") {
        return;
    }
    let server = Server::start("127.0.0.217:0");
    let cg = Cgroup::new("services-restart");
    let checkout = cg.child("checkout");
    let batch = cg.child("batch");
    let pins = PinDir::new("services-restart");
    let policy = format!(
        "{}[[destination]]\nname = \"api\"\nmatch = [\"{}\"]\nreject_errno = \"EAGAIN\"\nservices = [\"checkout\"]\n[destination.breaker]\nopen_duration = \"60s\"\n",
        services(&cg),
        server.addr
    );
    let d = Daemon::start("services-restart", cg.path(), &pins, &policy, "2s");
    let (ok, out, err) = d.cli(&["trip", "api", "--service", "checkout"]);
    assert!(ok, "{out}{err}");
    let got = connect_from(checkout.path(), &[server.addr], 1, TIMEOUT);
    assert_eq!(got[0].errno, EAGAIN, "{got:?}");

    for round in 0..3 {
        drop(checkout_cgroup_of(&cg));
        // Created again, and a process moved in and connecting at once: the new cgroup is
        // known from its creation (the cgroup_mkdir tracepoint), not a tick later.
        let again = cg.child("checkout");
        let started = Instant::now();
        let got = connect_from(again.path(), &[server.addr], 1, TIMEOUT);
        assert_eq!(
            got[0].errno,
            EAGAIN,
            "round {round}: the recreated cgroup's first connect ({:?} after mkdir): {got:?}\n{}",
            started.elapsed(),
            d.log_text()
        );
        drop(again);
        // And the same cgroup path again, this time left for the daemon's own look.
        let again = cg.child("checkout");
        std::thread::sleep(Duration::from_millis(150));
        let got = connect_from(again.path(), &[server.addr], 1, TIMEOUT);
        assert_eq!(got[0].errno, EAGAIN, "round {round}: {got:?}");
        std::mem::forget(again);
    }
    let v = d.dest("api@checkout");
    assert_eq!(v["state"], "open", "the breaker was kept: {v:#}");
    assert_eq!(v["rejected"]["breaker"], 7, "{v:#}");
    let events = d.status()["events"].to_string();
    assert!(
        events.contains("service checkout: cgroup"),
        "the daemon said it followed the cgroup: {events}"
    );
    // The other service never was guarded for it.
    let got = connect_from(batch.path(), &[server.addr], 1, TIMEOUT);
    assert!(got[0].ok, "{got:?}");
    drop(checkout);
    drop(d);
    drop(batch);
}

/// The checkout cgroup as a value that removes it when dropped (it may have been created by
/// an earlier round through a forgotten handle).
fn checkout_cgroup_of(cg: &Cgroup) -> Cgroup {
    Cgroup {
        path: cg.path().join("checkout"),
    }
}
