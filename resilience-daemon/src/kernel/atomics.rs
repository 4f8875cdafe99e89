//! Probe for BPF atomic instructions with fetch (Linux 5.12): the bucket, the bulkhead and the
//! probe budget take their places with `atomic_fetch_add`. aya has no probe for an instruction,
//! so this loads a five-instruction socket filter through bpf(2) itself. Without it, a 5.9-5.11
//! kernel would refuse the object with a verifier log instead of a sentence.

use std::io;

/// BPF_PROG_LOAD's leading fields (union bpf_attr); the kernel zero-extends a shorter attr.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `(code, dst | src << 4, off, imm)` as in struct bpf_insn.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (dst & 0xf) | (src << 4);
    u64::from(code)
        | u64::from(regs) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `*(u64 *)(r10 - 8) = 0; r1 = 1; r1 = atomic_fetch_add((u64 *)(r10 - 8), r1); r0 = 0; exit`.
fn program() -> [u64; 5] {
    const ST_MEM_DW: u8 = 0x7a;
    const MOV64_K: u8 = 0xb7;
    const STX_ATOMIC_DW: u8 = 0xdb;
    const BPF_ADD_FETCH: i32 = 0x01;
    const EXIT: u8 = 0x95;
    [
        insn(ST_MEM_DW, 10, 0, -8, 0),
        insn(MOV64_K, 1, 0, 0, 1),
        insn(STX_ATOMIC_DW, 10, 1, -8, BPF_ADD_FETCH),
        insn(MOV64_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Ok(true) when the verifier accepts atomic fetch, Ok(false) when it refuses it as an
/// unknown instruction (EINVAL), Err when bpf(2) itself is refused (EPERM and the like).
pub fn fetch_supported() -> io::Result<bool> {
    let insns = program();
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr and what it points to live across the call.
    match unsafe { super::sys_bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => {
            // SAFETY: the kernel just gave us this descriptor and nothing else holds it.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // The object's own, per llvm-objdump: `db 10 00 00 01 00 00 00  r1 =
        // atomic_fetch_add((u64 *)(r0 + 0), r1)`; here the slot is r10 - 8.
        assert_eq!(
            program()[2].to_le_bytes(),
            [0xdb, 0x1a, 0xf8, 0xff, 0x01, 0, 0, 0]
        );
        assert_eq!(program()[4].to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
