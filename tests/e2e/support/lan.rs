//! A small LAN made of namespaces: one server namespace holding a bridge, and N client namespaces each plugged
//! into that bridge with a veth pair.
//!
//! ```text
//!   client i (198.51.100.(10+i)/24 on cv<run>-<n>a) ──veth── cv<run>-<n>b ─┐
//!                                                                         ├─ bridge cv<run>-<m>br 198.51.100.1/24
//!   client j ─────────────────────────────────────────────────────────────┘    (in the server namespace)
//! ```
//!
//! The veth ends are created directly inside their namespaces (`ip link add A netns C type veth peer name B netns S`)
//! so the host's namespace never holds them, not even for a moment. Deleting the namespaces deletes the veths.
//! Names carry the run id (see `netns.rs`).
//! For a load test with many openvpn clients, use `Lan::new(1)` and start all clients in that one namespace.

use std::net::Ipv4Addr;
use std::process::Command;

use super::netns::{Netns, ifnames, run_cmd};

/// Address of the bridge in the server namespace.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Prefix length of the LAN (198.51.100.0/24, TEST-NET-2).
pub const PREFIX_LEN: u8 = 24;
/// Clients get `198.51.100.(FIRST_CLIENT_HOST + i)`.
const FIRST_CLIENT_HOST: usize = 10;

/// Server namespace + client namespaces on one bridged 198.51.100.0/24; all removed on drop.
#[derive(Debug)]
pub struct Lan {
    // Field order is drop order: clients go first so their veth peers vanish before the bridge's namespace does
    // (either order works, this one just avoids a burst of "port went down" work on a dying bridge).
    clients: Vec<Netns>,
    server: Netns,
    bridge: String,
}

impl Lan {
    /// Creates the server namespace with the bridge and `n_clients` client namespaces (at most 244).
    pub fn new(n_clients: usize) -> Lan {
        assert!(n_clients <= 254 - FIRST_CLIENT_HOST, "a /24 LAN holds at most 244 clients");
        let server = Netns::new("srv");
        let [bridge] = ifnames(["br"]);
        // STP off and forward_delay 0: a new port forwards at once instead of listening/learning for 15 s.
        server
            .ip(&["link", "add", "name", &bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
            .unwrap_or_else(|e| panic!("bridge in {}: {e}", server.name()));
        server.ip(&["addr", "add", &format!("{SERVER_IP}/{PREFIX_LEN}"), "dev", &bridge]).expect("bridge address");
        server.ip(&["link", "set", &bridge, "up"]).expect("bridge up");

        let mut lan = Lan { clients: Vec::with_capacity(n_clients), server, bridge };
        for i in 0..n_clients {
            // Pushed before it is configured so that a failure below still drops (deletes) it.
            lan.clients.push(Netns::new(&format!("c{i}")));
            lan.plug(i);
        }
        lan
    }

    fn plug(&self, i: usize) {
        let client = &self.clients[i];
        let [inner, outer] = ifnames(["a", "b"]);
        run_cmd(Command::new("ip").args([
            "link",
            "add",
            &inner,
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            &outer,
            "netns",
            self.server.name(),
        ]))
        .unwrap_or_else(|e| panic!("veth pair for {}: {e}", client.name()));
        self.server.ip(&["link", "set", &outer, "master", &self.bridge, "up"]).expect("enslave veth to bridge");
        client
            .ip(&["addr", "add", &format!("{}/{PREFIX_LEN}", self.client_ip(i)), "dev", &inner])
            .expect("client address");
        client.ip(&["link", "set", &inner, "up"]).expect("client veth up");
    }

    /// The namespace holding the bridge (run the VPN server here).
    pub fn server(&self) -> &Netns {
        &self.server
    }

    /// The server's LAN address, 198.51.100.1.
    pub fn server_ip(&self) -> Ipv4Addr {
        SERVER_IP
    }

    /// Name of the bridge inside the server namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Client namespace `i` (0-based).
    pub fn client(&self, i: usize) -> &Netns {
        &self.clients[i]
    }

    /// All client namespaces, in order.
    pub fn clients(&self) -> &[Netns] {
        &self.clients
    }

    /// LAN address of client `i`: 198.51.100.(10+i).
    pub fn client_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, (FIRST_CLIENT_HOST + i) as u8)
    }

    /// Names of every namespace of this LAN (server first), e.g. to check later that they are gone.
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(&self.server).chain(&self.clients).map(|ns| ns.name().to_owned()).collect()
    }
}
