//! The control socket: JSON lines over a Unix socket, root only.
//!
//! Protocol version 1. A request is one line, `{"cmd": "<command>", ...}`; the reply is one
//! line, `{"v": 1, "ok": true, ...}` or `{"v": 1, "ok": false, "error": "..."}`.
//! Commands: `status` (reply field `status`: a `Snapshot`), `version`, `trip` and `reset`
//! (field `name`: a destination), `reload` (the policy file, as SIGHUP); these three reply
//! with a `message`.

use std::{os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

pub const PROTOCOL_VERSION: u64 = 1;
/// Longer request lines are refused (and the connection closed).
const MAX_LINE: usize = 64 * 1024;

/// A request the daemon's main loop answers.
pub enum Command {
    Status(oneshot::Sender<Value>),
    Trip(String, oneshot::Sender<Result<String, String>>),
    Reset(String, oneshot::Sender<Result<String, String>>),
    Reload(oneshot::Sender<Result<String, String>>),
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

pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(stream, tx.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(stream: UnixStream, tx: mpsc::Sender<Command>) {
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
        let too_long = n > MAX_LINE && buf.last() != Some(&b'\n');
        let reply = if too_long {
            error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            answer(&buf, &tx).await
        };
        let mut out = reply.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

async fn answer(line: &[u8], tx: &mpsc::Sender<Command>) -> Value {
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error(format!("not JSON: {e}")),
    };
    let Some(cmd) = req.get("cmd").and_then(Value::as_str) else {
        return error("missing string field \"cmd\"".into());
    };
    match cmd {
        "version" => {
            json!({"v": PROTOCOL_VERSION, "ok": true, "version": env!("CARGO_PKG_VERSION")})
        }
        "status" => {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Status(reply)).await.is_err() {
                return error("daemon is shutting down".into());
            }
            match rx.await {
                Ok(status) => json!({"v": PROTOCOL_VERSION, "ok": true, "status": status}),
                Err(_) => error("daemon is shutting down".into()),
            }
        }
        "trip" | "reset" => {
            let Some(name) = req.get("name").and_then(Value::as_str) else {
                return error(format!("{cmd} needs a string field \"name\""));
            };
            let (reply, rx) = oneshot::channel();
            let command = if cmd == "trip" {
                Command::Trip(name.to_string(), reply)
            } else {
                Command::Reset(name.to_string(), reply)
            };
            acted(tx, command, rx).await
        }
        "reload" => {
            let (reply, rx) = oneshot::channel();
            acted(tx, Command::Reload(reply), rx).await
        }
        other => error(format!(
            "unknown command {other:?}; known: status, version, trip, reset, reload"
        )),
    }
}

async fn acted(
    tx: &mpsc::Sender<Command>,
    command: Command,
    rx: oneshot::Receiver<Result<String, String>>,
) -> Value {
    if tx.send(command).await.is_err() {
        return error("daemon is shutting down".into());
    }
    match rx.await {
        Ok(Ok(message)) => json!({"v": PROTOCOL_VERSION, "ok": true, "message": message}),
        Ok(Err(e)) => error(e),
        Err(_) => error("daemon is shutting down".into()),
    }
}

fn error(message: String) -> Value {
    json!({"v": PROTOCOL_VERSION, "ok": false, "error": message})
}

/// Client side: send one request, read one reply.
pub fn request(path: &Path, req: &Value) -> Result<Value> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is the daemon running? root needed)",
            path.display()
        )
    })?;
    let mut line = req.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
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
