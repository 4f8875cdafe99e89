//! `cargo xtask soak`: the soak of tests/src/soak.rs for `--seconds`, report to `--out`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Markdown file for the report.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let report = resilience_tests::soak::run(args.seconds);
    print!("{}", report.markdown());
    if let Some(out) = &args.out {
        resilience_tests::soak::write(&report, out, args.seconds);
    }
}
