//! The floor of the datapath benchmark: programs that do nothing, attached at the daemon's four
//! hooks (connect4, connect6, sock_ops, sock_release) of a cgroup. What they cost is what any
//! program at those hooks costs. Loaded through bpf(2) from a few raw instructions, so the
//! benchmark needs no BPF toolchain of its own; attached with links, so dropping detaches.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const PROG_CGROUP_SOCK: u32 = 9;
const PROG_SOCK_OPS: u32 = 13;
const PROG_CGROUP_SOCK_ADDR: u32 = 18;

const ATTACH_SOCK_OPS: u32 = 3;
const ATTACH_INET4_CONNECT: u32 = 10;
const ATTACH_INET6_CONNECT: u32 = 11;
const ATTACH_SOCK_RELEASE: u32 = 34;

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

/// BPF_LINK_CREATE's leading fields.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from((dst & 0xf) | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

const MOV64_K: u8 = 0xb7;
const EXIT: u8 = 0x95;
const CALL: u8 = 0x85;
const LDX_W: u8 = 0x61;
const JNE_K: u8 = 0x55;

/// `r0 = 1; exit`: allow, do nothing.
fn allow() -> Vec<u64> {
    vec![insn(MOV64_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]
}

/// sock_ops that asks for state callbacks on connect, as the daemon's does, and nothing else:
/// `if (op == TCP_CONNECT_CB) bpf_sock_ops_cb_flags_set(ctx, STATE_CB_FLAG); return 1`.
fn sock_ops_with_state_callbacks() -> Vec<u64> {
    const TCP_CONNECT_CB: i32 = 3;
    const STATE_CB_FLAG: i32 = 4;
    const SOCK_OPS_CB_FLAGS_SET: i32 = 59;
    vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->op
        insn(JNE_K, 2, 0, 2, TCP_CONNECT_CB),
        insn(MOV64_K, 2, 0, 0, STATE_CB_FLAG),
        insn(CALL, 0, 0, 0, SOCK_OPS_CB_FLAGS_SET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid bpf_attr prefix for cmd and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load(prog_type: u32, attach: u32, insns: &[u64], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    bpf(
        BPF_PROG_LOAD,
        &ProgLoad {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: attach,
            ..ProgLoad::default()
        },
    )
}

/// Empty programs attached to a cgroup while this lives.
pub struct Floor {
    /// (hook, program fd), for `prog_stats`.
    pub programs: Vec<(&'static str, OwnedFd)>,
    _links: Vec<OwnedFd>,
}

impl Floor {
    /// `state_callbacks`: the sock_ops program asks for state callbacks as the daemon's does,
    /// so the kernel runs it on every state change of the connecting socket too.
    pub fn attach(cgroup: &Path, state_callbacks: bool) -> io::Result<Floor> {
        let dir = std::fs::File::open(cgroup)?;
        let sock_ops = if state_callbacks {
            sock_ops_with_state_callbacks()
        } else {
            allow()
        };
        let specs: [(&'static str, u32, u32, Vec<u64>); 4] = [
            (
                "connect4",
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                allow(),
            ),
            (
                "connect6",
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET6_CONNECT,
                allow(),
            ),
            ("sock_ops", PROG_SOCK_OPS, ATTACH_SOCK_OPS, sock_ops),
            (
                "sock_release",
                PROG_CGROUP_SOCK,
                ATTACH_SOCK_RELEASE,
                allow(),
            ),
        ];
        let mut programs = Vec::new();
        let mut links = Vec::new();
        for (hook, prog_type, attach, insns) in specs {
            let prog = load(prog_type, attach, &insns, hook)?;
            let link = bpf(
                BPF_LINK_CREATE,
                &LinkCreate {
                    prog_fd: prog.as_raw_fd() as u32,
                    target_fd: dir.as_raw_fd() as u32,
                    attach_type: attach,
                    flags: 0,
                },
            )?;
            programs.push((hook, prog));
            links.push(link);
        }
        Ok(Floor {
            programs,
            _links: links,
        })
    }
}

/// A program's run count and total run time (kernel.bpf_stats_enabled must be 1).
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
