//! Builds the eBPF object (crate resilience-ebpf) for the daemon to embed.
//!
//! The BPF compiler is the rustup toolchain named by RESILIENCE_BPF_TOOLCHAIN, else the one
//! `cargo xtask setup` links ("resilience-bpf": Debian's rustc-web with its prebuilt BPF
//! `core`), else "nightly" (needs rust-src for -Z build-std).

use std::process::Command;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RESILIENCE_BPF_TOOLCHAIN");
    let toolchain = std::env::var("RESILIENCE_BPF_TOOLCHAIN").unwrap_or_else(|_| {
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
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resilience-ebpf");
    let root = root.canonicalize()?;
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "resilience-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
