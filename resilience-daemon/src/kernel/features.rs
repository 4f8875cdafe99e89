//! Kernel feature probes, so that a missing feature is named before anything is loaded.

use anyhow::{bail, Result};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

pub fn check() -> Result<()> {
    let mut missing = Vec::new();
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y, Linux 5.5+)");
    }
    if !is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false) {
        missing.push("cgroup sock_addr programs (CONFIG_CGROUP_BPF=y, Linux 4.17+)");
    } else if ![
        BpfHelper::BPF_FUNC_set_retval,
        BpfHelper::BPF_FUNC_get_retval,
    ]
    .into_iter()
    .all(|h| is_helper_supported(ProgramType::CgroupSockAddr, h).unwrap_or(false))
    {
        missing.push("bpf_set_retval and bpf_get_retval in cgroup programs (Linux 5.18+)");
    }
    if !is_program_supported(ProgramType::SockOps).unwrap_or(false) {
        missing.push("sock_ops programs (CONFIG_CGROUP_BPF=y, Linux 4.13+)");
    } else if !is_helper_supported(ProgramType::SockOps, BpfHelper::BPF_FUNC_skc_to_tcp_sock)
        .unwrap_or(false)
    {
        missing.push("bpf_skc_to_tcp_sock in sock_ops programs (Linux 5.9+)");
    }
    if !is_program_supported(ProgramType::CgroupSock).unwrap_or(false) {
        missing.push("cgroup sock programs (sock_release needs Linux 5.9+)");
    }
    if !is_map_supported(MapType::RingBuf).unwrap_or(false) {
        missing.push("BPF ring buffer maps (Linux 5.8+)");
    }
    if !is_map_supported(MapType::LpmTrie).unwrap_or(false) {
        missing.push("BPF LPM trie maps (Linux 4.11+)");
    }
    if !missing.is_empty() {
        bail!(
            "this kernel lacks what resilience needs:\n  - {}",
            missing.join("\n  - ")
        );
    }
    Ok(())
}
