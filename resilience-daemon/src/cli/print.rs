//! Plain-text output of the read commands (`status`, `events`); `--json` prints the data
//! itself instead.

use std::fmt::Write;

use crate::snapshot::{EventRecord, Snapshot};

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// One line of the status table: 15 cells, each padded to its column.
fn line(out: &mut String, cells: [&str; 15]) {
    const WIDTHS: [usize; 15] = [24, 11, 9, 9, 9, 8, 8, 8, 6, 6, 9, 9, 8, 8, 8];
    for (i, (cell, w)) in cells.iter().zip(WIDTHS).enumerate() {
        let sep = if i == 0 { "" } else { " " };
        // Names and words left-aligned, numbers right-aligned.
        let _ = if i < 3 {
            write!(out, "{sep}{cell:<w$}")
        } else {
            write!(out, "{sep}{cell:>w$}")
        };
    }
    out.push('\n');
}

fn counts_cells(c: &crate::snapshot::Counts) -> [String; 7] {
    let f = &c.failures;
    [
        c.attempts,
        c.successes,
        f.refused,
        f.timeout,
        f.unreachable,
        f.local,
        f.reset,
    ]
    .map(|n| n.to_string())
}

pub fn status(s: &Snapshot) -> String {
    let mut out = String::new();
    line(
        &mut out,
        [
            "DESTINATION",
            "MODE",
            "STATE",
            "ATTEMPTS",
            "SUCCESS",
            "REFUSED",
            "TIMEOUT",
            "UNREACH",
            "LOCAL",
            "RESET",
            "REJECTED",
            "TOKENS",
            "ACTIVE",
            "P50 MS",
            "P99 MS",
        ],
    );
    for d in &s.destinations {
        let c = &d.counts;
        let tokens = match (d.tokens, d.burst) {
            (Some(t), Some(b)) => format!("{t}/{b}"),
            _ => "-".into(),
        };
        let active = match d.max_concurrent {
            Some(m) => format!("{}/{m}", c.active),
            None => c.active.to_string(),
        };
        let n = counts_cells(c);
        let rejected =
            (c.rejected.breaker + c.rejected.rate_limit + c.rejected.bulkhead).to_string();
        let (p50, p99) = (ms(c.latency_ms.p50), ms(c.latency_ms.p99));
        let label = d.label();
        line(
            &mut out,
            [
                &label,
                d.mode.as_str(),
                d.state.as_str(),
                &n[0],
                &n[1],
                &n[2],
                &n[3],
                &n[4],
                &n[5],
                &n[6],
                &rejected,
                &tokens,
                &active,
                &p50,
                &p99,
            ],
        );
    }
    let shown = 20;
    for o in s.observed.iter().take(shown) {
        let n = counts_cells(&o.counts);
        let active = o.counts.active.to_string();
        line(
            &mut out,
            [
                &o.address, "observed", "-", &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], "0",
                "-", &active, "-", "-",
            ],
        );
    }
    if s.observed.len() > shown {
        let _ = writeln!(
            out,
            "... and {} more observed destinations (status --json lists all)",
            s.observed.len() - shown
        );
    }
    let k = &s.kernel;
    let _ = writeln!(
        out,
        "kernel: fail_open={} ringbuf_lost={} untracked={} hook_errors={} outcome_records={} \
         quiet_successes={}",
        k.fail_open,
        k.ringbuf_lost,
        k.untracked,
        k.hook_errors,
        k.outcome_records,
        k.quiet_successes
    );
    let d = &s.daemon;
    let _ = writeln!(
        out,
        "daemon: version={} uptime={:.0}s policy={} reloads={} refused_reloads={}",
        s.version,
        d.uptime,
        opt(d.policy_file.as_deref()),
        d.reloads,
        d.reload_failures
    );
    out
}

/// "2026-11-22T10:04:05Z  payments-api: closed -> open: ..."
pub fn event(e: &EventRecord) -> String {
    format!("{}  {}", iso8601(e.time), e.message)
}

/// Seconds since the epoch as UTC "YYYY-MM-DDTHH:MM:SSZ".
pub fn iso8601(epoch: f64) -> String {
    let secs = epoch.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_is_utc() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_000_000.5), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn status_lists_every_destination_and_the_kernel_line() {
        let s = crate::fixture::fixture();
        let text = status(&s);
        for d in &s.destinations {
            assert!(text.contains(&d.name), "{}", d.name);
        }
        assert!(text.contains("37/100"), "tokens of the burst:\n{text}");
        assert!(text.contains("17/20"), "active of max:\n{text}");
        assert!(text.contains("kernel: fail_open=0"));
    }
}
