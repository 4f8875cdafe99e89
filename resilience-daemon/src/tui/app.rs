//! The dashboard's state: the latest snapshot and what the operator is looking at. Keys change
//! the state and may ask for an `Action` on the daemon; nothing here does I/O, so every key is
//! tested without a terminal.

use std::collections::{HashMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use crate::{
    snapshot::{EventRecord, Snapshot},
    table::{self, Page, Query, Row, Sort},
};

/// Points kept per destination for the detail charts: at one snapshot a second, 5 minutes.
pub const HISTORY: usize = 300;
/// Events kept for the event pane and the detail view's transition history.
const EVENTS: usize = 1000;
/// Rows asked for at a time, around the selection.
pub const PAGE: usize = 200;
/// Rows either side of the selection the page must hold (more than a screen's height), or
/// the next page is fetched at once.
const MARGIN: usize = 80;

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
    /// The latest answer: a page of the table (`table`), the detail destination's status,
    /// the daemon's own figures and recent events.
    pub snapshot: Option<Snapshot>,
    /// Position of the selection in the whole (filtered, sorted) table.
    pub selected: usize,
    pub sort: Sort,
    pub filter: String,
    pub overlay: Overlay,
    /// The destination whose detail view is open.
    pub detail: Option<String>,
    /// Chart points of the destinations that were on a page, while they are.
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
    /// The row the selection should stay on when the next page comes (after a sort or a
    /// filter change, or a refresh that moved rows).
    follow: Option<String>,
    /// Whole snapshots (from a daemon without `table`, or a test) are paged here, the way
    /// the daemon pages its own state.
    local: Option<(table::Server, Snapshot)>,
    /// The daemon's uptime at the last chart point.
    charted: Option<f64>,
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
            follow: None,
            local: None,
            charted: None,
        }
    }

    /// What to ask the daemon for next: the page around the selection.
    pub fn query(&self) -> Query {
        Query {
            sort: self.sort,
            filter: self.filter.clone(),
            offset: self.selected.saturating_sub(PAGE / 2),
            limit: PAGE,
            detail: self.detail.clone(),
            events_after: self
                .events
                .back()
                .zip(self.snapshot.as_ref())
                .map(|(e, s)| (e.seq, s.instance)),
        }
    }

    /// The page on hand does not answer what is shown: another sort or filter, a detail view
    /// it lacks, or a selection near its edge.
    pub fn needs_fetch(&self) -> bool {
        let Some(p) = self.page() else {
            return false;
        };
        if p.sort != self.sort || p.filter != self.filter || p.detail != self.detail {
            return true;
        }
        let want_from = self.selected.saturating_sub(MARGIN);
        let want_to = (self.selected + MARGIN).min(p.matched);
        want_from < p.offset || want_to > p.offset + p.rows.len()
    }

    pub fn page(&self) -> Option<&Page> {
        self.snapshot.as_ref()?.table.as_ref()
    }

    /// The rows on hand, in display order; the first is at `page().offset`.
    pub fn rows(&self) -> &[Row] {
        self.page().map_or(&[], |p| p.rows.as_slice())
    }

    /// Rows that pass the filter, in the whole table.
    pub fn matched(&self) -> usize {
        self.page().map_or(0, |p| p.matched)
    }

    /// Take an answer: a page (or a whole snapshot, paged here), new chart points, new events.
    pub fn ingest(&mut self, s: Snapshot) {
        let s = if s.table.is_some() {
            self.local = None;
            s
        } else {
            let mut server = self.local.take().map(|l| l.0).unwrap_or_default();
            let page = server.serve(&s, &self.query());
            self.local = Some((server, s));
            page
        };
        let uptime = s.daemon.uptime;
        if self.charted.is_none_or(|t| uptime > t) {
            self.chart(&s);
            self.charted = Some(uptime);
        }
        let last = self.events.back().map_or(0, |e| e.seq);
        // A restarted daemon numbers from 1 again: take its events whole.
        let restarted = self
            .snapshot
            .as_ref()
            .is_some_and(|old| old.instance != s.instance)
            || s.events.last().is_some_and(|e| e.seq < last);
        if restarted {
            self.events.clear();
        }
        for e in s.events.iter().filter(|e| restarted || e.seq > last) {
            if self.events.len() == EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(e.clone());
        }
        if self.follow.is_none() {
            self.follow = self.selected_row().map(|r| r.name.clone());
        }
        self.snapshot = Some(s);
        self.unreachable = None;
        self.settle();
    }

    /// Chart points from the page's rates, one per named destination on it (and the one in
    /// detail); destinations off the page lose theirs.
    fn chart(&mut self, s: &Snapshot) {
        let Some(page) = &s.table else {
            return;
        };
        for r in &page.rows {
            let (true, Some(attempts)) = (r.named(), r.attempts_per_s) else {
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
        let detail = self.detail.as_deref();
        self.history.retain(|name, _| {
            Some(name.as_str()) == detail || page.rows.iter().any(|r| r.name == *name)
        });
    }

    /// Page a whole snapshot again after a key (nothing to wait for); a daemon's page waits
    /// for the next fetch (`needs_fetch`).
    fn repage(&mut self) {
        if self.follow.is_none() {
            self.follow = self.selected_row().map(|r| r.name.clone());
        }
        let q = self.query();
        let Some((server, whole)) = self.local.as_mut() else {
            return;
        };
        let page = server.serve(whole, &q);
        if let Some(s) = self.snapshot.as_mut() {
            s.table = page.table;
            s.destinations = page.destinations;
        }
        self.settle();
    }

    /// Put the selection back on the row it was on, if the page has it; keep it in range.
    fn settle(&mut self) {
        let (offset, found) = match self.page() {
            Some(p) => (
                p.offset,
                self.follow
                    .as_ref()
                    .and_then(|name| p.rows.iter().position(|r| &r.name == name)),
            ),
            None => (0, None),
        };
        if let Some(i) = found {
            self.selected = offset + i;
        }
        self.follow = None;
        self.selected = self.selected.min(self.matched().saturating_sub(1));
    }

    pub fn selected_row(&self) -> Option<&Row> {
        let p = self.page()?;
        p.rows.get(self.selected.checked_sub(p.offset)?)
    }

    /// The detail view's destination status, if the last answer carried it.
    pub fn detail_status(&self) -> Option<&crate::snapshot::DestinationStatus> {
        let name = self.detail.as_deref()?;
        self.snapshot
            .as_ref()?
            .destinations
            .iter()
            .find(|d| d.label() == name)
    }

    /// The destination keys act on: the detail view's, else the selected row's (if it has a
    /// policy: observed destinations have none to act on).
    fn target(&self) -> Option<Target> {
        if let Some(d) = self.detail_status() {
            return Some(Target {
                name: d.name.clone(),
                service: d.service.clone(),
            });
        }
        let r = self.selected_row()?;
        Some(Target {
            name: r.destination.clone()?,
            service: r.service.clone(),
        })
    }

    fn move_by(&mut self, delta: isize) {
        let max = self.matched().saturating_sub(1) as isize;
        self.selected = (self.selected as isize + delta).clamp(0, max.max(0)) as usize;
        self.repage();
    }

    fn needs_policy(&mut self) -> Option<Target> {
        let t = self.target();
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
                self.repage();
                return None;
            }
            Overlay::None => {}
        }
        self.message = None;
        match k.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.overlay = Overlay::Help,
            KeyCode::Esc | KeyCode::Backspace if self.detail.is_some() => {
                self.detail = None;
                self.repage();
            }
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.repage();
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
                let disabled = match self.detail_status() {
                    Some(d) => d.override_mode == Some(crate::config::Mode::Disabled),
                    None => self.selected_row().is_some_and(|r| r.operator_disabled),
                };
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
            KeyCode::Home | KeyCode::Char('g') => {
                self.selected = 0;
                self.repage();
            }
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX / 2),
            KeyCode::Enter => {
                if let Some(t) = self.needs_policy() {
                    self.detail = Some(t.to_string());
                    self.repage();
                }
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.repage();
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
        assert_eq!(a.matched(), 1);
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.overlay, Overlay::None);
        assert_eq!(a.filter, "part");
        a.on_key(key(KeyCode::Esc));
        let all = crate::fixture::fixture();
        assert_eq!(a.matched(), all.destinations.len() + all.observed.len());
    }

    #[test]
    fn observed_rows_cannot_be_tripped() {
        let mut a = app();
        a.on_key(key(KeyCode::End));
        assert_eq!(a.selected_row().map(|r| r.named()), Some(false));
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
