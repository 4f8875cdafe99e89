//! The floor of the datapath benchmark: programs that do nothing, attached at the daemon's four
//! hooks (connect4, connect6, sock_ops, sock_release) of a cgroup. What they cost is what any
//! program at those hooks costs. Two more kinds do the least an exact per-connection tracker
//! must: an entry per connect, found when the connection is established and when it closes,
//! and deleted then; one keeps it in a hash map keyed by the socket's cookie (as the daemon
//! does), the other in the socket's own storage (`bpf_sk_storage_get`). Loaded through bpf(2) from a few raw instructions, so the benchmark needs
//! no BPF toolchain of its own; attached with links, so dropping detaches.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const MAP_HASH: u32 = 1;
const MAP_SK_STORAGE: u32 = 24;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_F_NO_PREALLOC: u32 = 1;
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

/// BPF_MAP_CREATE's leading fields.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// BPF_MAP_CREATE's fields up to the BTF type ids (socket storage needs them).
#[repr(C)]
#[derive(Default)]
struct MapCreateBtf {
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
    for w in [24, 0, type_len, type_len, strings.len() as u32] {
        out.extend(w.to_le_bytes());
    }
    for t in types {
        out.extend(t.to_le_bytes());
    }
    out.extend(strings);
    out
}

/// A socket storage map of 16-byte values, and the BTF it needs (held with it).
fn storage_map() -> io::Result<(OwnedFd, OwnedFd)> {
    let btf = storage_btf();
    let mut log = vec![0u8; 4096];
    let btf_fd = bpf(
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
        io::Error::new(
            e.kind(),
            format!(
                "loading BTF: {e}: {}",
                String::from_utf8_lossy(&log).trim_end_matches('\0')
            ),
        )
    })?;
    let map = bpf(
        BPF_MAP_CREATE,
        &MapCreateBtf {
            map_type: MAP_SK_STORAGE,
            key_size: 4,
            value_size: TRACK_VALUE,
            max_entries: 0,
            map_flags: BPF_F_NO_PREALLOC,
            btf_fd: btf_fd.as_raw_fd() as u32,
            btf_key_type_id: 1,
            btf_value_type_id: 3,
            ..MapCreateBtf::default()
        },
    )?;
    Ok((map, btf_fd))
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
const MOV64_X: u8 = 0xbf;
const ADD64_K: u8 = 0x07;
const EXIT: u8 = 0x95;
const CALL: u8 = 0x85;
const LDX_W: u8 = 0x61;
const STX_DW: u8 = 0x7b;
const ST_DW: u8 = 0x7a;
const LD_IMM64: u8 = 0x18;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const JA: u8 = 0x05;

const TCP_CONNECT_CB: i32 = 3;
const STATE_CB: i32 = 10;
const STATE_CB_FLAG: i32 = 4;
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;

const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const MAP_DELETE_ELEM: i32 = 3;
const GET_SOCKET_COOKIE: i32 = 46;
const SK_STORAGE_GET: i32 = 107;
const SK_STORAGE_DELETE: i32 = 108;
const SK_STORAGE_GET_F_CREATE: i32 = 1;
/// Offsets of the socket pointer in `bpf_sock_addr` and `bpf_sock_ops`.
const SOCK_ADDR_SK: i16 = 64;
const SOCK_OPS_SK: i16 = 184;
const LDX_DW: u8 = 0x79;
const SOCK_OPS_CB_FLAGS_SET: i32 = 59;

/// `r1 = map` (two instruction slots; src 1: the immediate is a map descriptor).
fn ld_map(fd: i32) -> [u64; 2] {
    [insn(LD_IMM64, 1, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// The tracking map of the tracker floor: cookie -> 16 bytes, as small as the daemon's
/// HOT_CONNS (4096 entries), preallocated.
const TRACK_ENTRIES: u32 = 4096;
const TRACK_VALUE: u32 = 16;

/// `r0 = 1; exit`: allow, do nothing.
fn allow() -> Vec<u64> {
    vec![insn(MOV64_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]
}

/// sock_ops that asks for state callbacks on connect, as the daemon's does, and nothing else:
/// `if (op == TCP_CONNECT_CB) bpf_sock_ops_cb_flags_set(ctx, STATE_CB_FLAG); return 1`.
fn sock_ops_with_state_callbacks() -> Vec<u64> {
    vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->op
        insn(JNE_K, 2, 0, 2, TCP_CONNECT_CB),
        insn(MOV64_K, 2, 0, 0, STATE_CB_FLAG),
        insn(CALL, 0, 0, 0, SOCK_OPS_CB_FLAGS_SET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// connect4/connect6 of the tracker floor: an entry keyed by the socket's cookie.
/// `key = cookie(ctx); value = 0; map_update(map, &key, &value, BPF_ANY); return 1`.
fn connect_tracking(map: i32) -> Vec<u64> {
    let mut v = vec![
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE), // r1 = ctx already
        insn(STX_DW, 10, 0, -8, 0),             // key at fp-8
        insn(ST_DW, 10, 0, -24, 0),             // value at fp-24..fp-8
        insn(ST_DW, 10, 0, -16, 0),
    ];
    v.extend(ld_map(map));
    v.extend([
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -8),
        insn(MOV64_X, 3, 10, 0, 0),
        insn(ADD64_K, 3, 0, 0, -24),
        insn(MOV64_K, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, MAP_UPDATE_ELEM),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    v
}

/// connect4/connect6 of the socket-storage tracker floor: the entry lives in the socket.
/// `bpf_sk_storage_get(map, ctx->sk, NULL, F_CREATE); return 1`.
fn connect_storage(map: i32) -> Vec<u64> {
    let mut v = vec![insn(LDX_DW, 2, 1, SOCK_ADDR_SK, 0)];
    v.extend(ld_map(map));
    v.extend([
        insn(MOV64_K, 3, 0, 0, 0),
        insn(MOV64_K, 4, 0, 0, SK_STORAGE_GET_F_CREATE),
        insn(CALL, 0, 0, 0, SK_STORAGE_GET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    v
}

/// sock_ops of the socket-storage tracker floor: as `sock_ops_tracking`, with the socket's
/// storage instead of a hash map keyed by cookie.
fn sock_ops_storage(map: i32) -> Vec<u64> {
    const DONE: i16 = 26;
    let to_done = |at: i16| DONE - at - 1;
    let mut v = vec![
        insn(MOV64_X, 6, 1, 0, 0), // 0: r6 = ctx
        insn(LDX_W, 2, 6, 0, 0),   // 1: r2 = ctx->op
        insn(JNE_K, 2, 0, 4, TCP_CONNECT_CB),
        insn(MOV64_K, 2, 0, 0, STATE_CB_FLAG),
        insn(CALL, 0, 0, 0, SOCK_OPS_CB_FLAGS_SET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
        insn(JNE_K, 2, 0, to_done(7), STATE_CB), // 7
        insn(LDX_W, 7, 6, 8, 0),                 // 8: r7 = the new state
        insn(JEQ_K, 7, 0, 1, TCP_ESTABLISHED),   // 9
        insn(JNE_K, 7, 0, to_done(10), TCP_CLOSE),
        insn(LDX_DW, 8, 6, SOCK_OPS_SK, 0), // 11: r8 = ctx->sk
        insn(JEQ_K, 8, 0, to_done(12), 0),
        insn(MOV64_X, 2, 8, 0, 0), // 13
    ];
    v.extend(ld_map(map)); // 14, 15
    v.extend([
        insn(MOV64_K, 3, 0, 0, 0), // 16
        insn(MOV64_K, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, SK_STORAGE_GET),             // 18
        insn(JEQ_K, 7, 0, to_done(19), TCP_ESTABLISHED), // found or not: done
        insn(JEQ_K, 0, 0, to_done(20), 0),               // CLOSE without an entry: done
    ]);
    v.extend(ld_map(map)); // 21, 22
    v.extend([
        insn(MOV64_X, 2, 8, 0, 0), // 23
        insn(CALL, 0, 0, 0, SK_STORAGE_DELETE),
        insn(JA, 0, 0, 0, 0),      // 25
        insn(MOV64_K, 0, 0, 0, 1), // 26: DONE
        insn(EXIT, 0, 0, 0, 0),
    ]);
    debug_assert_eq!(v.len(), DONE as usize + 2);
    v
}

/// sock_ops of the tracker floor: asks for state callbacks on connect; at ESTABLISHED looks
/// the entry up; at CLOSE looks it up and deletes it. Jump offsets count from the next
/// instruction; `DONE` is the index of the final `r0 = 1`.
fn sock_ops_tracking(map: i32) -> Vec<u64> {
    const DONE: i16 = 26;
    let to_done = |at: i16| DONE - at - 1;
    let mut v = vec![
        insn(MOV64_X, 6, 1, 0, 0), // 0: r6 = ctx
        insn(LDX_W, 2, 6, 0, 0),   // 1: r2 = ctx->op
        insn(JNE_K, 2, 0, 4, TCP_CONNECT_CB),
        insn(MOV64_K, 2, 0, 0, STATE_CB_FLAG),
        insn(CALL, 0, 0, 0, SOCK_OPS_CB_FLAGS_SET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
        insn(JNE_K, 2, 0, to_done(7), STATE_CB), // 7
        insn(LDX_W, 7, 6, 8, 0),                 // 8: r7 = ctx->args[1], the new state
        insn(JEQ_K, 7, 0, 1, TCP_ESTABLISHED),   // 9
        insn(JNE_K, 7, 0, to_done(10), TCP_CLOSE),
        insn(MOV64_X, 1, 6, 0, 0), // 11
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0), // 13
    ];
    v.extend(ld_map(map)); // 14, 15
    v.extend([
        insn(MOV64_X, 2, 10, 0, 0), // 16
        insn(ADD64_K, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),            // 18
        insn(JEQ_K, 7, 0, to_done(19), TCP_ESTABLISHED), // found or not: done
        insn(JEQ_K, 0, 0, to_done(20), 0),               // CLOSE without an entry: done
    ]);
    v.extend(ld_map(map)); // 21, 22
    v.extend([
        insn(MOV64_X, 2, 10, 0, 0), // 23
        insn(ADD64_K, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, MAP_DELETE_ELEM), // 25
        insn(MOV64_K, 0, 0, 0, 1),            // 26: DONE
        insn(EXIT, 0, 0, 0, 0),
    ]);
    debug_assert_eq!(v.len(), DONE as usize + 2);
    v
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
    bpf(BPF_PROG_LOAD, &attr(&mut [])).map_err(|e| {
        // Again with the verifier's log, for the error.
        let mut log = vec![0u8; 64 * 1024];
        let _ = bpf(BPF_PROG_LOAD, &attr(&mut log));
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

/// What the floor's programs do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FloorKind {
    /// Nothing.
    Empty,
    /// sock_ops asks for state callbacks on connect, as the daemon's does, so the kernel runs
    /// it on every state change of the connecting socket too.
    StateCallbacks,
    /// And an entry per connect, keyed by cookie: inserted by the connect hook, looked up at
    /// ESTABLISHED, looked up and deleted at CLOSE.
    Tracking,
    /// The same with the entry in the socket's own storage (`bpf_sk_storage_get`).
    SocketStorage,
}

/// The floor's programs attached to a cgroup while this lives.
pub struct Floor {
    /// (hook, program fd), for `prog_stats`.
    pub programs: Vec<(&'static str, OwnedFd)>,
    _links: Vec<OwnedFd>,
    _map: Option<OwnedFd>,
    _btf: Option<OwnedFd>,
    kind: FloorKind,
}

impl Floor {
    pub fn attach(cgroup: &Path, kind: FloorKind) -> io::Result<Floor> {
        let dir = std::fs::File::open(cgroup)?;
        let mut btf_fd = None;
        let map = match kind {
            FloorKind::Tracking => Some(bpf(
                BPF_MAP_CREATE,
                &MapCreate {
                    map_type: MAP_HASH,
                    key_size: 8,
                    value_size: TRACK_VALUE,
                    max_entries: TRACK_ENTRIES,
                    map_flags: 0,
                },
            )?),
            FloorKind::SocketStorage => {
                let (map, btf) = storage_map()?;
                btf_fd = Some(btf);
                Some(map)
            }
            _ => None,
        };
        let map_fd = map.as_ref().map_or(-1, |m| m.as_raw_fd());
        let (connect, sock_ops) = match kind {
            FloorKind::Empty => (allow(), allow()),
            FloorKind::StateCallbacks => (allow(), sock_ops_with_state_callbacks()),
            FloorKind::Tracking => (connect_tracking(map_fd), sock_ops_tracking(map_fd)),
            FloorKind::SocketStorage => (connect_storage(map_fd), sock_ops_storage(map_fd)),
        };
        let specs: [(&'static str, u32, u32, Vec<u64>); 4] = [
            (
                "connect4",
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                connect.clone(),
            ),
            (
                "connect6",
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET6_CONNECT,
                connect,
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
            _map: map,
            _btf: btf_fd,
            kind,
        })
    }

    /// Entries in the tracker floor's map now (0 for the other kinds): every connection that
    /// closed took its entry with it.
    pub fn tracked(&self) -> io::Result<u32> {
        let (Some(map), FloorKind::Tracking) = (&self._map, self.kind) else {
            return Ok(0);
        };
        let mut n = 0;
        let mut key = [0u8; 8];
        let mut next = [0u8; 8];
        let mut first = true;
        loop {
            let attr = MapNextKey {
                map_fd: map.as_raw_fd() as u32,
                _pad: 0,
                key: if first { 0 } else { key.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
            };
            // SAFETY: attr points at live buffers of the map's key size.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_GET_NEXT_KEY,
                    &attr as *const MapNextKey,
                    std::mem::size_of::<MapNextKey>(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return if e.raw_os_error() == Some(libc::ENOENT) {
                    Ok(n)
                } else {
                    Err(e)
                };
            }
            n += 1;
            key = next;
            first = false;
        }
    }
}

/// BPF_MAP_LOOKUP_ELEM's fields.
#[repr(C)]
struct MapLookup {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl Floor {
    /// For the socket-storage floor: whether the socket behind `fd` (of this process) holds an
    /// entry now.
    pub fn stored(&self, fd: i32) -> io::Result<bool> {
        let (Some(map), FloorKind::SocketStorage) = (&self._map, self.kind) else {
            return Err(io::Error::other("not the socket-storage floor"));
        };
        let mut value = [0u8; TRACK_VALUE as usize];
        let attr = MapLookup {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &fd as *const i32 as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points at live buffers of the map's key and value sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const MapLookup,
                std::mem::size_of::<MapLookup>(),
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// BPF_MAP_GET_NEXT_KEY's fields.
#[repr(C)]
struct MapNextKey {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
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
