//! The terminal front port (7742). Every terminal connects here; the front reads the first OpenVPN packet, takes
//! the tls-crypt-v2 wrapped client key appended to it, checks it (HMAC under the server key) and reads its
//! metadata, which names the terminal; the terminal's home instance (stored) gets the connection. A terminal
//! therefore keeps its home instance and tunnel address however it arrives, behind any NAT.
//!
//! Nothing is trusted here: openvpn still does the whole TLS handshake, CRL check and the CONNECT question. A
//! connection whose first packet does not carry a valid wrapped key is closed without an answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cas_pki::TlsCryptV2ServerKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::relays::Relays;
use crate::app::profile::parse_metadata;
use crate::db::Store;
use crate::domain::budget::Limits;
use crate::domain::{Kind, Name};
use crate::http::budget::{Doorman, Pass};

/// P_CONTROL_HARD_RESET_CLIENT_V3: the first packet of a tls-crypt-v2 client.
const OPCODE_RESET_V3: u8 = 10;
/// Bytes before the encrypted part of a tls-crypt packet: opcode/key id, session id, packet id + time, tag.
const HEADER: usize = 1 + 8 + 8 + 32;
/// Longest first packet accepted (WKc is at most ~1 KiB).
const MAX_FIRST_PACKET: usize = 4096;
/// The store must answer a lookup within this time; after it, the fault is a passing one.
pub const STORE_DEADLINE: Duration = Duration::from_secs(3);
/// A client must send its first packet within this time (an openvpn client sends it right after connecting).
const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(5);
/// The front's budgets (invariant 13). A connection is pending until its first packet carried a genuine key of a
/// known terminal. Per source: a site with a few terminals behind one NAT reconnecting at once fits; a flood from
/// one host holds 16 slots for at most 5 s each. In all: 11 instances × 200 terminals with room to spare.
const LIMITS: Limits =
    Limits { per_source_pending: 16, per_source_rate: 20.0, per_source_burst: 64, pending: 1024, total: 8192 };

/// Extracts the wrapped client key (WKc) from a first packet (without its 2-byte TCP length prefix).
pub fn wrapped_key(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < HEADER + 2 || packet[0] >> 3 != OPCODE_RESET_V3 {
        return None;
    }
    let n = usize::from(u16::from_be_bytes([packet[packet.len() - 2], packet[packet.len() - 1]]));
    if n < 2 || n > packet.len() - HEADER {
        return None;
    }
    Some(&packet[packet.len() - n..])
}

/// Which terminal a first packet belongs to, if its wrapped key is genuine.
pub fn terminal_of(packet: &[u8], key: &TlsCryptV2ServerKey) -> Option<Name> {
    let wkc = wrapped_key(packet)?;
    let (_kc, metadata) = key.unwrap(wkc).ok()?;
    match parse_metadata(&metadata)? {
        (Kind::Terminal, name) => Some(name),
        (Kind::Admin, _) => None,
    }
}

pub struct Front {
    pub key: Arc<TlsCryptV2ServerKey>,
    pub store: Store,
    /// Port of terminal instance i (updated when the configuration is re-read).
    pub instance_ports: Arc<std::sync::RwLock<Vec<u16>>>,
    pub instance_ip: Ipv4Addr,
    /// Open relays by terminal: their real addresses, and the cut a kill makes.
    pub relays: Relays,
    /// Home instances of the active terminals: all of them read at start (`preload`), then what each lookup
    /// learns. A terminal found here is relayed at once and looked up again behind its back when its entry is
    /// older than [`HOME_FRESH`]; only one not found here waits for the store.
    pub homes: Homes,
}

/// The front's home cache, shared with the instances' registry (kills clear their name).
pub type Homes = Arc<std::sync::Mutex<HashMap<Name, Home>>>;

/// A terminal's home instance and when the front learned it.
#[derive(Debug, Clone, Copy)]
pub struct Home {
    pub index: u32,
    pub learned: tokio::time::Instant,
}

/// How long a learned home is used without asking the store again. A home never changes while the terminal
/// exists; what the store can add is a revocation (or deletion), and openvpn refuses a revoked terminal anyway
/// (its CONNECT answer and the CRL): the front's own refusal only saves it that work, so it may lag a little.
pub const HOME_FRESH: Duration = Duration::from_secs(30);

impl Front {
    /// Reads every active terminal's home instance in one query (at start and at each re-plan), so a fleet that
    /// comes back after a restart is relayed without one store query per connection on its way in.
    pub async fn preload(&self) {
        match self.store.list_credentials(Some(Kind::Terminal), false).await {
            Ok(terminals) => {
                let learned = tokio::time::Instant::now();
                let fresh: HashMap<Name, Home> = terminals
                    .into_iter()
                    .filter_map(|c| Some((c.name, Home { index: c.home_instance?, learned })))
                    .collect();
                *self.homes.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
            Err(e) => {
                tracing::warn!(error = %e, "front: cannot read the terminals' home instances; looking them up one by one")
            }
        }
    }

    /// Asks the store for `name`'s home (bounded by the store deadline) and remembers the answer: `Ok(None)` for a
    /// terminal that is unknown, revoked or not a terminal, `Err` when the store did not answer.
    async fn look_up(&self, name: &Name) -> Result<Option<u32>, ()> {
        let looked_up = tokio::time::timeout(STORE_DEADLINE, self.store.credential_by_name(name)).await;
        let Ok(Ok(cred)) = looked_up else { return Err(()) };
        let home = cred.filter(|c| c.kind == Kind::Terminal && c.revoked_at.is_none()).and_then(|c| c.home_instance);
        let mut known = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        match home {
            Some(index) => known.insert(name.clone(), Home { index, learned: tokio::time::Instant::now() }),
            None => known.remove(name),
        };
        Ok(home)
    }

    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let door = Doorman::new("front", LIMITS);
        loop {
            let (conn, peer, pass) = door.next(&listener).await;
            let (me, door) = (self.clone(), door.clone());
            tokio::spawn(async move {
                let relayed = tokio::select! {
                    r = me.relay(conn, peer, &pass) => r,
                    // Shed for a newcomer while still pending (the door logged it).
                    () = pass.shed() => return,
                };
                match relayed {
                    // Refusals are logged at INFO, summed per source (a fleet of clients too old for tls-crypt-v2
                    // leaves a trace without filling the log).
                    Err(Refused(why)) => door.refused(peer.ip(), why),
                    Ok(ended) => tracing::debug!(%peer, ended, "front: relayed connection closed"),
                }
                drop(pass);
            });
        }
    }

    /// Relays one connection; `Err` when it was refused before relaying, `Ok` with why the relay ended.
    async fn relay(
        self: &Arc<Self>,
        mut conn: TcpStream,
        peer: SocketAddr,
        pass: &Pass,
    ) -> Result<&'static str, Refused> {
        let mut first = Vec::new();
        let read = async {
            let len = usize::from(conn.read_u16().await.map_err(|_| Refused("closed before a first packet"))?);
            if len == 0 || len > MAX_FIRST_PACKET {
                return Err(Refused("bad first packet length"));
            }
            first.resize(len, 0);
            conn.read_exact(&mut first).await.map_err(|_| Refused("short first packet"))?;
            Ok(())
        };
        tokio::time::timeout(FIRST_PACKET_TIMEOUT, read).await.map_err(|_| Refused("no first packet in time"))??;
        let name = terminal_of(&first, &self.key)
            .ok_or(Refused("no valid tls-crypt-v2 client key (a client older than OpenVPN 2.5, or not ours)"))?;
        let known = self.homes.lock().unwrap_or_else(|e| e.into_inner()).get(&name).copied();
        let home = match known {
            Some(h) => {
                if h.learned.elapsed() > HOME_FRESH {
                    // Relayed now; the store's answer (a revocation) counts from the next connection on.
                    let (me, name) = (self.clone(), name.clone());
                    tokio::spawn(async move {
                        let _ = me.look_up(&name).await;
                    });
                }
                h.index
            }
            // A terminal not seen here: the store decides. One the store does not know in time waits for it (the
            // client retries); openvpn asks the store again anyway and answers a passing fault with `TEMP[backoff N]`.
            None => match self.look_up(&name).await {
                Ok(Some(index)) => index,
                Ok(None) => return Err(Refused("unknown or revoked terminal")),
                Err(()) => return Err(Refused("store unavailable")),
            },
        };
        pass.establish();
        let port = self
            .instance_ports
            .read()
            .ok()
            .and_then(|p| p.get(home as usize).copied())
            .ok_or(Refused("home instance out of range"))?;
        let mut upstream =
            connect_home(self.instance_ip, port).await.map_err(|_| Refused("home instance unreachable"))?;
        let ticket = self.relays.open(&name, peer);
        let relayed = async {
            upstream.write_u16(first.len() as u16).await?;
            upstream.write_all(&first).await?;
            // The first packet is not needed any more while the session lives (hours).
            drop(std::mem::take(&mut first));
            super::relay::relay(&conn, &upstream).await
        };
        let ended = tokio::select! {
            result = relayed => if result.is_ok() { "closed" } else { "relay error" },
            // A kill: returning drops both sockets, so the terminal and openvpn each see the connection end now.
            () = ticket.cut() => "cut by a kill",
        };
        drop(ticket);
        Ok(ended)
    }
}

/// How long a terminal that proved itself waits for its home instance to listen. One that arrives while its
/// instance (re)starts (a `serve` restart, a crashed openvpn being restarted) is held for that moment rather than
/// cut off: a cut-off openvpn client pauses a whole restart pause before it tries again, and a whole fleet
/// cut off this way comes back that much later.
const HOME_WAIT: Duration = Duration::from_secs(5);
const HOME_RETRY: Duration = Duration::from_millis(50);

async fn connect_home(ip: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + HOME_WAIT;
    loop {
        match TcpStream::connect((ip, port)).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() + HOME_RETRY >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(HOME_RETRY).await,
        }
    }
}

/// Why the front refused a connection before relaying it (a log line's reason).
#[derive(Debug)]
struct Refused(&'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::profile::metadata_for;

    fn packet_with(wkc: &[u8]) -> Vec<u8> {
        let mut p = vec![OPCODE_RESET_V3 << 3];
        p.extend_from_slice(&[0u8; HEADER - 1]);
        p.extend_from_slice(&[0xAB; 40]);
        p.extend_from_slice(wkc);
        p
    }

    #[test]
    fn finds_the_terminal_in_a_genuine_key_only() {
        let key = TlsCryptV2ServerKey::generate();
        let name: Name = "atm-9".parse().unwrap();
        let client = key.wrap_client_key(&metadata_for(Kind::Terminal, &name)).unwrap();
        let packet = packet_with(client.wrapped_key());
        assert_eq!(terminal_of(&packet, &key), Some(name.clone()));

        let other = TlsCryptV2ServerKey::generate();
        assert_eq!(terminal_of(&packet, &other), None, "a key wrapped by another server is refused");
        let admin = key.wrap_client_key(&metadata_for(Kind::Admin, &name)).unwrap();
        assert_eq!(terminal_of(&packet_with(admin.wrapped_key()), &key), None, "admin keys are not terminals");
        let mut tampered = packet.clone();
        let i = tampered.len() - 20;
        tampered[i] ^= 1;
        assert_eq!(terminal_of(&tampered, &key), None);
        let mut wrong_op = packet;
        wrong_op[0] = 7 << 3;
        assert_eq!(terminal_of(&wrong_op, &key), None);
    }

    #[test]
    fn garbage_never_panics() {
        let key = TlsCryptV2ServerKey::generate();
        for len in 0..200 {
            let mut p = vec![OPCODE_RESET_V3 << 3; len];
            if len >= 2 {
                p[len - 2] = 0xff;
            }
            assert_eq!(terminal_of(&p, &key), None);
        }
    }
}
