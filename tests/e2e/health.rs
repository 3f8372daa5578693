//! Terminal health from both sides, with real openvpn: a paired terminal running `agent run` is healthy; with
//! its heartbeats blocked but its status endpoint up, master's probe (through the tunnel and the firewall `serve
//! net` installs) keeps it healthy; with the agent stopped (SIGSTOP) while openvpn keeps the tunnel up it is
//! "tunnel up, agent silent" within the threshold; after a kill -9 of `serve` on SQLite it is never shown online.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::deploy::{Deployment, GATE_IP, MASTER_IP, PUBLIC_IP, agent_pair, bin};
use crate::support::{require_root, tcp_connect, temp_dir, wait_until};

const T: Duration = Duration::from_secs(40);

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn health_follows_the_agent_the_tunnel_and_a_crashed_serve() {
    require_root();
    // Heartbeats every second: silent after 3 s.
    let mut d = Deployment::new(1, &[("terminal_heartbeat", "1s")]);
    d.start_service("all");
    wait_until("the gate listens", T, || tcp_connect(d.server(), GATE_IP, 7741, Duration::from_secs(1)));
    d.ok(&["pairing", "open", "--for", "10m"]);
    let token = d.ok(&["terminal", "add", "atm-h"]).trim().to_owned();
    let terminal = d.lan.client(0);
    let dir = temp_dir("agent");
    let out = agent_pair(terminal, &format!("{PUBLIC_IP}:7741"), &token, dir.path());
    assert!(out.status.success(), "agent pair: {}", String::from_utf8_lossy(&out.stderr));
    let dir_s = dir.path().to_str().unwrap();
    let agent = terminal.spawn("agent", bin(), &["agent", "run", "--dir", dir_s, "--heartbeat", "1s"]);
    agent.wait_for_text("heartbeat ok", T);
    let show = |d: &Deployment| d.json(&["terminal", "show", "atm-h"]);
    wait_until("atm-h is healthy", T, || show(&d)["health"] == "healthy");
    assert_eq!(show(&d)["state"], "online");
    // The endpoint listens on the tunnel address, found by the route towards master.
    let tunnel_ip = d.tunnel_ip("atm-h");
    wait_until("the agent's status endpoint listens on its tunnel address", T, || {
        terminal.run(&["ss", "-Hltn"]).is_ok_and(|s| s.contains(&format!("{tunnel_ip}:7744")))
    });

    // Heartbeats blocked at the terminal (its packets to master:7741 dropped), the status endpoint still up:
    // the terminal falls silent, master probes it through the tunnel, and the answer makes it healthy again.
    terminal.run(&["nft", "add table ip cvhealth"]).unwrap();
    terminal.run(&["nft", "add chain ip cvhealth out { type filter hook output priority 0 ; }"]).unwrap();
    let drop_heartbeats = format!("add rule ip cvhealth out ip daddr {MASTER_IP} tcp dport 7741 drop");
    terminal.run(&["nft", drop_heartbeats.as_str()]).unwrap();
    let from = d.serve_log().mark();
    agent.wait_for_line_from(agent.mark(), |l| l.contains("heartbeat failed"), T);
    d.serve_log().wait_for_line_from(from, |l| l.contains("terminal health changed") && l.contains("agent_silent"), T);
    d.serve_log().wait_for_line_from(from, |l| l.contains("its agent answered master's probe"), T);
    // Healthy for 3 s after each answer (3 heartbeat periods), then silent until the next probe: under load the
    // CLI may read it just after that, so the state is polled; with heartbeats blocked only a probe makes it healthy.
    wait_until("the probe's answer shows atm-h healthy", T, || show(&d)["health"] == "healthy");
    terminal.run(&["nft", "delete table ip cvhealth"]).unwrap();
    agent.wait_for_line_from(agent.mark(), |l| l.contains("heartbeat ok"), T);

    // The agent stops (SIGSTOP: neither heartbeats nor answers) while its openvpn keeps the tunnel up.
    agent.signal(Signal::SIGSTOP);
    wait_until("atm-h is tunnel up, agent silent", T, || show(&d)["health"] == "agent_silent");
    let silent = d.json(&["terminal", "list", "--health", "agent_silent"]);
    let silent = silent.as_array().unwrap();
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["state"], "online");
    wait_until("master recorded when it fell silent", T, || {
        d.json(&["terminal", "list", "--health", "agent_silent"])[0]["health_since"].is_string()
    });
    assert_eq!(d.status()["counts"]["health"]["agent_silent"], 1);
    agent.signal(Signal::SIGCONT);
    wait_until("atm-h is healthy again", T, || show(&d)["health"] == "healthy");

    // kill -9 of serve (SQLite): its session rows stay behind, its node stops heartbeating; within the node
    // liveness window the terminal is no longer shown online, and stays so.
    assert_eq!(show(&d)["state"], "online");
    d.kill9_serve();
    wait_until("atm-h is offline", T, || {
        let t = show(&d);
        t["state"] != "online" && t["health"] == "offline"
    });
    let online = d.json(&["terminal", "list"]);
    assert!(online.as_array().unwrap().iter().all(|t| t["state"] != "online"), "{online}");
    drop(agent);
}
