//! `resilience`: host-wide circuit breakers for outbound TCP connects.

use std::process::ExitCode;

use clap::Parser;
use resilience_daemon::{cli, memory};

#[global_allocator]
static ALLOCATOR: memory::Allocator = memory::Allocator;

fn main() -> ExitCode {
    memory::configure();
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("resilience: {e:#}");
            ExitCode::FAILURE
        }
    }
}
