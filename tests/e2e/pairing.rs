//! Pairing end to end (issue "Gate pairing, master on the tunnel, and the reference terminal agent"): a new
//! terminal in an "Internet" namespace pairs through the gate during a window with `cas-vpn agent pair`, runs
//! `cas-vpn agent run` (openvpn + heartbeats over master's mutual TLS), and shows up online; master gives nothing
//! to a non-tunnel address nor to a revoked terminal's old tunnel address, even with the terminal's certificate.

use std::time::Duration;

use crate::support::deploy::{Deployment, GATE_IP, MASTER_IP, PUBLIC_IP, agent_pair, bin};
use crate::support::{Netns, require_root, tcp_connect, temp_dir, wait_until};

const T: Duration = Duration::from_secs(30);

/// POSTs a heartbeat to master from namespace `ns` with curl, over master's mutual TLS with the agent's
/// certificate and key from `dir`, when it has them (master verified against the terminal CA the agent got at
/// pairing); returns the HTTP status (`000` when nothing answered, the handshake included).
fn master_heartbeat(ns: &Netns, dir: &std::path::Path) -> String {
    let file = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let mut curl = ns.cmd("curl");
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert", &file("terminal-ca.crt")]);
    // Without `client.crt` in `dir`: no client certificate at all.
    if dir.join("client.crt").is_file() {
        curl.args(["--cert", &file("client.crt"), "--key", &file("client.key")]);
    }
    let out = curl
        .args(["-H", "content-type: application/json", "-d", r#"{"version":"20240115","status":{}}"#])
        .arg(format!("https://{MASTER_IP}:7741/v1/heartbeat"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_new_terminal_pairs_through_the_gate_connects_and_heartbeats_master() {
    require_root();
    let mut d = Deployment::new(2, &[]);
    d.start_service("all");
    wait_until("the gate listens", T, || tcp_connect(d.server(), GATE_IP, 7741, Duration::from_secs(1)));
    d.ok(&["pairing", "open", "--for", "10m"]);
    let token = d.ok(&["terminal", "add", "atm-new"]).trim().to_owned();

    // The Internet reaches the gate through public_ip:7741, which serve net DNATs to gate_bind_ip:7741 while the
    // window is open (tests/e2e/firewall.rs checks it is closed otherwise).
    let (internet, other) = (d.lan.client(0), d.lan.client(1));
    let dir = temp_dir("agent");
    let gate = format!("{PUBLIC_IP}:7741");
    let dir_s = dir.path().to_str().unwrap();
    let out = agent_pair(internet, &gate, &token, dir.path());
    assert!(out.status.success(), "agent pair: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paired as atm-new"));
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join("client.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    let agent = internet.spawn("agent", bin(), &["agent", "run", "--dir", dir_s, "--heartbeat", "1s"]);
    agent.wait_for_text("heartbeat ok", T);
    wait_until("atm-new is online with a heartbeat", T, || {
        let t = d.json(&["terminal", "show", "atm-new"]);
        t["state"] == "online" && !t["last_seen"].is_null()
    });
    let old_ip = d.tunnel_ip("atm-new");
    // The probe itself works: through the tunnel master answers.
    assert_eq!(master_heartbeat(internet, dir.path()), "200", "through the tunnel master answers");

    other.ip(&["route", "add", &format!("{MASTER_IP}/32"), "via", &PUBLIC_IP.to_string()]).unwrap();
    // A non-tunnel address gets nothing, even with the terminal's certificate.
    let answer = master_heartbeat(other, dir.path());
    assert_ne!(answer, "200", "master answered a non-tunnel address");

    // After revocation, the old tunnel address (spoofed from the LAN) gets nothing either.
    drop(agent);
    d.ok(&["revoke", "atm-new"]);
    wait_until("the session is gone", T, || d.sessions_of("atm-new") == 0);
    let veth = other.ip(&["-o", "-4", "addr", "show"]).unwrap();
    let dev =
        veth.lines().find(|l| l.contains("198.51.100.")).and_then(|l| l.split_whitespace().nth(1)).unwrap().to_owned();
    other.ip(&["addr", "add", &format!("{old_ip}/32"), "dev", &dev]).unwrap();
    other
        .ip(&[
            "route",
            "replace",
            &format!("{MASTER_IP}/32"),
            "via",
            &PUBLIC_IP.to_string(),
            "src",
            &old_ip.to_string(),
        ])
        .unwrap();
    let answer = master_heartbeat(other, dir.path());
    assert_ne!(answer, "200", "master answered a revoked terminal's old address");
    let t = d.json(&["terminal", "show", "atm-new"]);
    assert_eq!(t["state"], "revoked");
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test runs it with --include-ignored"]
fn scenario_b_a_terminal_pairs_and_heartbeats_master_with_no_vpn() {
    require_root();
    let mut d = Deployment::new(2, &[]);
    // Scenario B: the operator's own VPN router stands in front (here: the test LAN), cas-vpn runs no openvpn and
    // no firewall, and the service addresses are the operator's to provide.
    let props = d.root().join("config/gate.properties");
    let text = std::fs::read_to_string(&props).unwrap().replace("batm.vpn-skip=false", "batm.vpn-skip=true");
    std::fs::write(&props, text).unwrap();
    d.set_firewall(&[("manage", "no")]);
    for ip in [MASTER_IP, GATE_IP] {
        d.server().ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]).unwrap();
    }
    d.start_service_without_vpn("all");
    wait_until("the gate listens", T, || tcp_connect(d.server(), GATE_IP, 7741, Duration::from_secs(1)));
    wait_until("master listens", T, || tcp_connect(d.server(), MASTER_IP, 7741, Duration::from_secs(1)));
    d.ok(&["pairing", "open", "--for", "10m"]);
    let token = d.ok(&["terminal", "add", "atm-b"]).trim().to_owned();

    let (terminal, stranger) = (d.lan.client(0), d.lan.client(1));
    for ns in [terminal, stranger] {
        for ip in [MASTER_IP, GATE_IP] {
            ns.ip(&["route", "add", &format!("{ip}/32"), "via", &PUBLIC_IP.to_string()]).unwrap();
        }
    }
    let dir = temp_dir("agent-b");
    let dir_s = dir.path().to_str().unwrap();
    let out = agent_pair(terminal, &format!("{GATE_IP}:7741"), &token, dir.path());
    assert!(out.status.success(), "agent pair: {}", String::from_utf8_lossy(&out.stderr));
    // No profile under Scenario B, but what master's mutual TLS needs.
    assert!(!dir.path().join("client.ovpn").exists());
    assert!(dir.path().join("client.crt").is_file() && dir.path().join("terminal-ca.crt").is_file());

    let agent = terminal.spawn("agent", bin(), &["agent", "run", "--dir", dir_s, "--heartbeat", "1s"]);
    agent.wait_for_text("heartbeat ok", T);
    wait_until("atm-b has a heartbeat", T, || !d.json(&["terminal", "show", "atm-b"])["last_seen"].is_null());
    assert_eq!(d.sessions_of("atm-b"), 0, "no VPN session exists under Scenario B");
    assert_eq!(master_heartbeat(terminal, dir.path()), "200");

    // The certificate is what identifies: from another address it still works (no tunnel to check), without it
    // nothing answers, and once revoked it gets nothing.
    assert_eq!(master_heartbeat(stranger, dir.path()), "200");
    let ca_only = temp_dir("ca-only");
    std::fs::copy(dir.path().join("terminal-ca.crt"), ca_only.path().join("terminal-ca.crt")).unwrap();
    assert_eq!(master_heartbeat(terminal, ca_only.path()), "000", "no client certificate, no TLS session");
    drop(agent);
    d.ok(&["revoke", "atm-b"]);
    assert_eq!(master_heartbeat(terminal, dir.path()), "403");
}
