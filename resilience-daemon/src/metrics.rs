//! The Prometheus endpoint: `GET /metrics` renders the daemon's snapshot in the text
//! exposition format. Opt-in (`[daemon] metrics`), one small HTTP/1.1 exchange per connection.

use std::{fmt::Write, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};

use crate::{
    control::{self, Command},
    protocol::{Reply, Request},
    snapshot::DestinationStatus,
    snapshot::Snapshot,
};

/// Request heads longer than this are refused: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// Scrapes served at once; more connections are answered 503 and closed.
const MAX_CONNECTIONS: usize = 8;
/// How long a new connection waits for a place before it is answered 503. Places held by
/// connections whose client already left come back within microseconds (their read sees EOF),
/// so a scrape right behind a burst of them is served instead of refused; slow clients still
/// cost the accept loop no more than this each.
const PLACE_WAIT: Duration = Duration::from_millis(50);
/// A client has this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, tx: mpsc::Sender<Command>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let place = tokio::time::timeout(PLACE_WAIT, slots.clone().acquire_owned()).await;
                let Ok(Ok(permit)) = place else {
                    let _ = stream.try_write(
                        respond("503 Service Unavailable", "text/plain", "busy\n", true, &[])
                            .as_bytes(),
                    );
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    exchange(stream, tx).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The end of a request head: a blank line, with CRLF or bare LF line ends.
fn head_end(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

fn respond(status: &str, kind: &str, body: &str, with_body: bool, extra: &[&str]) -> String {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    if with_body {
        head.push_str(body);
    }
    head
}

async fn exchange(mut stream: TcpStream, tx: mpsc::Sender<Command>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head_end(&head) {
            if head.len() > MAX_HEAD {
                return Some(false);
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        Some(true)
    };
    // A client that never finishes its request does not hold a place for long.
    let complete = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return,
    };
    if !complete {
        let r = respond(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
            true,
            &[],
        );
        let _ = stream.write_all(r.as_bytes()).await;
        return;
    }
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let with_body = method != "HEAD";
    let response = match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/metrics") => {
            match control::ask(
                &tx,
                // The policies are not metrics: no need to build them.
                Request::Snapshot {
                    since: None,
                    instance: None,
                    policy: Some(false),
                },
            )
            .await
            {
                Reply::Snapshot { snapshot, .. } => respond(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &render(&snapshot),
                    with_body,
                    &[],
                ),
                Reply::Error(e) => respond(
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{e}\n"),
                    with_body,
                    &[],
                ),
                _ => respond(
                    "500 Internal Server Error",
                    "text/plain",
                    "unexpected reply\n",
                    with_body,
                    &[],
                ),
            }
        }
        ("GET" | "HEAD", "/") => respond(
            "200 OK",
            "text/plain",
            "resilience: metrics at /metrics\n",
            with_body,
            &[],
        ),
        ("GET" | "HEAD", _) => {
            respond("404 Not Found", "text/plain", "not found\n", with_body, &[])
        }
        _ => respond(
            "405 Method Not Allowed",
            "text/plain",
            "GET or HEAD only\n",
            true,
            &["Allow: GET, HEAD"],
        ),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A destination's labels: `destination`, and `service` for a destination's per-service copy
/// (left out otherwise, so that series of destinations without services keep their identity).
fn dest_labels<'a>(
    d: &'a DestinationStatus,
    rest: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("destination", d.name.as_str())];
    if let Some(s) = &d.service {
        v.push(("service", s.as_str()));
    }
    v.extend_from_slice(rest);
    v
}

/// One metric family: HELP and TYPE, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The exposition text for one snapshot. Pure, so it is tested without a daemon.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let dests = &s.destinations;
    let per_dest =
        |out: &mut String,
         name: &str,
         kind: &str,
         help: &str,
         value: &dyn Fn(&crate::snapshot::DestinationStatus) -> Option<u64>| {
            let mut f = Family::head(out, name, kind, help);
            for d in dests {
                if let Some(v) = value(d) {
                    f.sample(name, &dest_labels(d, &[]), v);
                }
            }
        };

    let mut f = Family::head(
        &mut out,
        "resilience_breaker_state",
        "gauge",
        "1 for the breaker's current state (closed, open, half_open), 0 for the others.",
    );
    for d in dests {
        for state in ["closed", "open", "half_open"] {
            let v = u8::from(d.state.as_str() == state);
            f.sample(
                "resilience_breaker_state",
                &dest_labels(d, &[("state", state)]),
                v,
            );
        }
    }
    let mut f = Family::head(
        &mut out,
        "resilience_destination_mode",
        "gauge",
        "1 for the destination's mode (enforce, dry-run, disabled, forced-open).",
    );
    for d in dests {
        f.sample(
            "resilience_destination_mode",
            &dest_labels(d, &[("mode", d.mode.as_str())]),
            1,
        );
    }
    per_dest(
        &mut out,
        "resilience_connect_attempts_total",
        "counter",
        "Outbound TCP connects seen by the hook, admitted or rejected.",
        &|d| Some(d.counts.attempts),
    );
    per_dest(
        &mut out,
        "resilience_connect_successes_total",
        "counter",
        "Connects that reached ESTABLISHED.",
        &|d| Some(d.counts.successes),
    );
    let mut f = Family::head(
        &mut out,
        "resilience_connect_failures_total",
        "counter",
        "Failed connects by reason (refused, timeout, unreachable, reset, local).",
    );
    for d in dests {
        let x = &d.counts.failures;
        for (reason, v) in [
            ("refused", x.refused),
            ("timeout", x.timeout),
            ("unreachable", x.unreachable),
            ("reset", x.reset),
            ("local", x.local),
        ] {
            f.sample(
                "resilience_connect_failures_total",
                &dest_labels(d, &[("reason", reason)]),
                v,
            );
        }
    }
    per_dest(
        &mut out,
        "resilience_connect_slow_total",
        "counter",
        "Successful connects at or over the breaker's slow_call_duration.",
        &|d| Some(d.counts.slow),
    );
    for (name, help, dry) in [
        (
            "resilience_connect_rejected_total",
            "Connects rejected by the hook, by reason (breaker, rate_limit, bulkhead).",
            false,
        ),
        (
            "resilience_connect_would_reject_total",
            "Dry-run: connects that would have been rejected, by reason.",
            true,
        ),
    ] {
        let mut f = Family::head(&mut out, name, "counter", help);
        for d in dests {
            let r = if dry {
                &d.counts.would_reject
            } else {
                &d.counts.rejected
            };
            for (reason, v) in [
                ("breaker", r.breaker),
                ("rate_limit", r.rate_limit),
                ("bulkhead", r.bulkhead),
                ("retry_budget", r.retry_budget),
            ] {
                f.sample(name, &dest_labels(d, &[("reason", reason)]), v);
            }
        }
    }
    per_dest(
        &mut out,
        "resilience_rate_limit_tokens",
        "gauge",
        "Tokens left in the destination's bucket (rate-limited destinations only).",
        &|d| d.tokens,
    );
    per_dest(
        &mut out,
        "resilience_rate_limit_burst",
        "gauge",
        "The bucket's size (burst).",
        &|d| d.burst.map(u64::from),
    );
    per_dest(
        &mut out,
        "resilience_active_connections",
        "gauge",
        "Connections admitted and not yet closed.",
        &|d| Some(d.counts.active),
    );
    per_dest(
        &mut out,
        "resilience_bulkhead_max_concurrent",
        "gauge",
        "The bulkhead's limit (destinations with a bulkhead only).",
        &|d| d.max_concurrent.map(u64::from),
    );
    histogram(&mut out, dests);
    let mut f = Family::head(
        &mut out,
        "resilience_breaker_transitions_total",
        "counter",
        "Breaker state changes by the state entered.",
    );
    for d in dests {
        let t = &d.transitions;
        for (to, v) in [
            ("open", t.open),
            ("half_open", t.half_open),
            ("closed", t.closed),
        ] {
            f.sample(
                "resilience_breaker_transitions_total",
                &dest_labels(d, &[("to", to)]),
                v,
            );
        }
    }
    let k = &s.kernel;
    for (name, kind, help, v) in [
        (
            "resilience_fail_open_total",
            "counter",
            "Connects let through because the daemon's lease ran out (fail-open).",
            k.fail_open,
        ),
        (
            "resilience_ringbuf_lost_total",
            "counter",
            "Outcome records the kernel dropped because the ring buffer was full.",
            k.ringbuf_lost,
        ),
        (
            "resilience_hook_errors_total",
            "counter",
            "Internal errors in the kernel hooks (each one let its connect through).",
            k.hook_errors,
        ),
        (
            "resilience_untracked_total",
            "counter",
            "Connects whose outcome could not be tracked.",
            k.untracked,
        ),
        (
            "resilience_outcome_records_total",
            "counter",
            "Outcome records the daemon read.",
            k.outcome_records,
        ),
        (
            "resilience_quiet_successes_total",
            "counter",
            "Successes the kernel counted without a record, fed to the breakers in bulk.",
            k.quiet_successes,
        ),
        (
            "resilience_reloads_total",
            "counter",
            "Policy reloads that took effect.",
            s.daemon.reloads,
        ),
        (
            "resilience_reload_failures_total",
            "counter",
            "Policy reloads refused (the running policy stayed).",
            s.daemon.reload_failures,
        ),
        (
            "resilience_cgroup_attached",
            "gauge",
            "1 while the programs are attached to the guarded cgroup; 0 after it was removed, until it is created again.",
            u64::from(s.daemon.attached),
        ),
        (
            "resilience_observed_destinations",
            "gauge",
            "Destinations seen that no policy names (see `resilience status`).",
            s.observed.len() as u64,
        ),
    ] {
        Family::head(&mut out, name, kind, help).sample(name, &[], v);
    }
    out
}

/// Connect latency as a Prometheus histogram: the kernel's log2 buckets, cumulative.
fn histogram(out: &mut String, dests: &[crate::snapshot::DestinationStatus]) {
    let name = "resilience_connect_duration_seconds";
    let mut f = Family::head(
        out,
        name,
        "histogram",
        "Time from connect() to ESTABLISHED, successful connects.",
    );
    for d in dests {
        let h = &d.counts.latency_histogram;
        let mut cumulative = 0u64;
        for (i, n) in h.iter().enumerate() {
            cumulative += n;
            // The last bucket has no upper bound; +Inf below covers it.
            if i + 1 == h.len() {
                break;
            }
            let le = format!("{}", (1u64 << i) as f64 / 1e6);
            f.sample(
                &format!("{name}_bucket"),
                &dest_labels(d, &[("le", &le)]),
                cumulative,
            );
        }
        f.sample(
            &format!("{name}_bucket"),
            &dest_labels(d, &[("le", "+Inf")]),
            cumulative,
        );
        f.sample(
            &format!("{name}_sum"),
            &dest_labels(d, &[]),
            d.counts.latency_sum_ns as f64 / 1e9,
        );
        f.sample(&format!("{name}_count"), &dest_labels(d, &[]), cumulative);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let mut s = crate::fixture::fixture();
        s.destinations[0].name = "a\"b\\c".into();
        let text = render(&s);
        assert!(
            text.contains("resilience_connect_attempts_total{destination=\"a\\\"b\\\\c\"} 120\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE resilience_connect_duration_seconds histogram\n"));
        // Every sample line belongs to a family announced by a TYPE line above it.
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap_or("").to_string());
            } else if !line.starts_with('#') {
                let metric = line.split(['{', ' ']).next().unwrap_or("");
                assert!(
                    typed
                        .iter()
                        .any(|t| metric == t || metric.starts_with(&format!("{t}_"))),
                    "{metric} has no TYPE"
                );
            }
        }
    }

    #[test]
    fn histogram_is_cumulative_and_counts_every_success() {
        let s = crate::fixture::fixture();
        let text = render(&s);
        let d = &s.destinations[0];
        let total: u64 = d.counts.latency_histogram.iter().sum();
        let inf = format!(
            "resilience_connect_duration_seconds_bucket{{destination=\"{}\",le=\"+Inf\"}} {total}\n",
            d.name
        );
        assert!(text.contains(&inf), "{text}");
        let mut last = 0;
        for line in text.lines().filter(|l| {
            l.starts_with("resilience_connect_duration_seconds_bucket")
                && l.contains(&format!("\"{}\"", d.name))
        }) {
            let v: u64 = line.rsplit(' ').next().unwrap_or("0").parse().unwrap_or(0);
            assert!(v >= last, "not cumulative: {line}");
            last = v;
        }
    }
}
