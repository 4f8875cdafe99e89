//! `resilience`: host-wide circuit breakers for outbound TCP connects.

use std::process::ExitCode;

use clap::Parser;
use resilience_daemon::cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("resilience: {e:#}");
            ExitCode::FAILURE
        }
    }
}
