//! Kernel feature probes, so that a missing feature is named before anything is loaded.

use anyhow::{bail, Result};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What is missing to load and attach the programs, by capability name. CAP_SYS_ADMIN
/// stands in for each of the others, as the kernel allows.
pub fn missing_privileges(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, name)| name)
    .collect()
}

/// Privileges first: without them every feature probe fails too, and the kernel would be
/// blamed for what the user lacks.
fn check_privileges() -> Result<()> {
    let Some(caps) = effective_caps() else {
        return Ok(());
    };
    let missing = missing_privileges(caps);
    if !missing.is_empty() {
        bail!(
            "resilience run needs root: it loads eBPF programs and attaches them to a cgroup, \
             which takes CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or CAP_SYS_ADMIN); this \
             process lacks {}. Run it as root (sudo), or from the systemd unit in config/",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Probe results: features the kernel lacks, and probes it refused to run at all.
#[derive(Default)]
struct Probes {
    missing: Vec<&'static str>,
    refused: Vec<String>,
}

impl Probes {
    fn have<E: std::fmt::Display>(&mut self, what: &'static str, r: Result<bool, E>) -> bool {
        match r {
            Ok(true) => true,
            Ok(false) => {
                self.missing.push(what);
                false
            }
            Err(e) => {
                self.refused.push(format!("{what}: {e}"));
                false
            }
        }
    }
}

/// What the kernel offers beyond what resilience needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// bpf_set_retval and bpf_get_retval in cgroup programs (Linux 5.18+): without them a
    /// rejected connect gets EPERM, whatever `reject_errno` says, and a connect an inner
    /// cgroup's program refused is still counted here.
    pub retval: bool,
}

/// Set to 1, behaves as a kernel without bpf_set_retval (for tests of that path).
pub const DEBUG_NO_RETVAL: &str = "RESILIENCE_DEBUG_NO_RETVAL";

pub fn check() -> Result<Features> {
    check_privileges()?;
    let mut p = Probes::default();
    let mut retval = false;
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        p.missing
            .push("kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y, Linux 5.5+)");
    }
    if p.have(
        "cgroup sock_addr programs (CONFIG_CGROUP_BPF=y, Linux 4.17+)",
        is_program_supported(ProgramType::CgroupSockAddr),
    ) {
        let found = [
            BpfHelper::BPF_FUNC_set_retval,
            BpfHelper::BPF_FUNC_get_retval,
        ]
        .into_iter()
        .map(|h| is_helper_supported(ProgramType::CgroupSockAddr, h))
        .try_fold(true, |all, r| r.map(|ok| all && ok));
        match found {
            Ok(ok) => retval = ok && std::env::var(DEBUG_NO_RETVAL).as_deref() != Ok("1"),
            Err(e) => p.refused.push(format!(
                "bpf_set_retval and bpf_get_retval in cgroup programs: {e}"
            )),
        }
    }
    if p.have(
        "sock_ops programs (CONFIG_CGROUP_BPF=y, Linux 4.13+)",
        is_program_supported(ProgramType::SockOps),
    ) {
        p.have(
            "bpf_skc_to_tcp_sock in sock_ops programs (Linux 5.9+)",
            is_helper_supported(ProgramType::SockOps, BpfHelper::BPF_FUNC_skc_to_tcp_sock),
        );
    }
    p.have(
        "cgroup sock programs (sock_release needs Linux 5.9+)",
        is_program_supported(ProgramType::CgroupSock),
    );
    p.have(
        "BPF ring buffer maps (Linux 5.8+)",
        is_map_supported(MapType::RingBuf),
    );
    p.have(
        "BPF LPM trie maps (Linux 4.11+)",
        is_map_supported(MapType::LpmTrie),
    );
    p.have(
        "BPF atomic instructions with fetch (Linux 5.12+)",
        super::atomics::fetch_supported(),
    );
    if !p.refused.is_empty() {
        bail!(
            "the kernel refused to let this process load BPF programs, although it has the \
             capabilities: a security module (SELinux, AppArmor, lockdown), a seccomp filter or \
             a container's limits may forbid the bpf() system call here:\n  - {}",
            p.refused.join("\n  - ")
        );
    }
    if !p.missing.is_empty() {
        bail!(
            "this kernel lacks what resilience needs:\n  - {}",
            p.missing.join("\n  - ")
        );
    }
    Ok(Features { retval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_stands_in_for_the_rest() {
        assert_eq!(missing_privileges(1 << CAP_SYS_ADMIN), Vec::<&str>::new());
        assert_eq!(
            missing_privileges(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_privileges((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)),
            vec!["CAP_PERFMON"]
        );
    }
}
