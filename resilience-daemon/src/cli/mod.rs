//! Command line: what each subcommand takes and does.

mod explain;
mod print;
mod replay;
mod run;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::{
    client::{Client, Streamed, DEFAULT_TIMEOUT},
    config::{self, Policy},
    protocol::Request,
    snapshot::Snapshot,
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
(root: the socket is mode 0600), except `check`, `replay` and `completions`, which work anywhere."
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
struct ClientArgs {
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
        client: ClientArgs,
        /// The daemon's full snapshot as JSON (destinations, observed, kernel, events).
        #[arg(long)]
        json: bool,
    },
    /// State changes, reloads and errors: the last 1000, then (with --follow) as they happen.
    Events {
        #[command(flatten)]
        client: ClientArgs,
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
        client: ClientArgs,
        /// Time between snapshots (e.g. "500ms", "2s"; at least 100ms).
        #[arg(long, default_value = "1s", value_parser = parse_refresh)]
        refresh: Duration,
    },
    /// Open a destination's breaker now (until its open time passes, then half-open).
    Trip {
        name: String,
        /// Only this service's breaker (a destination with `services` has one per service;
        /// without this flag, all of them).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close a destination's breaker now, with an empty window.
    Reset {
        name: String,
        /// Only this service's breaker (without this flag, all of the destination's).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Observe a destination only (reject nothing) until `enable`; survives reloads.
    Disable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Undo `disable`: the destination's mode is the policy file's again.
    Enable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Which destination and rule govern a connect to ADDR:PORT (exact, DNS or CIDR, by the
    /// hook's precedence), which other destinations it shadows, and what such a connect would
    /// get now (state, tokens, free places). Asks the running daemon; with --config, explains
    /// from a policy file alone (no daemon needed; DNS names are resolved by this command).
    Explain {
        /// The address a program connects to, e.g. 10.0.0.5:443 or [2001:db8::1]:443.
        address: String,
        /// Explain from this policy file instead of the running daemon.
        #[arg(long)]
        config: Option<PathBuf>,
        /// For a process of this service (a destination with `services` guards each one
        /// separately, and no one else).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
        /// The explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reload the policy file; a bad file is refused and the running policy stays.
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save the outcome records the daemon sees (every connect result of a guarded
    /// destination), its breaker transitions and, once a second, its counters, to FILE as
    /// JSON lines with a header (the format is in the README). Stops at --duration, at
    /// --max-size, when the daemon stops, or on Ctrl-C; always with an end line.
    Record {
        /// The file to write (created 0600; replaced if it exists; a symlink is refused).
        #[arg(long, short)]
        output: PathBuf,
        /// Stop after this long (e.g. "30s", "10m"); without it, at Ctrl-C.
        #[arg(long, value_parser = parse_duration_arg)]
        duration: Option<Duration>,
        /// Stop before the file grows past this (e.g. "64MiB", "1GiB").
        #[arg(long, default_value = "64MiB", value_parser = replay::parse_size)]
        max_size: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a candidate policy's breakers, token buckets and bulkheads over a recording, on
    /// its clock, with the daemon's own engine: when each destination would have opened and
    /// closed, how many connects it would have rejected and why, next to what the policy in
    /// force did. Needs no daemon and no root.
    Replay {
        /// The candidate policy file.
        #[arg(long)]
        config: PathBuf,
        /// A file written by `resilience record`.
        file: PathBuf,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write man pages generated from this command line: resilience.1 and one page per
    /// subcommand (resilience-run.1, ...), into DIR (for packagers: `cargo xtask dist`).
    Manpages { dir: PathBuf },
    /// Print a shell completion script (e.g. `resilience completions bash > /etc/bash_completion.d/resilience`).
    Completions { shell: clap_complete::Shell },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let d = config::parse_duration(s)?;
    if d < config::MIN_DURATION {
        return Err(format!("{s:?} is below 1ms"));
    }
    Ok(d)
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    config::check_lease(config::parse_duration(s)?)
}

/// The dashboard's refresh: faster than 10 a second costs the daemon CPU and shows nothing
/// more.
fn parse_refresh(s: &str) -> Result<Duration, String> {
    let d = parse_duration_arg(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("refresh must be at least 100ms, not {s}"));
    }
    Ok(d)
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
                print_policy(&policy, json)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Status { client, json } => {
            let mut c = Client::new(&client.socket, DEFAULT_TIMEOUT);
            let mut reply = c.call(&Request::Snapshot {
                since: None,
                instance: None,
                policy: None,
            })?;
            let snapshot = reply["snapshot"].take();
            if json {
                out(&format!("{}\n", serde_json::to_string_pretty(&snapshot)?))?;
            } else {
                let snap: Snapshot = serde_json::from_value(snapshot)
                    .context("daemon sent an unexpected snapshot")?;
                out(&print::status(&snap))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events {
            client,
            follow,
            json,
        } => events(&client.socket, follow, json),
        Cmd::Top { client, refresh } => {
            tui::run_top(client.socket, refresh)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trip {
            name,
            service,
            client,
        } => act(&client.socket, Request::Trip { name, service }),
        Cmd::Reset {
            name,
            service,
            client,
        } => act(&client.socket, Request::Reset { name, service }),
        Cmd::Disable { name, client } => act(&client.socket, Request::Disable { name }),
        Cmd::Enable { name, client } => act(&client.socket, Request::Enable { name }),
        Cmd::Reload { client } => act(&client.socket, Request::Reload),
        Cmd::Explain {
            address,
            config,
            service,
            client,
            json,
        } => {
            out(&explain::explain(
                &address,
                config.as_deref(),
                service.as_deref(),
                &client.socket,
                json,
            )?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Record {
            output,
            duration,
            max_size,
            client,
        } => {
            replay::record(&replay::RecordArgs {
                socket: &client.socket,
                output: &output,
                duration,
                max_bytes: max_size,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay { config, file, json } => {
            out(&replay::replay(&config, &file, json)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Manpages { dir } => {
            let written = manpages(&dir)?;
            eprintln!("{} man pages written to {}", written, dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "resilience", &mut script);
            out(&String::from_utf8_lossy(&script))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Send a command that changes something; print the daemon's answer.
fn act(socket: &std::path::Path, req: Request) -> Result<ExitCode> {
    let message = Client::new(socket, DEFAULT_TIMEOUT).act(&req)?;
    out(&format!("{message}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// Write to stdout. A reader that went away (`| head`) ends the command quietly: a closed pipe
/// is not an error worth a message.
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

fn events(socket: &std::path::Path, follow: bool, json: bool) -> Result<ExitCode> {
    let mut c = Client::new(socket, DEFAULT_TIMEOUT);
    let backlog = c.events(follow)?;
    let show = |e: &crate::snapshot::EventRecord| -> Result<()> {
        if json {
            out(&format!("{}\n", serde_json::to_string(e)?))
        } else {
            out(&format!("{}\n", print::event(e)))
        }
    };
    for e in &backlog {
        show(e)?;
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    while let Some(item) = c.next_event()? {
        match item {
            Streamed::Event(e) => show(&e)?,
            Streamed::Lagged(n) => {
                eprintln!("resilience: {n} events were missed (this reader fell behind)")
            }
        }
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
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Mutex::new(open_log(path)?))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    // Colours only on a terminal, and never with NO_COLOR (https://no-color.org).
    use std::io::IsTerminal;
    let ansi = file.is_none()
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = builder.with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// The log file of `run --tui`, opened as root without being tricked: never through a symlink
/// (O_NOFOLLOW), never in a directory others may write unless root owns it (a sticky /tmp is
/// fine), created 0600.
fn open_log(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let m = std::fs::metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    if m.permissions().mode() & 0o002 != 0 && m.uid() != 0 {
        anyhow::bail!(
            "log file {}: {} is writable by anyone and not owned by root; another user could \
             plant a link there. Choose another --log-file",
            path.display(),
            dir.display()
        );
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .with_context(|| {
            format!(
                "opening log file {} (a symbolic link is refused)",
                path.display()
            )
        })
}

/// resilience.1 and resilience-SUBCOMMAND.1 for every subcommand; how many.
pub fn manpages(dir: &std::path::Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("resilience".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
        let name = format!("resilience-{}", sub.get_name());
        let bin = format!("resilience {}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name).bin_name(bin)));
    }
    for (name, c) in &pages {
        let mut page = Vec::new();
        clap_mangen::Man::new(c.clone())
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pages.len())
}

fn print_policy(policy: &Policy, json: bool) -> Result<()> {
    if json {
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&config::to_json(policy))?
        ))
    } else {
        out(&config::to_text(policy))
    }
}

#[cfg(test)]
mod manpage_tests {
    #[test]
    fn a_man_page_per_subcommand() {
        let dir = std::env::temp_dir().join(format!("resilience-man-{}", std::process::id()));
        let n = super::manpages(&dir).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), n);
        for want in [
            "resilience.1",
            "resilience-run.1",
            "resilience-replay.1",
            "resilience-record.1",
        ] {
            assert!(names.iter().any(|x| x == want), "{want} in {names:?}");
        }
        let run = std::fs::read_to_string(dir.join("resilience-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH"), "{run}");
        assert!(run.contains("resilience\\-run"), "{run}");
        assert!(run.contains("pin\\-dir"), "the flags are in it");
        let _ = std::fs::remove_dir_all(dir);
    }
}
