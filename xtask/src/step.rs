//! Progress output: every long step says what it does, and how long it took.

use std::{process::Command, time::Instant};

use anyhow::{bail, Context, Result};

pub fn say(msg: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {msg}");
}

/// Run `cmd` with its output shown, failing with `what` in the message.
pub fn run_inherit(what: &str, cmd: &mut Command) -> Result<()> {
    say(&format!("{what} ..."));
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    say(&format!(
        "{what}: done in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Like `run_inherit`, but the command writes into pipes that this process copies to its own
/// stdout and stderr. For a command that reopens its output by path (qemu's console does):
/// reopening a file this process's output was redirected to would truncate it, losing
/// everything printed before.
pub fn run_piped(what: &str, cmd: &mut Command) -> Result<()> {
    use std::process::Stdio;
    say(&format!("{what} ..."));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    let out = child
        .stdout
        .take()
        .map(|mut o| std::thread::spawn(move || std::io::copy(&mut o, &mut std::io::stdout())));
    let err = child
        .stderr
        .take()
        .map(|mut e| std::thread::spawn(move || std::io::copy(&mut e, &mut std::io::stderr())));
    let status = child.wait().with_context(|| format!("{what}: waiting"))?;
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    say(&format!(
        "{what}: done in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Run `cmd` quietly and return its stdout; `None` if it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where xtask keeps what it installs outside the system's packages
/// ($XDG_CACHE_HOME/resilience, else ~/.cache/resilience).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::path::PathBuf::from("/var/cache"))
        .join("resilience")
}
