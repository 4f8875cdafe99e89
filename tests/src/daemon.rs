//! The real `resilience` binary, run against a child cgroup with its own socket and pins.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

/// A bpffs directory for one test's pinned maps, removed at the end of the test.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        PinDir {
            path: PathBuf::from("/sys/fs/bpf")
                .join(format!("resilience-test-{}", crate::unique(tag))),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The policy file the daemon reads (and reloads).
    pub config: PathBuf,
    args: Vec<String>,
    opts: StartOpts,
}

/// How to start the daemon beyond policy, cgroup, pins and lease.
#[derive(Debug, Clone, Default)]
pub struct StartOpts {
    /// Run the daemon through this command (e.g. `unshare -m ... sh -c '... exec "$@"' --`).
    pub wrapper: Vec<String>,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    /// Another `resilience` binary than the one under test (an earlier build, to compare).
    pub bin: Option<PathBuf>,
}

impl Daemon {
    /// Start the daemon with `policy` (TOML text) guarding `cgroup`; returns once it answers.
    pub fn start(tag: &str, cgroup: &Path, pins: &PinDir, policy: &str, lease: &str) -> Daemon {
        Daemon::start_with(tag, cgroup, pins, policy, lease, StartOpts::default())
    }

    pub fn start_with(
        tag: &str,
        cgroup: &Path,
        pins: &PinDir,
        policy: &str,
        lease: &str,
        opts: StartOpts,
    ) -> Daemon {
        let name = crate::unique(tag);
        let dir = std::env::temp_dir().join(format!("resilience-test-{name}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("policy.toml");
        std::fs::write(&config, policy).expect("writing policy");
        let socket = dir.join("control.sock");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--cgroup".into(),
            cgroup.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--pin-dir".into(),
            pins.path.display().to_string(),
            "--lease".into(),
            lease.into(),
        ];
        args.extend(opts.extra_args.iter().cloned());
        let mut d = Daemon {
            child: None,
            socket,
            log: dir.join("daemon.log"),
            config,
            args,
            opts,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        // Appended: a restart keeps the earlier daemon's log, which a failing test prints.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let bin = self.opts.bin.clone().unwrap_or_else(crate::daemon_bin);
        let mut cmd = match self.opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting resilience");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Ready when it answers on its socket: a one-row page, not a whole snapshot (with
            // 10k destinations that is tens of MB the daemon would build just for this).
            let page = serde_json::json!({"cmd": "table", "limit": 1});
            if self
                .request(&page)
                .is_some_and(|v| v["snapshot"]["table"].is_object())
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "daemon exited ({status}) while starting:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer within 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start again with the same arguments (same pins, cgroup and socket).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Start again after `kill` (no stop first).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    /// Whether the daemon process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(Pid::from_raw(c.id() as i32), sig).expect("kill");
        }
    }

    /// SIGKILL and reap: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let status = c.wait().expect("wait");
            assert!(
                status.success(),
                "daemon exited with {status}:\n{}",
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_status(&self) -> Option<Value> {
        let v = self.request(&serde_json::json!({"cmd": "status"}))?;
        (v["ok"] == Value::Bool(true)).then(|| v["status"].clone())
    }

    /// One request on the control socket; the whole reply.
    pub fn request(&self, req: &Value) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{req}\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Run `resilience ARGS --socket <this daemon's>`: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(crate::daemon_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("running resilience");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The daemon's snapshot (`resilience status --json`).
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed:\n{}", self.log_text()))
    }

    /// One destination's entry in the snapshot; "name@service" for a per-service one.
    pub fn dest(&self, name: &str) -> Value {
        let s = self.status();
        s["destinations"]
            .as_array()
            .and_then(|a| a.iter().find(|d| label(d) == name))
            .cloned()
            .unwrap_or_else(|| panic!("no destination {name:?} in {s:#}"))
    }

    /// Poll `dest(name)` until `pred` holds; the last value otherwise. For counts the kernel
    /// updates asynchronously (a close completes after the peer's FIN).
    pub fn wait_dest(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_dest_for(name, Duration::from_secs(5), pred)
    }

    /// Wait until the snapshot has destination `name` (after a reload).
    pub fn wait_dest_for_existence(&self, name: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status();
            if let Some(d) = s["destinations"]
                .as_array()
                .and_then(|a| a.iter().find(|d| label(d) == name))
            {
                return d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no destination {name:?} after {within:?}: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_dest_for(
        &self,
        name: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let d = self.dest(name);
            if pred(&d) || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A status entry's name, with "@service" for a per-service one.
pub fn label(d: &Value) -> String {
    let name = d["name"].as_str().unwrap_or_default();
    match d["service"].as_str() {
        Some(s) => format!("{name}@{s}"),
        None => name.to_string(),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

/// Run `resilience ARGS` to completion (bounded): (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(crate::daemon_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting resilience");
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
