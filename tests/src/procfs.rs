//! What the benchmarks and the soak read of a process from /proc: its CPU time and memory.

/// utime + stime of `pid`, in seconds (0 if it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    (t(11) + t(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A `Vm*:` line of /proc/PID/status (e.g. "VmRSS:", "VmHWM:"), in MiB (0 if absent).
pub fn vm_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    vm_mib(pid, "VmRSS:")
}

/// Resident memory of `pid` in MiB by kind of mapping, from /proc/PID/smaps: memory-mapped BPF
/// maps, the heap and other anonymous memory (glibc's arenas, stacks), and file-backed pages
/// (the binary and libraries).
#[derive(Debug, Default, Clone, Copy)]
pub struct RssParts {
    pub bpf_maps: f64,
    pub anon: f64,
    pub file: f64,
}

pub fn rss_parts(pid: u32) -> RssParts {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut parts = RssParts::default();
    let mut kind = 0;
    for line in s.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first == "Rss:" {
            let kib = words
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            let mib = kib / 1024.0;
            match kind {
                1 => parts.bpf_maps += mib,
                2 => parts.file += mib,
                _ => parts.anon += mib,
            }
        } else if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: "start-end perms offset dev inode [name]".
            let name = line.split_whitespace().nth(5).unwrap_or("");
            kind = if name.starts_with("anon_inode:bpf-map") {
                1
            } else if name.starts_with('/') {
                2
            } else {
                0
            };
        }
    }
    parts
}
