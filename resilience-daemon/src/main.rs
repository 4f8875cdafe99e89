//! `resilience`: host-wide circuit breakers for outbound TCP connects.

mod apply;
mod cli;
mod config;
mod control;
mod daemon;
mod engine;
mod kernel;
mod latency;
mod slots;
mod snapshot;

use std::process::ExitCode;

use clap::Parser;

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
