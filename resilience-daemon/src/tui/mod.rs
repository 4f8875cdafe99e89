//! The dashboard (`resilience top`, `resilience run --tui`): snapshots in, frames out.
//!
//! `app` holds the state and turns keys into actions, `ui` draws a frame from `&App`, `source`
//! talks to the daemon, which answers with the page of the table on screen (`crate::table`). The loop below never
//! blocks on the daemon or the terminal: terminal input arrives from a thread of its own,
//! snapshots and actions go through a worker, everything comes back as an `Event`. So `q`
//! answers at once whatever the daemon does, and the loop is tested in-process with ratatui's
//! TestBackend and injected events. Only `run` and `input` touch the real terminal.

pub mod app;
mod format;
pub mod source;
pub mod ui;

use std::{
    sync::mpsc::{Receiver, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::{
    backend::Backend,
    crossterm::{
        event::{
            self, DisableMouseCapture, EnableMouseCapture, KeyEvent, KeyEventKind, MouseEvent,
        },
        execute,
    },
    Terminal,
};

pub use app::{Action, App};
pub use source::{SocketSource, Source};

use crate::snapshot::Snapshot;

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize,
    Snapshot(Result<Box<Snapshot>, String>),
    /// The daemon's answer to an action.
    Acted(Result<String, String>),
    /// The terminal is gone (hangup, EOF or an error on it).
    TerminalLost(String),
}

/// What the worker does for the loop.
#[derive(Debug)]
pub enum Work {
    /// A page of the table, as the App asks for it.
    Fetch(crate::table::Query),
    Act(Action),
}

/// Why the dashboard ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The operator quit.
    Quit,
    /// Nothing left to watch (the daemon of `run --tui` stopped on a signal).
    Gone,
    /// The terminal went away: a closed window, a dropped SSH connection.
    TerminalLost(String),
}

/// How long a snapshot may be awaited before the daemon is shown as not responding.
pub const NOT_RESPONDING_AFTER: Duration = Duration::from_secs(1);
/// The loop wakes at least this often (to redraw the clock and check the terminal).
const WAKE: Duration = Duration::from_millis(250);

/// Puts the terminal back however the dashboard ends: return, error or panic.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
    }
}

/// No colours with NO_COLOR set (https://no-color.org) or on a dumb terminal.
pub fn colors_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Whether the controlling terminal still answers: a hung-up terminal fails every ioctl with
/// EIO.
pub fn terminal_alive() -> bool {
    nix::sys::termios::tcgetattr(std::io::stdout()).is_ok()
}

/// `resilience top`: the dashboard on the daemon at `socket`, until `q` or the terminal goes.
pub fn run_top(socket: std::path::PathBuf, refresh: Duration) -> Result<()> {
    match run(Box::new(SocketSource::new(socket)), refresh, &|| false)? {
        Exit::Quit | Exit::Gone => Ok(()),
        Exit::TerminalLost(why) => {
            // Nobody is left to read a message; exit quietly.
            tracing::info!("terminal lost: {why}");
            Ok(())
        }
    }
}

/// Run the dashboard in this terminal until the operator quits, the terminal goes away, or
/// `gone()` says there is nothing left to watch.
pub fn run(
    source: Box<dyn Source + Send>,
    refresh: Duration,
    gone: &dyn Fn() -> bool,
) -> Result<Exit> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal; for scripts use `resilience status --json`");
    }
    // ratatui::init's panic hook restores the screen; ours runs first and frees the mouse.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        previous(info);
    }));
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    execute!(std::io::stdout(), EnableMouseCapture).context("enabling the mouse")?;

    let (events_tx, events) = std::sync::mpsc::channel();
    let (work_tx, work) = std::sync::mpsc::channel();
    {
        let tx = events_tx.clone();
        std::thread::Builder::new()
            .name("tui-input".into())
            .spawn(move || input(tx))
            .context("starting the input thread")?;
    }
    std::thread::Builder::new()
        .name("tui-fetch".into())
        .spawn(move || worker(source, work, events_tx))
        .context("starting the fetch worker")?;
    let mut app = App::new();
    app.color = colors_wanted();
    run_loop(
        &mut terminal,
        &mut app,
        &events,
        &work_tx,
        refresh,
        gone,
        &terminal_alive,
    )
}

/// Terminal input, on a thread of its own: every error ends it with `TerminalLost`, and a
/// terminal that stopped answering is noticed within `WAKE` even when no event comes.
fn input(tx: Sender<Event>) {
    loop {
        let ev = match event::poll(WAKE) {
            Ok(true) => match event::read() {
                Ok(event::Event::Key(k)) if k.kind != KeyEventKind::Release => Event::Key(k),
                Ok(event::Event::Mouse(m)) => Event::Mouse(m),
                Ok(event::Event::Resize(..)) => Event::Resize,
                Ok(_) => {
                    if terminal_alive() {
                        continue;
                    }
                    Event::TerminalLost("the terminal hung up".into())
                }
                Err(e) => Event::TerminalLost(format!("reading the terminal: {e}")),
            },
            Ok(false) => {
                if terminal_alive() {
                    continue;
                }
                Event::TerminalLost("the terminal hung up".into())
            }
            Err(e) => Event::TerminalLost(format!("reading the terminal: {e}")),
        };
        let lost = matches!(ev, Event::TerminalLost(_));
        if tx.send(ev).is_err() || lost {
            return;
        }
    }
}

/// Snapshots and actions, one at a time, off the loop.
pub fn worker(mut source: Box<dyn Source + Send>, work: Receiver<Work>, tx: Sender<Event>) {
    for w in work {
        let ev = match w {
            Work::Fetch(q) => Event::Snapshot(
                source
                    .snapshot(&q)
                    .map(Box::new)
                    .map_err(|e| format!("{e:#}")),
            ),
            Work::Act(a) => Event::Acted(source.act(&a).map_err(|e| format!("{e:#}"))),
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// The dashboard's loop, on any backend. `alive()` tells whether the terminal still answers.
pub fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    events: &Receiver<Event>,
    work: &Sender<Work>,
    refresh: Duration,
    gone: &dyn Fn() -> bool,
    alive: &dyn Fn() -> bool,
) -> Result<Exit> {
    let mut next_fetch = Instant::now();
    let mut fetching = false;
    // Since when a snapshot has been awaited without success.
    let mut waiting_since: Option<Instant> = None;
    loop {
        if gone() {
            return Ok(Exit::Gone);
        }
        if !alive() {
            return Ok(Exit::TerminalLost("the terminal hung up".into()));
        }
        let now = Instant::now();
        // A key that needs rows the page lacks (or another order) fetches at once.
        if !fetching && (now >= next_fetch || app.needs_fetch()) {
            if work.send(Work::Fetch(app.query())).is_err() {
                anyhow::bail!("the fetch worker stopped");
            }
            fetching = true;
            waiting_since.get_or_insert(now);
            next_fetch = now + refresh;
        }
        app.not_responding = waiting_since
            .map(|t| now.saturating_duration_since(t))
            .filter(|w| *w >= NOT_RESPONDING_AFTER);
        if let Err(e) = terminal.draw(|f| ui::draw(f, app)) {
            return Ok(Exit::TerminalLost(format!("writing the terminal: {e}")));
        }
        let wait = next_fetch
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(10), WAKE);
        let ev = match events.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(Exit::TerminalLost("the input thread ended".into()))
            }
        };
        match ev {
            Event::Key(k) => {
                let Some(action) = app.on_key(k) else {
                    continue;
                };
                if action == Action::Quit {
                    return Ok(Exit::Quit);
                }
                if work.send(Work::Act(action)).is_err() {
                    anyhow::bail!("the fetch worker stopped");
                }
            }
            Event::Mouse(m) => app.on_mouse(m),
            // A resize needs nothing: the next frame is drawn at the new size.
            Event::Resize => {}
            Event::Snapshot(Ok(s)) => {
                app.ingest(*s);
                fetching = false;
                waiting_since = None;
            }
            Event::Snapshot(Err(e)) => {
                app.unreachable = Some(e);
                fetching = false;
            }
            Event::Acted(r) => {
                app.message = Some(match r {
                    Ok(m) => (m, false),
                    Err(e) => (e, true),
                });
                // Show the effect now rather than at the next refresh.
                next_fetch = Instant::now();
            }
            Event::TerminalLost(why) => return Ok(Exit::TerminalLost(why)),
        }
    }
}

#[cfg(test)]
mod loop_test;
#[cfg(test)]
mod render_test;
