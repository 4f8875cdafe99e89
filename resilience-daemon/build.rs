//! Builds the eBPF object (crate resilience-ebpf) for the daemon to embed.
//!
//! The BPF compiler is the rustup toolchain named by RESILIENCE_BPF_TOOLCHAIN, else the one
//! `cargo xtask setup` links ("resilience-bpf": Debian's rustc-web with its prebuilt BPF
//! `core`), else "nightly" (needs rust-src for -Z build-std).
//!
//! What aya-build does, but quiet: the nested cargo's progress goes to
//! `target/<profile>/ebpf-build.log`; only the compiler's real warnings and errors reach the
//! user (as cargo warnings), and a failure points to the log.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};

const PACKAGE: &str = "resilience-ebpf";

fn toolchain() -> String {
    std::env::var("RESILIENCE_BPF_TOOLCHAIN").unwrap_or_else(|_| {
        let list = Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if list.lines().any(|l| l.starts_with("resilience-bpf")) {
            "resilience-bpf".to_string()
        } else {
            "nightly".to_string()
        }
    })
}

/// `rustup run TOOLCHAIN program`.
fn with_toolchain(toolchain: &str, program: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", toolchain, program]);
    c
}

/// A nightly compiler builds `core` for BPF from rust-src; Debian's compiler ships it built.
fn needs_build_std(toolchain: &str) -> Result<bool> {
    if let Ok(b) = std::env::var("RUSTC_BOOTSTRAP") {
        if b == "1" || b == PACKAGE {
            return Ok(true);
        }
        if b == "-1" {
            return Ok(false);
        }
    }
    let out = with_toolchain(toolchain, "rustc")
        .arg("-vV")
        .output()
        .with_context(|| format!("running rustc of toolchain {toolchain}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .any(|l| l.starts_with("release:") && l.contains("nightly")))
}

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=RESILIENCE_BPF_TOOLCHAIN");
    let toolchain = toolchain();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../resilience-ebpf")
        .canonicalize()?;
    println!("cargo:rerun-if-changed={}", root.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out.
    let log_path = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or(&out_dir)
        .join("ebpf-build.log");
    let endian = std::env::var("CARGO_CFG_TARGET_ENDIAN").context("target endianness")?;
    let target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("target arch")?;

    let mut cmd = with_toolchain(&toolchain, "cargo");
    cmd.current_dir(&root).args([
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
    ]);
    if needs_build_std(&toolchain)? {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".into(),
            // BPF v3 (Linux 5.1+): 32-bit jumps. Without them LLVM compares a u32 with
            // u32::MAX as a 64-bit register against -1, which never matches (an observed
            // connection's slot was never recognised as one).
            "-Ctarget-cpu=v3".into(),
            "-Clink-arg=--btf".into(),
        ]
        .join("\x1f"),
    );
    // The outer build's compiler is not the BPF one.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(key);
    }
    // Not the outer build's target dir: cargo would wait on its own lock.
    cmd.arg("--target-dir")
        .arg(out_dir.join("aya-build").join("target").join(PACKAGE));

    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut executables = Vec::new();
    let mut diagnostics = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            // Not a message: progress from a build script, say. To the log.
            diagnostics.push(line);
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                if let Some(exe) = msg["executable"].as_str() {
                    let name = msg["target"]["name"]
                        .as_str()
                        .unwrap_or(PACKAGE)
                        .to_string();
                    executables.push((name, PathBuf::from(exe)));
                }
            }
            Some("compiler-message") => {
                let rendered = msg["message"]["rendered"].as_str().unwrap_or_default();
                for l in rendered.lines() {
                    // Real warnings and errors of our kernel crate, for the user.
                    println!("cargo:warning={l}");
                }
                diagnostics.push(rendered.to_string());
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the eBPF build")?;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log_path) {
        for d in &diagnostics {
            let _ = writeln!(f, "{d}");
        }
    }
    if !status.success() {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(40).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        bail!(
            "building the eBPF object ({PACKAGE}, toolchain {toolchain}) failed: {status}; \
             the full log is {}",
            log_path.display()
        );
    }
    if executables.is_empty() {
        return Err(anyhow!(
            "the eBPF build produced no object; see {}",
            log_path.display()
        ));
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        std::fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}
