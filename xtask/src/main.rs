//! `cargo xtask <setup|build|run|test|bench>`: everything from a fresh machine to a running,
//! tested daemon.

mod bpf_toolchain;
mod dist;
mod fuzz;
mod helm;
mod step;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run, test and benchmark resilience"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the BPF build needs (idempotent; a second run takes seconds).
    Setup,
    /// Set up, then build target/release/resilience with the eBPF object embedded.
    Build,
    /// Set up, build, and run the daemon with the default policy and the dashboard (root).
    /// q in the dashboard stops both. Arguments after `--` go to `resilience run`
    /// (`-- --no-tui` runs without the dashboard, logging to stderr).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test: unit tests, then the privileged eBPF integration
    /// tests (root; under CI=true they fail rather than skip when they cannot run).
    Test,
    /// Set up, build, and package: man pages (target/dist/man), shell completions
    /// (target/dist/completions) and a Debian package with the binary, the systemd unit, the
    /// man pages, the completions and an example policy in /etc/resilience
    /// (target/debian/resilience_VERSION_amd64.deb; installs cargo-deb if missing).
    Dist,
    /// Set up, build, and show resilience at work (root): five local services that misbehave
    /// on a schedule, clients loading them from a child cgroup, and the dashboard. Breakers
    /// open, probe and close, a token bucket drains, a bulkhead fills, within a minute. q stops
    /// it and removes every process, cgroup, pin and file it made. Loopback only; 10 minutes
    /// at most.
    Demo,
    /// Run the privileged compatibility subset inside another kernel under qemu (root):
    /// Debian 12's stock 6.1 by default. Installs qemu, the kernel package and virtme-ng.
    /// `cargo xtask test` runs it after the native suite.
    VmTest {
        /// `debian-6.1`, or the path of a vmlinuz.
        #[arg(long, default_value = "debian-6.1")]
        kernel: String,
        /// Use KVM, and fail if it cannot boot the guest. Without --kvm or --no-kvm: KVM
        /// where it boots a guest here, else software emulation (TCG), saying which.
        #[arg(long, conflicts_with = "no_kvm")]
        kvm: bool,
        /// Software emulation (TCG) only: slower, works without /dev/kvm.
        #[arg(long)]
        no_kvm: bool,
    },
    /// Coverage-guided fuzzing of the policy parser, the control request parser and the
    /// kernel record decoder (cargo-fuzz on rustup's nightly; installs cargo-fuzz). Results in
    /// fuzz/results.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Only this target (policy, request or records).
        #[arg(long)]
        target: Option<String>,
    },
    /// Sustained load on 1000 destinations under faults (reloads every second, two kills,
    /// a 3 s stop, a dashboard attached); checks that every count reconciles at the end
    /// (root). Report in bench/soak.md. A 20 s version runs in `cargo xtask test`.
    Soak {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build, and measure: dashboard frame time with 10k destinations
    /// (bench/dashboard.md, no root needed), then connect() overhead, breaker overshoot, token
    /// bucket accuracy and map size (bench/results.md, root), then what a dashboard refresh
    /// costs the daemon at 10k destinations (bench/refresh.md, root; set
    /// RESILIENCE_BENCH_BEFORE=BIN to measure an earlier build beside it), then the daemon's
    /// CPU and memory at 20k connects/s over 10k destinations with the dashboard attached
    /// (bench/daemon.md, root).
    Bench {
        /// Only the dashboard benchmark.
        #[arg(long)]
        dashboard_only: bool,
        /// Connects per batch.
        #[arg(long, default_value_t = 10000)]
        batch: u32,
        /// Interleaved rounds (every condition once per round).
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => bpf_toolchain::setup(),
        Cmd::Build => {
            bpf_toolchain::setup()?;
            build(&root)
        }
        Cmd::Run { mut args } => {
            use std::io::IsTerminal;
            bpf_toolchain::setup()?;
            build(&root)?;
            require_root("cargo xtask run")?;
            let mut cmd = Command::new(root.join("target/release/resilience"));
            cmd.arg("run");
            let no_tui = args.iter().any(|a| a == "--no-tui");
            args.retain(|a| a != "--no-tui");
            if no_tui || !std::io::stdout().is_terminal() {
                eprintln!("xtask: running without the dashboard; watch with `target/release/resilience top`");
            } else if !args.iter().any(|a| a == "--tui") {
                cmd.arg("--tui");
            }
            if !args.iter().any(|a| a == "--config" || a == "-c") {
                cmd.arg("--config").arg(root.join("config/default.toml"));
            }
            cmd.args(&args);
            step::run_inherit("resilience run", &mut cmd)
        }
        Cmd::Dist => {
            bpf_toolchain::setup()?;
            build(&root)?;
            dist::dist(&root)
        }
        Cmd::Soak { seconds } => {
            bpf_toolchain::setup()?;
            build(&root)?;
            require_root("cargo xtask soak")?;
            let mut cmd = cargo(&root);
            cmd.args(["build", "--release", "-p", "resilience-tests", "--bins"]);
            step::run_inherit("build the soak and its clients", &mut cmd)?;
            let mut cmd = Command::new(root.join("target/release/soak"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"))
                .args(["--seconds", &seconds.to_string()])
                .arg("--out")
                .arg(root.join("bench/soak.md"));
            step::run_inherit(&format!("soak, {seconds} s (bench/soak.md)"), &mut cmd)
        }
        Cmd::Demo => {
            bpf_toolchain::setup()?;
            build(&root)?;
            require_root("cargo xtask demo")?;
            let mut cmd = cargo(&root);
            cmd.args([
                "build",
                "--release",
                "-p",
                "resilience-tests",
                "--bin",
                "demo",
            ]);
            step::run_inherit("build the demo", &mut cmd)?;
            let mut cmd = Command::new(root.join("target/release/demo"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"));
            step::run_inherit("demo", &mut cmd)
        }
        Cmd::VmTest {
            kernel,
            kvm,
            no_kvm,
        } => {
            let accel = match (kvm, no_kvm) {
                (true, _) => vm::Accel::Kvm,
                (_, true) => vm::Accel::Tcg,
                _ => vm::Accel::Auto,
            };
            bpf_toolchain::setup()?;
            build(&root)?;
            require_root("cargo xtask vm-test")?;
            vm::vm_test(&root, &kernel, accel)
        }
        Cmd::Fuzz { seconds, target } => {
            bpf_toolchain::setup()?;
            fuzz::fuzz(&root, seconds, target.as_deref())
        }
        Cmd::Test => {
            bpf_toolchain::setup()?;
            build(&root)?;
            test(&root)
        }
        Cmd::Bench {
            batch,
            rounds,
            dashboard_only,
        } => {
            bpf_toolchain::setup()?;
            build(&root)?;
            let mut cmd = cargo(&root);
            cmd.args([
                "bench",
                "-p",
                "resilience-daemon",
                "--bench",
                "dashboard",
                "--",
            ])
            .arg("--out")
            .arg(root.join("bench/dashboard.md"));
            step::run_inherit("dashboard frame time, 10k destinations", &mut cmd)?;
            if dashboard_only {
                return Ok(());
            }
            require_root("cargo xtask bench")?;
            bpf_toolchain::ensure_packages(
                &["nftables"],
                "nftables, the datapath benchmark's comparison",
                "about 1 MB",
            )?;
            let mut cmd = cargo(&root);
            cmd.args(["build", "--release", "-p", "resilience-tests", "--bins"]);
            step::run_inherit("build benchmark and client", &mut cmd)?;
            let mut cmd = Command::new(root.join("target/release/bench"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"))
                .args([
                    "--batch",
                    &batch.to_string(),
                    "--rounds",
                    &rounds.to_string(),
                ])
                .arg("--out")
                .arg(root.join("bench/results.md"));
            step::run_inherit("benchmark", &mut cmd)?;
            let mut cmd = Command::new(root.join("target/release/refresh"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"))
                .arg("--out")
                .arg(root.join("bench/refresh.md"));
            // An earlier build to compare with, in the same run.
            if let Some(before) = std::env::var_os("RESILIENCE_BENCH_BEFORE") {
                cmd.arg("--before").arg(before);
            }
            step::run_inherit(
                "dashboard refresh cost, 10k destinations (bench/refresh.md)",
                &mut cmd,
            )?;
            // (tmux, where its dashboard runs, is among the packages setup installs.)
            let mut cmd = Command::new(root.join("target/release/daemon_cost"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"))
                .args(["--rounds", "3"])
                .arg("--out")
                .arg(root.join("bench/daemon.md"));
            if let Some(before) = std::env::var_os("RESILIENCE_BENCH_BEFORE") {
                cmd.arg("--before").arg(before);
            }
            step::run_inherit(
                "daemon CPU and memory at 20k connects/s over 10k destinations, dashboard \
                 attached (bench/daemon.md)",
                &mut cmd,
            )?;
            // The same after 5 minutes: latency samples and windows fill over minutes, which
            // the short run never shows.
            let mut cmd = Command::new(root.join("target/release/daemon_cost"));
            cmd.env("RESILIENCE_BIN", root.join("target/release/resilience"))
                .args(["--rounds", "1", "--warmup", "300"])
                .arg("--out")
                .arg(root.join("bench/daemon-long.md"));
            step::run_inherit(
                "the same after 5 minutes of load (bench/daemon-long.md, about 6 min)",
                &mut cmd,
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn cargo(root: &PathBuf) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn build(root: &PathBuf) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--release", "-p", "resilience-daemon"]);
    step::run_inherit(
        "build target/release/resilience (kernel object included)",
        &mut cmd,
    )
}

fn test(root: &PathBuf) -> Result<()> {
    // The chart check renders deploy/helm with the real helm.
    let helm = helm::ensure()?;
    let mut unit = cargo(root);
    unit.args(["test", "--workspace", "--exclude", "resilience-tests"])
        .env("RESILIENCE_HELM", helm);
    step::run_inherit("unit tests (no root needed)", &mut unit)?;

    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !nix_is_root() {
        if ci {
            bail!("the privileged eBPF tests need root, and CI=true forbids skipping them");
        }
        eprintln!("xtask: not root: SKIPPING the privileged eBPF integration tests (run as root to include them)");
        return Ok(());
    }
    let mut it = cargo(root);
    it.args([
        "test",
        "--release",
        // Every failing test file reported, not only the first.
        "--no-fail-fast",
        "-p",
        "resilience-tests",
        "--",
        "--test-threads=1",
    ])
    .env("RESILIENCE_BIN", root.join("target/release/resilience"));
    step::run_inherit(
        "privileged eBPF integration tests (real kernel, child cgroups, loopback)",
        &mut it,
    )?;
    // The same programs under a distribution kernel: Debian 12's 6.1.
    vm::vm_test(root, "debian-6.1", vm::Accel::Auto)
}

fn require_root(what: &str) -> Result<()> {
    if !nix_is_root() {
        bail!("{what} loads eBPF programs and needs root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
