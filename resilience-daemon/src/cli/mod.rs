//! Command line: what each subcommand takes and does.

mod print;
mod run;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::{
    config::{self, Policy},
    control,
    snapshot::{EventRecord, Snapshot},
    tui,
};

/// The policy used when `run` gets no --config.
pub const DEFAULT_POLICY: &str = include_str!("../../../config/default.toml");

#[derive(Parser)]
#[command(
    name = "resilience",
    version,
    about = "Circuit breakers, rate limits and bulkheads for every outbound TCP connect on this host, enforced in the kernel",
    long_about = "resilience watches every outbound TCP connect on the host (or in one cgroup) \
with eBPF, counts outcomes per destination, and rejects connects to destinations its policy \
marks open, rate-limited or full, with a chosen errno, in microseconds instead of a hung \
timeout. If the daemon stops or hangs, the kernel hooks fail open.\n\n\
`resilience run` is the daemon (root). The other commands talk to it over its control socket \
(root: the socket is mode 0600), except `check` and `completions`, which work anywhere."
)]
pub struct Cli {
    /// Log format on stderr (or in --log-file).
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

/// Where the daemon's control socket is.
#[derive(Args)]
struct Client {
    /// Control socket of the running daemon.
    #[arg(long, env = "RESILIENCE_SOCKET", default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and guard outbound connects until SIGINT/SIGTERM (root).
    /// SIGHUP, `resilience reload` and any change to the policy file reload it.
    Run(run::RunArgs),
    /// Validate a policy file and print the effective policy; exit 1 on error.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Per-destination state and counters from the running daemon.
    Status {
        #[command(flatten)]
        client: Client,
        /// The daemon's full snapshot as JSON (destinations, observed, kernel, events).
        #[arg(long)]
        json: bool,
    },
    /// State changes, reloads and errors: the last 1000, then (with --follow) as they happen.
    Events {
        #[command(flatten)]
        client: Client,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Live dashboard of a running daemon (q quits, ? lists the keys).
    Top {
        #[command(flatten)]
        client: Client,
        /// Time between snapshots (e.g. "500ms", "2s").
        #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
        refresh: Duration,
    },
    /// Open a destination's breaker now (until its open time passes, then half-open).
    Trip {
        name: String,
        #[command(flatten)]
        client: Client,
    },
    /// Close a destination's breaker now, with an empty window.
    Reset {
        name: String,
        #[command(flatten)]
        client: Client,
    },
    /// Observe a destination only (reject nothing) until `enable`; survives reloads.
    Disable {
        name: String,
        #[command(flatten)]
        client: Client,
    },
    /// Undo `disable`: the destination's mode is the policy file's again.
    Enable {
        name: String,
        #[command(flatten)]
        client: Client,
    },
    /// Reload the policy file; a bad file is refused and the running policy stays.
    Reload {
        #[command(flatten)]
        client: Client,
    },
    /// Print a shell completion script (e.g. `resilience completions bash > /etc/bash_completion.d/resilience`).
    Completions { shell: clap_complete::Shell },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Run(args) => run::run(args, cli.log_format),
        command => {
            init_logs(cli.log_format, None)?;
            client(command)
        }
    }
}

fn client(command: Cmd) -> Result<ExitCode> {
    match command {
        // dispatch() runs the daemon itself; this arm only keeps the match whole.
        Cmd::Run(_) => anyhow::bail!("run is not a client command"),
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
        Cmd::Status { client, json } => {
            let mut reply = control::request(&client.socket, &json!({"cmd": "snapshot"}))?;
            let snapshot = reply["snapshot"].take();
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                let snap: Snapshot = serde_json::from_value(snapshot)
                    .context("daemon sent an unexpected snapshot")?;
                print!("{}", print::status(&snap));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events {
            client,
            follow,
            json,
        } => events(&client.socket, follow, json),
        Cmd::Top { client, refresh } => {
            tui::run(&mut tui::SocketSource::new(client.socket), refresh, &|| {
                false
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trip { name, client } => act(&client.socket, json!({"cmd": "trip", "name": name})),
        Cmd::Reset { name, client } => act(&client.socket, json!({"cmd": "reset", "name": name})),
        Cmd::Disable { name, client } => {
            act(&client.socket, json!({"cmd": "disable", "name": name}))
        }
        Cmd::Enable { name, client } => act(&client.socket, json!({"cmd": "enable", "name": name})),
        Cmd::Reload { client } => act(&client.socket, json!({"cmd": "reload"})),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "resilience",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Send a command that changes something; print the daemon's answer.
fn act(socket: &std::path::Path, req: serde_json::Value) -> Result<ExitCode> {
    let reply = control::request(socket, &req)?;
    println!("{}", reply["message"].as_str().unwrap_or("ok"));
    Ok(ExitCode::SUCCESS)
}

fn events(socket: &std::path::Path, follow: bool, json: bool) -> Result<ExitCode> {
    use std::io::{BufRead, Write};
    let mut stream = control::connect(socket)?;
    let mut reply = control::exchange(&mut stream, &json!({"cmd": "events", "follow": follow}))?;
    let backlog: Vec<EventRecord> =
        serde_json::from_value(reply["events"].take()).context("daemon sent unexpected events")?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let show = |out: &mut std::io::StdoutLock, e: &EventRecord| -> Result<()> {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}", print::event(e))?;
        }
        out.flush()?;
        Ok(())
    };
    for e in &backlog {
        show(&mut out, e)?;
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.context("reading events")?;
        let mut v: serde_json::Value =
            serde_json::from_str(&line).context("daemon sent invalid JSON")?;
        if let Some(n) = v.get("lagged").and_then(|n| n.as_u64()) {
            eprintln!("resilience: {n} events were missed (this reader fell behind)");
            continue;
        }
        let e: EventRecord =
            serde_json::from_value(v["event"].take()).context("daemon sent an unexpected event")?;
        show(&mut out, &e)?;
    }
    eprintln!("resilience: the daemon closed the event stream");
    Ok(ExitCode::FAILURE)
}

/// Logs go to stderr, or to `file` (the dashboard owns the terminal).
fn init_logs(format: LogFormat, file: Option<&std::path::Path>) -> Result<()> {
    use std::sync::Mutex;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESILIENCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let builder = builder.with_writer(writer).with_ansi(file.is_none());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
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
