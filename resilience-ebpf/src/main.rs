//! Kernel side of resilience: a connect hook that allows or rejects outbound TCP connects per
//! destination, and a TCP state tracker that counts their outcomes.
//!
//! Data path: `connect4`/`connect6` -> `guard::on_connect` (lookup, verdict, counters, CONNS)
//! -> `sock_ops` and `sock_release` (outcomes, counters, EVENTS ring buffer) -> the daemon.
// Built for bpfel-unknown-none; on the host (`cargo clippy --workspace`) it is an empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod guard;
mod maps;
mod track;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use resilience_common::Endpoint;

/// Verdicts for `cgroup/connect*`: 1 lets the connect proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // user_ip4 and user_port hold network-order values in host-order integers, so their
    // in-memory bytes are already the wire bytes.
    let ip = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    guard::on_connect(&ctx, Endpoint::v4(ip, port))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let w = sa.user_ip6;
    let mut addr = [0u8; 16];
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    addr[0..4].copy_from_slice(&a);
    addr[4..8].copy_from_slice(&b);
    addr[8..12].copy_from_slice(&c);
    addr[12..16].copy_from_slice(&d);
    let port = u16::from_be(sa.user_port as u16);
    // An IPv4-mapped address is already in the form connect4 keys IPv4 with.
    guard::on_connect(&ctx, Endpoint::v6(addr, port))
}

/// Outcomes of the connects `connect4`/`connect6` let through.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    track::on_sock_ops(&ctx);
    1
}

/// The last word on a socket whose connect failed before its SYN.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    track::on_release(&ctx);
    1
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
