//! Drawing: a pure function of `&App`. Only the rows on screen are turned into widgets, so a
//! frame costs the same with 10 destinations or 10,000.

use ratatui::{
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Sparkline, Table, Wrap},
    Frame,
};

use super::{
    app::{App, Overlay, Point},
    format,
};
use crate::{
    snapshot::{DestinationStatus, EventRecord},
    table::{Row, Tag},
};

pub fn draw(f: &mut Frame, app: &App) {
    draw_all(f, app);
    if !app.color {
        // NO_COLOR or a dumb terminal: no colours at all; bold and reverse still mark what
        // matters (the selection, open states in capitals).
        for c in f.buffer_mut().content.iter_mut() {
            c.set_fg(Color::Reset);
            c.set_bg(Color::Reset);
        }
    }
}

fn draw_all(f: &mut Frame, app: &App) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(header(app), head);
    f.render_widget(footer(app), foot);
    match (&app.snapshot, &app.detail) {
        (None, _) => {
            let text = match &app.unreachable {
                Some(e) => {
                    format!("Cannot reach the daemon: {e}\n\nRetrying every second. q quits.")
                }
                None => "Connecting to the daemon...".into(),
            };
            f.render_widget(
                Paragraph::new(text)
                    .alignment(Alignment::Center)
                    .wrap(Wrap { trim: true })
                    .block(Block::bordered()),
                body,
            );
        }
        (Some(_), Some(name)) => match app.detail_status() {
            Some(d) => detail(f, body, app, d),
            // Asked for, not answered yet.
            None if app.page().is_some_and(|p| p.detail.as_ref() != Some(name)) => f.render_widget(
                Paragraph::new(format!("Loading {name}...")).block(Block::bordered()),
                body,
            ),
            None => f.render_widget(
                Paragraph::new(format!("{name} is no longer in the policy. Esc goes back."))
                    .block(Block::bordered()),
                body,
            ),
        },
        (Some(_), None) => {
            let pane = if body.height >= 16 { 7 } else { 4 };
            let [table_area, events_area] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(pane)]).areas(body);
            table(f, table_area, app);
            events(f, events_area, app.events.iter(), " Events ");
        }
    }
    match &app.overlay {
        Overlay::Help => help(f),
        Overlay::Confirm(a) => {
            let area = centered(f.area(), 60, 5);
            f.render_widget(Clear, area);
            f.render_widget(
                Paragraph::new(format!("{}?\n\ny: yes   n/Esc: no", a.describe()))
                    .alignment(Alignment::Center)
                    .wrap(Wrap { trim: true })
                    .block(Block::bordered().title(" Confirm ").border_style(yellow())),
                area,
            );
        }
        Overlay::Filter | Overlay::None => {}
    }
}

fn yellow() -> Style {
    Style::default().fg(Color::Yellow)
}

pub fn tag_style(t: Tag) -> Style {
    let bold = Modifier::BOLD;
    match t {
        Tag::Open => Style::default().fg(Color::Red).add_modifier(bold),
        Tag::ForcedOpen => Style::default().fg(Color::Magenta).add_modifier(bold),
        Tag::HalfOpen => Style::default().fg(Color::Yellow).add_modifier(bold),
        Tag::Closed => Style::default().fg(Color::Green),
        Tag::Disabled => Style::default().fg(Color::Blue),
        Tag::Observed => Style::default().fg(Color::DarkGray),
    }
}

fn header(app: &App) -> Line<'static> {
    let mut spans = vec![Span::styled(
        " resilience ",
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    )];
    if let Some(w) = app.not_responding {
        spans.push(Span::styled(
            format!(" daemon not responding for {}s ", w.as_secs()),
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(e) = &app.unreachable {
        spans.push(Span::styled(
            format!(" DAEMON UNREACHABLE: {e} "),
            Style::default().fg(Color::White).bg(Color::Red),
        ));
    }
    if let Some(s) = &app.snapshot {
        let tally = app.page().map(|p| p.tally).unwrap_or_default();
        spans.push(Span::raw(format!(
            " {} named {} observed │ ",
            tally.named, tally.observed
        )));
        for (t, n, label) in [
            (Tag::Open, tally.open, "open"),
            (Tag::HalfOpen, tally.half_open, "half"),
            (Tag::ForcedOpen, tally.forced_open, "forced"),
        ] {
            let style = if n > 0 {
                tag_style(t)
            } else {
                Style::default()
            };
            spans.push(Span::styled(format!("{n} {label} "), style));
        }
        let k = &s.kernel;
        let warn = |n: u64| {
            if n > 0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            }
        };
        spans.push(Span::raw("│ "));
        spans.push(Span::styled(
            format!("fail-open {} ", k.fail_open),
            warn(k.fail_open),
        ));
        spans.push(Span::styled(
            format!("lost {} ", k.ringbuf_lost),
            warn(k.ringbuf_lost),
        ));
        spans.push(Span::raw(format!(
            "│ up {} │ sort {}",
            format::duration(s.daemon.uptime),
            app.sort.label()
        )));
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!(" │ filter \"{}\"", app.filter),
                yellow(),
            ));
        }
    }
    Line::from(spans)
}

fn footer(app: &App) -> Line<'static> {
    if app.overlay == Overlay::Filter {
        return Line::from(vec![
            Span::styled(" filter: ", yellow()),
            Span::raw(format!("{}▏", app.filter)),
            Span::styled(
                "  Enter keep  Esc clear",
                Style::default().fg(Color::DarkGray),
            ),
        ]);
    }
    if let Some((m, err)) = &app.message {
        let style = if *err {
            Style::default().fg(Color::Red)
        } else {
            Style::default().fg(Color::Green)
        };
        return Line::from(Span::styled(format!(" {m}"), style));
    }
    let keys = if app.detail.is_some() {
        " Esc back  t trip  r reset  d disable/enable  R reload  ? help  q quit"
    } else {
        " ↑↓ move  Enter detail  s sort  / filter  t trip  r reset  d disable  R reload  ? help  q quit"
    };
    Line::from(Span::styled(keys, Style::default().fg(Color::DarkGray)))
}

/// The table's columns, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Name,
    State,
    Attempts,
    Fail,
    Slow,
    Rejected,
    RejBreaker,
    RejRate,
    RejBulkhead,
    RejRetry,
    Tokens,
    Active,
    P50,
    P99,
    Since,
}

impl Col {
    fn title(self) -> &'static str {
        match self {
            Col::Name => "DESTINATION",
            Col::State => "STATE",
            Col::Attempts => "ATT/S",
            Col::Fail => "FAIL%",
            Col::Slow => "SLOW%",
            Col::Rejected => "REJ/S",
            Col::RejBreaker => "BRK/S",
            Col::RejRate => "RATE/S",
            Col::RejBulkhead => "BULK/S",
            Col::RejRetry => "RTRY/S",
            Col::Tokens => "TOKENS",
            Col::Active => "ACTIVE",
            Col::P50 => "P50ms",
            Col::P99 => "P99ms",
            Col::Since => "IN STATE",
        }
    }

    fn width(self) -> u16 {
        match self {
            Col::Name => 14,
            Col::State => 12,
            Col::Tokens | Col::Active | Col::Since => 9,
            Col::Attempts | Col::P50 | Col::P99 | Col::Rejected => 7,
            Col::Fail
            | Col::Slow
            | Col::RejBreaker
            | Col::RejRate
            | Col::RejBulkhead
            | Col::RejRetry => 6,
        }
    }

    /// 0 always shown; higher numbers drop first on a narrow screen.
    fn priority(self) -> u8 {
        match self {
            Col::Name | Col::State => 0,
            Col::Attempts | Col::Fail | Col::Rejected | Col::Active | Col::Since => 1,
            Col::Tokens
            | Col::P99
            | Col::RejBreaker
            | Col::RejRate
            | Col::RejBulkhead
            | Col::RejRetry => 2,
            Col::Slow | Col::P50 => 3,
        }
    }
}

const ALL: [Col; 15] = [
    Col::Name,
    Col::State,
    Col::Attempts,
    Col::Fail,
    Col::Slow,
    Col::Rejected,
    Col::RejBreaker,
    Col::RejRate,
    Col::RejBulkhead,
    Col::RejRetry,
    Col::Tokens,
    Col::Active,
    Col::P50,
    Col::P99,
    Col::Since,
];

/// The columns that fit in `width`: whole priority levels at a time; with room for the
/// rejections by reason, they replace the total.
fn columns(width: u16) -> Vec<Col> {
    let mut best = vec![Col::Name, Col::State];
    for level in 1..=3 {
        let cols: Vec<Col> = ALL
            .iter()
            .copied()
            .filter(|c| c.priority() <= level)
            .filter(|c| level < 2 || *c != Col::Rejected)
            .collect();
        let need: u16 = cols.iter().map(|c| c.width() + 1).sum();
        if need > width {
            break;
        }
        best = cols;
    }
    best
}

fn cell(c: Col, r: &Row) -> Cell<'static> {
    let rej = |i: usize| format::rate(r.rejected_per_s.map(|v| v[i]));
    let text = match c {
        Col::Name => r.name.clone(),
        Col::State => return Cell::from(r.state.clone()).style(tag_style(r.tag)),
        Col::Attempts => format::rate(r.attempts_per_s),
        Col::Fail => format::pct(r.fail_pct),
        Col::Slow => format::pct(r.slow_pct),
        Col::Rejected => {
            let total = r.rejected_per_s.map(|v| v.iter().sum());
            let style = if total.is_some_and(|t: f64| t > 0.0) {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            return Cell::from(format::rate(total)).style(style);
        }
        Col::RejBreaker => rej(0),
        Col::RejRate => rej(1),
        Col::RejBulkhead => rej(2),
        Col::RejRetry => rej(3),
        Col::Tokens => match r.tokens {
            Some((t, b)) => {
                let style = if t == 0 {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                };
                return Cell::from(format!(
                    "{}/{}",
                    format::count(t),
                    format::count(u64::from(b))
                ))
                .style(style);
            }
            None => "-".into(),
        },
        Col::Active => match r.max_active {
            Some(m) => {
                let style = if r.active >= u64::from(m) {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                };
                return Cell::from(format!(
                    "{}/{}",
                    format::count(r.active),
                    format::count(u64::from(m))
                ))
                .style(style);
            }
            None => format::count(r.active),
        },
        Col::P50 => format::ms(r.p50_ms),
        Col::P99 => format::ms(r.p99_ms),
        Col::Since => r.since.map_or("-".into(), format::duration),
    };
    Cell::from(text)
}

fn table(f: &mut Frame, area: Rect, app: &App) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(format!(" Destinations ({}) ", app.matched()));
    if app.matched() == 0 {
        let text = if app
            .page()
            .is_none_or(|p| p.tally.named + p.tally.observed == 0)
        {
            "No destinations yet: the policy names none and no outbound connect has been seen."
        } else {
            "Nothing matches the filter. Esc clears it."
        };
        f.render_widget(
            Paragraph::new(text)
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    }
    let cols = columns(area.width);
    // Rows that fit under the border and the column titles.
    let visible = area.height.saturating_sub(2).max(1) as usize;
    let offset = app.selected.saturating_sub(visible - 1);
    // The page holds rows from `first` on; what of the screen it lacks comes with the next.
    let first = app.page().map_or(0, |p| p.offset);
    let shown: Vec<(usize, &Row)> = app
        .rows()
        .iter()
        .enumerate()
        .map(|(i, r)| (first + i, r))
        .skip_while(|(pos, _)| *pos < offset)
        .take(visible)
        .collect();
    // The name column is as wide as the longest name on screen, within what is left.
    let others: u16 = cols
        .iter()
        .filter(|c| **c != Col::Name)
        .map(|c| c.width() + 1)
        .sum();
    let longest = shown
        .iter()
        .map(|(_, r)| unicode_width::UnicodeWidthStr::width(r.name.as_str()) + 2)
        .max()
        .unwrap_or(0);
    let name_width = (longest as u16)
        .clamp(Col::Name.width(), 48)
        .min(area.width.saturating_sub(others).max(Col::Name.width()));
    let rows = shown.into_iter().map(|(pos, r)| {
        let selected = pos == app.selected;
        let row = TRow::new(cols.iter().map(|&c| match c {
            // A marker as well as the reversed colours: it shows in text captures too.
            Col::Name => Cell::from(format!(
                "{}{}",
                if selected { "▶ " } else { "  " },
                format::fit(&r.name, usize::from(name_width).saturating_sub(2))
            )),
            c => cell(c, r),
        }));
        if selected {
            row.style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let widths = cols.iter().map(|&c| match c {
        Col::Name => Constraint::Length(name_width),
        _ => Constraint::Length(c.width()),
    });
    let head = TRow::new(cols.iter().map(|&c| match c {
        Col::Name => format!("  {}", c.title()),
        c => c.title().to_string(),
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    f.render_widget(Table::new(rows, widths).header(head).block(block), area);
}

fn event_line(e: &EventRecord) -> Line<'static> {
    let style = match e.to.as_deref() {
        Some("open") => tag_style(Tag::Open),
        Some("half_open") => tag_style(Tag::HalfOpen),
        Some("closed") => tag_style(Tag::Closed),
        _ if e.message.contains("rejected") || e.message.contains("lost") => {
            Style::default().fg(Color::Red)
        }
        _ => Style::default(),
    };
    Line::from(vec![
        Span::styled(format::clock(e.time), Style::default().fg(Color::DarkGray)),
        Span::raw(" "),
        Span::styled(e.message.clone(), style),
    ])
}

/// The newest events that fit, newest at the bottom.
fn events<'a>(
    f: &mut Frame,
    area: Rect,
    events: impl DoubleEndedIterator<Item = &'a EventRecord>,
    title: &str,
) {
    let n = area.height.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = events.rev().take(n).map(event_line).collect();
    lines.reverse();
    if lines.is_empty() {
        lines.push(Line::styled(
            "(none yet)",
            Style::default().fg(Color::DarkGray),
        ));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title.to_string())),
        area,
    );
}

fn detail(f: &mut Frame, area: Rect, app: &App, d: &DestinationStatus) {
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(8),
        Constraint::Length(6),
    ])
    .areas(area);
    let label = d.label();
    let row = app.rows().iter().find(|r| r.name == label);
    f.render_widget(summary(d, row), top);
    let [charts_area, info] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(middle);
    charts(f, charts_area, app.history.get(&label));
    let [win, pol] = Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(info);
    f.render_widget(window(d), win);
    f.render_widget(policy(d), pol);
    events(
        f,
        bottom,
        app.events.iter().filter(|e| e.name == label),
        " Transitions and operator actions ",
    );
}

fn summary(d: &DestinationStatus, row: Option<&Row>) -> Paragraph<'static> {
    let (tag, state) = row.map_or((Tag::Closed, d.state.to_string()), |r| {
        (r.tag, r.state.clone())
    });
    let mut first = vec![
        Span::styled(d.label(), Style::default().add_modifier(Modifier::BOLD)),
        Span::raw("  "),
        Span::styled(state, tag_style(tag)),
        Span::raw(format!("  mode {}", d.mode)),
    ];
    if let Some(o) = &d.override_mode {
        first.push(Span::styled(format!(" (operator: {o})"), yellow()));
    }
    first.push(Span::raw(format!("  for {}", format::duration(d.since))));
    if let Some(r) = d.retry_in {
        first.push(Span::raw(format!(", half-open in {}", format::duration(r))));
    }
    let mut to = d.matches.join(", ");
    if !d.resolved.is_empty() {
        to = format!("{to} → {}", d.resolved.join(", "));
    }
    let c = &d.counts;
    let x = &c.failures;
    let r = &c.rejected;
    let lines = vec![
        Line::from(first),
        Line::raw(format!("match {to}   rejects with {}", d.reject_errno)),
        Line::raw(format!(
            "attempts {}  ok {}  refused {}  timeout {}  unreachable {}  local {}  reset {}  slow {}  rejected {}/{}/{}/{} (breaker/rate/bulkhead/retry budget)  active {}",
            c.attempts, c.successes, x.refused, x.timeout, x.unreachable, x.local, x.reset, c.slow,
            r.breaker, r.rate_limit, r.bulkhead, r.retry_budget, c.active
        )),
    ];
    Paragraph::new(lines).wrap(Wrap { trim: true }).block(
        Block::default()
            .borders(Borders::TOP)
            .title(" Destination "),
    )
}

/// A chart: title, value of a point, colour, and whether the value is in milliseconds.
type Series = (&'static str, fn(&Point) -> Option<f64>, Color, bool);

fn charts(f: &mut Frame, area: Rect, history: Option<&std::collections::VecDeque<Point>>) {
    let series: [Series; 4] = [
        ("attempts/s", |p| Some(p.attempts), Color::Cyan, false),
        ("failures/s", |p| Some(p.failures), Color::Red, false),
        ("rejected/s", |p| Some(p.rejected), Color::Magenta, false),
        ("p99 connect ms", |p| p.p99_ms, Color::Yellow, true),
    ];
    let areas = Layout::vertical([Constraint::Ratio(1, 4); 4]).split(area);
    let empty = std::collections::VecDeque::new();
    let h = history.unwrap_or(&empty);
    for ((title, get, color, is_ms), a) in series.into_iter().zip(areas.iter()) {
        // The newest points that fit, one column each.
        let width = a.width.saturating_sub(2) as usize;
        let values: Vec<Option<f64>> = h.iter().rev().take(width).rev().map(get).collect();
        let now = values.last().copied().flatten();
        let max = values.iter().flatten().copied().reduce(f64::max);
        let show = |v: Option<f64>| {
            if is_ms {
                format::ms(v)
            } else {
                format::rate(v)
            }
        };
        let title = format!(" {title}  now {}  max {} ", show(now), show(max));
        let data: Vec<u64> = values
            .iter()
            .map(|v| (v.unwrap_or(0.0) * 100.0).round() as u64)
            .collect();
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::default().fg(color))
                .block(Block::bordered().title(title)),
            *a,
        );
    }
}

fn window(d: &DestinationStatus) -> Paragraph<'static> {
    let w = &d.window;
    let title = match w.kind.as_str() {
        "time" => format!(" Window: last {}s ", w.size),
        _ => format!(" Window: last {} calls ", w.size),
    };
    let mut lines = vec![Line::raw(format!(
        "{} calls  {} failed ({})  {} slow ({})  streak {}",
        w.calls,
        w.failures,
        format::pct(w.failure_rate),
        w.slow,
        format::pct(w.slow_rate),
        w.consecutive_failures
    ))];
    if w.kind == "time" {
        let max = w.seconds.iter().map(|s| s[0]).max().unwrap_or(0).max(1);
        let bars = "▁▂▃▄▅▆▇█";
        let spans: Vec<Span> = w
            .seconds
            .iter()
            .map(|s| {
                let ch = if s[0] == 0 {
                    ' '
                } else {
                    bars.chars().nth((s[0] * 7 / max) as usize).unwrap_or('█')
                };
                let style = if s[1] > 0 {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default().fg(Color::Green)
                };
                Span::styled(ch.to_string(), style)
            })
            .collect();
        lines.push(Line::from(spans));
    } else {
        let spans: Vec<Span> = w
            .recent
            .chars()
            .map(|c| {
                let style = match c {
                    'x' => Style::default().fg(Color::Red),
                    's' => Style::default().fg(Color::Yellow),
                    _ => Style::default().fg(Color::Green),
                };
                Span::styled(c.to_string(), style)
            })
            .collect();
        lines.push(Line::from(spans));
    }
    if d.state != crate::engine::State::Closed {
        lines.push(Line::styled(
            "(empty outside closed: each transition starts a new window)",
            Style::default().fg(Color::DarkGray),
        ));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(title))
}

fn policy(d: &DestinationStatus) -> Paragraph<'static> {
    let mut lines = Vec::new();
    if let Some(obj) = d.policy.as_deref().and_then(|p| p.as_object()) {
        for (k, v) in obj {
            if k == "name" || k == "match" || v.is_null() {
                continue;
            }
            match v.as_object() {
                Some(inner) => {
                    let parts: Vec<String> = inner
                        .iter()
                        .map(|(ik, iv)| format!("{ik}={}", plain(iv)))
                        .collect();
                    lines.push(Line::from(vec![
                        Span::styled(
                            format!("{k}: "),
                            Style::default().add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(parts.join(" ")),
                    ]));
                }
                None => lines.push(Line::raw(format!("{k} = {}", plain(v)))),
            }
        }
    }
    Paragraph::new(Text::from(lines))
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(" Effective policy "))
}

/// A JSON value without quotes around strings.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

const HELP_NOTE: &str = "Rates are per second between two snapshots; FAIL% and SLOW% are the breaker's window. STATE~ is dry-run: what enforcing would do. Times are UTC.";

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move (mouse wheel too)"),
    ("PgUp PgDn g G", "page, first, last"),
    ("Enter", "detail: charts, window, policy, transitions"),
    ("Esc", "back from detail; clear the filter"),
    (
        "s",
        "sort: policy, state, name, attempts, failures, rejected, p99",
    ),
    ("/", "filter by name or state (Enter keeps, Esc clears)"),
    ("t", "trip: open the breaker now (asks first)"),
    ("r", "reset: close the breaker (asks first)"),
    ("d", "disable (observe only) / enable again"),
    ("R", "reload the policy file"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit (the daemon keeps running under `top`)"),
];

/// Terminal lines `text` takes, wrapped word by word at `width` columns.
fn wrapped_lines(text: &str, width: u16) -> u16 {
    let width = usize::from(width.max(1));
    let (mut lines, mut used) = (1u16, 0usize);
    for (i, word) in text.split(' ').enumerate() {
        let w = unicode_width::UnicodeWidthStr::width(word);
        // Leading spaces count (they are empty words here).
        let need = if i == 0 { w } else { used + 1 + w };
        if need > width && used > 0 {
            lines += 1;
            used = w;
        } else {
            used = need;
        }
        // A word longer than a line breaks where it must.
        while used > width {
            lines += 1;
            used -= width;
        }
    }
    lines
}

fn help(f: &mut Frame) {
    let width = 72u16.min(f.area().width);
    let inner = width.saturating_sub(2);
    let body: u16 = HELP
        .iter()
        .map(|(k, what)| wrapped_lines(&format!("{k:>14}  {what}"), inner))
        .sum();
    let area = centered(
        f.area(),
        width,
        body + 1 + wrapped_lines(HELP_NOTE, inner) + 2,
    );
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>14}  "), yellow()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        HELP_NOTE,
        Style::default().fg(Color::DarkGray),
    ));
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Keys (any key closes) ")),
        area,
    );
}
