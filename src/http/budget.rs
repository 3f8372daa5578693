//! The door of a public listener: `domain::budget`'s policy behind a lock, a pass per admitted connection that
//! gives its slot back when dropped and tells its connection when it was shed for a newcomer, and the refusal log written through `tracing` (INFO, a bounded number of
//! lines however big the flood). Used by the HTTP accept loop (gate, master, admin UI) and the terminal front.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::domain::budget::{Budget, ConnId, Limits, RefusalLog, Summary};

/// How often a source's refusals are summed into one line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Sources named in their own line per interval; the rest share one.
const LOG_SOURCES: usize = 8;

pub struct Doorman {
    listener: &'static str,
    budget: Mutex<Budget>,
    log: Mutex<RefusalLog>,
    /// How to tell each pending connection it was shed.
    shed: Mutex<HashMap<ConnId, oneshot::Sender<()>>>,
}

/// An admitted connection's slot, given back when dropped.
pub struct Pass {
    door: Arc<Doorman>,
    ip: IpAddr,
    id: ConnId,
    established: AtomicBool,
    shed: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Doorman {
    /// A door for `listener` (its name in log lines). Starts the task that writes interval summaries; it ends
    /// with the door.
    pub fn new(listener: &'static str, limits: Limits) -> Arc<Doorman> {
        let door = Arc::new(Doorman {
            listener,
            budget: Mutex::new(Budget::new(limits)),
            log: Mutex::new(RefusalLog::new(LOG_INTERVAL, LOG_SOURCES)),
            shed: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Doorman> = Arc::downgrade(&door);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(LOG_INTERVAL / 4);
                loop {
                    tick.tick().await;
                    let Some(door) = weak.upgrade() else { return };
                    let lines = lock(&door.log).flush(Instant::now());
                    for line in lines {
                        door.write(&line);
                    }
                }
            });
        }
        door
    }

    /// A new connection from `peer`: its pass, or `None` (refused, and the refusal noted).
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Pass> {
        let ip = peer.ip().to_canonical();
        let now = Instant::now();
        let verdict = lock(&self.budget).admit(ip, now);
        match verdict {
            Ok(admitted) => {
                let (tx, rx) = oneshot::channel();
                let mut shed = lock(&self.shed);
                shed.insert(admitted.id, tx);
                if let Some((victim, id)) = admitted.shed {
                    if let Some(tx) = shed.remove(&id) {
                        let _ = tx.send(());
                    }
                    drop(shed);
                    self.refused(victim, "shed for a source holding fewer unfinished connections");
                }
                Some(Pass {
                    door: self.clone(),
                    ip,
                    id: admitted.id,
                    established: AtomicBool::new(false),
                    shed: Mutex::new(Some(rx)),
                })
            }
            Err(r) => {
                self.refused(ip, r.as_str());
                None
            }
        }
    }

    /// The next admitted connection on `listener`, with its pass. Refused ones are closed at once (the door logs
    /// them); accept errors (EMFILE and friends) pause the loop a little rather than spin it. Cancel-safe.
    pub async fn next(self: &Arc<Self>, listener: &TcpListener) -> (TcpStream, SocketAddr, Pass) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Some(pass) = self.admit(peer) {
                        return (stream, peer, pass);
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = self.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Notes a refusal decided elsewhere (the front: a first packet without a genuine key).
    pub fn refused(&self, ip: IpAddr, reason: &'static str) {
        let line = lock(&self.log).note(ip, reason, Instant::now());
        if let Some(line) = line {
            self.write(&line);
        }
    }

    fn write(&self, s: &Summary) {
        let listener = self.listener;
        match (s.source, s.first) {
            (Some(source), true) => tracing::info!(
                listener, %source, reason = s.reason,
                "refusing connections from this source (further refusals summed every {}s)", LOG_INTERVAL.as_secs()
            ),
            (Some(source), false) => tracing::info!(
                listener, %source, refused = s.refused, reason = s.reason, "connections refused from this source"
            ),
            (None, _) => tracing::info!(
                listener,
                sources = s.sources,
                refused = s.refused,
                reason = s.reason,
                "connections refused from other sources"
            ),
        }
    }
}

impl Pass {
    /// The connection proved itself: it no longer counts against its source's or the listener's pending budget,
    /// and cannot be shed. Idempotent.
    pub fn establish(&self) {
        if self.established.load(Ordering::Acquire) {
            return;
        }
        // Under the budget's lock, so that shedding (also under it) and proving cannot cross.
        let mut budget = lock(&self.door.budget);
        if budget.establish(self.ip, self.id) {
            self.established.store(true, Ordering::Release);
            lock(&self.door.shed).remove(&self.id);
        }
    }

    /// Resolves when the connection was shed while still pending (never once established): the caller closes it.
    pub async fn shed(&self) {
        let rx = lock(&self.shed).take();
        let shed = match rx {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !shed {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let established = *self.established.get_mut();
        lock(&self.door.budget).release(self.ip, self.id, established);
        lock(&self.door.shed).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
