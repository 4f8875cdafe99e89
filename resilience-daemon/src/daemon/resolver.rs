//! DNS names of the policy, resolved off the daemon's loop (a blocking pool), each lookup with a
//! deadline. Results come back to the loop as messages. A name that stops resolving keeps its
//! last good addresses; every change is reported.

use std::{
    collections::{HashMap, HashSet},
    net::ToSocketAddrs,
    time::Duration,
};

use resilience_common::Endpoint;
use tokio::sync::mpsc;

use crate::apply::endpoint;

/// How long one lookup may take before it is reported as failing (it may still finish later).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every name is looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

pub type Name = (String, u16);

/// What a lookup task reports.
#[derive(Debug)]
pub struct Resolved {
    pub name: Name,
    pub result: Result<Vec<Endpoint>, String>,
    /// False for the notice that a lookup passed its deadline and is still running.
    pub finished: bool,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    addrs: Vec<Endpoint>,
    /// The error of the last lookup, while it keeps failing.
    failing: Option<String>,
}

pub struct Resolver {
    cache: HashMap<Name, Entry>,
    in_flight: HashSet<Name>,
    tx: mpsc::Sender<Resolved>,
    timeout: Duration,
}

/// What a result changed.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// The addresses are different: the policy keys must be written again.
    pub addresses: bool,
    /// What to tell the operator.
    pub message: Option<String>,
}

fn show(addrs: &[Endpoint]) -> String {
    let v: Vec<String> = addrs.iter().map(crate::snapshot::show_endpoint).collect();
    v.join(", ")
}

impl Resolver {
    pub fn new(tx: mpsc::Sender<Resolved>, timeout: Duration) -> Resolver {
        Resolver {
            cache: HashMap::new(),
            in_flight: HashSet::new(),
            tx,
            timeout,
        }
    }

    /// The last good addresses of `name` (none before its first answer).
    pub fn addresses(&self, name: &Name) -> &[Endpoint] {
        self.cache.get(name).map_or(&[], |e| &e.addrs)
    }

    pub fn known(&self, name: &Name) -> bool {
        self.cache.contains_key(name)
    }

    /// Look `name` up in the background, unless a lookup of it is still running.
    pub fn request(&mut self, name: Name) {
        if !self.in_flight.insert(name.clone()) {
            return;
        }
        let (tx, timeout) = (self.tx.clone(), self.timeout);
        tokio::spawn(async move {
            let (host, port) = name.clone();
            let mut lookup = tokio::task::spawn_blocking(move || {
                (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| a.map(|a| endpoint(&a)).collect::<Vec<_>>())
                    .map_err(|e| e.to_string())
            });
            let joined = |r: Result<Result<Vec<Endpoint>, String>, tokio::task::JoinError>| {
                r.unwrap_or_else(|e| Err(format!("lookup task failed: {e}")))
            };
            match tokio::time::timeout(timeout, &mut lookup).await {
                Ok(r) => {
                    let _ = tx
                        .send(Resolved {
                            name,
                            result: joined(r),
                            finished: true,
                        })
                        .await;
                }
                Err(_) => {
                    let _ = tx
                        .send(Resolved {
                            name: name.clone(),
                            result: Err(format!("no answer within {timeout:?}")),
                            finished: false,
                        })
                        .await;
                    // The blocking lookup cannot be cancelled: wait for it, so that only one
                    // runs per name, and use its answer if it brings one.
                    let r = joined(lookup.await);
                    let _ = tx
                        .send(Resolved {
                            name,
                            result: r,
                            finished: true,
                        })
                        .await;
                }
            }
        });
    }

    /// Forget names no destination uses any more.
    pub fn retain(&mut self, used: &HashSet<Name>) {
        self.cache.retain(|n, _| used.contains(n));
    }

    /// Take a lookup's result.
    pub fn on_result(&mut self, r: Resolved) -> Change {
        if r.finished {
            self.in_flight.remove(&r.name);
        }
        let (host, port) = &r.name;
        let entry = self.cache.entry(r.name.clone()).or_default();
        let result = match r.result {
            Ok(a) if a.is_empty() => Err("no addresses".to_string()),
            other => other,
        };
        match result {
            Ok(mut addrs) => {
                addrs.sort();
                addrs.dedup();
                let changed = addrs != entry.addrs;
                let message = if entry.failing.take().is_some() {
                    Some(format!("{host}:{port} resolves again: {}", show(&addrs)))
                } else if changed {
                    Some(format!("{host}:{port} resolved to {}", show(&addrs)))
                } else {
                    None
                };
                entry.addrs = addrs;
                Change {
                    addresses: changed,
                    message,
                }
            }
            Err(e) => {
                // Reported once, when a run of failures starts (a late failure after a timeout
                // notice is the same run).
                let first = entry.failing.is_none();
                entry.failing = Some(e.clone());
                let message = first.then(|| {
                    if entry.addrs.is_empty() {
                        format!(
                            "cannot resolve {host}:{port}: {e}; it guards nothing until it resolves \
                             (retried every {}s)",
                            RESOLVE_EVERY.as_secs()
                        )
                    } else {
                        format!(
                            "cannot resolve {host}:{port}: {e}; keeping its last good addresses ({})",
                            show(&entry.addrs)
                        )
                    }
                });
                Change {
                    addresses: false,
                    message,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        let (tx, _rx) = mpsc::channel(8);
        Resolver::new(tx, LOOKUP_TIMEOUT)
    }

    fn done(result: Result<Vec<Endpoint>, String>) -> Resolved {
        Resolved {
            name: ("api.example".into(), 443),
            result,
            finished: true,
        }
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_addresses_and_says_so_once() {
        let mut r = resolver();
        let a = Endpoint::v4([10, 0, 0, 1], 443);
        let c = r.on_result(done(Ok(vec![a])));
        assert!(c.addresses);
        assert_eq!(
            c.message.as_deref(),
            Some("api.example:443 resolved to 10.0.0.1:443")
        );
        // Same answer: nothing to do, nothing to say.
        assert_eq!(r.on_result(done(Ok(vec![a]))), Change::default());
        let c = r.on_result(Resolved {
            name: ("api.example".into(), 443),
            result: Err("no answer within 5s".into()),
            finished: false,
        });
        assert!(!c.addresses);
        assert_eq!(
            c.message.as_deref(),
            Some("cannot resolve api.example:443: no answer within 5s; keeping its last good addresses (10.0.0.1:443)")
        );
        assert_eq!(r.addresses(&("api.example".into(), 443)), &[a]);
        // The lookup then fails for good: already reported.
        assert_eq!(r.on_result(done(Err("timed out".into()))).message, None);
        let c = r.on_result(done(Ok(vec![a])));
        assert_eq!(
            c.message.as_deref(),
            Some("api.example:443 resolves again: 10.0.0.1:443")
        );
        assert!(!c.addresses);
    }
}
