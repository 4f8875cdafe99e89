//! Dashboard frame time with many destinations (`cargo xtask bench` runs it): a frame drawn
//! into ratatui's TestBackend, so it measures our rendering, not the terminal's I/O.
//!
//! Usage: dashboard [--destinations N] [--frames N] [--out FILE]

use std::time::{Duration, Instant};

use ratatui::{backend::TestBackend, crossterm::event::KeyCode, Terminal};
use resilience_daemon::{
    fixture::fixture_many,
    tui::{app::App, ui},
};

fn key(c: KeyCode) -> ratatui::crossterm::event::KeyEvent {
    ratatui::crossterm::event::KeyEvent::new(c, ratatui::crossterm::event::KeyModifiers::NONE)
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

fn frames(app: &App, w: u16, h: u16, n: usize) -> Stats {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        t.draw(|f| ui::draw(f, app)).expect("draw");
        times.push(start.elapsed());
    }
    stats(times)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut n = 10_000usize;
    let mut count = 300usize;
    let mut out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--destinations" => n = args.next().and_then(|v| v.parse().ok()).unwrap_or(n),
            "--frames" => count = args.next().and_then(|v| v.parse().ok()).unwrap_or(count),
            "--out" => out = args.next(),
            // cargo bench passes --bench to harness-less benchmarks.
            _ => {}
        }
    }
    let first = fixture_many(n);
    let mut second = first.clone();
    second.daemon.uptime += 1.0;
    for (i, d) in second.destinations.iter_mut().enumerate() {
        d.counts.attempts += (i % 50) as u64;
    }
    let json = serde_json::to_string(&second).expect("json");

    let mut app = App::new();
    app.ingest(first);
    let mut ingest = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let s: resilience_daemon::snapshot::Snapshot = serde_json::from_str(&json).expect("decode");
        decode.push(start.elapsed());
        let start = Instant::now();
        app.ingest(s);
        ingest.push(start.elapsed());
    }
    let mut rows = Vec::new();
    let mut record = |what: &str, s: Stats| {
        println!(
            "{what:<44} median {:>7} ms  p99 {:>7} ms  max {:>7} ms",
            ms(s.median),
            ms(s.p99),
            ms(s.max)
        );
        rows.push(format!(
            "| {what} | {} | {} | {} |",
            ms(s.median),
            ms(s.p99),
            ms(s.max)
        ));
    };
    record("table, 200x50", frames(&app, 200, 50, count));
    record("table, 80x24", frames(&app, 80, 24, count));
    app.on_key(key(KeyCode::End));
    record(
        "table, 200x50, last row selected",
        frames(&app, 200, 50, count),
    );
    app.on_key(key(KeyCode::Char('s')));
    app.on_key(key(KeyCode::Char('/')));
    for c in "postgres".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    record(
        "table, 200x50, sorted by state, filtered",
        frames(&app, 200, 50, count),
    );
    app.on_key(key(KeyCode::Home));
    app.on_key(key(KeyCode::Enter));
    record("detail view, 200x50", frames(&app, 200, 50, count));
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Char('?')));
    record("help over the table, 200x50", frames(&app, 200, 50, count));
    record("(per snapshot) decode JSON", stats(decode.clone()));
    record(
        "(per snapshot) ingest: rates, sort, charts",
        stats(ingest.clone()),
    );

    let text = format!(
        "# Dashboard frame time\n\n\
Measured by `cargo xtask bench` (resilience-daemon/benches/dashboard.rs): {n} named \
destinations plus 100 observed, {count} frames per line, drawn into ratatui's TestBackend \
(our rendering; the terminal's own output is not included). Target: a frame in <= 10 ms.\n\
Snapshot JSON: {} bytes. Per-snapshot lines run once a refresh (1 s by default), not per frame.\n\n\
| what | median ms | p99 ms | max ms |\n|---|---|---|---|\n{}\n",
        json.len(),
        rows.join("\n")
    );
    if let Some(path) = out {
        std::fs::write(&path, text).expect("writing results");
        println!("wrote {path}");
    }
}
