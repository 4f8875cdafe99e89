//! `resilience record` (the daemon's outcome records into a file) and `resilience replay` (a
//! candidate policy over such a file). The format is in `recording.rs`.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{explain, print::iso8601};
use crate::{
    client::{Client, DEFAULT_TIMEOUT},
    config,
    protocol::Request,
    recording::{self, EndLine, Header, Line},
    replay::{self, Report, Side},
};

/// Room kept for the end line under the size bound.
const END_RESERVE: u64 = 256;
/// How often the recorder looks at the clock and for Ctrl-C while no line comes.
const POLL: Duration = Duration::from_millis(200);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end the recording with its end line instead of killing the recorder.
fn catch_stop() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let a = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(s, &a) }.context("installing a signal handler")?;
    }
    Ok(())
}

/// A new file, 0600 (a recording names the host's destinations), never through a symlink.
fn create(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("creating {} (a symbolic link is refused)", path.display()))
}

pub struct RecordArgs<'a> {
    pub socket: &'a Path,
    pub output: &'a Path,
    pub duration: Option<Duration>,
    pub max_bytes: u64,
}

/// What a recording run wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub outcomes: u64,
    pub transitions: u64,
    pub bytes: u64,
    pub reason: String,
    pub lagged: u64,
}

pub fn record(a: &RecordArgs<'_>) -> Result<Written> {
    catch_stop()?;
    let mut c = Client::new(a.socket, DEFAULT_TIMEOUT);
    let mut reply = c
        .call(&Request::Record)
        .context("asking the daemon to record")?;
    let mut header: Header = serde_json::from_value(reply["recording"].take())
        .context("daemon sent an unexpected recording header")?;
    let (stream, mut read) = c
        .into_stream()
        .context("the daemon closed the connection")?;
    header.max_bytes = a.max_bytes;
    let mut file = std::io::BufWriter::new(create(a.output)?);
    let mut w = Written::default();
    let put = |file: &mut std::io::BufWriter<std::fs::File>, text: &str| -> Result<u64> {
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        Ok(text.len() as u64 + 1)
    };
    w.bytes += put(
        &mut file,
        &serde_json::to_string(&Line::Recording(header.clone()))?,
    )?;
    eprintln!(
        "recording {} destinations to {}{}, at most {}; Ctrl-C stops",
        header.destinations.len(),
        a.output.display(),
        a.duration
            .map_or(String::new(), |d| format!(" for {}", humantime(d))),
        size(a.max_bytes)
    );
    stream.set_read_timeout(Some(POLL))?;
    let start = Instant::now();
    let mut buf = Vec::new();
    w.reason = loop {
        if STOP.load(Ordering::Relaxed) {
            break "interrupted".into();
        }
        if a.duration.is_some_and(|d| start.elapsed() >= d) {
            break "duration".into();
        }
        // A line cut by the poll's timeout stays in `buf` and is completed by the next read.
        match read.read_until(b'\n', &mut buf) {
            Ok(0) => break "daemon stopped".into(),
            Ok(_) if buf.last() != Some(&b'\n') => break "daemon stopped".into(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(anyhow::Error::from(e).context("reading the recording stream")),
        }
        let mut v: Value = serde_json::from_slice(&buf).context("daemon sent invalid JSON")?;
        buf.clear();
        if let Some(n) = v.get("lagged").and_then(Value::as_u64) {
            w.lagged += n;
            continue;
        }
        let rec = v["record"].take();
        match rec
            .as_object()
            .and_then(|o| o.keys().next())
            .map(String::as_str)
        {
            Some("outcome") => w.outcomes += 1,
            Some("transition") => w.transitions += 1,
            _ => {}
        }
        let text = rec.to_string();
        if w.bytes + text.len() as u64 + 1 + END_RESERVE > a.max_bytes {
            break "size".into();
        }
        w.bytes += put(&mut file, &text)?;
    };
    let end = Line::End(EndLine {
        ns: crate::kernel::monotonic_ns(),
        reason: w.reason.clone(),
        lagged: w.lagged,
        bytes: w.bytes,
    });
    put(&mut file, &serde_json::to_string(&end)?)?;
    file.flush()
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "{} outcome records, {} transitions, {} written to {}; stopped: {}{}",
        w.outcomes,
        w.transitions,
        size(w.bytes),
        a.output.display(),
        w.reason,
        if w.lagged > 0 {
            format!(" ({} lines lost: the recorder fell behind)", w.lagged)
        } else {
            String::new()
        }
    );
    Ok(w)
}

/// "90s", "1.5s", "250ms".
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// "64MiB", "500KiB", "1GiB" or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        u => return Err(format!("unknown unit {u:?} in {s:?}: B, KiB, MiB or GiB")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v < 4096 {
        return Err(format!("{s:?} is below 4KiB: no room for a recording"));
    }
    Ok(v)
}

/// `resilience replay`: the report as text or JSON.
pub fn replay(candidate: &Path, file: &Path, json: bool) -> Result<String> {
    let policy = config::load_file(candidate).map_err(|e| anyhow::anyhow!("{e}"))?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let rec = recording::read(BufReader::new(f), &file.display().to_string())?;
    let resolved: Vec<replay::Resolved> = policy
        .destinations
        .iter()
        .map(|d| explain::resolved_now(d))
        .collect();
    let report = replay::replay(&rec, &policy, &resolved);
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&report)?));
    }
    Ok(text(&report, candidate, file))
}

fn side_text(out: &mut String, who: &str, s: &Side) {
    let r = &s.rejected;
    out.push_str(&format!(
        "  {who}: {} admitted, {} rejected (breaker {}, rate limit {}, bulkhead {}, retry budget {})\n",
        s.admitted,
        r.total(),
        r.breaker,
        r.rate_limit,
        r.bulkhead,
        r.retry_budget
    ));
    if s.transitions.is_empty() {
        out.push_str("    no state changes\n");
    }
    for t in &s.transitions {
        out.push_str(&format!(
            "    {:>8.3}s  {} -> {}: {}\n",
            t.at_s,
            t.from,
            t.to,
            config::printable(&t.reason)
        ));
    }
}

fn text(r: &Report, candidate: &Path, file: &Path) -> String {
    let mut out = format!(
        "replay of {} ({:.1}s from {}) under {}\n",
        file.display(),
        r.duration_s,
        iso8601(r.started_unix),
        candidate.display()
    );
    if r.cut {
        out.push_str("note: the recording has no end line (its recorder was stopped hard)\n");
    }
    if r.lagged > 0 {
        out.push_str(&format!(
            "note: {} lines were lost while recording: the replay misses them\n",
            r.lagged
        ));
    }
    if r.destinations.is_empty() {
        out.push_str("no destination of the candidate policy governs a recorded connect\n");
    }
    for d in &r.destinations {
        out.push_str(&format!(
            "\n{}: {} recorded connects (in force: {})\n",
            config::printable(&config::label(&d.destination, d.service.as_deref())),
            d.connects,
            config::printable(&d.in_force_as.join(", "))
        ));
        let first = |s: &Side| {
            s.first_open_s
                .map_or("never".into(), |t| format!("at {t:.3}s"))
        };
        out.push_str(&format!(
            "  first open: candidate {}, in force {}\n",
            first(&d.candidate),
            first(&d.in_force)
        ));
        side_text(&mut out, "candidate", &d.candidate);
        side_text(&mut out, "in force ", &d.in_force);
        if d.unknown > 0 {
            out.push_str(&format!(
                "  {} connects the policy in force rejected have no recorded outcome: not replayed\n",
                d.unknown
            ));
        }
    }
    if r.unguarded > 0 {
        out.push_str(&format!(
            "\n{} recorded connects match no candidate destination (they would be observed only)\n",
            r.unguarded
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500KiB"), Ok(500 << 10));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("10").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
