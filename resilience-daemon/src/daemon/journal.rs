//! The event journal: state changes, reloads, operator actions, errors. Numbered in order,
//! the last 1000 kept for `events` and snapshots, each one broadcast to `events --follow`.

use std::collections::VecDeque;

use tokio::sync::broadcast;

use crate::snapshot::EventRecord;

/// Events kept for the control socket.
pub const EVENTS_KEPT: usize = 1000;

pub struct Journal {
    events: VecDeque<EventRecord>,
    next_seq: u64,
    tx: broadcast::Sender<EventRecord>,
    /// The recording stream rides with the journal: everything that reports what happened
    /// has it at hand.
    pub tap: super::tap::Tap,
    /// Breaker transitions so far (each one may bring a destination's next tick forward).
    pub transitions: u64,
}

impl Journal {
    pub fn new(tx: broadcast::Sender<EventRecord>) -> Journal {
        Journal {
            events: VecDeque::new(),
            next_seq: 1,
            tx,
            tap: super::tap::Tap::default(),
            transitions: 0,
        }
    }

    pub fn push(&mut self, mut e: EventRecord) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        // No subscriber is not an error.
        let _ = self.tx.send(e.clone());
        self.events.push_back(e);
    }

    /// A note under `name` ("reload", "kernel", "daemon", "dns" or a destination), logged too.
    pub fn note(&mut self, name: &str, message: String) {
        tracing::info!("{message}");
        self.push(EventRecord::note(name, message));
    }

    pub fn warn(&mut self, name: &str, message: String) {
        tracing::warn!("{message}");
        self.push(EventRecord::note(name, message));
    }

    /// Log an error and show it in the events (once while it repeats).
    pub fn fault(&mut self, what: &str, e: &anyhow::Error) {
        tracing::error!(error = %format!("{e:#}"), "{what}");
        let message = format!("error: {what}: {e:#}");
        if self
            .events
            .back()
            .is_none_or(|last| last.message != message)
        {
            self.push(EventRecord::note("daemon", message));
        }
    }

    pub fn all(&self) -> Vec<EventRecord> {
        self.events.iter().cloned().collect()
    }

    /// The most recent `n`, oldest first.
    pub fn last(&self, n: usize) -> Vec<EventRecord> {
        let skip = self.events.len().saturating_sub(n);
        self.events.iter().skip(skip).cloned().collect()
    }

    pub fn latest_seq(&self) -> u64 {
        self.next_seq - 1
    }
}
