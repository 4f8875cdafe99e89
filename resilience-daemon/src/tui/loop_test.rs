//! The dashboard's loop itself, in-process: a TestBackend for the terminal, events injected
//! as the input thread and the fetch worker would send them. No root, no daemon, no timing
//! that depends on the machine beyond generous bounds.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ratatui::{
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    Terminal,
};

use super::{run_loop, App, Event, Exit, Work};

fn key(c: KeyCode) -> Event {
    Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn screen(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Runs the loop on a thread; the test plays the input thread and the worker.
struct Harness {
    events: mpsc::Sender<Event>,
    work: mpsc::Receiver<Work>,
    done: std::thread::JoinHandle<(Exit, String, Duration)>,
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn start(alive: Arc<AtomicBool>) -> Harness {
    let (events_tx, events) = mpsc::channel();
    let (work_tx, work) = mpsc::channel();
    let done = std::thread::spawn(move || {
        let mut t = Terminal::new(TestBackend::new(120, 30)).expect("terminal");
        let mut app = App::new();
        let exit = run_loop(
            &mut t,
            &mut app,
            &events,
            &work_tx,
            Duration::from_millis(100),
            &|| false,
            &|| alive.load(Ordering::Relaxed),
        )
        .expect("loop");
        (exit, screen(&t), thread_cpu())
    });
    Harness {
        events: events_tx,
        work,
        done,
    }
}

#[test]
fn a_silent_daemon_shows_as_not_responding_and_q_still_quits_at_once() {
    let h = start(Arc::new(AtomicBool::new(true)));
    // The loop asks for a snapshot; the "daemon" answers the first and then never again.
    assert!(matches!(
        h.work.recv_timeout(Duration::from_secs(5)),
        Ok(Work::Fetch(_))
    ));
    h.events
        .send(Event::Snapshot(Ok(Box::new(crate::fixture::fixture()))))
        .expect("send");
    assert!(matches!(
        h.work.recv_timeout(Duration::from_secs(5)),
        Ok(Work::Fetch(_))
    ));
    // No answer to this one. After a second and a half the header must say so.
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    h.events.send(key(KeyCode::Char('q'))).expect("send");
    let (exit, screen, _) = h.done.join().expect("loop thread");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "q took {:?}",
        asked.elapsed()
    );
    assert_eq!(exit, Exit::Quit);
    assert!(screen.contains("daemon not responding for 1s"), "{screen}");
    // The last good picture stays on screen.
    assert!(screen.contains("payments-api"), "{screen}");
}

#[test]
fn keys_become_work_for_the_daemon_and_answers_show() {
    let h = start(Arc::new(AtomicBool::new(true)));
    assert!(matches!(
        h.work.recv_timeout(Duration::from_secs(5)),
        Ok(Work::Fetch(_))
    ));
    h.events
        .send(Event::Snapshot(Ok(Box::new(crate::fixture::fixture()))))
        .expect("send");
    h.events.send(key(KeyCode::Char('t'))).expect("send");
    h.events.send(key(KeyCode::Char('y'))).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut acted = None;
    while Instant::now() < deadline {
        match h.work.recv_timeout(Duration::from_millis(200)) {
            Ok(Work::Act(a)) => {
                acted = Some(a);
                break;
            }
            Ok(Work::Fetch(_)) => h
                .events
                .send(Event::Snapshot(Ok(Box::new(crate::fixture::fixture()))))
                .expect("send"),
            Err(_) => {}
        }
    }
    assert_eq!(acted, Some(super::Action::Trip("payments-api".into())));
    h.events
        .send(Event::Acted(Ok("payments-api: closed -> open".into())))
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    h.events.send(key(KeyCode::Char('q'))).expect("send");
    let (exit, screen, _) = h.done.join().expect("loop thread");
    assert_eq!(exit, Exit::Quit);
    assert!(screen.contains("payments-api: closed -> open"), "{screen}");
}

#[test]
fn a_lost_terminal_ends_the_loop_without_spinning() {
    let alive = Arc::new(AtomicBool::new(true));
    let h = start(alive.clone());
    assert!(matches!(
        h.work.recv_timeout(Duration::from_secs(5)),
        Ok(Work::Fetch(_))
    ));
    alive.store(false, Ordering::Relaxed);
    let (exit, _, _) = h.done.join().expect("loop thread");
    assert_eq!(exit, Exit::TerminalLost("the terminal hung up".into()));

    // And when the input thread reports it.
    let h = start(Arc::new(AtomicBool::new(true)));
    h.events
        .send(Event::TerminalLost("reading the terminal: EIO".into()))
        .expect("send");
    let (exit, _, _) = h.done.join().expect("loop thread");
    assert_eq!(exit, Exit::TerminalLost("reading the terminal: EIO".into()));
}

#[test]
fn the_loop_sleeps_when_nothing_happens() {
    // Over two seconds with no events and no answers, the loop asks for one snapshot (the
    // worker is busy with it) and redraws a few times a second: it does not spin. A spinning
    // loop would use the whole two seconds of CPU.
    let h = start(Arc::new(AtomicBool::new(true)));
    let start = Instant::now();
    let mut fetches = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if h.work.recv_timeout(Duration::from_millis(50)).is_ok() {
            fetches += 1;
        }
    }
    assert_eq!(fetches, 1, "a new fetch before the first was answered");
    h.events.send(key(KeyCode::Char('q'))).expect("send");
    let (exit, _, cpu) = h.done.join().expect("loop");
    assert_eq!(exit, Exit::Quit);
    assert!(
        cpu < Duration::from_millis(500),
        "the loop used {cpu:?} of CPU in 2 s"
    );
}
