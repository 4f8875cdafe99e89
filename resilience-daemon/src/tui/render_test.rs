//! The dashboard drawn from fixed snapshots with ratatui's TestBackend, compared with the
//! snapshot files in `snapshots/` (insta: `cargo insta review`, or INSTA_UPDATE=always, after
//! an intended change). Colours are checked cell by cell: the text snapshots cannot show them.

use ratatui::{backend::TestBackend, buffer::Buffer, style::Color, Terminal};

use super::{
    app::{App, Overlay},
    ui,
};
use crate::fixture::fixture;

fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| ui::draw(f, app)).expect("draw");
    t.backend().buffer().clone()
}

/// The screen as text, one line per row, trailing blanks cut.
fn text(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The foreground colour of the first cell on the screen that starts `word`.
fn colour_of(b: &Buffer, word: &str) -> Option<Color> {
    let t = text(b);
    for (y, line) in t.lines().enumerate() {
        if let Some(col) = line.find(word) {
            // Byte offset to cell column: the lines are ASCII up to the state column.
            let x = line[..col].chars().count() as u16;
            return Some(b[(x, y as u16)].fg);
        }
    }
    None
}

/// The fixture two seconds later, so that rates and charts have values.
fn later() -> crate::snapshot::Snapshot {
    let mut s = fixture();
    s.daemon.uptime += 2.0;
    for (i, d) in s.destinations.iter_mut().enumerate() {
        d.counts.attempts += 10 * i as u64 + 4;
        d.counts.failures.refused += i as u64 % 3;
        d.counts.rejected.breaker += u64::from(d.state == crate::engine::State::Open) * 6;
    }
    s
}

fn app() -> App {
    let mut a = App::new();
    a.ingest(fixture());
    a.ingest(later());
    a
}

#[test]
fn table_80x24() {
    let b = render(&app(), 80, 24);
    insta::assert_snapshot!("table_80x24", text(&b));
    assert_eq!(colour_of(&b, "OPEN "), Some(Color::Red));
    assert_eq!(colour_of(&b, "HALF-OPEN"), Some(Color::Yellow));
    assert_eq!(colour_of(&b, "CLOSED"), Some(Color::Green));
    assert_eq!(colour_of(&b, "FORCED-OPEN"), Some(Color::Magenta));
    assert_eq!(colour_of(&b, "DISABLED"), Some(Color::Blue));
}

#[test]
fn table_200x50_shows_every_column() {
    let b = render(&app(), 200, 50);
    let t = text(&b);
    for title in [
        "BRK/S", "RATE/S", "BULK/S", "TOKENS", "P50ms", "P99ms", "SLOW%",
    ] {
        assert!(t.contains(title), "{title} missing at 200 columns");
    }
    insta::assert_snapshot!("table_200x50", t);
}

#[test]
fn detail_80x24_and_200x50() {
    let mut a = app();
    a.detail = Some("postgres".into());
    // The answer to the page that asks for it (no new chart point: same uptime).
    a.ingest(later());
    insta::assert_snapshot!("detail_80x24", text(&render(&a, 80, 24)));
    insta::assert_snapshot!("detail_200x50", text(&render(&a, 200, 50)));
}

#[test]
fn help_80x24() {
    let mut a = app();
    a.overlay = Overlay::Help;
    insta::assert_snapshot!("help_80x24", text(&render(&a, 80, 24)));
    insta::assert_snapshot!("help_200x50", text(&render(&a, 200, 50)));
}

#[test]
fn confirm_80x24() {
    let mut a = app();
    a.overlay = Overlay::Confirm(super::Action::Trip("payments-api".into()));
    let t = text(&render(&a, 80, 24));
    assert!(
        t.contains("Trip payments-api: open its breaker now?"),
        "{t}"
    );
}

#[test]
fn empty_states() {
    let a = App::new();
    insta::assert_snapshot!("connecting_80x24", text(&render(&a, 80, 24)));
    let mut a = App::new();
    let mut s = fixture();
    s.destinations.clear();
    s.observed.clear();
    s.events.clear();
    a.ingest(s);
    insta::assert_snapshot!("empty_80x24", text(&render(&a, 80, 24)));
    insta::assert_snapshot!("empty_200x50", text(&render(&a, 200, 50)));
    let mut a = App::new();
    a.unreachable = Some("connecting to /run/resilience/control.sock: No such file".into());
    let t = text(&render(&a, 80, 24));
    assert!(t.contains("Cannot reach the daemon"), "{t}");
}

#[test]
fn tiny_terminals_do_not_panic() {
    let mut a = app();
    for (w, h) in [(1, 1), (10, 3), (30, 8), (80, 5)] {
        render(&a, w, h);
        a.detail = Some("postgres".into());
        render(&a, w, h);
        a.ingest(later());
        render(&a, w, h);
        a.overlay = Overlay::Help;
        render(&a, w, h);
        a.detail = None;
        a.overlay = Overlay::None;
    }
}

#[test]
fn the_help_overlay_fits_at_120x40() {
    let mut a = app();
    a.overlay = Overlay::Help;
    let t = text(&render(&a, 120, 40));
    let last = t
        .lines()
        .position(|l| l.contains("are UTC."))
        .expect("the help's last line");
    assert!(
        t.lines().nth(last + 1).is_some_and(|l| l.contains('└')),
        "the help's last line is cut:\n{t}"
    );
}

#[test]
fn numbers_that_do_not_fit_get_a_unit_never_a_cut() {
    let mut s = crate::fixture::fixture();
    let d = &mut s.destinations[0];
    d.tokens = Some(9851);
    d.burst = Some(10_000);
    d.max_concurrent = Some(100_000);
    d.counts.active = 150;
    let mut a = App::new();
    a.ingest(s);
    let t = text(&render(&a, 200, 50));
    assert!(t.contains("9851/10k"), "{t}");
    assert!(t.contains("150/100k"), "{t}");
    assert!(
        !t.contains("9851/1000 ") && !t.contains("150/10000 "),
        "{t}"
    );
}

#[test]
fn wide_names_are_cut_by_columns_with_an_ellipsis() {
    let mut s = crate::fixture::fixture();
    s.destinations[0].name = "決済サービス-東京-本番環境-第二系統".into();
    s.destinations[1].name = "決済サービス-大阪-本番環境-第二系統".into();
    let mut a = App::new();
    a.ingest(s);
    let t = text(&render(&a, 80, 24));
    // The capture shows a wide character's second column as a space.
    let rows: Vec<&str> = t.lines().filter(|l| l.contains('決')).collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert!(rows.iter().all(|r| r.contains('…')), "{t}");
    assert!(
        rows[0].contains("東 京") && rows[1].contains("大 阪"),
        "still told apart: {t}"
    );
}

#[test]
fn no_color_draws_no_colours() {
    let mut a = app();
    a.color = false;
    let b = render(&a, 200, 50);
    assert!(
        b.content
            .iter()
            .all(|c| c.fg == ratatui::style::Color::Reset && c.bg == ratatui::style::Color::Reset),
        "a coloured cell with NO_COLOR"
    );
    // And with colour, states are coloured (the same check fails then).
    let b = render(&app(), 200, 50);
    assert!(b
        .content
        .iter()
        .any(|c| c.fg != ratatui::style::Color::Reset));
}
