//! Where the dashboard's snapshots come from and where its actions go: the control socket,
//! or (in tests) anything else that implements `Source`.

use std::path::PathBuf;

use anyhow::Result;

use super::app::Action;
use crate::{
    client::{Client, DEFAULT_TIMEOUT},
    protocol::Request,
    snapshot::Snapshot,
};

pub trait Source {
    fn snapshot(&mut self) -> Result<Snapshot>;
    /// Ask the daemon to act; its answer, to show the operator.
    fn act(&mut self, action: &Action) -> Result<String>;
}

/// The running daemon, over one control-socket connection (made again after an error), every
/// call with a timeout. After the first snapshot it asks only for what changed, and keeps the
/// whole picture itself.
pub struct SocketSource {
    client: Client,
    picture: Option<Snapshot>,
}

impl SocketSource {
    pub fn new(path: PathBuf) -> SocketSource {
        SocketSource {
            client: Client::new(path, DEFAULT_TIMEOUT),
            picture: None,
        }
    }
}

impl Source for SocketSource {
    fn snapshot(&mut self) -> Result<Snapshot> {
        let since = self.picture.as_ref().map(|p| (p.seq, p.instance));
        let got = match self.client.snapshot(since) {
            Ok(s) => s,
            Err(e) => {
                // Start whole again: the daemon may have restarted.
                self.picture = None;
                return Err(e);
            }
        };
        let picture = match self.picture.take() {
            Some(mut p) if got.delta => {
                p.apply(got);
                p
            }
            _ => got,
        };
        self.picture = Some(picture.clone());
        Ok(picture)
    }

    fn act(&mut self, action: &Action) -> Result<String> {
        let req = match action {
            Action::Quit => return Ok(String::new()),
            Action::Trip(t) => Request::Trip {
                name: t.name.clone(),
                service: t.service.clone(),
            },
            Action::Reset(t) => Request::Reset {
                name: t.name.clone(),
                service: t.service.clone(),
            },
            Action::Disable(n) => Request::Disable { name: n.clone() },
            Action::Enable(n) => Request::Enable { name: n.clone() },
            Action::Reload => Request::Reload,
        };
        self.client.act(&req)
    }
}
