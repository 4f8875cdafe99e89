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
