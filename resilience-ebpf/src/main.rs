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
mod cookie;
mod deadline;
mod guard;
mod maps;
mod outcome;
mod services;
mod track;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{BtfTracePointContext, SockAddrContext, SockContext, SockOpsContext},
};
use resilience_common::Endpoint;

/// Verdicts for `cgroup/connect*`: 1 lets the connect proceed.
const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// 127.0.0.1 as the hook sees `user_ip4`: network-order bytes in a host-order integer.
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

/// A cgroup created anywhere on the host: if it is where a service lives, the service's
/// processes in it are guarded from their first connect.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    services::on_mkdir(&ctx);
    0
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr to this program type.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // user_ip4 and user_port hold network-order values in host-order integers, so their
    // in-memory bytes are already the wire bytes.
    let mut ip = sa.user_ip4.to_ne_bytes();
    if ip == [0; 4] {
        // 0.0.0.0 connects to the socket's own bound address, or to 127.0.0.1 (the kernel's
        // ip_route_connect): guard it as that address.
        // SAFETY: `sk` is the connecting socket, never null in this program type.
        let src = unsafe { (*sa.__bindgen_anon_1.sk).src_ip4 }.to_ne_bytes();
        ip = if src == [0; 4] { LOOPBACK4 } else { src };
    }
    let port = u16::from_be(sa.user_port as u16);
    let ep = Endpoint::v4(ip, port);
    let resolved = guard::resolve(&ep);
    guard::on_connect(&ctx, &ep, resolved)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let mut addr = words_to_bytes(sa.user_ip6);
    let port = u16::from_be(sa.user_port as u16);
    // SAFETY: `sk` is the connecting socket, never null in this program type.
    let src = words_to_bytes(unsafe { (*sa.__bindgen_anon_1.sk).src_ip6 });
    if addr == [0; 16] {
        // `::` connects to ::1, or to ::ffff:127.0.0.1 from a socket bound to an IPv4-mapped
        // address (tcp_v6_connect); the latter is the IPv4 loopback.
        addr = if is_v4_mapped(&src) {
            Endpoint::v4(LOOPBACK4, 0).addr
        } else {
            let mut one = [0u8; 16];
            one[15] = 1;
            one
        };
    } else if is_v4_mapped(&addr) && addr[12..] == [0, 0, 0, 0] {
        // ::ffff:0.0.0.0 is an IPv4 connect to 0.0.0.0: as connect4 resolves it.
        let bound = [src[12], src[13], src[14], src[15]];
        let ip = if is_v4_mapped(&src) && bound != [0; 4] {
            bound
        } else {
            LOOPBACK4
        };
        addr = Endpoint::v4(ip, 0).addr;
    }
    // An IPv4-mapped address is already in the form connect4 keys IPv4 with.
    let ep = Endpoint::v6(addr, port);
    let resolved = guard::resolve(&ep);
    guard::on_connect(&ctx, &ep, resolved)
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
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
    addr
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Outcomes of the connects `connect4`/`connect6` let through.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    track::on_sock_ops(&ctx);
    1
}

/// The last word on a socket whose connect failed before its SYN, or never sent it.
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
