//! Privileged: the datapath benchmark's floors do what their labels say. The tracker floor is
//! the least any exact per-connection tracker at our hooks costs, so it must really hold one
//! entry per open connection and drop it when the connection ends, however it ends.

use std::{
    net::TcpStream,
    os::fd::AsRawFd,
    thread::sleep,
    time::{Duration, Instant},
};

use resilience_tests::{
    cgroup::Cgroup,
    client::{disconnect, raw_loop, spawn, Opts},
    floor::{Floor, FloorKind},
    listener::{closed_port, Server},
    privileged,
};

fn wait_tracked(floor: &Floor, want: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = floor.tracked().expect("reading the tracker floor's map");
        if n == want || Instant::now() > deadline {
            return n;
        }
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_tracker_floor_holds_an_entry_per_open_connection() {
    if !privileged("the_tracker_floor_holds_an_entry_per_open_connection") {
        return;
    }
    let server = Server::start("127.0.0.233:0");
    let cg = Cgroup::new("floor-track");
    let floor = Floor::attach(cg.path(), FloorKind::Tracking).expect("attaching the floor");

    let held = spawn(
        cg.path(),
        &[server.addr],
        3,
        &Opts {
            hold: Some(Duration::from_millis(1500)),
            timeout: Some(Duration::from_secs(5)),
            ..Opts::default()
        },
    );
    assert_eq!(wait_tracked(&floor, 3), 3, "three connections held open");
    let got = held.wait();
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    assert_eq!(
        wait_tracked(&floor, 0),
        0,
        "closed connections keep entries"
    );

    // The benchmark's own loop: connect, then close with SO_LINGER 0 (an abortive close).
    let got = raw_loop(cg.path(), server.addr, 200);
    assert!(got.iter().all(|o| o.ok), "{got:?}");
    assert_eq!(
        wait_tracked(&floor, 0),
        0,
        "aborted connections keep entries"
    );

    // A refused connect ends in SYN_SENT -> CLOSE: its entry goes too.
    let refused = spawn(
        cg.path(),
        &[closed_port("127.0.0.233")],
        5,
        &Opts::default(),
    )
    .wait();
    assert!(
        refused
            .iter()
            .all(|o| !o.ok && o.errno == libc::ECONNREFUSED),
        "{refused:?}"
    );
    assert_eq!(wait_tracked(&floor, 0), 0, "refused connects keep entries");
}

#[test]
fn the_socket_storage_floor_keeps_the_entry_in_the_socket_until_it_closes() {
    if !privileged("the_socket_storage_floor_keeps_the_entry_in_the_socket_until_it_closes") {
        return;
    }
    let server = Server::start("127.0.0.233:0");
    let cg = Cgroup::new("floor-storage");
    let floor = Floor::attach(cg.path(), FloorKind::SocketStorage).expect("attaching the floor");
    // Created in the cgroup, so the floor's programs run for it.
    let stream = cg.while_in(|| TcpStream::connect(server.addr).expect("connecting"));
    let fd = stream.as_raw_fd();
    assert!(floor.stored(fd).expect("lookup"), "no entry after connect");
    // Disconnecting (AF_UNSPEC) takes the socket to CLOSE and keeps it open: its entry is
    // gone.
    disconnect(fd).expect("AF_UNSPEC disconnect");
    assert!(!floor.stored(fd).expect("lookup"), "entry kept after CLOSE");
    // A socket created outside the cgroup has none.
    let outside = TcpStream::connect(server.addr).expect("connecting");
    assert!(!floor.stored(outside.as_raw_fd()).expect("lookup"));
}
