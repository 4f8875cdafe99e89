//! The control socket: JSON lines over a Unix socket, mode 0600 (root only).
//!
//! Protocol version 1. A request is one line holding a JSON object, `{"cmd": "<command>", ...}`;
//! the reply is one line, `{"v": 1, "ok": true, ...}` or `{"v": 1, "ok": false, "error": "..."}`.
//! A connection may carry any number of requests, one at a time.
//!
//! | cmd | fields | reply fields |
//! |---|---|---|
//! | `version` | | `version` |
//! | `snapshot` | | `snapshot`: a `Snapshot` |
//! | `status` | | `status`: the same `Snapshot` (kept from the first release) |
//! | `events` | `follow`: bool, optional | `events`: the last 1000; with `follow`, then one line per new event, `{"v": 1, "event": {...}}`, and `{"v": 1, "lagged": N}` if this client fell N events behind |
//! | `trip`, `reset`, `disable`, `enable` | `name`: a destination | `message` |
//! | `reload` | | `message` |
//!
//! A request line longer than 1 MiB gets an error and the connection is closed; anything else
//! malformed gets an error and the connection stays usable. At most 64 clients at once.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot, Semaphore},
};

use crate::snapshot::{EventRecord, Snapshot};

pub const PROTOCOL_VERSION: u64 = 1;
/// Longer request lines are refused (and the connection closed): no request needs more.
const MAX_LINE: usize = 1024 * 1024;
const MAX_CLIENTS: usize = 64;

type Reply<T> = oneshot::Sender<T>;

/// A request the daemon's main loop answers.
pub enum Command {
    Snapshot(Reply<Result<Snapshot, String>>),
    Events(Reply<Vec<EventRecord>>),
    Trip(String, Reply<Result<String, String>>),
    Reset(String, Reply<Result<String, String>>),
    Disable(String, Reply<Result<String, String>>),
    Enable(String, Reply<Result<String, String>>),
    Reload(Reply<Result<String, String>>),
}

pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: is another resilience daemon running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<EventRecord>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let busy = line(&error(format!(
                        "more than {MAX_CLIENTS} clients; try again"
                    )));
                    let _ = stream.write_all(busy.as_bytes()).await;
                    continue;
                };
                let (tx, events) = (tx.clone(), events.clone());
                tokio::spawn(async move {
                    client(stream, tx, events).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn line(v: &Value) -> String {
    let mut out = v.to_string();
    out.push('\n');
    out
}

async fn client(
    stream: UnixStream,
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<EventRecord>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_LINE && buf.last() != Some(&b'\n') {
            let e = error(format!("request longer than {MAX_LINE} bytes"));
            let _ = write.write_all(line(&e).as_bytes()).await;
            return;
        }
        let req = match parse(&buf) {
            Ok(r) => r,
            Err(e) => {
                if write.write_all(line(&error(e)).as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Events { follow: true } = req {
            follow(lines, write, &tx, events.subscribe()).await;
            return;
        }
        let reply = answer(req, &tx).await;
        if write.write_all(line(&reply).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A request that passed parsing: the field types are right.
#[derive(Debug, PartialEq)]
enum Request {
    Version,
    Snapshot { field: &'static str },
    Events { follow: bool },
    Named { cmd: NamedCmd, name: String },
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NamedCmd {
    Trip,
    Reset,
    Disable,
    Enable,
}

const COMMANDS: &str = "version, snapshot, status, events, trip, reset, disable, enable, reload";

fn parse(line: &[u8]) -> Result<Request, String> {
    let req: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = req.as_object() else {
        return Err("a request is a JSON object, e.g. {\"cmd\": \"status\"}".into());
    };
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) => c.as_str(),
        Some(other) => return Err(format!("\"cmd\" must be a string, not {}", kind(other))),
        None => return Err("missing field \"cmd\"".into()),
    };
    let named = |cmd: NamedCmd, word: &str| match obj.get("name") {
        Some(Value::String(n)) => Ok(Request::Named {
            cmd,
            name: n.clone(),
        }),
        Some(other) => Err(format!(
            "{word}: \"name\" must be a string, not {}",
            kind(other)
        )),
        None => Err(format!("{word} needs a string field \"name\"")),
    };
    match cmd {
        "version" => Ok(Request::Version),
        "snapshot" => Ok(Request::Snapshot { field: "snapshot" }),
        "status" => Ok(Request::Snapshot { field: "status" }),
        "events" => match obj.get("follow") {
            None => Ok(Request::Events { follow: false }),
            Some(Value::Bool(f)) => Ok(Request::Events { follow: *f }),
            Some(other) => Err(format!(
                "events: \"follow\" must be a bool, not {}",
                kind(other)
            )),
        },
        "trip" => named(NamedCmd::Trip, cmd),
        "reset" => named(NamedCmd::Reset, cmd),
        "disable" => named(NamedCmd::Disable, cmd),
        "enable" => named(NamedCmd::Enable, cmd),
        "reload" => Ok(Request::Reload),
        other => Err(format!("unknown command {other:?}; known: {COMMANDS}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const GONE: &str = "daemon is shutting down";

async fn ask<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, String> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| GONE.to_string())?;
    rx.await.map_err(|_| GONE.to_string())
}

async fn answer(req: Request, tx: &mpsc::Sender<Command>) -> Value {
    let ok = |field: &str, v: Value| json!({"v": PROTOCOL_VERSION, "ok": true, field: v});
    let result = match req {
        Request::Version => Ok(ok("version", json!(env!("CARGO_PKG_VERSION")))),
        Request::Snapshot { field } => match ask(tx, Command::Snapshot).await {
            Ok(Ok(s)) => serde_json::to_value(s)
                .map(|v| ok(field, v))
                .map_err(|e| e.to_string()),
            Ok(Err(e)) | Err(e) => Err(e),
        },
        Request::Events { .. } => ask(tx, Command::Events)
            .await
            .map(|ev| ok("events", serde_json::to_value(ev).unwrap_or_default())),
        Request::Named { cmd, name } => {
            let r = match cmd {
                NamedCmd::Trip => ask(tx, |r| Command::Trip(name, r)).await,
                NamedCmd::Reset => ask(tx, |r| Command::Reset(name, r)).await,
                NamedCmd::Disable => ask(tx, |r| Command::Disable(name, r)).await,
                NamedCmd::Enable => ask(tx, |r| Command::Enable(name, r)).await,
            };
            r.and_then(|m| m.map(|m| ok("message", json!(m))))
        }
        Request::Reload => ask(tx, Command::Reload)
            .await
            .and_then(|m| m.map(|m| ok("message", json!(m)))),
    };
    result.unwrap_or_else(error)
}

/// `events` with `follow`: the backlog, then every new event until the client goes away.
async fn follow(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    tx: &mpsc::Sender<Command>,
    mut rx: broadcast::Receiver<EventRecord>,
) {
    // Subscribed before asking for the backlog: nothing falls between the two; what is in both
    // is sent once, by sequence number.
    let backlog = match ask(tx, Command::Events).await {
        Ok(b) => b,
        Err(e) => {
            let _ = write.write_all(line(&error(e)).as_bytes()).await;
            return;
        }
    };
    let mut last = backlog.last().map_or(0, |e| e.seq);
    let head = json!({"v": PROTOCOL_VERSION, "ok": true, "events": backlog});
    if write.write_all(line(&head).as_bytes()).await.is_err() {
        return;
    }
    let mut sink = [0u8; 256];
    loop {
        let out = tokio::select! {
            ev = rx.recv() => match ev {
                Ok(e) if e.seq <= last => continue,
                Ok(e) => {
                    last = e.seq;
                    json!({"v": PROTOCOL_VERSION, "event": e})
                }
                Err(broadcast::error::RecvError::Lagged(n)) => json!({"v": PROTOCOL_VERSION, "lagged": n}),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Anything the client sends now is ignored; end of input ends the stream.
            n = read.read(&mut sink) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        if write.write_all(line(&out).as_bytes()).await.is_err() {
            return;
        }
    }
}

fn error(message: String) -> Value {
    json!({"v": PROTOCOL_VERSION, "ok": false, "error": message})
}

/// Client side: connect, with a message that says what to check.
pub fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is the daemon running? root needed; --socket to point elsewhere)",
            path.display()
        )
    })
}

/// Client side: send one request on `stream`, read one reply; an error reply is an `Err`.
pub fn exchange(stream: &mut std::os::unix::net::UnixStream, req: &Value) -> Result<Value> {
    use std::io::{BufRead, Write};
    stream.write_all(line(req).as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(&*stream).read_line(&mut reply)?;
    if reply.is_empty() {
        anyhow::bail!("the daemon closed the connection");
    }
    let v: Value = serde_json::from_str(&reply).context("daemon sent invalid JSON")?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        anyhow::bail!("daemon: {msg}");
    }
    Ok(v)
}

/// Client side: one request on a new connection.
pub fn request(path: &Path, req: &Value) -> Result<Value> {
    exchange(&mut connect(path)?, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_say_what_is_wrong() {
        assert_eq!(parse(br#"{"cmd":"version"}"#), Ok(Request::Version));
        assert_eq!(
            parse(br#"{"cmd":"events","follow":true}"#),
            Ok(Request::Events { follow: true })
        );
        assert_eq!(
            parse(br#"{"cmd":"disable","name":"db"}"#),
            Ok(Request::Named {
                cmd: NamedCmd::Disable,
                name: "db".into()
            })
        );
        let cases: [(&[u8], &str); 8] = [
            (br#"{"cmd":"stat"#, "not JSON: EOF while parsing"),
            (b"[1,2]", "a request is a JSON object"),
            (br#"{"name":"x"}"#, "missing field \"cmd\""),
            (br#"{"cmd":5}"#, "\"cmd\" must be a string, not a number"),
            (br#"{"cmd":"trip"}"#, "trip needs a string field \"name\""),
            (
                br#"{"cmd":"reset","name":["x"]}"#,
                "reset: \"name\" must be a string, not an array",
            ),
            (
                br#"{"cmd":"events","follow":"yes"}"#,
                "events: \"follow\" must be a bool, not a string",
            ),
            (
                br#"{"cmd":"explode"}"#,
                "unknown command \"explode\"; known: version",
            ),
        ];
        for (input, want) in cases {
            let got = parse(input).expect_err("must be refused");
            assert!(
                got.starts_with(want),
                "{}: got {got:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
