//! `cargo xtask vm-test`: the privileged compatibility subset inside another kernel (Debian 12's
//! stock 6.1 by default), booted under qemu with virtme-ng on this machine's own root file
//! system. What a distribution kernel's verifier or helper set would refuse shows up here.
//!
//! Installs what it needs: qemu, Debian's kernel package and busybox (virtme-ng's initramfs)
//! from Debian, virtme-ng into a private Python environment under the user's cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{
    bpf_toolchain::ensure_packages,
    step::{output, run_inherit, run_piped, say},
};

const PACKAGES: &[&str] = &["qemu-system-x86", "linux-image-amd64", "busybox-static"];
const VNG_VERSION: &str = "1.42";
/// Test files run in the guest. Together they use every program (connect4, connect6, sock_ops,
/// sock_release), map type (hash, LRU hash, LPM trie, mmapped arrays, per-CPU array, ring
/// buffer) and helper the object calls, the EPERM fallback and the kernel's window judgement.
pub const COMPAT: &[&str] = &[
    "foundation",
    "kernels",
    "fidelity",
    "cgroups",
    "first_contact",
];
/// The whole guest run, at most (qemu without KVM is slow).
const GUEST_TIMEOUT_S: u64 = 1500;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    /// KVM when it boots a guest here, else TCG.
    Auto,
    Kvm,
    Tcg,
}

pub fn vm_test(root: &Path, kernel: &str, accel: Accel) -> Result<()> {
    let start = Instant::now();
    ensure_packages(
        PACKAGES,
        "qemu, Debian's kernel and busybox for the VM tests",
        "qemu and a kernel: about 150 MB",
    )?;
    let vng = ensure_vng()?;
    let kernel = kernel_image(kernel)?;
    let exes = test_executables(root)?;
    let dir = root.join("target/vm-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("guest.sh");
    std::fs::write(&script, guest_script(root, &dir, &exes))
        .with_context(|| format!("writing {}", script.display()))?;
    make_executable(&script)?;

    let kvm = match accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => kvm_boots(&vng, &kernel),
    };
    say(&format!(
        "vm-test: booting {} under qemu with {} (virtme-ng {VNG_VERSION})",
        kernel.display(),
        if kvm {
            "KVM"
        } else {
            "TCG, software emulation: KVM is missing or cannot boot a guest here"
        }
    ));
    let mut cmd = Command::new("timeout");
    cmd.arg(GUEST_TIMEOUT_S.to_string())
        .arg(&vng)
        .arg("--run")
        .arg(&kernel)
        .args(["--memory", "2G", "--cpus", "2"])
        .arg("--rwdir")
        .arg(&dir);
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--").arg(&script);
    cmd.env("PATH", path_with(vng.parent().unwrap_or(Path::new("."))));
    let ran = run_piped("vm-test: the compatibility subset in the guest", &mut cmd);

    let guest_kernel = std::fs::read_to_string(dir.join("kernel")).unwrap_or_default();
    let (mut passed, mut failed) = (0u64, 0u64);
    for name in COMPAT {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        for line in log.lines().filter(|l| l.starts_with("test result:")) {
            passed += count_before(line, " passed");
            failed += count_before(line, " failed");
        }
    }
    say(&format!(
        "vm-test: kernel {}: {passed} tests passed, {failed} failed, in {:.0}s ({}); logs in {}",
        guest_kernel.trim(),
        start.elapsed().as_secs_f64(),
        if kvm { "KVM" } else { "TCG" },
        dir.display()
    ));
    ran?;
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    if guest_kernel.trim().is_empty() || status.trim() != "0" || failed > 0 || passed == 0 {
        bail!(
            "vm-test failed (guest status {:?}): see the logs in {}",
            status.trim(),
            dir.display()
        );
    }
    Ok(())
}

/// `N` in "...; N passed; ..." (`what` = " passed").
fn count_before(line: &str, what: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            let head = part.trim().strip_suffix(what.trim())?;
            head.split_whitespace().last()?.parse().ok()
        })
        .unwrap_or(0)
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", p.display()))
}

/// virtme-ng in a private Python environment, at the pinned version.
fn ensure_vng() -> Result<PathBuf> {
    let venv = crate::step::cache_dir().join("vng");
    let vng = venv.join("bin/vng");
    let have = output(Command::new(&vng).arg("--version")).unwrap_or_default();
    if have.contains(VNG_VERSION) {
        say(&format!(
            "setup: virtme-ng {VNG_VERSION}: already installed"
        ));
        return Ok(vng);
    }
    say(&format!(
        "setup: installing virtme-ng {VNG_VERSION} into {} (from PyPI)",
        venv.display()
    ));
    run_inherit(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    )?;
    run_inherit(
        "pip install virtme-ng",
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .arg(format!("virtme-ng=={VNG_VERSION}")),
    )?;
    Ok(vng)
}

/// `debian-6.1`: the newest Debian 6.1 kernel in /boot; anything else: a vmlinuz path.
fn kernel_image(kernel: &str) -> Result<PathBuf> {
    if kernel != "debian-6.1" {
        let p = PathBuf::from(kernel);
        if !p.is_file() {
            bail!("{kernel}: no such kernel image (debian-6.1, or a path to a vmlinuz)");
        }
        return Ok(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.1.") && n.ends_with("-amd64"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no /boot/vmlinuz-6.1.*-amd64 after installing linux-image-amd64")
}

/// Whether KVM boots a guest here (some hosts expose /dev/kvm but qemu aborts on it).
fn kvm_boots(vng: &Path, kernel: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    Command::new("timeout")
        .arg("120")
        .arg(vng)
        .arg("--run")
        .arg(kernel)
        .args(["--", "true"])
        .env("PATH", path_with(vng.parent().unwrap_or(Path::new("."))))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The release test executables of the compatibility subset, built if needed.
fn test_executables(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "resilience-tests",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the test executables failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or_default();
        let is_test = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, true, Some(exe)) = (is_test, COMPAT.contains(&name), v["executable"].as_str())
        {
            exes.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    for name in COMPAT {
        if !exes.iter().any(|(n, _)| n == name) {
            bail!("test file {name} was not built");
        }
    }
    Ok(exes)
}

/// What runs in the guest: the mounts the tests need, sockets on a tmpfs (a unix socket
/// cannot be bound on the 9p share), then each test file; results go to `dir`.
fn guest_script(root: &Path, dir: &Path, exes: &[(String, PathBuf)]) -> String {
    let mut s = format!(
        "#!/bin/sh\n# Written by cargo xtask vm-test; runs inside the guest.\nout='{out}'\nuname -r > \"$out/kernel\"\necho \"guest: $(uname -r), $(nproc) CPUs\"\nmountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup || exit 1\nmountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf || exit 1\nmkdir -p /dev/shm/resilience-tmp\nexport TMPDIR=/dev/shm/resilience-tmp\nexport RESILIENCE_BIN='{bin}'\nexport CI=true\ncd '{tests}'\nstatus=0\n",
        out = dir.display(),
        bin = root.join("target/release/resilience").display(),
        tests = root.join("tests").display(),
    );
    for (name, exe) in exes {
        s.push_str(&format!(
            "echo \"guest: {name} ...\"\n'{exe}' --test-threads=1 > \"$out/{name}.log\" 2>&1 || status=1\ngrep -E '^test result:|FAILED|panicked' \"$out/{name}.log\" | head -20\n",
            exe = exe.display()
        ));
    }
    s.push_str("echo $status > \"$out/status\"\nexit $status\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_from_a_test_result_line() {
        let l = "test result: ok. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 45.07s";
        assert_eq!(super::count_before(l, " passed"), 7);
        assert_eq!(super::count_before(l, " failed"), 1);
    }
}
