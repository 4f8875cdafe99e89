//! The file `resilience record` writes and `resilience replay` reads: JSON lines.
//!
//! Line 1 is the header, `{"recording": {...}}`. Then, in the order the daemon saw them:
//! - `{"outcome": {...}}`: one kernel outcome record of a guarded destination (a connect's
//!   result, or the reset of an established connection);
//! - `{"transition": {...}}`: a breaker state change of the policy in force;
//! - `{"counts": {...}}`: each destination's kernel counters, once a second (rejections by
//!   reason and open connections, which have no record of their own);
//! - last, `{"end": {...}}`: why the recording stopped, and what was lost.
//!
//! Times (`ns`) are CLOCK_MONOTONIC nanoseconds, the clock of the kernel's records; the header
//! pairs one of them with the wall clock. Names only grow: new fields may appear, none are
//! renamed, and a reader skips line kinds it does not know.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::snapshot::Rejected;

pub const FORMAT: &str = "resilience-recording";
pub const VERSION: u32 = 1;

/// The first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always "resilience-recording".
    pub format: String,
    pub version: u32,
    pub daemon_version: String,
    /// When the recording started, on the records' clock and on the wall clock.
    pub started_ns: u64,
    pub started_unix: f64,
    /// The policy file in force, if the daemon runs from one.
    pub policy_file: Option<String>,
    /// The guarded destinations at the start, with their counters then.
    pub destinations: Vec<DestHeader>,
    /// The recorder's size bound, in bytes (the header included).
    #[serde(default)]
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestHeader {
    pub destination: String,
    pub service: Option<String>,
    /// The definition, as `check --json` prints it.
    pub policy: serde_json::Value,
    pub counts: Counts,
}

/// Counters of one destination, as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub attempts: u64,
    pub rejected: Rejected,
    pub would_reject: Rejected,
    /// Connections established and not yet closed.
    pub active: u64,
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Recording(Header),
    Outcome(OutcomeLine),
    Transition(TransitionLine),
    Counts(CountsLine),
    End(EndLine),
}

/// A kernel outcome record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeLine {
    /// When the outcome was seen.
    pub ns: u64,
    /// A success's connect latency; for a failure, the time since the connect; for a reset,
    /// the connection's life. The connect began at `ns - latency_ns`.
    pub latency_ns: u64,
    pub destination: String,
    pub service: Option<String>,
    /// "127.0.0.1:80" or "[::1]:443".
    pub address: String,
    /// "success", "refused", "timeout", "unreachable", "local", "reset" or "abandoned".
    pub result: String,
    /// Admitted as a half-open probe.
    pub probe: bool,
    /// At least the slow-call threshold of the policy in force.
    pub slow: bool,
    /// A reset: the `ns` of its connection's success line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionLine {
    pub ns: u64,
    pub destination: String,
    pub service: Option<String>,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsLine {
    pub ns: u64,
    pub destination: String,
    pub service: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndLine {
    pub ns: u64,
    /// "duration", "size", "interrupted" or "daemon stopped".
    pub reason: String,
    /// Lines the daemon could not hand to this recorder in time (it fell behind).
    pub lagged: u64,
    /// The file's size without this line.
    pub bytes: u64,
}

/// Names of `OutcomeEvent::outcome` values, as the file spells them.
pub fn result_name(outcome: u32) -> &'static str {
    use resilience_common::conn::*;
    match outcome {
        OUTCOME_SUCCESS => "success",
        OUTCOME_REFUSED => "refused",
        OUTCOME_TIMEOUT => "timeout",
        OUTCOME_UNREACHABLE => "unreachable",
        OUTCOME_LOCAL => "local",
        OUTCOME_RESET => "reset",
        OUTCOME_ABANDONED => "abandoned",
        _ => "closed",
    }
}

/// The `OutcomeEvent::outcome` value of a result name.
pub fn result_code(name: &str) -> Option<u32> {
    use resilience_common::conn::*;
    Some(match name {
        "success" => OUTCOME_SUCCESS,
        "refused" => OUTCOME_REFUSED,
        "timeout" => OUTCOME_TIMEOUT,
        "unreachable" => OUTCOME_UNREACHABLE,
        "local" => OUTCOME_LOCAL,
        "reset" => OUTCOME_RESET,
        "abandoned" => OUTCOME_ABANDONED,
        "closed" => OUTCOME_CLOSED,
        _ => return None,
    })
}

/// A recording read back.
#[derive(Debug, Clone)]
pub struct Recording {
    pub header: Header,
    /// Every line after the header, the end line included if there is one.
    pub lines: Vec<Line>,
    /// No end line: the recorder was killed (what is there is still good).
    pub cut: bool,
}

impl Recording {
    pub fn end(&self) -> Option<&EndLine> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::End(e) => Some(e),
            _ => None,
        })
    }

    /// The last time in the recording.
    pub fn last_ns(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| match l {
                Line::Outcome(o) => o.ns,
                Line::Transition(t) => t.ns,
                Line::Counts(c) => c.ns,
                Line::End(e) => e.ns,
                Line::Recording(h) => h.started_ns,
            })
            .max()
            .unwrap_or(self.header.started_ns)
    }
}

/// Read a recording; an error names the line. Lines of kinds this version does not know are
/// skipped (the format only grows).
pub fn read(input: impl BufRead, name: &str) -> Result<Recording> {
    let mut header = None;
    let mut lines = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{name}:{n}: reading"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{name}:{n}: not JSON"))?;
        if header.is_none() {
            let h: Header = match v.get("recording") {
                Some(h) => serde_json::from_value(h.clone())
                    .with_context(|| format!("{name}:{n}: a bad recording header"))?,
                None => bail!("{name}:{n}: not a resilience recording (no \"recording\" header)"),
            };
            if h.format != FORMAT || h.version > VERSION {
                bail!(
                    "{name}:{n}: format {:?} version {} is not one this resilience reads ({FORMAT} {VERSION})",
                    h.format,
                    h.version
                );
            }
            header = Some(h);
            continue;
        }
        let known = ["outcome", "transition", "counts", "end"];
        if !v
            .as_object()
            .is_some_and(|o| o.keys().any(|k| known.contains(&k.as_str())))
        {
            continue;
        }
        let l: Line = serde_json::from_value(v).with_context(|| format!("{name}:{n}: bad line"))?;
        lines.push(l);
    }
    let header = header.with_context(|| format!("{name}: empty file: no recording header"))?;
    let cut = !matches!(lines.last(), Some(Line::End(_)));
    Ok(Recording { header, lines, cut })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            daemon_version: "0.1.0".into(),
            started_ns: 1_000,
            started_unix: 1.7e9,
            policy_file: None,
            destinations: vec![],
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn lines_read_back_as_written_and_unknown_kinds_are_skipped() {
        let o = Line::Outcome(OutcomeLine {
            ns: 2_000,
            latency_ns: 500,
            destination: "api".into(),
            service: None,
            address: "127.0.0.1:80".into(),
            result: "refused".into(),
            probe: false,
            slow: false,
            established_ns: None,
        });
        let c = Line::Counts(CountsLine {
            ns: 3_000,
            destination: "api".into(),
            service: Some("web".into()),
            counts: Counts {
                attempts: 4,
                active: 1,
                ..Counts::default()
            },
        });
        let mut text = String::new();
        for l in [Line::Recording(header()), o.clone(), c.clone()] {
            text.push_str(&serde_json::to_string(&l).unwrap());
            text.push('\n');
        }
        text.push_str("{\"future_kind\": {\"x\": 1}}\n");
        let r = read(text.as_bytes(), "rec").unwrap();
        assert_eq!(r.header, header());
        assert_eq!(r.lines, vec![o, c]);
        assert!(r.cut, "no end line");
        assert_eq!(r.last_ns(), 3_000);
    }

    #[test]
    fn errors_name_the_line() {
        let e = read("{\"outcome\": {}}\n".as_bytes(), "f.jsonl").unwrap_err();
        assert!(
            format!("{e:#}").contains("f.jsonl:1: not a resilience recording"),
            "{e:#}"
        );
        let mut text = serde_json::to_string(&Line::Recording(header())).unwrap();
        text.push_str("\n{\"outcome\": {\"ns\": \"x\"}}\n");
        let e = read(text.as_bytes(), "f.jsonl").unwrap_err();
        assert!(format!("{e:#}").starts_with("f.jsonl:2: bad line"), "{e:#}");
        assert!(read("".as_bytes(), "f").is_err());
    }

    #[test]
    fn result_names_round_trip() {
        for code in 0..8 {
            assert_eq!(result_code(result_name(code)), Some(code));
        }
    }
}
