//! The terminal front port (7742). Every terminal connects here; the front reads the first OpenVPN packet, takes
//! the tls-crypt-v2 wrapped client key appended to it, checks it (HMAC under the server key) and reads its
//! metadata, which names the terminal; the terminal's home instance (stored) gets the connection. A terminal
//! therefore keeps its home instance and tunnel address however it arrives, behind any NAT.
//!
//! Nothing is trusted here: openvpn still does the whole TLS handshake, CRL check and the CONNECT question. A
//! connection whose first packet does not carry a valid wrapped key is closed without an answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cas_pki::TlsCryptV2ServerKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::instance::RealAddrs;
use crate::app::profile::parse_metadata;
use crate::db::Store;
use crate::domain::{Kind, Name};

/// P_CONTROL_HARD_RESET_CLIENT_V3: the first packet of a tls-crypt-v2 client.
const OPCODE_RESET_V3: u8 = 10;
/// Bytes before the encrypted part of a tls-crypt packet: opcode/key id, session id, packet id + time, tag.
const HEADER: usize = 1 + 8 + 8 + 32;
/// Longest first packet accepted (WKc is at most ~1 KiB).
const MAX_FIRST_PACKET: usize = 4096;
/// A client must send its first packet within this time.
const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many relayed connections at once (2000 terminals plus headroom).
const MAX_CONNECTIONS: usize = 4096;

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
    pub real_addrs: RealAddrs,
}

impl Front {
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok((conn, peer)) = listener.accept().await else { continue };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "front: too many connections; dropping");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(why) = me.relay(conn, peer).await {
                    tracing::debug!(%peer, why, "front: connection closed");
                }
                drop(permit);
            });
        }
    }

    async fn relay(&self, mut conn: TcpStream, peer: SocketAddr) -> Result<(), &'static str> {
        let mut first = Vec::new();
        let read = async {
            let len = usize::from(conn.read_u16().await.map_err(|_| "no length")?);
            if len == 0 || len > MAX_FIRST_PACKET {
                return Err("bad first packet length");
            }
            first.resize(len, 0);
            conn.read_exact(&mut first).await.map_err(|_| "short first packet")?;
            Ok(())
        };
        tokio::time::timeout(FIRST_PACKET_TIMEOUT, read).await.map_err(|_| "first packet timeout")??;
        let name = terminal_of(&first, &self.key).ok_or("no valid tls-crypt-v2 client key")?;
        let cred = self.store.credential_by_name(&name).await.map_err(|_| "store unavailable")?;
        let home = cred
            .filter(|c| c.kind == Kind::Terminal && c.revoked_at.is_none())
            .and_then(|c| c.home_instance)
            .ok_or("unknown or revoked terminal")?;
        let port = self
            .instance_ports
            .read()
            .ok()
            .and_then(|p| p.get(home as usize).copied())
            .ok_or("home instance out of range")?;
        let mut upstream =
            TcpStream::connect((self.instance_ip, port)).await.map_err(|_| "home instance unreachable")?;
        let local_port = upstream.local_addr().map_err(|_| "no local address")?.port();
        if let Ok(mut m) = self.real_addrs.lock() {
            m.insert(local_port, peer);
        }
        let result = async {
            upstream.write_u16(first.len() as u16).await?;
            upstream.write_all(&first).await?;
            tokio::io::copy_bidirectional(&mut conn, &mut upstream).await
        }
        .await;
        if let Ok(mut m) = self.real_addrs.lock() {
            m.remove(&local_port);
        }
        result.map(drop).map_err(|_| "relay ended")
    }
}

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
