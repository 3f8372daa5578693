//! The session writer: every instance's session rows go to the store through one task of the service, in the
//! order the instances sent them, everything queued so far in one transaction (`Store::apply_session_changes`).
//!
//! Why one task and not a write in each instance's loop: a fleet coming back writes about 2,000 rows within
//! seconds, and SQLite has one writer at a time whose waiters sleep and retry (its busy handler is not a queue). With
//! eleven instances each writing for itself, an unlucky write (the removal a revocation's kill makes) could starve
//! for the whole busy timeout while the others took turns: that was the storm's slow and failed revocations. Here
//! the instances never touch the store for their sessions, and a kill's caller waits for [`SessionWriter::flushed`]
//! (the rows it removed are gone from the store) without holding up the instance's loop.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::db::{SessionChange, Store};

/// At most this many changes in one store transaction (an instance's whole fleet coming back is ~200).
const BATCH: usize = 512;
/// Changes arriving within this time of the first go in the same transaction (unless a caller waits on a flush):
/// while a fleet comes back one by one, a transaction per change would hold SQLite's one write lock most of the
/// time, and a revocation in another process would wait for it.
const GATHER: Duration = Duration::from_millis(20);
/// A batch whose transaction takes longer than this is logged.
const SLOW_BATCH: Duration = Duration::from_millis(500);

enum Write {
    Change(SessionChange),
    /// Answered once every change sent before it has been applied (or has failed).
    Flush(oneshot::Sender<()>),
}

/// The instances' handle on the writer. The task ends when every handle is dropped, after writing what was sent.
#[derive(Clone)]
pub struct SessionWriter {
    tx: mpsc::UnboundedSender<Write>,
}

impl SessionWriter {
    /// Starts the writer of `node`'s sessions.
    pub fn spawn(store: Store, node: String) -> SessionWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, node, rx));
        SessionWriter { tx }
    }

    /// Queues a change; never waits.
    pub fn send(&self, change: SessionChange) {
        // The task lives as long as any handle: a send fails only while the runtime shuts down.
        let _ = self.tx.send(Write::Change(change));
    }

    /// Resolves once everything sent before this call is in the store (or has failed and been logged).
    pub async fn flushed(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Write::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Store, node: String, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut queued = Vec::new();
    let mut changes = Vec::new();
    let mut flushes = Vec::new();
    while rx.recv_many(&mut queued, BATCH).await > 0 {
        gather(&mut rx, &mut queued).await;
        for w in queued.drain(..) {
            match w {
                Write::Change(c) => changes.push(c),
                Write::Flush(done) => flushes.push(done),
            }
        }
        if !changes.is_empty() {
            apply(&store, &node, &changes).await;
            changes.clear();
        }
        // Every change sent before a flush was received before it, so it is in this batch or an earlier one.
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Adds to `queued` what arrives within [`GATHER`], up to [`BATCH`]; at once when a flush is waited on.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Write>, queued: &mut Vec<Write>) {
    let deadline = tokio::time::Instant::now() + GATHER;
    let mut flush = queued.iter().any(|w| matches!(w, Write::Flush(_)));
    while !flush && queued.len() < BATCH {
        let Ok(Some(w)) = tokio::time::timeout_at(deadline, rx.recv()).await else { return };
        flush = matches!(w, Write::Flush(_));
        queued.push(w);
    }
}

async fn apply(store: &Store, node: &str, changes: &[SessionChange]) {
    let started = std::time::Instant::now();
    let applied = store.apply_session_changes(node, changes).await;
    // A kill waits on this write (`revoke` returns after it): a slow one says so, with its size.
    if started.elapsed() > SLOW_BATCH {
        tracing::warn!(changes = changes.len(), ms = started.elapsed().as_millis(), "session batch slow");
    }
    match applied {
        Ok(paired) => paired.iter().for_each(log_paired),
        Err(e) => {
            // One bad change (a credential deleted under its session) must not cost the others theirs.
            tracing::warn!(error = %e, changes = changes.len(), "session batch failed; one change at a time");
            for change in changes {
                match store.apply_session_changes(node, std::slice::from_ref(change)).await {
                    Ok(paired) => paired.iter().for_each(log_paired),
                    Err(e) => tracing::error!(error = %e, ?change, "cannot record a session change"),
                }
            }
        }
    }
}

fn log_paired(terminal: &String) {
    tracing::info!(%terminal, "first VPN session of a profile delivered out of band: the terminal counts as paired");
}
