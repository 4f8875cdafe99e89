//! The control socket: JSON lines over a Unix socket, mode 0600 (root only).
//!
//! Protocol version 1. A request is one line holding a JSON object, `{"cmd": "<command>", ...}`;
//! the reply is one line, `{"v": 1, "ok": true, ...}` or `{"v": 1, "ok": false, "error": "..."}`.
//! A connection may carry any number of requests, one at a time. The types are in
//! `protocol.rs`.
//!
//! | cmd | fields | reply fields |
//! |---|---|---|
//! | `version` | | `version` |
//! | `snapshot` | `since`: a `seq`, optional | `snapshot`: a `Snapshot` (with `since`: only what changed) |
//! | `status` | | `status`: the same `Snapshot` (kept from the first release) |
//! | `table` | `sort`, `filter`, `offset`, `limit`, `detail`, `events_after`, `instance`: all optional | `snapshot`: a `Snapshot` whose `table` is one page of the dashboard's rows (`crate::table`) |
//! | `events` | `follow`: bool, optional | `events`: the last 1000; with `follow`, then one line per new event, `{"v": 1, "event": {...}}`, and `{"v": 1, "lagged": N}` if this client fell N events behind |
//! | `trip`, `reset`, `disable`, `enable` | `name`: a destination | `message` |
//! | `reload` | | `message` |
//! | `record` | | `recording`: a recording's header; then one line per recording line, `{"v": 1, "record": {...}}`, and `{"v": 1, "lagged": N}` if this client fell N lines behind, until the client goes away |
//!
//! A request line longer than 1 MiB gets an error and the connection is closed; anything else
//! malformed (a field given twice included) gets an error and the connection stays usable. At
//! most 64 clients at once.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot, Semaphore},
};

use crate::{
    protocol::{self, Reply, Request},
    recording::Line,
    snapshot::EventRecord,
};

/// The recording stream (see `daemon::tap`).
pub type Tap = crate::daemon::tap::Shared;

/// Longer request lines are refused (and the connection closed): no request needs more.
const MAX_LINE: usize = 1024 * 1024;
const MAX_CLIENTS: usize = 64;

/// A request for the daemon's loop, and where its reply goes.
pub struct Command {
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Remove the socket at `path` if it is one; anything else there is an error, never deleted.
/// lstat: a symlink is not followed.
pub fn unlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the old socket {}", path.display())),
        Ok(m) => anyhow::bail!(
            "{} exists and is not a socket ({}): refusing to replace it; choose another socket \
             path ([daemon] socket or --socket)",
            path.display(),
            kind(&m)
        ),
    }
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a socket"
    }
}

pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: is another resilience daemon running?",
                path.display()
            );
        }
        unlink(path)?;
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
    tap: Tap,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let busy = protocol::line(&protocol::error(format!(
                        "more than {MAX_CLIENTS} clients; try again"
                    )));
                    let _ = stream.write_all(busy.as_bytes()).await;
                    continue;
                };
                let (tx, events, tap) = (tx.clone(), events.clone(), tap.clone());
                tokio::spawn(async move {
                    client(stream, tx, events, tap).await;
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

async fn client(
    stream: UnixStream,
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<EventRecord>,
    tap: Tap,
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
            let e = protocol::error(format!("request longer than {MAX_LINE} bytes"));
            let _ = write.write_all(protocol::line(&e).as_bytes()).await;
            return;
        }
        let req = match protocol::parse(&buf) {
            Ok(r) => r,
            Err(e) => {
                let line = protocol::line(&protocol::error(e));
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Events { follow: true } = req {
            follow(lines, write, &tx, events.subscribe()).await;
            return;
        }
        if let Request::Record = req {
            record(lines, write, &tx, crate::daemon::tap::subscribe(&tap)).await;
            return;
        }
        // Serialized here, on this client's task, not on the daemon's loop.
        let line = ask(&tx, req).await.line();
        if write.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

const GONE: &str = "daemon is shutting down";

/// The loop's answer to `req`.
pub async fn ask(tx: &mpsc::Sender<Command>, req: Request) -> Reply {
    let (reply, rx) = oneshot::channel();
    if tx.send(Command { req, reply }).await.is_err() {
        return Reply::Error(GONE.into());
    }
    rx.await.unwrap_or_else(|_| Reply::Error(GONE.into()))
}

/// `events` with `follow`: the backlog, then every new event until the client goes away.
async fn follow(
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    tx: &mpsc::Sender<Command>,
    rx: broadcast::Receiver<EventRecord>,
) {
    // Subscribed before asking for the backlog: nothing falls between the two; what is in both
    // is sent once, by sequence number.
    let backlog = match ask(tx, Request::Events { follow: true }).await {
        Reply::Events(b) => b,
        other => {
            let _ = write.write_all(other.line().as_bytes()).await;
            return;
        }
    };
    let mut last = backlog.last().map_or(0, |e| e.seq);
    if write
        .write_all(Reply::Events(backlog).line().as_bytes())
        .await
        .is_err()
    {
        return;
    }
    stream(read, write, rx, |e| {
        // Already in the backlog.
        if e.seq <= last {
            return None;
        }
        last = e.seq;
        Some(protocol::event_line(&e))
    })
    .await;
}

/// A stream's lines after its first reply: each item `line` turns into a line (None: skip
/// it), `{"v": 1, "lagged": N}` when this client fell N behind, until the client goes away.
async fn stream<T: Clone>(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    mut rx: broadcast::Receiver<T>,
    mut line: impl FnMut(T) -> Option<String>,
) {
    let mut sink = [0u8; 256];
    loop {
        let out = tokio::select! {
            item = rx.recv() => match item {
                Ok(item) => match line(item) {
                    Some(l) => l,
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => protocol::lagged_line(n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Anything the client sends now is ignored; end of input ends the stream.
            n = read.read(&mut sink) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `record`: the header, then every recording line until the client goes away.
async fn record(
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    tx: &mpsc::Sender<Command>,
    rx: broadcast::Receiver<Arc<Line>>,
) {
    // Subscribed before the header is taken: no line falls between the two.
    let header = ask(tx, Request::Record).await;
    if write.write_all(header.line().as_bytes()).await.is_err() {
        return;
    }
    if !matches!(header, Reply::Recording(_)) {
        return;
    }
    stream(read, write, rx, |l| Some(protocol::record_line(&l))).await;
}
