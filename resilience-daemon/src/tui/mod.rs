//! The dashboard (`resilience top`, `resilience run --tui`): snapshots in, frames out.
//!
//! `app` holds the state and turns keys into actions, `rows` computes the table once per
//! snapshot, `ui` draws a frame from `&App`, `source` talks to the daemon. Only this file
//! touches the terminal.

pub mod app;
mod format;
pub mod rows;
pub mod source;
pub mod ui;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::{
    event::{self, DisableMouseCapture, EnableMouseCapture, Event, KeyEventKind},
    execute,
};

pub use app::{Action, App};
pub use source::{SocketSource, Source};

/// Puts the terminal back however the dashboard ends: return, error or panic.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
    }
}

/// Run the dashboard until the operator quits, or `gone()` says there is nothing left to
/// watch (the daemon of `run --tui` stopped on a signal).
pub fn run(source: &mut dyn Source, refresh: Duration, gone: &dyn Fn() -> bool) -> Result<()> {
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

    let mut app = App::new();
    let mut next = Instant::now();
    loop {
        if gone() {
            return Ok(());
        }
        if Instant::now() >= next {
            match source.snapshot() {
                Ok(s) => app.ingest(s),
                Err(e) => app.unreachable = Some(format!("{e:#}")),
            }
            next = Instant::now() + refresh;
        }
        terminal.draw(|f| ui::draw(f, &app)).context("drawing")?;
        let wait = next.saturating_duration_since(Instant::now());
        if !event::poll(wait).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let Some(action) = app.on_key(k) else {
                    continue;
                };
                if action == Action::Quit {
                    return Ok(());
                }
                app.message = Some(match source.act(&action) {
                    Ok(m) => (m, false),
                    Err(e) => (format!("{e:#}"), true),
                });
                // Show the effect now rather than at the next refresh.
                next = Instant::now();
            }
            Event::Mouse(m) => app.on_mouse(m),
            // A resize needs nothing: the next frame is drawn at the new size.
            _ => {}
        }
    }
}

#[cfg(test)]
mod render_test;
