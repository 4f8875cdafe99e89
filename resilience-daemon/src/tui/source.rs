//! Where the dashboard's snapshots come from and where its actions go: the control socket,
//! or (in tests) anything else that implements `Source`.

use std::{os::unix::net::UnixStream, path::PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::app::Action;
use crate::{control, snapshot::Snapshot};

pub trait Source {
    fn snapshot(&mut self) -> Result<Snapshot>;
    /// Ask the daemon to act; its answer, to show the operator.
    fn act(&mut self, action: &Action) -> Result<String>;
}

/// The running daemon, over one control-socket connection (made again after an error).
pub struct SocketSource {
    path: PathBuf,
    stream: Option<UnixStream>,
}

impl SocketSource {
    pub fn new(path: PathBuf) -> SocketSource {
        SocketSource { path, stream: None }
    }

    fn exchange(&mut self, req: &Value) -> Result<Value> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => self.stream.insert(control::connect(&self.path)?),
        };
        let reply = control::exchange(stream, req);
        if reply.is_err() {
            // The next request starts from a fresh connection.
            self.stream = None;
        }
        reply
    }
}

impl Source for SocketSource {
    fn snapshot(&mut self) -> Result<Snapshot> {
        let mut v = self.exchange(&json!({"cmd": "snapshot"}))?;
        serde_json::from_value(v["snapshot"].take())
            .context("the daemon sent an unexpected snapshot")
    }

    fn act(&mut self, action: &Action) -> Result<String> {
        let req = match action {
            Action::Quit => return Ok(String::new()),
            Action::Trip(n) => json!({"cmd": "trip", "name": n}),
            Action::Reset(n) => json!({"cmd": "reset", "name": n}),
            Action::Disable(n) => json!({"cmd": "disable", "name": n}),
            Action::Enable(n) => json!({"cmd": "enable", "name": n}),
            Action::Reload => json!({"cmd": "reload"}),
        };
        let v = self.exchange(&req)?;
        Ok(v["message"].as_str().unwrap_or("ok").to_string())
    }
}
