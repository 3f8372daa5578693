//! The terminal front's live relays, by terminal: the real address openvpn cannot see (it sees the front), and the
//! means to cut a terminal's connections at once.
//!
//! A kill (a revocation) cuts the terminal's relays here before it asks openvpn: closing both of a relay's sockets
//! ends the session's transport the same moment, whatever openvpn is busy with. An openvpn server doing 200 TLS
//! handshakes while a fleet comes back answered a `client-kill` only after 2-3 s; a cut relay carries nothing from
//! then on, and openvpn sees its end of the connection close and drops the client itself. The kill still goes to
//! openvpn too (`instance`), so a session that did not come through this front (none should) ends as well.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::domain::Name;

/// Every relay the front holds open, by terminal name (the name its wrapped key carries). Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Relays(Arc<Mutex<HashMap<Name, Vec<Entry>>>>);

struct Entry {
    /// The relay's own number: an ending relay removes its own entry, never a newer connection's.
    id: u64,
    peer: SocketAddr,
    cut: Arc<Notify>,
}

/// One relay's place in [`Relays`], held by the relay for as long as it runs: dropping it removes the entry.
pub struct Ticket {
    relays: Relays,
    name: Name,
    id: u64,
    cut: Arc<Notify>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Relays {
    fn map(&self) -> MutexGuard<'_, HashMap<Name, Vec<Entry>>> {
        // A panic elsewhere while holding the lock leaves the map consistent (every change is one call).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a relay of `name` from `peer`; it stays recorded while the ticket lives.
    pub fn open(&self, name: &Name, peer: SocketAddr) -> Ticket {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = Arc::new(Notify::new());
        self.map().entry(name.clone()).or_default().push(Entry { id, peer, cut: cut.clone() });
        Ticket { relays: self.clone(), name: name.clone(), id, cut }
    }

    /// The real address of `name`'s newest relay.
    pub fn real_addr(&self, name: &Name) -> Option<SocketAddr> {
        self.map().get(name).and_then(|v| v.last()).map(|e| e.peer)
    }

    /// Cuts every relay of `name` (each ends at once, closing both its sockets); returns how many.
    pub fn cut(&self, name: &Name) -> usize {
        let cut = self.map().remove(name).unwrap_or_default();
        for e in &cut {
            // `notify_one` keeps the wake-up for a relay that is not waiting yet (between `open` and its relay).
            e.cut.notify_one();
        }
        cut.len()
    }

    /// How many relays of `name` are open.
    pub fn count(&self, name: &Name) -> usize {
        self.map().get(name).map_or(0, Vec::len)
    }

    /// How many relays are open (all terminals).
    pub fn len(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    /// Resolves when a kill cut this relay.
    pub async fn cut(&self) {
        self.cut.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.relays.map();
        if let Some(v) = map.get_mut(&self.name) {
            v.retain(|e| e.id != self.id);
            if v.is_empty() {
                map.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], port))
    }

    #[tokio::test]
    async fn cut_wakes_every_relay_of_the_name_and_only_those() {
        let relays = Relays::default();
        let (a, b): (Name, Name) = ("atm-1".parse().unwrap(), "atm-2".parse().unwrap());
        let older = relays.open(&a, addr(1000));
        let newer = relays.open(&a, addr(1001));
        let other = relays.open(&b, addr(2000));
        assert_eq!(relays.real_addr(&a), Some(addr(1001)), "the newest relay's address");
        assert_eq!((relays.len(), relays.count(&a), relays.count(&b)), (3, 2, 1));

        // Cut before either relay waits: the wake-up is kept for it.
        assert_eq!(relays.cut(&a), 2);
        let deadline = Duration::from_secs(5);
        tokio::time::timeout(deadline, older.cut()).await.expect("the older relay is cut");
        tokio::time::timeout(deadline, newer.cut()).await.expect("the newer relay is cut");
        assert_eq!(relays.real_addr(&a), None);
        assert_eq!(relays.cut(&a), 0, "nothing left to cut");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.cut()).await.is_err(),
            "another terminal's relay is not cut"
        );
        assert_eq!(relays.real_addr(&b), Some(addr(2000)));
        drop((older, newer));
        assert_eq!(relays.len(), 1, "cut relays that end leave nothing behind");
    }

    #[tokio::test]
    async fn an_ending_relay_removes_its_own_entry_only() {
        let relays = Relays::default();
        let a: Name = "atm-1".parse().unwrap();
        let first = relays.open(&a, addr(1000));
        let second = relays.open(&a, addr(1001));
        drop(second);
        assert_eq!(relays.real_addr(&a), Some(addr(1000)), "the older relay is still there");
        drop(first);
        assert!(relays.is_empty());
        assert_eq!(relays.real_addr(&a), None);
    }
}
