//! The control socket's client side, for the CLI and the dashboard. Every call has a read and
//! a write timeout: a stopped or hung daemon gives an error, never a hang. One buffered reader
//! per connection, so nothing the daemon sent is ever dropped between two reads.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    protocol::Request,
    snapshot::{EventRecord, Snapshot},
};

/// How long a client waits for the daemon by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// An error reply from the daemon, as it worded it.
#[derive(Debug, thiserror::Error)]
#[error("daemon: {0}")]
pub struct DaemonError(pub String);

/// The daemon did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the daemon did not answer within {0:?} (is it stopped or hung?)")]
pub struct NoAnswer(pub Duration);

struct Conn {
    write: UnixStream,
    read: BufReader<UnixStream>,
}

pub struct Client {
    path: PathBuf,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            path: path.into(),
            timeout,
            conn: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            let s = connect(&self.path)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            let read = BufReader::new(s.try_clone()?);
            self.conn = Some(Conn { write: s, read });
        }
        self.conn.as_mut().context("no connection to the daemon")
    }

    /// Send one request, read its reply. An error reply is a `DaemonError`; after any error
    /// the next call starts from a new connection.
    pub fn call(&mut self, req: &Request) -> Result<Value> {
        let timeout = self.timeout;
        let result = (|| {
            let conn = self.conn()?;
            let sent = conn.write.write_all(req.line().as_bytes());
            // The daemon may have answered and closed before reading (too many clients): its
            // answer is still there to read, and says more than a broken pipe.
            let reply = read_reply(&mut conn.read, timeout);
            match (sent, reply) {
                (_, Ok(v)) => Ok(v),
                (Err(e), Err(_)) => Err(anyhow::Error::from(e).context("sending the request")),
                (Ok(()), Err(e)) => Err(e),
            }
        })();
        let result = result.and_then(|v| {
            if v.get("ok") == Some(&Value::Bool(true)) {
                Ok(v)
            } else {
                let msg = v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                Err(DaemonError(msg.to_string()).into())
            }
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// A page of the dashboard's table (see `crate::table`).
    pub fn table(&mut self, q: &crate::table::Query) -> Result<Snapshot> {
        let mut v = self.call(&Request::Table {
            sort: q.sort,
            filter: q.filter.clone(),
            offset: q.offset,
            limit: q.limit,
            detail: q.detail.clone(),
            events_after: q.events_after.map(|e| e.0),
            instance: q.events_after.map(|e| e.1),
        })?;
        serde_json::from_value(v["snapshot"].take())
            .context("the daemon sent an unexpected table page")
    }

    /// A command that changes something; the daemon's message.
    pub fn act(&mut self, req: &Request) -> Result<String> {
        let v = self.call(req)?;
        Ok(v["message"].as_str().unwrap_or("ok").to_string())
    }

    /// The event backlog; with `follow`, the connection then carries the stream (`next`).
    pub fn events(&mut self, follow: bool) -> Result<Vec<EventRecord>> {
        let mut v = self.call(&Request::Events { follow })?;
        let backlog =
            serde_json::from_value(v["events"].take()).context("daemon sent unexpected events")?;
        if follow {
            // The stream has no deadline: events come when they come.
            if let Some(c) = &self.conn {
                c.write.set_read_timeout(None)?;
            }
        }
        Ok(backlog)
    }

    /// The connection, after a reply that opens a stream (`record`): the socket and its
    /// reader, with whatever the reader has buffered.
    pub fn into_stream(self) -> Option<(UnixStream, BufReader<UnixStream>)> {
        self.conn.map(|c| (c.write, c.read))
    }

    /// The next line of an events stream: an event, or how many were missed; None at its end.
    pub fn next_event(&mut self) -> Result<Option<Streamed>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let mut line = String::new();
        if conn.read.read_line(&mut line).context("reading events")? == 0 {
            return Ok(None);
        }
        let mut v: Value = serde_json::from_str(&line).context("daemon sent invalid JSON")?;
        if let Some(n) = v.get("lagged").and_then(Value::as_u64) {
            return Ok(Some(Streamed::Lagged(n)));
        }
        let e =
            serde_json::from_value(v["event"].take()).context("daemon sent an unexpected event")?;
        Ok(Some(Streamed::Event(e)))
    }
}

pub enum Streamed {
    Event(EventRecord),
    Lagged(u64),
}

fn read_reply(read: &mut BufReader<UnixStream>, timeout: Duration) -> Result<Value> {
    let mut line = String::new();
    match read.read_line(&mut line) {
        Ok(0) => anyhow::bail!("the daemon closed the connection"),
        Ok(_) => serde_json::from_str(&line).context("daemon sent invalid JSON"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(NoAnswer(timeout).into())
        }
        Err(e) => Err(anyhow::Error::from(e).context("reading the daemon's reply")),
    }
}

/// Connect, with a message that says what to check.
pub fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is the daemon running? root needed; --socket to point elsewhere)",
            path.display()
        )
    })
}

/// One request on a new connection.
pub fn request(path: &Path, req: &Request) -> Result<Value> {
    Client::new(path, DEFAULT_TIMEOUT).call(req)
}
