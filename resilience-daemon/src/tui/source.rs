//! Where the dashboard's snapshots come from and where its actions go: the control socket,
//! or (in tests) anything else that implements `Source`.

use std::path::PathBuf;

use anyhow::Result;

use super::app::Action;
use crate::{
    client::{Client, DEFAULT_TIMEOUT},
    protocol::Request,
    snapshot::Snapshot,
    table::Query,
};

pub trait Source {
    /// A page of the table and what goes with it (see `crate::table`).
    fn snapshot(&mut self, q: &Query) -> Result<Snapshot>;
    /// Ask the daemon to act; its answer, to show the operator.
    fn act(&mut self, action: &Action) -> Result<String>;
}

/// The running daemon, over one control-socket connection (made again after an error), every
/// call with a timeout: it asks for the page on screen (`table`).
pub struct SocketSource {
    client: Client,
}

impl SocketSource {
    pub fn new(path: PathBuf) -> SocketSource {
        SocketSource {
            client: Client::new(path, DEFAULT_TIMEOUT),
        }
    }
}

impl Source for SocketSource {
    fn snapshot(&mut self, q: &Query) -> Result<Snapshot> {
        self.client.table(q)
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
