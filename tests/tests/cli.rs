//! The CLI without root: `resilience check` on good and broken policy files.

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(resilience_tests::unique("check"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("policy.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(resilience_tests::daemon_bin())
        .arg("check")
        .arg(&file)
        .output()
        .expect("running resilience check");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), "FILE"),
    )
}

#[test]
fn check_prints_the_effective_policy() {
    let (ok, stdout, _) = check("[[destination]]\nname = \"db\"\nmatch = [\"10.0.0.0/8:5432\"]\n");
    assert!(ok);
    assert!(
        stdout.contains("db: mode=enforce reject_errno=ECONNREFUSED match=[10.0.0.0/8:5432]"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_column_and_exits_1() {
    let (ok, _, stderr) = check("[[destination]]\nname = \"db\"\nmatch = [\"10.0.0.0/33\"]\n");
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "FILE:3:10: \"10.0.0.0/33\": prefix length \"33\" is not in 0..=32"
    );
}

#[test]
fn the_default_policy_is_valid() {
    let text = include_str!("../../config/default.toml");
    let (ok, _, stderr) = check(text);
    assert!(ok, "{stderr}");
}

#[test]
fn the_example_policies_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples") {
        let path = entry.expect("entry").path();
        let (ok, stdout, stderr) = check(&std::fs::read_to_string(&path).expect("read"));
        assert!(ok, "{}: {stderr}", path.display());
        assert!(stdout.contains("breaker: window="), "{stdout}");
        n += 1;
    }
    assert!(n >= 3, "expected the three example policies, found {n}");
}

fn resilience(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(resilience_tests::daemon_bin())
        .args(args)
        .output()
        .expect("running resilience");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef resilience"),
        ("fish", "complete -c resilience"),
    ] {
        let (ok, out, err) = resilience(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?} in the script");
        for sub in ["status", "events", "top", "disable"] {
            assert!(out.contains(sub), "{shell}: {sub} missing");
        }
    }
    let (ok, _, err) = resilience(&["completions", "tcsh"]);
    assert!(!ok);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

#[test]
fn without_a_daemon_the_client_commands_say_what_to_check() {
    let socket = std::env::temp_dir().join(resilience_tests::unique("nosock"));
    let socket = socket.display().to_string();
    for cmd in [
        vec!["status"],
        vec!["events"],
        vec!["trip", "x"],
        vec!["disable", "x"],
        vec!["reload"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--socket", &socket]);
        let (ok, _, err) = resilience(&args);
        assert!(!ok, "{cmd:?} succeeded without a daemon");
        assert!(
            err.contains(&format!("connecting to {socket} (is the daemon running?")),
            "{cmd:?}: {err}"
        );
    }
}

#[test]
fn top_needs_a_terminal_and_says_so() {
    let (ok, _, err) = resilience(&["top", "--socket", "/nonexistent.sock"]);
    assert!(!ok);
    assert!(err.contains("the dashboard needs a terminal"), "{err}");
}

#[test]
fn a_bad_metrics_address_names_file_line_and_column() {
    let (ok, _, stderr) = check("[daemon]\nmetrics = \"0.0.0.0\"\n");
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "FILE:2:11: metrics address \"0.0.0.0\" is not IP:PORT or PORT (e.g. \"127.0.0.1:9464\")"
    );
}
