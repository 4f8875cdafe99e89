//! `cargo xtask fuzz`: coverage-guided fuzzing of the policy parser, the control request
//! parser and the kernel record decoder (fuzz/, cargo-fuzz and libFuzzer with AddressSanitizer,
//! on rustup's nightly: x86_64 ASan needs no rust-src). Installs cargo-fuzz when missing.
//! Results go to fuzz/results.md; a crashing input stops the run with its path. Once fixed,
//! the input belongs in fuzz/regressions/<target>/, which the ordinary tests replay.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::step::{output, run_inherit, say};

pub const TARGETS: &[&str] = &["policy", "request", "records"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run reported.
struct Stats {
    target: String,
    seconds: u64,
    executions: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if have.contains(CARGO_FUZZ_VERSION) {
        say(&format!(
            "fuzz: cargo-fuzz {CARGO_FUZZ_VERSION}: already installed"
        ));
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ])
    .current_dir(std::env::temp_dir());
    run_inherit(
        &format!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)"),
        &mut cmd,
    )
}

fn ensure_nightly() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if list.lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    run_inherit(
        "fuzz: installing rustup's nightly (cargo-fuzz needs it)",
        &mut cmd,
    )
    .context("cargo-fuzz needs a nightly compiler")
}

/// The last "#N DONE cov: C ft: F corp: K/..." line and the final stats of a libFuzzer log.
fn parse(log: &str, target: &str, seconds: u64) -> Stats {
    let mut s = Stats {
        target: target.into(),
        seconds,
        executions: 0,
        coverage: 0,
        features: 0,
        corpus: 0,
    };
    let num = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let word = rest.split_whitespace().next()?;
        word.split('/').next()?.parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') && line.contains("cov:") {
            s.coverage = num(line, "cov:").unwrap_or(s.coverage);
            s.features = num(line, "ft:").unwrap_or(s.features);
            s.corpus = num(line, "corp:").unwrap_or(s.corpus);
            if let Some(n) = line[1..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
            {
                s.executions = n;
            }
        }
        if let Some(n) = num(line, "stat::number_of_executed_units:") {
            s.executions = n;
        }
    }
    s
}

pub fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let dir = root.join("fuzz");
    let mut results = Vec::new();
    for &t in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = dir.join("corpus").join(t);
        let artifacts = dir.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let log_path = dir.join("artifacts").join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)?;
        say(&format!(
            "fuzz: {t} for {seconds}s (log: {}) ...",
            log_path.display()
        ));
        let start = Instant::now();
        let status = Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .arg(dir.join("seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            let crash = std::fs::read_dir(&artifacts)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().display().to_string())
                .collect::<Vec<_>>();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            bail!(
                "fuzz target {t} failed ({status}); inputs: {crash:?}\n{}\nFix it, then keep the input in fuzz/regressions/{t}/",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let s = parse(&text, t, start.elapsed().as_secs());
        say(&format!(
            "fuzz: {t}: {} executions, coverage {} edges, {} features, corpus {}, no findings",
            s.executions, s.coverage, s.features, s.corpus
        ));
        results.push(s);
    }
    let mut md = String::from(
        "# Fuzzing\n\n`cargo xtask fuzz` (cargo-fuzz, libFuzzer with AddressSanitizer, rustup's nightly). Each target runs one input through what the daemon does with it (resilience-daemon/src/fuzzing.rs); its checks must hold for any input. Inputs a target once failed on are kept in fuzz/regressions/ and replayed by `cargo xtask test`.\n\n| target | seconds | executions | coverage (edges) | features | corpus | findings |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in &results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | 0 |\n",
            s.target, s.seconds, s.executions, s.coverage, s.features, s.corpus
        ));
    }
    if only.is_none() {
        std::fs::write(dir.join("results.md"), md)?;
        say("fuzz: results in fuzz/results.md");
    }
    Ok(())
}
