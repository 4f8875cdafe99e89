//! `resilience run`: the daemon, in the foreground, optionally with the dashboard.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Args;

use super::{init_logs, parse_lease, LogFormat, DEFAULT_POLICY};
use crate::{config, daemon, tui};

#[derive(Args)]
pub struct RunArgs {
    /// Policy file (TOML); without it, the built-in default: observe, reject nothing.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// cgroup v2 directory whose processes are guarded [default: the cgroup2 root]
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Control socket path [default: the policy's [daemon] socket, else /run/resilience/control.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// bpffs directory for pinned maps [default: /sys/fs/bpf/resilience]
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Heartbeat lease: past it without a heartbeat, the hooks fail open (e.g. "2s").
    #[arg(long, value_parser = parse_lease)]
    lease: Option<Duration>,
    /// Serve Prometheus metrics at this address (e.g. "127.0.0.1:9464"; a bare port means
    /// 127.0.0.1) [default: the policy's [daemon] metrics, else off]
    #[arg(long, value_parser = config::parse_metrics_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Show the dashboard in this terminal while the daemon runs; q stops both.
    #[arg(long)]
    tui: bool,
    /// With --tui, where the logs go (never over the dashboard).
    #[arg(long, default_value = "/var/log/resilience.log")]
    log_file: PathBuf,
}

/// The soft descriptor limit up to the hard one (systemd's unit sets LimitNOFILE): clients are
/// bounded, and the rest is headroom.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn run(args: RunArgs, format: LogFormat) -> Result<ExitCode> {
    init_logs(format, args.tui.then_some(args.log_file.as_path()))?;
    raise_nofile();
    let mut policy = match &args.config {
        Some(p) => config::load_file(p)?,
        None => config::parse_str(DEFAULT_POLICY, std::path::Path::new("<built-in default>"))?,
    };
    let d = &mut policy.daemon;
    d.cgroup = args.cgroup.or(d.cgroup.take());
    if let Some(s) = args.socket {
        d.socket = s;
    }
    if let Some(p) = args.pin_dir {
        d.pin_dir = p;
    }
    if let Some(l) = args.lease {
        d.lease = l;
    }
    if let Some(m) = args.metrics {
        d.metrics = Some(m);
    }
    let socket = d.socket.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let opts = daemon::RunOptions {
        config: args.config,
        policy,
        stop: Some(stop_rx),
        tui: args.tui,
    };
    let daemon = move || -> Result<()> {
        // Two workers: the control socket's clients serialize their replies there, never on the
        // thread that runs the daemon's loop.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(daemon::run(opts))
    };
    if !args.tui {
        daemon()?;
        return Ok(ExitCode::SUCCESS);
    }
    let handle = std::thread::Builder::new()
        .name("daemon".into())
        .spawn(daemon)
        .context("starting the daemon thread")?;
    eprintln!(
        "resilience: starting; logs go to {}",
        args.log_file.display()
    );
    // The dashboard starts once the daemon answers; a daemon that fails to start says why.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::client::connect(&socket).is_err() {
        if handle.is_finished() || std::time::Instant::now() > deadline {
            let result = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the daemon thread panicked"))?;
            result?;
            anyhow::bail!("the daemon did not open {} in time", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown = tui::run(
        Box::new(tui::SocketSource::new(socket)),
        Duration::from_secs(1),
        &|| handle.is_finished(),
    );
    if let Ok(tui::Exit::TerminalLost(why)) = &shown {
        // As `q` would: detach, keep the pins, exit 0. Nobody is left to read stderr.
        tracing::warn!(reason = %why, "terminal lost: stopping");
    }
    let _ = stop_tx.send(());
    let stopped = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the daemon thread panicked"))?;
    shown?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}
