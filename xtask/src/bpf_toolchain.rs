//! Installs the BPF toolchain (see ../shared/notes/toolchain.md):
//!
//! - Where rustup's nightly has rust-src, the usual aya setup: nightly + `-Z build-std=core`
//!   and bpf-linker from crates.io.
//! - Otherwise (this machine's kind): Debian's rustc-web with its prebuilt BPF `core`
//!   (libstd-rust-web-dev-bpf), linked as the rustup toolchain "resilience-bpf", and
//!   bpf-linker built against Debian's LLVM 22.
//!
//! Every step first checks whether its result is already there, so a second run is quick.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::step::{output, run_inherit, say};

const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // `ip netns` for the test that needs a namespace without routes.
    "iproute2",
    // The dashboard's end-to-end test runs `resilience top` in a real terminal.
    "tmux",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The rustup toolchain name build.rs looks for.
const TOOLCHAIN: &str = "resilience-bpf";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

pub fn setup() -> Result<()> {
    let start = std::time::Instant::now();
    if nightly_has_rust_src() {
        say("setup: rustup nightly with rust-src found: building BPF with -Z build-std=core");
        ensure_bpf_linker(None)?;
    } else {
        ensure_apt_packages()?;
        ensure_bpf_linker(Some("/usr/lib/llvm-22"))?;
        ensure_toolchain_link()?;
    }
    say(&format!(
        "setup: complete in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn nightly_has_rust_src() -> bool {
    output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|o| o.lines().any(|l| l.starts_with("rust-src")))
}

fn ensure_apt_packages() -> Result<()> {
    ensure_packages(
        APT_PACKAGES,
        "Debian BPF compiler packages",
        "rustc-web with a prebuilt BPF core, LLVM 22: about 300 MB, a few minutes",
    )?;
    if !PathBuf::from(DEBIAN_BPF_CORE).is_dir() {
        bail!("{DEBIAN_BPF_CORE} is missing after installing libstd-rust-web-dev-bpf");
    }
    Ok(())
}

fn ensure_bpf_linker(llvm_prefix: Option<&str>) -> Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        say(&format!(
            "setup: bpf-linker {BPF_LINKER_VERSION}: already installed"
        ));
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
    // Run from a neutral directory: the workspace's .cargo/config.toml is not for this build.
    cmd.current_dir(std::env::temp_dir());
    if let Some(prefix) = llvm_prefix {
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", prefix);
    }
    run_inherit(
        &format!("setup: compiling bpf-linker {BPF_LINKER_VERSION} (several minutes on 2 cores)"),
        &mut cmd,
    )
}

/// rustup toolchain "resilience-bpf" = Debian's rustc, cargo and rustdoc with /usr/lib as
/// sysroot, where the BPF `core` lives.
fn ensure_toolchain_link() -> Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = PathBuf::from(home).join(".local/share/resilience/bpf-toolchain");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for tool in ["rustc", "cargo", "rustdoc"] {
        symlink(&PathBuf::from("/usr/bin").join(tool), &bin.join(tool))?;
    }
    symlink(&PathBuf::from("/usr/lib"), &dir.join("lib"))?;
    let linked = output(Command::new("rustup").args(["toolchain", "list"])).is_some_and(|o| {
        o.lines()
            .any(|l| l.split_whitespace().next() == Some(TOOLCHAIN))
    });
    if linked {
        say(&format!(
            "setup: rustup toolchain {TOOLCHAIN}: already linked"
        ));
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "link", TOOLCHAIN]).arg(&dir);
    run_inherit(
        &format!("setup: linking Debian's rustc as rustup toolchain {TOOLCHAIN}"),
        &mut cmd,
    )
}

fn symlink(target: &PathBuf, link: &PathBuf) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| &t == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// Install the Debian packages of `packages` that are missing, saying what and why.
pub fn ensure_packages(packages: &[&str], what: &str, size: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        say(&format!("setup: {what}: already installed"));
        return Ok(());
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {}: run as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say(&format!("setup: installing {} ({size})", missing.join(" ")));
    run_inherit("apt-get update", Command::new("apt-get").arg("update"))?;
    run_inherit(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
