//! The floors of the datapath benchmark: programs attached at the daemon's four hooks
//! (connect4, connect6, sock_ops, sock_release) of a cgroup that do nothing, or only what
//! anything at those hooks must. Empty ones show what any program there costs; one asks for
//! the state callbacks outcome tracking needs; two more do the least an exact per-connection
//! tracker must (an entry per connect, found when the connection is established and when it
//! closes, and deleted then), one with the entry in a hash map keyed by the socket's cookie (as
//! the daemon does), the other in the socket's own storage (`bpf_sk_storage_get`). Written as
//! raw instructions and loaded with bpf(2) (`bpf_sys`), so the benchmark needs no BPF
//! toolchain of its own; attached with links, so dropping detaches.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use crate::bpf_sys::{
    self, ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT, ATTACH_SOCK_OPS, ATTACH_SOCK_RELEASE,
    PROG_CGROUP_SOCK, PROG_CGROUP_SOCK_ADDR, PROG_SOCK_OPS,
};

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
const LDX_DW: u8 = 0x79;
const STX_DW: u8 = 0x7b;
const ST_DW: u8 = 0x7a;
const LD_IMM64: u8 = 0x18;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;

const TCP_CONNECT_CB: i32 = 3;
const STATE_CB: i32 = 10;
const STATE_CB_FLAG: i32 = 4;
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;

const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const MAP_DELETE_ELEM: i32 = 3;
const GET_SOCKET_COOKIE: i32 = 46;
const SOCK_OPS_CB_FLAGS_SET: i32 = 59;
const SK_STORAGE_GET: i32 = 107;
const SK_STORAGE_DELETE: i32 = 108;
const SK_STORAGE_GET_F_CREATE: i32 = 1;

/// Offsets of the socket pointer in `bpf_sock_addr` and `bpf_sock_ops`, and of `args[1]` (a
/// state callback's new state) in `bpf_sock_ops`.
const SOCK_ADDR_SK: i16 = 64;
const SOCK_OPS_SK: i16 = 184;
const SOCK_OPS_ARG1: i16 = 8;

/// The tracker floor's hash map: cookie -> 16 bytes, as small as the daemon's HOT_CONNS.
const TRACK_ENTRIES: u32 = 4096;
const TRACK_VALUE: u32 = 16;

/// `r1 = map` (two instruction slots; src 1: the immediate is a map descriptor).
fn ld_map(fd: i32) -> [u64; 2] {
    [insn(LD_IMM64, 1, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// `r0 = 1; exit`: allow, do nothing.
fn allow() -> Vec<u64> {
    vec![insn(MOV64_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]
}

/// The start of every floor's sock_ops that asks for state callbacks, as the daemon's does:
/// `r6 = ctx; if (op == TCP_CONNECT_CB) { bpf_sock_ops_cb_flags_set(ctx, STATE_CB_FLAG);
/// return 1; }`, then on to what follows, with r2 = op.
fn arm_on_connect() -> Vec<u64> {
    vec![
        insn(MOV64_X, 6, 1, 0, 0), // r6 = ctx
        insn(LDX_W, 2, 6, 0, 0),   // r2 = ctx->op
        insn(JNE_K, 2, 0, 4, TCP_CONNECT_CB),
        insn(MOV64_K, 2, 0, 0, STATE_CB_FLAG),
        insn(CALL, 0, 0, 0, SOCK_OPS_CB_FLAGS_SET),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// sock_ops that asks for state callbacks and does nothing else.
fn sock_ops_with_state_callbacks() -> Vec<u64> {
    let mut v = arm_on_connect();
    v.extend(allow());
    v
}

/// How a tracker floor keeps its entry: three blocks of instructions that fall through at
/// their end. `create` runs in the connect hook (r1 = ctx); `find` and `delete` in sock_ops,
/// with r6 = ctx and r7 = the new state kept, `find` leaving the entry (or 0) in r0.
struct Entry {
    create: Vec<u64>,
    find: Vec<u64>,
    delete: Vec<u64>,
}

impl Entry {
    /// In a hash map, keyed by the socket's cookie (kept at fp-8 from `find` to `delete`).
    fn hashed(map: i32) -> Entry {
        let key_and_map = |v: &mut Vec<u64>| {
            v.extend(ld_map(map));
            v.extend([insn(MOV64_X, 2, 10, 0, 0), insn(ADD64_K, 2, 0, 0, -8)]);
        };
        let mut create = vec![
            insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE), // r1 = ctx already
            insn(STX_DW, 10, 0, -8, 0),             // key at fp-8
            insn(ST_DW, 10, 0, -24, 0),             // value at fp-24..fp-8
            insn(ST_DW, 10, 0, -16, 0),
        ];
        key_and_map(&mut create);
        create.extend([
            insn(MOV64_X, 3, 10, 0, 0),
            insn(ADD64_K, 3, 0, 0, -24),
            insn(MOV64_K, 4, 0, 0, 0), // BPF_ANY
            insn(CALL, 0, 0, 0, MAP_UPDATE_ELEM),
        ]);
        let mut find = vec![
            insn(MOV64_X, 1, 6, 0, 0),
            insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE),
            insn(STX_DW, 10, 0, -8, 0),
        ];
        key_and_map(&mut find);
        find.push(insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM));
        let mut delete = Vec::new();
        key_and_map(&mut delete);
        delete.push(insn(CALL, 0, 0, 0, MAP_DELETE_ELEM));
        Entry {
            create,
            find,
            delete,
        }
    }

    /// In the socket's own storage (the socket kept in r8 from `find` to `delete`).
    fn in_socket(map: i32) -> Entry {
        let mut create = vec![insn(LDX_DW, 2, 1, SOCK_ADDR_SK, 0)];
        create.extend(ld_map(map));
        create.extend([
            insn(MOV64_K, 3, 0, 0, 0),
            insn(MOV64_K, 4, 0, 0, SK_STORAGE_GET_F_CREATE),
            insn(CALL, 0, 0, 0, SK_STORAGE_GET),
        ]);
        let find_call = {
            let mut v = vec![insn(MOV64_X, 2, 8, 0, 0)];
            v.extend(ld_map(map));
            v.extend([
                insn(MOV64_K, 3, 0, 0, 0),
                insn(MOV64_K, 4, 0, 0, 0),
                insn(CALL, 0, 0, 0, SK_STORAGE_GET),
            ]);
            v
        };
        // No socket: r0 = 0, as if there were no entry.
        let mut find = vec![
            insn(LDX_DW, 8, 6, SOCK_OPS_SK, 0),
            insn(MOV64_K, 0, 0, 0, 0),
            insn(JEQ_K, 8, 0, find_call.len() as i16, 0),
        ];
        find.extend(find_call);
        let mut delete = ld_map(map).to_vec();
        delete.extend([
            insn(MOV64_X, 2, 8, 0, 0),
            insn(CALL, 0, 0, 0, SK_STORAGE_DELETE),
        ]);
        Entry {
            create,
            find,
            delete,
        }
    }

    /// connect4/connect6: create the entry, allow.
    fn connect(&self) -> Vec<u64> {
        let mut v = self.create.clone();
        v.extend(allow());
        v
    }

    /// sock_ops: asks for state callbacks on connect; at ESTABLISHED finds the entry; at CLOSE
    /// finds it and deletes it.
    fn sock_ops(&self) -> Vec<u64> {
        let mut v = arm_on_connect();
        // Jumps to the final `r0 = 1; exit` are patched once its place is known.
        let mut to_done = Vec::new();
        to_done.push(v.len());
        v.push(insn(JNE_K, 2, 0, 0, STATE_CB));
        v.push(insn(LDX_W, 7, 6, SOCK_OPS_ARG1, 0)); // r7 = the new state
        v.push(insn(JEQ_K, 7, 0, 1, TCP_ESTABLISHED));
        to_done.push(v.len());
        v.push(insn(JNE_K, 7, 0, 0, TCP_CLOSE));
        v.extend(&self.find);
        to_done.push(v.len());
        v.push(insn(JEQ_K, 7, 0, 0, TCP_ESTABLISHED)); // found or not: done
        to_done.push(v.len());
        v.push(insn(JEQ_K, 0, 0, 0, 0)); // CLOSE without an entry: done
        v.extend(&self.delete);
        let done = v.len();
        v.extend(allow());
        for at in to_done {
            // The offset counts from the next instruction.
            let off = (done - at - 1) as u16;
            v[at] = (v[at] & !(0xffff << 16)) | (u64::from(off) << 16);
        }
        v
    }
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
    /// (hook, program fd), for `bpf_sys::prog_stats`.
    pub programs: Vec<(&'static str, OwnedFd)>,
    _links: Vec<OwnedFd>,
    map: Option<OwnedFd>,
    _btf: Option<OwnedFd>,
    kind: FloorKind,
}

impl Floor {
    pub fn attach(cgroup: &Path, kind: FloorKind) -> io::Result<Floor> {
        let dir = std::fs::File::open(cgroup)?;
        let (map, btf, connect, sock_ops) = match kind {
            FloorKind::Empty => (None, None, allow(), allow()),
            FloorKind::StateCallbacks => (None, None, allow(), sock_ops_with_state_callbacks()),
            FloorKind::Tracking => {
                let map = bpf_sys::hash_map(TRACK_VALUE, TRACK_ENTRIES)?;
                let e = Entry::hashed(map.as_raw_fd());
                (Some(map), None, e.connect(), e.sock_ops())
            }
            FloorKind::SocketStorage => {
                let (map, btf) = bpf_sys::storage_map()?;
                let e = Entry::in_socket(map.as_raw_fd());
                (Some(map), Some(btf), e.connect(), e.sock_ops())
            }
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
            let prog = bpf_sys::load(prog_type, attach, &insns, hook)?;
            links.push(bpf_sys::link(&prog, &dir, attach)?);
            programs.push((hook, prog));
        }
        Ok(Floor {
            programs,
            _links: links,
            map,
            _btf: btf,
            kind,
        })
    }

    /// Entries in the tracker floor's hash map now (0 for the other kinds): every connection
    /// that closed took its entry with it.
    pub fn tracked(&self) -> io::Result<u32> {
        match (&self.map, self.kind) {
            (Some(map), FloorKind::Tracking) => bpf_sys::count_keys(map),
            _ => Ok(0),
        }
    }

    /// For the socket-storage floor: whether the socket behind `fd` (of this process) holds an
    /// entry now.
    pub fn stored(&self, fd: i32) -> io::Result<bool> {
        let (Some(map), FloorKind::SocketStorage) = (&self.map, self.kind) else {
            return Err(io::Error::other("not the socket-storage floor"));
        };
        let mut value = [0u8; TRACK_VALUE as usize];
        bpf_sys::has(map, &fd.to_ne_bytes(), &mut value)
    }
}
