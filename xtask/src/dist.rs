//! `cargo xtask dist`: the release build, its man pages and completions, and a Debian package
//! (cargo-deb, installed if missing) in target/debian/.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::step::{output, run_inherit, say};

const CARGO_DEB: &str = "3.8.0";

pub fn dist(root: &Path) -> Result<()> {
    let bin = root.join("target/release/resilience");
    let out = root.join("target/dist");
    let _ = std::fs::remove_dir_all(&out);
    let man_src = out.join("man-src");
    let man = out.join("man");
    let comp = out.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    run_inherit(
        "man pages",
        Command::new(&bin).arg("manpages").arg(&man_src),
    )?;
    for e in std::fs::read_dir(&man_src)? {
        let p = e?.path();
        let name = p
            .file_name()
            .context("a man page")?
            .to_string_lossy()
            .into_owned();
        // Debian wants them compressed; -n keeps the package reproducible.
        let gz = Command::new("gzip")
            .args(["-9nc"])
            .arg(&p)
            .output()
            .context("running gzip")?;
        anyhow::ensure!(gz.status.success(), "gzip {}", p.display());
        std::fs::write(man.join(format!("{name}.gz")), gz.stdout)?;
    }
    for (shell, file) in [
        ("bash", "resilience.bash"),
        ("zsh", "_resilience"),
        ("fish", "resilience.fish"),
    ] {
        let script = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .context("resilience completions")?;
        anyhow::ensure!(script.status.success(), "completions {shell}");
        std::fs::write(comp.join(file), script.stdout)?;
    }
    // The unit as the package installs it: the binary in /usr/bin, not /usr/local/bin.
    let unit = std::fs::read_to_string(root.join("config/resilience.service"))?
        .replace("/usr/local/bin/resilience", "/usr/bin/resilience");
    std::fs::write(out.join("resilience.service"), unit)?;

    let have = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if have.contains(CARGO_DEB) {
        say(&format!("setup: cargo-deb {CARGO_DEB}: already installed"));
    } else {
        run_inherit(
            &format!("setup: cargo install cargo-deb {CARGO_DEB} (a few minutes, once)"),
            Command::new("cargo").args([
                "install",
                "--locked",
                "cargo-deb",
                "--version",
                CARGO_DEB,
            ]),
        )?;
    }
    run_inherit(
        "cargo deb (target/debian/)",
        Command::new("cargo").current_dir(root).args([
            "deb",
            "--no-build",
            "-p",
            "resilience-daemon",
        ]),
    )?;
    say(&format!(
        "dist: man pages in {}, completions in {}, the package in {}",
        man.display(),
        comp.display(),
        root.join("target/debian").display()
    ));
    Ok(())
}
