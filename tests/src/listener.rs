//! Loopback servers: one that accepts and closes (counting), one that never accepts.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

/// A port on `ip` where nothing listens (bound to learn a free port, then closed): connects
/// to it are refused.
pub fn closed_port(ip: &str) -> SocketAddr {
    closed_ports(ip, 1)[0]
}

/// `n` distinct closed ports on `ip`. Each listener is held until all are picked: one at a
/// time, the kernel may hand a port just freed out again (seen in CI: two destinations on
/// one address, a policy the daemon refuses).
pub fn closed_ports(ip: &str, n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind(format!("{ip}:0"))
                .unwrap_or_else(|e| panic!("closed port on {ip}: {e}"))
        })
        .collect();
    held.iter()
        .map(|l| {
            l.local_addr()
                .unwrap_or_else(|e| panic!("closed port on {ip}: {e}"))
        })
        .collect()
}

/// Accepts every connection and closes it at once, counting them.
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// `addr` with port 0 picks a free port.
    pub fn start(addr: &str) -> Server {
        Server::run(addr, false)
    }

    /// Like `start`, but every accepted connection is closed with a reset (SO_LINGER 0): the
    /// client's established connection ends with ECONNRESET.
    pub fn start_resetting(addr: &str) -> Server {
        Server::run(addr, true)
    }

    fn run(addr: &str, reset: bool) -> Server {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        // std listens with a backlog of 128; tests that connect from several processes at
        // full speed can fill that, and a dropped SYN costs a 1 s retransmit. Linux lets a
        // second listen() raise it.
        listen(&l, Backlog::MAXCONN).expect("listen backlog");
        let addr = l.local_addr().expect("local_addr");
        l.set_nonblocking(true).expect("nonblocking");
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        if reset {
                            // Give the client time to see ESTABLISHED first.
                            std::thread::sleep(Duration::from_millis(20));
                            let _ = setsockopt(
                                &conn,
                                sockopt::Linger,
                                &libc::linger {
                                    l_onoff: 1,
                                    l_linger: 0,
                                },
                            );
                        }
                        drop(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Server {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The accepted count once it reaches `n` (the accept thread polls), or after 5 s.
    pub fn wait_accepted(&self, n: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.accepted() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.accepted()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener with backlog 0 that never accepts: once its queue holds a connection, further
/// SYNs are dropped and connects hang in SYN_SENT. The queue is filled from this (test)
/// process, outside any guarded cgroup.
pub struct BlackHole {
    pub addr: SocketAddr,
    fd: OwnedFd,
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    pub fn start(ip: &str) -> BlackHole {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .expect("socket");
        setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
        let want: SocketAddr = format!("{ip}:0").parse().expect("ip");
        bind(fd.as_raw_fd(), &SockaddrStorage::from(want)).expect("bind");
        listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
        let local: SockaddrStorage =
            nix::sys::socket::getsockname(fd.as_raw_fd()).expect("getsockname");
        let addr: SocketAddr = local
            .as_sockaddr_in()
            .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
            .expect("IPv4 listener");
        let mut queued = Vec::new();
        // Fill the accept queue: connects succeed until it is full, then one times out.
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        BlackHole {
            addr,
            fd,
            _queued: queued,
        }
    }

    /// Accept one queued connection and close it: the queue has room again, so a client whose
    /// SYN was dropped gets through with its retransmission (about 1 s after its first SYN).
    pub fn accept_one(&self) {
        let conn = nix::sys::socket::accept(self.fd.as_raw_fd()).expect("accept");
        // SAFETY: accept returned a new descriptor that nothing else owns.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn) });
    }
}
