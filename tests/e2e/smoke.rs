//! Proves the harness itself with a plain openvpn server/client pair and no cas-vpn: namespaces and bridge,
//! process guards, log waits, tunnel address, ping and TCP through the LAN, and complete cleanup (also when a
//! test panics half-way).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

const PORT: u16 = 13000;
const SERVER_TUN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Generous: a loaded 2-core CI machine, not how long it takes (about 0.1 s here).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes the server and client configs of a plain TCP pair into the PKI's directory; returns (server, client).
fn write_configs(pki: &TestPki, server_ip: Ipv4Addr) -> (PathBuf, PathBuf) {
    let server = pki.issue("server", Usage::Server);
    let client = pki.issue("client1", Usage::Client);
    let ca = pki.ca_cert.display();
    let server_conf = format!(
        "server 198.18.0.0 255.255.255.0\n\
         topology subnet\n\
         dev tun\n\
         proto tcp-server\n\
         local {server_ip}\n\
         port {PORT}\n\
         ca {ca}\n\
         cert {}\n\
         key {}\n\
         dh none\n\
         tls-version-min 1.2\n\
         remote-cert-tls client\n",
        server.cert.display(),
        server.key.display()
    );
    let client_conf = format!(
        "client\n\
         dev tun\n\
         proto tcp-client\n\
         remote {server_ip} {PORT}\n\
         nobind\n\
         ca {ca}\n\
         cert {}\n\
         key {}\n\
         tls-version-min 1.2\n\
         remote-cert-tls server\n",
        client.cert.display(),
        client.key.display()
    );
    let write = |name: &str, text: &str| {
        let path = pki.dir().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    (write("server.conf", &server_conf), write("client.ovpn", &client_conf))
}

fn assert_gone(names: &[String]) {
    let left: Vec<String> = list_netns().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn plain_openvpn_pair_tunnels_between_namespaces() {
    require_root();
    let pki = TestPki::generate();
    let lan = Lan::new(1);
    let names = lan.namespace_names();
    let (server_conf, client_ovpn) = write_configs(&pki, lan.server_ip());
    let (srv, cli) = (lan.server(), lan.client(0));

    // The LAN itself: the client reaches the bridge.
    assert!(ping(cli, lan.server_ip()), "client cannot ping the server across the bridge");

    let server = openvpn_server(srv, &server_conf, &[] as &[&str]);
    wait_initialized(&server, CONNECT_TIMEOUT);
    assert!(tcp_connect(cli, lan.server_ip(), PORT, Duration::from_secs(2)), "server port closed");
    // Port 1 has no listener: a refused connection must read as false (and quickly, not after the timeout).
    assert!(!tcp_connect(cli, lan.server_ip(), 1, Duration::from_secs(2)), "port 1 reads as open");

    let client = openvpn_client(cli, &client_ovpn, &[] as &[&str]);
    wait_initialized(&client, CONNECT_TIMEOUT);
    let addr = client_address(cli, &client);
    assert_eq!(addr.octets()[..3], [198, 18, 0], "client address {addr} outside the server's pool");
    assert_ne!(addr, SERVER_TUN_IP);

    // Through the tunnel, both ways.
    assert!(ping(cli, SERVER_TUN_IP), "client cannot ping {SERVER_TUN_IP} through the tunnel");
    wait_until("the server pings the client through the tunnel", Duration::from_secs(5), || ping(srv, addr));
    let listener = tcp_listener(srv, SERVER_TUN_IP, 8080);
    assert!(tcp_connect(cli, SERVER_TUN_IP, 8080, Duration::from_secs(2)), "no TCP through the tunnel");
    listener.wait_for_text(&format!("accepted {addr}"), Duration::from_secs(5));

    drop((listener, client, server));
    drop(lan);
    assert_gone(&names);
}

/// The guarantee the whole harness rests on: a test that panics half-way leaves no namespace and no process.
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn harness_cleans_up_when_a_test_panics() {
    require_root();
    let mut seen: Option<(Vec<String>, u32)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lan = Lan::new(2);
        // A process that ignores SIGTERM, so Drop has to escalate to SIGKILL.
        let stubborn =
            lan.client(1).spawn("stubborn", "bash", &["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]);
        stubborn.wait_for_text("ready", Duration::from_secs(5));
        // And one that is not guarded at all: Netns's Drop must kill it.
        let mut orphan = lan.client(0).cmd("sleep");
        orphan.arg("1000").stdin(std::process::Stdio::null());
        // Reaped below with waitpid, after the namespace's Drop killed it.
        #[allow(clippy::zombie_processes)]
        let orphan = orphan.spawn().expect("spawn sleep");
        seen = Some((lan.namespace_names(), orphan.id()));
        panic!("deliberate panic to exercise cleanup");
    }));
    assert!(result.is_err());
    let (names, orphan_pid) = seen.expect("reached the panic");
    assert_gone(&names);
    // Killed (a zombie at most, since it is our child): reap it; it must not still be running.
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(orphan_pid as i32), None).expect("waitpid sleep");
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)),
        "{status:?}"
    );
}
