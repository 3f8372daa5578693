//! One attempt at a time per source address, so that a burst from one address is evaluated in order and the ban
//! its failures earn stops the rest of the burst before they are evaluated: a source never gets more than
//! `MAX_FAILURES` evaluated failures, however many requests it sends at once. Different sources never wait for
//! each other; a fleet behind one NAT pairs one terminal after another (a few milliseconds each).
//!
//! Per process: several gates (several nodes) each keep their own order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct Locks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Held while one attempt from a source is evaluated; the source's entry goes when nobody holds or waits for it.
pub struct Turn {
    locks: Arc<Locks>,
    source: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    /// Waits for `source`'s turn.
    pub async fn turn(self: &Arc<Self>, source: &str) -> Turn {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(source.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Turn { locks: self.clone(), source: source.to_owned(), guard: Some(guard) }
    }

    /// Sources with an entry (tests: entries do not pile up).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map still refers to it: nobody holds or waits for this source's lock.
        if map.get(&self.source).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_source_and_no_entry_left_behind() {
        let locks = Arc::new(Locks::default());
        let a = locks.turn("192.0.2.1").await;
        // Another source goes at once; the same source waits.
        let _b = locks.turn("192.0.2.2").await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.turn("192.0.2.1")).await;
        assert!(waiting.is_err(), "a second turn of the same source must wait");
        drop(a);
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), locks.turn("192.0.2.1")).await;
        assert!(again.is_ok());
        drop(again);
        drop(_b);
        assert!(locks.is_empty(), "entries of sources nobody waits for are removed");
    }
}
