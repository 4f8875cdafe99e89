//! The dashboard's state: the latest snapshot and what the operator is looking at. Keys change
//! the state and may ask for an `Action` on the daemon; nothing here does I/O, so every key is
//! tested without a terminal.

use std::collections::{HashMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use super::rows::{self, Prev, Row, Sort};
use crate::snapshot::{EventRecord, Snapshot};

/// Points kept per destination for the detail charts: at one snapshot a second, 5 minutes.
pub const HISTORY: usize = 300;
/// Events kept for the event pane and the detail view's transition history.
const EVENTS: usize = 1000;

/// A breaker to act on: a destination's, or its copy's for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub service: Option<String>,
}

impl From<&str> for Target {
    fn from(name: &str) -> Target {
        Target {
            name: name.into(),
            service: None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::config::label(&self.name, self.service.as_deref()))
    }
}

/// What the operator asked the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    Trip(Target),
    Reset(Target),
    Disable(String),
    Enable(String),
    Reload,
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Quit => "quit".into(),
            Action::Trip(n) => format!("Trip {n}: open its breaker now"),
            Action::Reset(n) => format!("Reset {n}: close its breaker with an empty window"),
            Action::Disable(n) => format!("Disable {n}"),
            Action::Enable(n) => format!("Enable {n}"),
            Action::Reload => "Reload the policy file".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    None,
    Help,
    /// Waiting for y/n.
    Confirm(Action),
    /// The filter line is being edited.
    Filter,
}

/// One point of a destination's charts (per second, over the snapshot interval).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub attempts: f64,
    pub failures: f64,
    pub rejected: f64,
    /// None before the first successful connect.
    pub p99_ms: Option<f64>,
}

pub struct App {
    pub snapshot: Option<Snapshot>,
    pub rows: Vec<Row>,
    /// Indices into `rows`, in display order (sorted, filtered).
    pub order: Vec<usize>,
    /// Position in `order`.
    pub selected: usize,
    pub sort: Sort,
    pub filter: String,
    pub overlay: Overlay,
    /// The destination whose detail view is open.
    pub detail: Option<String>,
    pub history: HashMap<String, VecDeque<Point>>,
    pub events: VecDeque<EventRecord>,
    /// The answer to the last action, and whether it was an error.
    pub message: Option<(String, bool)>,
    /// Why the daemon cannot be reached, while it cannot.
    pub unreachable: Option<String>,
    /// How long a snapshot has been awaited, once that is too long.
    pub not_responding: Option<std::time::Duration>,
    /// Colours on (off with NO_COLOR or TERM=dumb).
    pub color: bool,
    prev: HashMap<String, Prev>,
    prev_uptime: Option<f64>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new() -> App {
        App {
            snapshot: None,
            rows: Vec::new(),
            order: Vec::new(),
            selected: 0,
            sort: Sort::Policy,
            filter: String::new(),
            overlay: Overlay::None,
            detail: None,
            history: HashMap::new(),
            events: VecDeque::new(),
            message: None,
            unreachable: None,
            not_responding: None,
            color: true,
            prev: HashMap::new(),
            prev_uptime: None,
        }
    }

    /// Take a new snapshot: rates against the previous one, chart points, new events.
    pub fn ingest(&mut self, s: Snapshot) {
        let keep = self.selected_row().map(|r| r.name.clone());
        let uptime = s.daemon.uptime;
        let dt = self.prev_uptime.map(|p| uptime - p).filter(|d| *d > 0.0);
        self.rows = rows::build(&s, &self.prev, dt);
        // Chart points from the rows' rates: one per named destination, from the second
        // snapshot on.
        for r in &self.rows {
            let (Some(_), Some(attempts)) = (r.dest, r.attempts_per_s) else {
                continue;
            };
            let point = Point {
                attempts,
                failures: r.failures_per_s.unwrap_or(0.0),
                rejected: r.rejected_per_s.map_or(0.0, |v| v.iter().sum()),
                p99_ms: r.p99_ms,
            };
            let h = self.history.entry(r.name.clone()).or_default();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(point);
        }
        let names: std::collections::HashSet<String> =
            s.destinations.iter().map(|d| d.label()).collect();
        self.history.retain(|name, _| names.contains(name));
        self.prev = s
            .destinations
            .iter()
            .map(|d| (d.label(), rows::prev_of(&d.counts)))
            .chain(
                s.observed
                    .iter()
                    .map(|o| (o.address.clone(), rows::prev_of(&o.counts))),
            )
            .collect();
        self.prev_uptime = Some(uptime);
        let last = self.events.back().map_or(0, |e| e.seq);
        // A restarted daemon numbers from 1 again: take its events whole.
        let restarted = s.events.last().is_some_and(|e| e.seq < last);
        if restarted {
            self.events.clear();
        }
        for e in s.events.iter().filter(|e| restarted || e.seq > last) {
            if self.events.len() == EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e.clone());
        }
        self.snapshot = Some(s);
        self.unreachable = None;
        self.reorder(keep);
    }

    /// Recompute the display order, keeping the selection on the same destination.
    fn reorder(&mut self, keep: Option<String>) {
        self.order = rows::view(&self.rows, self.sort, &self.filter);
        if let Some(name) = keep {
            if let Some(pos) = self.order.iter().position(|&i| self.rows[i].name == name) {
                self.selected = pos;
            }
        }
        self.selected = self.selected.min(self.order.len().saturating_sub(1));
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.order.get(self.selected).map(|&i| &self.rows[i])
    }

    /// The destination keys act on: the detail view's, else the selected row's (if it has a
    /// policy: observed destinations have none to act on).
    fn target(&self) -> Option<String> {
        if let Some(d) = &self.detail {
            return Some(d.clone());
        }
        self.selected_row()
            .filter(|r| r.dest.is_some())
            .map(|r| r.name.clone())
    }

    fn move_by(&mut self, delta: isize) {
        let max = self.order.len().saturating_sub(1) as isize;
        self.selected = (self.selected as isize + delta).clamp(0, max.max(0)) as usize;
    }

    fn needs_policy(&mut self) -> Option<Target> {
        let label = self.target();
        let t = label.and_then(|l| {
            let s = self.snapshot.as_ref()?;
            let d = s.destinations.iter().find(|d| d.label() == l)?;
            Some(Target {
                name: d.name.clone(),
                service: d.service.clone(),
            })
        });
        if t.is_none() {
            self.message = Some(("select a destination with a policy first".into(), true));
        }
        t
    }

    pub fn on_mouse(&mut self, m: MouseEvent) {
        match m.kind {
            MouseEventKind::ScrollDown => self.move_by(3),
            MouseEventKind::ScrollUp => self.move_by(-3),
            _ => {}
        }
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        match self.overlay.clone() {
            Overlay::Help => {
                if k.code == KeyCode::Char('q') {
                    return Some(Action::Quit);
                }
                self.overlay = Overlay::None;
                return None;
            }
            Overlay::Confirm(action) => {
                self.overlay = Overlay::None;
                // Only `y`: a stray Enter must not trip a breaker.
                return match k.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => Some(action),
                    _ => {
                        self.message = Some(("cancelled".into(), false));
                        None
                    }
                };
            }
            Overlay::Filter => {
                let keep = self.selected_row().map(|r| r.name.clone());
                match k.code {
                    KeyCode::Enter => self.overlay = Overlay::None,
                    KeyCode::Esc => {
                        self.filter.clear();
                        self.overlay = Overlay::None;
                    }
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) => self.filter.push(c),
                    _ => {}
                }
                self.reorder(keep);
                return None;
            }
            Overlay::None => {}
        }
        self.message = None;
        match k.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.overlay = Overlay::Help,
            KeyCode::Esc | KeyCode::Backspace if self.detail.is_some() => self.detail = None,
            KeyCode::Esc if !self.filter.is_empty() => {
                let keep = self.selected_row().map(|r| r.name.clone());
                self.filter.clear();
                self.reorder(keep);
            }
            KeyCode::Char('R') => return Some(Action::Reload),
            KeyCode::Char('t') => {
                if let Some(n) = self.needs_policy() {
                    self.overlay = Overlay::Confirm(Action::Trip(n));
                }
            }
            KeyCode::Char('r') => {
                if let Some(n) = self.needs_policy() {
                    self.overlay = Overlay::Confirm(Action::Reset(n));
                }
            }
            KeyCode::Char('d') => {
                // The override is the destination's, for all of its services.
                let n = self.needs_policy()?.name;
                let disabled = self.snapshot.as_ref().is_some_and(|s| {
                    s.destinations.iter().any(|d| {
                        d.name == n && d.override_mode == Some(crate::config::Mode::Disabled)
                    })
                });
                // `d` toggles the operator's override; a destination the file disables stays so.
                return Some(if disabled {
                    Action::Enable(n)
                } else {
                    Action::Disable(n)
                });
            }
            _ if self.detail.is_some() => {}
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::PageDown => self.move_by(20),
            KeyCode::PageUp => self.move_by(-20),
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX / 2),
            KeyCode::Enter => {
                if let Some(t) = self.needs_policy() {
                    self.detail = Some(t.to_string());
                }
            }
            KeyCode::Char('s') => {
                let keep = self.selected_row().map(|r| r.name.clone());
                self.sort = self.sort.next();
                self.reorder(keep);
            }
            KeyCode::Char('/') => self.overlay = Overlay::Filter,
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventState;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent {
            code: c,
            modifiers: KeyModifiers::NONE,
            kind: ratatui::crossterm::event::KeyEventKind::Press,
            state: KeyEventState::NONE,
        }
    }

    fn app() -> App {
        let mut a = App::new();
        a.ingest(crate::fixture::fixture());
        a
    }

    #[test]
    fn trip_and_reset_ask_first() {
        let mut a = app();
        assert_eq!(a.on_key(key(KeyCode::Char('t'))), None);
        assert_eq!(
            a.overlay,
            Overlay::Confirm(Action::Trip(Target::from("payments-api")))
        );
        assert_eq!(
            a.on_key(key(KeyCode::Char('y'))),
            Some(Action::Trip(Target::from("payments-api")))
        );
        a.on_key(key(KeyCode::Char('t')));
        assert_eq!(
            a.on_key(key(KeyCode::Enter)),
            None,
            "Enter does not confirm"
        );
        assert_eq!(a.overlay, Overlay::None);
        a.on_key(key(KeyCode::Char('r')));
        assert_eq!(a.on_key(key(KeyCode::Char('n'))), None, "n cancels");
        assert_eq!(a.overlay, Overlay::None);
        assert_eq!(a.on_key(key(KeyCode::Char('R'))), Some(Action::Reload));
        assert_eq!(
            a.on_key(key(KeyCode::Char('d'))),
            Some(Action::Disable("payments-api".into()))
        );
    }

    #[test]
    fn selection_follows_the_destination_across_snapshots_and_sorts() {
        let mut a = app();
        a.on_key(key(KeyCode::Down));
        a.on_key(key(KeyCode::Char('j')));
        assert_eq!(a.selected_row().map(|r| r.name.as_str()), Some("postgres"));
        a.on_key(key(KeyCode::Char('s'))); // by state
        assert_eq!(a.selected_row().map(|r| r.name.as_str()), Some("postgres"));
        a.ingest(crate::fixture::fixture());
        assert_eq!(a.selected_row().map(|r| r.name.as_str()), Some("postgres"));
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.detail.as_deref(), Some("postgres"));
        a.on_key(key(KeyCode::Char('j')));
        assert_eq!(
            a.detail.as_deref(),
            Some("postgres"),
            "no moving under the detail view"
        );
        a.on_key(key(KeyCode::Esc));
        assert_eq!(a.detail, None);
    }

    #[test]
    fn filter_edits_live_and_esc_clears() {
        let mut a = app();
        a.on_key(key(KeyCode::Char('/')));
        for c in "part".chars() {
            a.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(a.order.len(), 1);
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.overlay, Overlay::None);
        assert_eq!(a.filter, "part");
        a.on_key(key(KeyCode::Esc));
        assert_eq!(a.order.len(), a.rows.len());
    }

    #[test]
    fn observed_rows_cannot_be_tripped() {
        let mut a = app();
        a.on_key(key(KeyCode::End));
        assert_eq!(a.selected_row().map(|r| r.dest), Some(None));
        assert_eq!(a.on_key(key(KeyCode::Char('t'))), None);
        assert_eq!(a.overlay, Overlay::None);
        assert!(a.message.as_ref().is_some_and(|m| m.1));
    }

    #[test]
    fn charts_get_a_point_per_snapshot() {
        let mut a = app();
        let mut s = crate::fixture::fixture();
        s.daemon.uptime += 2.0;
        s.destinations[0].counts.attempts += 10;
        a.ingest(s);
        let h = &a.history["payments-api"];
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].attempts, 5.0);
    }
}
