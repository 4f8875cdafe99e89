//! The few bpf(2) calls the benchmark's floors need, made directly (no BPF library, no
//! toolchain): load a program from raw instructions, attach it to a cgroup with a link, create
//! the floors' maps, read them back; and the kernel's per-program statistics from fdinfo.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

const MAP_HASH: u32 = 1;
const MAP_SK_STORAGE: u32 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;

pub const PROG_CGROUP_SOCK: u32 = 9;
pub const PROG_SOCK_OPS: u32 = 13;
pub const PROG_CGROUP_SOCK_ADDR: u32 = 18;

pub const ATTACH_SOCK_OPS: u32 = 3;
pub const ATTACH_INET4_CONNECT: u32 = 10;
pub const ATTACH_INET6_CONNECT: u32 = 11;
pub const ATTACH_SOCK_RELEASE: u32 = 34;

/// BPF_PROG_LOAD's fields up to expected_attach_type (union bpf_attr).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// BPF_MAP_CREATE's fields up to the BTF type ids (socket storage needs them).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
}

/// BPF_BTF_LOAD's fields.
#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
}

/// BPF_MAP_LOOKUP_ELEM's and BPF_MAP_GET_NEXT_KEY's fields (`value` is `next_key` for the
/// latter).
#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// BPF_LINK_CREATE's leading fields.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2) with `attr`; the return value as is.
fn sys<T>(cmd: libc::c_long, attr: &T) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr prefix for cmd, its pointers point at live buffers of
    // the sizes the command expects, and it outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// bpf(2) for a command that returns a new descriptor.
fn sys_fd<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    let fd = sys(cmd, attr)?;
    // SAFETY: a new descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads a program; on failure the error carries the verifier's log.
pub fn load(prog_type: u32, attach: u32, insns: &[u64], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        // No log: no buffer (the kernel refuses one without a log level).
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        ..ProgLoad::default()
    };
    sys_fd(BPF_PROG_LOAD, &attr(&mut [])).map_err(|e| {
        // Again with the verifier's log, for the error.
        let mut log = vec![0u8; 64 * 1024];
        let _ = sys_fd(BPF_PROG_LOAD, &attr(&mut log));
        let text = String::from_utf8_lossy(&log);
        io::Error::new(
            e.kind(),
            format!(
                "loading {name}: {e}: {}",
                text.trim_end_matches('\0').trim()
            ),
        )
    })
}

/// Attaches `prog` to the cgroup open as `cgroup`; dropping the link detaches it.
pub fn link(prog: &OwnedFd, cgroup: &std::fs::File, attach: u32) -> io::Result<OwnedFd> {
    sys_fd(
        BPF_LINK_CREATE,
        &LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: attach,
            flags: 0,
        },
    )
}

/// A preallocated hash map with 8-byte keys.
pub fn hash_map(value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    sys_fd(
        BPF_MAP_CREATE,
        &MapCreate {
            map_type: MAP_HASH,
            key_size: 8,
            value_size,
            max_entries,
            ..MapCreate::default()
        },
    )
}

/// A socket storage map of 16-byte values, and the BTF its definition needs (keep both).
pub fn storage_map() -> io::Result<(OwnedFd, OwnedFd)> {
    let btf = storage_btf();
    let mut log = vec![0u8; 4096];
    let btf_fd = sys_fd(
        BPF_BTF_LOAD,
        &BtfLoad {
            btf: btf.as_ptr() as u64,
            btf_size: btf.len() as u32,
            btf_log_buf: log.as_mut_ptr() as u64,
            btf_log_size: log.len() as u32,
            btf_log_level: 1,
        },
    )
    .map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        io::Error::new(
            e.kind(),
            format!("loading BTF: {e}: {}", text.trim_end_matches('\0')),
        )
    })?;
    let map = sys_fd(
        BPF_MAP_CREATE,
        &MapCreate {
            map_type: MAP_SK_STORAGE,
            key_size: 4,
            value_size: 16,
            max_entries: 0,
            map_flags: BPF_F_NO_PREALLOC,
            btf_fd: btf_fd.as_raw_fd() as u32,
            btf_key_type_id: 1,
            btf_value_type_id: 3,
            ..MapCreate::default()
        },
    )?;
    Ok((map, btf_fd))
}

/// BTF with the two types a socket storage map's definition names: [1] `int` (its key) and
/// [3] `struct v { u64 a; u64 b; }` (its 16-byte value; [2] is `u64`).
fn storage_btf() -> Vec<u8> {
    let strings = b"\0int\0u64\0v\0a\0b\0";
    let mut types: Vec<u32> = Vec::new();
    // [1] INT "int", 4 bytes, signed, 32 bits.
    types.extend([1, 1 << 24, 4, (1 << 24) | 32]);
    // [2] INT "u64", 8 bytes, 64 bits.
    types.extend([5, 1 << 24, 8, 64]);
    // [3] STRUCT "v", 2 members, 16 bytes: a at bit 0, b at bit 64, both [2].
    types.extend([9, (4 << 24) | 2, 16, 11, 2, 0, 13, 2, 64]);
    let type_len = (types.len() * 4) as u32;
    let mut out = Vec::new();
    out.extend(0xeb9f_u16.to_le_bytes());
    out.extend([1u8, 0]);
    // hdr_len, type_off, type_len, str_off, str_len.
    for w in [24, 0, type_len, type_len, strings.len() as u32] {
        out.extend(w.to_le_bytes());
    }
    for t in types {
        out.extend(t.to_le_bytes());
    }
    out.extend(strings);
    out
}

/// Whether `map` has an entry for `key` (its value is read into `value`).
pub fn has(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match sys(BPF_MAP_LOOKUP_ELEM, &attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many keys a map with 8-byte keys holds now.
pub fn count_keys(map: &OwnedFd) -> io::Result<u32> {
    let mut n = 0;
    let mut key = [0u8; 8];
    let mut next = [0u8; 8];
    let mut first = true;
    loop {
        let attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match sys(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        key = next;
        first = false;
    }
}

/// Turns the kernel's per-program run-time statistics on while the descriptor is held
/// (BPF_ENABLE_STATS, Linux 5.8): unlike the `kernel.bpf_stats_enabled` sysctl, they go back
/// off by themselves when it is closed, however this process ends.
pub fn enable_stats() -> io::Result<OwnedFd> {
    #[repr(C)]
    struct EnableStats {
        kind: u32,
    }
    sys_fd(
        BPF_ENABLE_STATS,
        &EnableStats {
            kind: BPF_STATS_RUN_TIME,
        },
    )
}

/// A program's run count and total run time (while `enable_stats` holds them on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// From /proc/PID/fdinfo/FD of a program descriptor.
pub fn prog_stats(pid: u32, fd: i32) -> Option<ProgStats> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(ProgStats {
        run_cnt: field("run_cnt:")?,
        run_time_ns: field("run_time_ns:")?,
    })
}

/// Every BPF program descriptor a process holds: (fd, prog_type, prog_id).
pub fn prog_fds(pid: u32) -> Vec<(i32, u32, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let (Some(t), Some(id)) = (field("prog_type:"), field("prog_id:")) {
            out.push((fd, t, id));
        }
    }
    out.sort_unstable();
    out.dedup_by_key(|p| p.2);
    out
}

/// The hook a program type stands for (connect4 and connect6 share a type: told apart by
/// which of them ran, since the benchmark connects over IPv4 only).
pub fn hook_of(prog_type: u32) -> &'static str {
    match prog_type {
        PROG_CGROUP_SOCK_ADDR => "connect",
        PROG_SOCK_OPS => "sock_ops",
        PROG_CGROUP_SOCK => "sock_release",
        _ => "other",
    }
}
