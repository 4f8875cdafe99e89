//! Which TCP sockets exist, by socket cookie: a NETLINK_SOCK_DIAG dump (what `ss` uses) in every
//! network namespace the host's processes are in. The cookie inet_diag reports is the one
//! `bpf_get_socket_cookie` returns (both are `sock_gen_cookie`).

use std::{
    collections::HashSet,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// In an inet_diag_msg: family, state, timer, retrans (4 bytes), then inet_diag_sockid, whose
/// cookie (two u32) follows ports (4), src (16), dst (16) and the interface (4).
const COOKIE_OFFSET: usize = 4 + 4 + 16 + 16 + 4;

/// Cookies of every TCP socket, IPv4 and IPv6, in any state, in every network namespace.
pub fn live_cookies() -> Result<HashSet<u64>> {
    let mut cookies = HashSet::new();
    dump_here(&mut cookies).context("sock_diag in the daemon's network namespace")?;
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| (m.dev(), m.ino()))?;
    let others: Vec<PathBuf> = namespaces()
        .into_iter()
        .filter(|(id, _)| *id != own)
        .map(|(_, p)| p)
        .collect();
    if others.is_empty() {
        return Ok(cookies);
    }
    // setns changes only the calling thread's namespace: do it on a thread of its own.
    let found = std::thread::scope(|s| {
        s.spawn(|| {
            let mut found = HashSet::new();
            for path in &others {
                // A namespace can vanish between listing and entering it: its sockets went
                // with it.
                let Ok(ns) = std::fs::File::open(path) else {
                    continue;
                };
                if nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).is_ok() {
                    let _ = dump_here(&mut found);
                }
            }
            found
        })
        .join()
    })
    .map_err(|_| anyhow::anyhow!("the sock_diag thread panicked"))?;
    cookies.extend(found);
    Ok(cookies)
}

/// Every distinct network namespace: of each process, and those `ip netns` keeps.
fn namespaces() -> Vec<((u64, u64), PathBuf)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for path in procs.chain(named) {
        if let Ok(m) = std::fs::metadata(&path) {
            if seen.insert((m.dev(), m.ino())) {
                out.push(((m.dev(), m.ino()), path));
            }
        }
    }
    out
}

/// Dump the calling thread's network namespace.
fn dump_here(out: &mut HashSet<u64>) -> Result<()> {
    // SAFETY: a plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: a descriptor we just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        request(&fd, family)?;
        read_dump(&fd, out)?;
    }
    Ok(())
}

fn request(fd: &OwnedFd, family: u8) -> Result<()> {
    // nlmsghdr (16) + inet_diag_req_v2 (56): family, protocol, ext, pad, states, sockid.
    let mut msg = [0u8; NLMSG_HDRLEN + 56];
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = family;
    msg[17] = libc::IPPROTO_TCP as u8;
    // Every state.
    msg[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: a send of a buffer we own to a socket we own.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("sending the sock_diag request");
    }
    Ok(())
}

fn read_dump(fd: &OwnedFd, out: &mut HashSet<u64>) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: a recv into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("reading the sock_diag dump");
        }
        let mut data = &buf[..n as usize];
        while data.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(data[0..4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(data[4..6].try_into()?);
            if len < NLMSG_HDRLEN || len > data.len() {
                bail!("sock_diag: malformed message ({len} bytes)");
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = data
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    bail!("sock_diag: {}", std::io::Error::from_raw_os_error(-errno));
                }
                _ => {
                    let body = &data[NLMSG_HDRLEN..len];
                    if let Some(c) = body.get(COOKIE_OFFSET..COOKIE_OFFSET + 8) {
                        let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                        let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
                        out.insert(u64::from(lo) | (u64::from(hi) << 32));
                    }
                }
            }
            // Messages are 4-byte aligned.
            let step = len.div_ceil(4) * 4;
            data = data.get(step..).unwrap_or(&[]);
        }
    }
}
