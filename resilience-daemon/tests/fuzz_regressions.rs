//! Every input a fuzz target ever failed on (fuzz/regressions/<target>/), replayed through the
//! same code on every test run; and the seed corpora, which must pass too.

use std::path::Path;

fn replay(dir: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for sub in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub).join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("reading an input");
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn policy_inputs() {
    assert!(replay("policy", resilience_daemon::fuzzing::policy) > 0);
}

#[test]
fn request_inputs() {
    assert!(replay("request", resilience_daemon::fuzzing::request) > 0);
}

#[test]
fn record_inputs() {
    assert!(replay("records", resilience_daemon::fuzzing::records) > 0);
}
