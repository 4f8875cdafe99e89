//! Command line: what each subcommand takes and does.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, Policy},
    control, daemon,
    snapshot::Snapshot,
};

/// The policy used when `run` gets no --config.
pub const DEFAULT_POLICY: &str = include_str!("../../config/default.toml");

#[derive(Parser)]
#[command(
    name = "resilience",
    version,
    about = "Circuit breakers for every outbound TCP connect on this host, enforced in the kernel",
    long_about = "resilience watches every outbound TCP connect on the host (or in one cgroup) \
with eBPF, counts outcomes per destination, and rejects connects to destinations its policy \
marks open, with a chosen errno, in microseconds instead of a hung timeout. If the daemon \
stops or hangs, the kernel hooks fail open."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and guard outbound connects until SIGINT/SIGTERM (root).
    /// SIGHUP reloads the policy file.
    Run {
        /// Policy file (TOML); without it, the built-in default: observe, reject nothing.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// cgroup v2 directory whose processes are guarded [default: the cgroup2 root]
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Control socket path [default: /run/resilience/control.sock]
        #[arg(long)]
        socket: Option<PathBuf>,
        /// bpffs directory for pinned maps [default: /sys/fs/bpf/resilience]
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Heartbeat lease: past it without a heartbeat, the hooks fail open (e.g. "2s").
        #[arg(long, value_parser = parse_duration_arg)]
        lease: Option<std::time::Duration>,
    },
    /// Validate a policy file and print the effective policy; exit 1 on error.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Open a destination's breaker now (until its open time passes, then half-open).
    Trip {
        name: String,
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Close a destination's breaker now, with an empty window.
    Reset {
        name: String,
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Reload the policy file (as SIGHUP); a bad file is refused and the running policy stays.
    Reload {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Per-destination counters and state from the running daemon.
    Status {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the daemon's JSON snapshot.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    init_logs(cli.log_format);
    match cli.command {
        Cmd::Run {
            config: path,
            cgroup,
            socket,
            pin_dir,
            lease,
        } => {
            let mut policy = match &path {
                Some(p) => config::load_file(p)?,
                None => {
                    config::parse_str(DEFAULT_POLICY, std::path::Path::new("<built-in default>"))?
                }
            };
            let d = &mut policy.daemon;
            d.cgroup = cgroup.or(d.cgroup.take());
            if let Some(s) = socket {
                d.socket = s;
            }
            if let Some(p) = pin_dir {
                d.pin_dir = p;
            }
            if let Some(l) = lease {
                d.lease = l;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::run(daemon::RunOptions {
                config: path,
                policy,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { file, json } => match config::load_file(&file) {
            Ok(policy) => {
                print_policy(&policy, json);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Trip { name, socket } => {
            act(&socket, serde_json::json!({"cmd": "trip", "name": name}))
        }
        Cmd::Reset { name, socket } => {
            act(&socket, serde_json::json!({"cmd": "reset", "name": name}))
        }
        Cmd::Reload { socket } => act(&socket, serde_json::json!({"cmd": "reload"})),
        Cmd::Status { socket, json } => {
            let reply = control::request(&socket, &serde_json::json!({"cmd": "status"}))?;
            let status = reply.get("status").cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let snap: Snapshot =
                    serde_json::from_value(status).context("daemon sent an unexpected snapshot")?;
                print!("{}", render_status(&snap));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Send a command that changes something; print the daemon's answer.
fn act(socket: &std::path::Path, req: serde_json::Value) -> Result<ExitCode> {
    let reply = control::request(socket, &req)?;
    println!(
        "{}",
        reply
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("ok")
    );
    Ok(ExitCode::SUCCESS)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESILIENCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_policy(policy: &Policy, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&config::to_json(policy)).unwrap_or_default()
        );
    } else {
        print!("{}", config::to_text(policy));
    }
}

fn render_status(s: &Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
        "DESTINATION",
        "MODE",
        "STATE",
        "ATTEMPTS",
        "SUCCESS",
        "REFUSED",
        "TIMEOUT",
        "UNREACH",
        "REJECTED",
        "ACTIVE",
        "P50 MS"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for d in &s.destinations {
        let c = &d.counts;
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
            d.name,
            d.mode,
            d.state,
            c.attempts,
            c.successes,
            c.failures.refused,
            c.failures.timeout,
            c.failures.unreachable,
            c.rejected.breaker + c.rejected.rate_limit + c.rejected.bulkhead,
            c.active,
            ms(c.latency_ms.p50)
        );
    }
    for o in s.observed.iter().take(20) {
        let c = &o.counts;
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
            o.address,
            "observed",
            "-",
            c.attempts,
            c.successes,
            c.failures.refused,
            c.failures.timeout,
            c.failures.unreachable,
            0,
            c.active,
            "-"
        );
    }
    let k = &s.kernel;
    let _ = writeln!(
        out,
        "kernel: fail_open={} ringbuf_lost={} untracked={} hook_errors={} outcome_records={}",
        k.fail_open, k.ringbuf_lost, k.untracked, k.hook_errors, k.outcome_records
    );
    out
}
