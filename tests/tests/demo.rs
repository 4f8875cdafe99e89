//! Privileged: `cargo xtask demo` in a real terminal shows breakers opening and probing
//! within a minute, with nobody typing, and `q` leaves nothing behind.

use std::time::{Duration, Instant};

use resilience_tests::{
    privileged,
    tmux::{capture, exit_code, wait_screen_for, Session},
};

/// Names the demo gives what it makes (cgroup, pin dir, temp dir, processes).
const PREFIX: &str = "resilience-demo-";

fn leftovers() -> Vec<String> {
    let cgroups = resilience_tests::cgroup::cgroup2_root();
    let mut left = Vec::new();
    for dir in [cgroups, "/sys/fs/bpf".into(), std::env::temp_dir()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) {
                    left.push(e.path().display().to_string());
                }
            }
        }
    }
    let ps = std::process::Command::new("pgrep")
        .args(["-fa", "release/demo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    left.extend(ps.lines().map(str::to_string));
    left
}

#[test]
fn the_demo_shows_breakers_at_work_and_leaves_nothing_behind() {
    if !privileged("demo") {
        return;
    }
    assert_eq!(leftovers(), Vec::<String>::new(), "left by an earlier demo");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let s = Session::new("demo");
    s.keys(&[
        &format!(
            "cd {} && {cargo} xtask demo; echo demo-exited-$?",
            root.display()
        ),
        "Enter",
    ]);
    // Building is done by now (the test binaries include the demo); give cargo a moment.
    wait_screen_for(&s.0, "the dashboard", Duration::from_secs(60), |sc| {
        sc.contains("DESTINATION") && sc.contains("orders-db")
    });
    let shown = Instant::now();
    let (mut open, mut half_open) = (false, false);
    while shown.elapsed() < Duration::from_secs(60) && !(open && half_open) {
        let screen = capture(&s.0);
        for line in screen.lines() {
            open |= line.contains(" OPEN ");
            half_open |= line.contains(" HALF-OPEN ");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let screen = capture(&s.0);
    assert!(open, "no OPEN within 60 s:\n{screen}");
    assert!(half_open, "no HALF-OPEN within 60 s:\n{screen}");

    s.keys(&["q"]);
    let screen = wait_screen_for(&s.0, "the demo to exit", Duration::from_secs(15), |sc| {
        exit_code(sc, "demo").is_some()
    });
    assert_eq!(exit_code(&screen, "demo"), Some(0), "{screen}");
    assert!(screen.contains("are removed"), "{screen}");
    assert_eq!(leftovers(), Vec::<String>::new());
}
