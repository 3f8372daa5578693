//! The firewall end to end (issue "Firewall"): `serve all` in the server namespace installs real nft rules there;
//! an "Internet" namespace (client 0) and a second Internet host (client 1) knock on every port of interest.
//! Each test builds its own deployment and removes it, also when it fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::support::deploy::{ADMIN_IP, Deployment, GATE_IP, MASTER_IP, PUBLIC_IP, agent_pair, bin};
use crate::support::{
    Answer, ChildGuard, Netns, require_root, tcp_connect, tcp_listener, tcp_probe, temp_dir, tun_device,
    wait_initialized, wait_until,
};

const T: Duration = Duration::from_secs(30);
/// Long enough for a SYN-ACK inside one host even on a loaded machine; a drop shows as silence after it.
const PROBE: Duration = Duration::from_millis(1500);
/// The bound for a window change, a credential change or the window's end to be in force.
const IN_FORCE: Duration = Duration::from_secs(1);

/// A deployment serving with the firewall in force, drift checked every second, the real admin UI on
/// admin_bind_ip, and test listeners standing in for services on 0.0.0.0 (SSH, CAS's 7743, 443, an arbitrary port).
struct Fw {
    d: Deployment,
    _listeners: Vec<ChildGuard>,
}

fn deploy(clients: usize) -> Fw {
    deploy_with(clients, "nft")
}

fn deploy_with(clients: usize, backend: &str) -> Fw {
    require_root();
    let mut d = Deployment::new(clients, &[]);
    d.set_firewall(&[("drift_check", "1s"), ("backend", backend)]);
    d.start_service("all");
    d.wait_firewall(T);
    let any = Ipv4Addr::UNSPECIFIED;
    let listeners = vec![
        tcp_listener(d.server(), any, 22),
        tcp_listener(d.server(), any, 7743),
        tcp_listener(d.server(), any, 443),
        tcp_listener(d.server(), any, 9999),
    ];
    wait_until("the gate listens", T, || tcp_connect(d.server(), GATE_IP, 7741, PROBE));
    wait_until("the admin UI listens", T, || tcp_connect(d.server(), ADMIN_IP, 7777, PROBE));
    Fw { d, _listeners: listeners }
}

/// Routes the service addresses from an Internet namespace to the server, as a hostile neighbour would.
fn route_services(ns: &Netns) {
    for ip in [MASTER_IP, ADMIN_IP, GATE_IP] {
        ns.ip(&["route", "replace", &format!("{ip}/32"), "via", &PUBLIC_IP.to_string()]).unwrap();
    }
}

/// What `ns` gets from every port of interest, probed in parallel.
fn exposure(ns: &Netns) -> BTreeMap<String, Answer> {
    let targets: Vec<(Ipv4Addr, u16)> = [22, 7741, 7742, 7743, 443, 7777, 9999, 12000, 13000]
        .into_iter()
        .map(|p| (PUBLIC_IP, p))
        .chain([(MASTER_IP, 7741), (ADMIN_IP, 7777), (GATE_IP, 7741)])
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&(ip, port)| s.spawn(move || (format!("{ip}:{port}"), tcp_probe(ns, ip, port, PROBE))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The addresses that accepted; every other one must have been silent (no TCP answer at all).
fn open_ports(ns: &Netns) -> Vec<String> {
    let seen = exposure(ns);
    for (target, answer) in &seen {
        assert_ne!(*answer, Answer::Refused, "{target} answered with a reset instead of staying silent: {seen:?}");
    }
    seen.into_iter().filter(|(_, a)| *a == Answer::Accepted).map(|(t, _)| t).collect()
}

fn public(ports: &[u16]) -> Vec<String> {
    let mut v: Vec<String> = ports.iter().map(|p| format!("{PUBLIC_IP}:{p}")).collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn exposure_matrix_follows_the_window_and_the_admin_credentials() {
    exposure_matrix("nft");
}

#[test]
#[ignore = "needs root, network namespaces, openvpn and iptables: scripts/test runs it with --include-ignored"]
fn exposure_matrix_with_the_iptables_backend() {
    exposure_matrix("iptables");
}

fn exposure_matrix(backend: &str) {
    let fw = deploy_with(2, backend);
    let d = &fw.d;
    let (internet, other) = (d.lan.client(0), d.lan.client(1));
    route_services(internet);
    route_services(other);

    // No window, no admin credential: SSH and the terminal front port, nothing else (master included: no 403,
    // no answer at all).
    assert_eq!(open_ports(internet), public(&[22, 7742]), "no window");

    // Window open: the gate is reachable through public_ip:7741 as soon as the command returns.
    d.ok(&["pairing", "open", "--for", "10m"]);
    let t = wait_until("7741 answers", IN_FORCE, || tcp_connect(internet, PUBLIC_IP, 7741, PROBE));
    assert!(t <= IN_FORCE);
    assert_eq!(open_ports(internet), public(&[22, 7741, 7742]), "window open");

    // `pairing close`: gone within a second, silently.
    d.ok(&["pairing", "close"]);
    wait_until("7741 is silent after close", IN_FORCE, || {
        tcp_probe(internet, PUBLIC_IP, 7741, Duration::from_millis(300)) == Answer::Silent
    });
    assert_eq!(open_ports(internet), public(&[22, 7742]), "after pairing close");

    // A window only for the Internet namespace: the second host gets nothing.
    d.ok(&["pairing", "open", "--for", "10m", "--from", &d.lan.client_ip(0).to_string()]);
    assert!(tcp_connect(internet, PUBLIC_IP, 7741, PROBE));
    assert_eq!(tcp_probe(other, PUBLIC_IP, 7741, PROBE), Answer::Silent, "--from keeps others out");
    d.ok(&["pairing", "close"]);

    // A window that runs out: serve net's timer closes the door within a second of its end.
    let r = d.json(&["pairing", "open", "--for", "2s"]);
    let opened = Instant::now();
    let remaining = Duration::from_secs(r["remaining_secs"].as_u64().unwrap());
    assert!(tcp_connect(internet, PUBLIC_IP, 7741, PROBE));
    wait_until("7741 is silent after the window's end", remaining + IN_FORCE + PROBE, || {
        tcp_probe(internet, PUBLIC_IP, 7741, Duration::from_millis(300)) == Answer::Silent
    });
    assert!(opened.elapsed() <= remaining + IN_FORCE + Duration::from_millis(300), "{:?}", opened.elapsed());
    assert_eq!(open_ports(internet), public(&[22, 7742]), "window expired");

    // An admin credential opens its port; revoking it closes it.
    let (_profile, port) = d.admin("alice");
    assert_eq!(port, 12000);
    d.wait_ready(T);
    wait_until("12000 answers", IN_FORCE, || tcp_connect(internet, PUBLIC_IP, 12000, PROBE));
    assert_eq!(open_ports(internet), public(&[22, 7742, 12000]), "admin issued");
    d.ok(&["revoke", "alice"]);
    wait_until("12000 is silent after revoke", IN_FORCE + PROBE, || {
        tcp_probe(internet, PUBLIC_IP, 12000, Duration::from_millis(300)) == Answer::Silent
    });
    assert_eq!(open_ports(internet), public(&[22, 7742]), "admin revoked");

    // A config change is in force within a second (serve net watches the files): 443 for everyone, 7743 only for
    // the second Internet host.
    d.set_firewall(&[("open_443", "yes"), ("open_7743", "yes"), ("open_7743_from", &d.lan.client_ip(1).to_string())]);
    wait_until("443 answers after the config change", IN_FORCE + Duration::from_millis(300), || {
        tcp_connect(internet, PUBLIC_IP, 443, Duration::from_millis(250))
    });
    assert_eq!(open_ports(internet), public(&[22, 443, 7742]), "443 opened, 7743 not for this host");
    assert!(tcp_connect(other, PUBLIC_IP, 7743, PROBE), "7743 for its listed source");

    // `firewall status` says what is exposed and that it is in force.
    let s = d.firewall_status();
    assert_eq!(s["drift"]["drift"], "in-force", "{s}");
    assert_eq!(s["window"]["state"], "closed");
    assert_eq!(s["exposure"].as_array().unwrap().len(), 4, "{s}");
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn tunnels_reach_only_their_one_service() {
    let fw = deploy(2);
    let d = &fw.d;
    // master itself (serve all runs it) listens on master_bind_ip:7741.
    let profile = d.terminal("atm-1");
    let (admin, _) = d.admin("alice");
    d.wait_ready(T);

    // A terminal tunnel: master_bind_ip:7741 and nothing else on the host, whatever listens on 0.0.0.0.
    let t = d.connect(0, &profile);
    wait_initialized(&t, T);
    let ns = d.lan.client(0);
    let dev = tun_device(&t).unwrap();
    ns.ip(&["route", "replace", &format!("{ADMIN_IP}/32"), "dev", &dev]).unwrap();
    assert!(tcp_connect(ns, MASTER_IP, 7741, PROBE), "a terminal reaches master");
    for (ip, port) in [(MASTER_IP, 9999), (MASTER_IP, 7742), (MASTER_IP, 12000), (MASTER_IP, 22), (ADMIN_IP, 7777)] {
        assert_eq!(tcp_probe(ns, ip, port, PROBE), Answer::Silent, "terminal tunnel -> {ip}:{port}");
    }

    // An admin tunnel: admin_bind_ip:7777 only.
    let a = d.connect(1, &admin);
    wait_initialized(&a, T);
    let ns = d.lan.client(1);
    let dev = tun_device(&a).unwrap();
    ns.ip(&["route", "replace", &format!("{MASTER_IP}/32"), "dev", &dev]).unwrap();
    assert!(tcp_connect(ns, ADMIN_IP, 7777, PROBE), "an admin reaches the admin UI");
    for (ip, port) in [(ADMIN_IP, 9999), (ADMIN_IP, 7742), (ADMIN_IP, 12000), (ADMIN_IP, 22), (MASTER_IP, 7741)] {
        assert_eq!(tcp_probe(ns, ip, port, PROBE), Answer::Silent, "admin tunnel -> {ip}:{port}");
    }
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn drift_is_repaired_foreign_tables_survive_and_lockout_is_refused() {
    let fw = deploy(1);
    let internet = fw.d.lan.client(0);
    let srv = fw.d.server();

    // Someone else's table, with a chain on the same hook.
    srv.run(&["nft", "add table inet operator_own"]).unwrap();
    srv.run(&["nft", "add chain inet operator_own input { type filter hook input priority 0; policy accept; }"])
        .unwrap();
    srv.run(&["nft", "add rule inet operator_own input tcp dport 5555 drop"]).unwrap();

    // Delete the front port's accept rule by hand: the Internet loses 7742, and the drift check brings it back.
    let listing = srv.run(&["nft", "-a", "list", "chain", "inet", "cas_vpn", "from_internet"]).unwrap();
    let handle = listing
        .lines()
        .find(|l| l.contains("tcp dport 7742 accept"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap_or_else(|| panic!("no 7742 rule in {listing}"))
        .trim()
        .to_owned();
    let mark = fw.d.serve_log().mark();
    let deleted = Instant::now();
    srv.run(&["nft", "delete", "rule", "inet", "cas_vpn", "from_internet", "handle", &handle]).unwrap();
    // (Not probed while it is gone: with drift_check=1s the repair may already have happened.)
    fw.d.serve_log().wait_for_line_from(mark, |l| l.contains("firewall drift found"), T);
    let rule_back = || {
        srv.run(&["nft", "list", "chain", "inet", "cas_vpn", "from_internet"])
            .unwrap()
            .contains("tcp dport 7742 accept")
    };
    wait_until("the 7742 rule is back", T, rule_back);
    let took = deleted.elapsed();
    assert!(took <= Duration::from_secs(5), "repaired after {took:?} with drift_check=1s");
    assert!(tcp_connect(internet, PUBLIC_IP, 7742, PROBE), "7742 answers again");

    // `firewall apply` by hand: our table is replaced, the operator's is untouched.
    let out = fw.d.server_cli(&["firewall", "apply"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tables = srv.run(&["nft", "list", "tables"]).unwrap();
    assert!(tables.contains("table inet operator_own"), "{tables}");
    assert!(srv.run(&["nft", "list", "table", "inet", "operator_own"]).unwrap().contains("tcp dport 5555 drop"));
    assert!(!tables.contains("cas_vpn_tunnels"), "the old isolation table is gone: {tables}");

    // Anti-lockout: a session on an SSH port the plan does not open is refused, one line, exit 1, nothing changed.
    let before = srv.run(&["nft", "-t", "list", "table", "inet", "cas_vpn"]).unwrap();
    let ssh = format!("{} 50022 {PUBLIC_IP} 2222", fw.d.lan.client_ip(0));
    let out = fw.d.server_cli(&["firewall", "apply"], &[("SSH_CONNECTION", &ssh)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would cut the SSH session"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(srv.run(&["nft", "-t", "list", "table", "inet", "cas_vpn"]).unwrap(), before);
    // The same session on the configured port is fine.
    let ssh = format!("{} 50022 {PUBLIC_IP} 22", fw.d.lan.client_ip(0));
    assert!(fw.d.server_cli(&["firewall", "apply"], &[("SSH_CONNECTION", &ssh)]).status.success());
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_terminal_pairs_through_public_ip_during_a_window_and_not_after() {
    let fw = deploy(1);
    let d = &fw.d;
    let internet = d.lan.client(0);
    d.ok(&["pairing", "open", "--for", "10m"]);
    let token = d.ok(&["terminal", "add", "atm-new"]).trim().to_owned();
    let dir = temp_dir("agent");
    let dir_s = dir.path().to_str().unwrap();
    let gate = format!("{PUBLIC_IP}:7741");
    let out = agent_pair(internet, &gate, &token, dir.path());
    assert!(out.status.success(), "agent pair: {}", String::from_utf8_lossy(&out.stderr));
    let agent = internet.spawn("agent", bin(), &["agent", "run", "--dir", dir_s, "--heartbeat", "1s"]);
    agent.wait_for_text("heartbeat ok", T);

    // The window closes: a second terminal's pairing attempt gets no TCP answer at all.
    d.ok(&["pairing", "close"]);
    let token2 = d.ok(&["terminal", "add", "atm-late"]).trim().to_owned();
    assert_eq!(tcp_probe(internet, PUBLIC_IP, 7741, PROBE), Answer::Silent);
    let dir2 = temp_dir("agent2");
    let out = internet
        .cmd("timeout")
        .args(["20", bin(), "agent", "pair", "--gate", &gate, "--token", &token2, "--dir"])
        .arg(dir2.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a pairing after the window must fail");
    // And the paired terminal keeps heartbeating through its tunnel.
    let mark = agent.mark();
    agent.wait_for_line_from(mark, |l| l.contains("heartbeat ok"), T);
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_net_restart_during_a_window_keeps_it_open_until_its_end_and_no_longer() {
    let fw = deploy(1);
    let d = &fw.d;
    let internet = d.lan.client(0);
    let net_pid = |from: usize| -> (usize, i32) {
        let (at, line) = d.serve_log().wait_for_line_from(from, |l| l.contains("service started service=\"net\""), T);
        let pid = line.split("pid=").nth(1).and_then(|p| p.split_whitespace().next()).unwrap().parse().unwrap();
        (at + 1, pid)
    };
    let (after_first, pid) = net_pid(0);

    let r = d.json(&["pairing", "open", "--for", "8s"]);
    let opened = Instant::now();
    let remaining = Duration::from_secs(r["remaining_secs"].as_u64().unwrap());
    assert!(tcp_connect(internet, PUBLIC_IP, 7741, PROBE));

    // kill -9: no shutdown step runs; the launcher starts a new serve net, which plans from the store.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let (_, new_pid) = net_pid(after_first);
    assert_ne!(new_pid, pid);
    d.wait_firewall(T);
    assert!(opened.elapsed() < remaining, "the restart took the whole window; make it longer");
    assert!(tcp_connect(internet, PUBLIC_IP, 7741, PROBE), "still open after the restart");

    // And no longer than its end.
    wait_until("7741 is silent after the window's end", remaining + IN_FORCE + PROBE, || {
        tcp_probe(internet, PUBLIC_IP, 7741, Duration::from_millis(300)) == Answer::Silent
    });
    assert!(opened.elapsed() <= remaining + IN_FORCE + Duration::from_millis(300), "{:?}", opened.elapsed());
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test runs it with --include-ignored"]
fn apply_with_confirm_rolls_back_unless_confirmed() {
    require_root();
    // No serve: the CLI alone installs, in the server namespace.
    let d = Deployment::new(1, &[]);
    let srv = d.server();
    let ok = |args: &[&str]| {
        let out = d.server_cli(args, &[]);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let dnat = || srv.run(&["nft", "list", "chain", "inet", "cas_vpn", "prerouting"]).unwrap().contains("dnat ip to");
    ok(&["firewall", "apply"]);
    assert!(!dnat());

    // A new plan (a window opened while no serve net runs), applied with --confirm and never confirmed: the
    // previous rules come back by themselves, and the hold keeps serve net from reinstalling the refused plan.
    d.ok(&["pairing", "open", "--for", "10m"]);
    let t0 = Instant::now();
    let out = d.server_cli(&["firewall", "apply", "--confirm", "2s"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not confirmed in time"));
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(!dnat(), "rolled back to the rules from before");
    assert_eq!(d.firewall_status()["held"], true);

    // Applied again with --confirm and confirmed from a second session: the new rules stay, the hold is gone.
    let mut pending = d.server().cmd(bin());
    pending.env("CAS_VPN_ROOT", d.root()).env("CAS_VPN_SERVICE_USERS", "none").args([
        "firewall",
        "apply",
        "--confirm",
        "20s",
    ]);
    let pending = ChildGuard::spawn("firewall apply --confirm", pending);
    pending.wait_for_text("cas-vpn firewall confirm", T);
    assert!(dnat(), "the new rules are in force while the confirmation is pending");
    ok(&["firewall", "confirm"]);
    pending.wait_for_text("confirmed", T);
    assert!(dnat());
    assert_eq!(d.firewall_status()["held"], false);
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn per_source_connection_caps_hold_at_packet_level() {
    let fw = deploy(2);
    let d = &fw.d;
    let (internet, other) = (d.lan.client(0), d.lan.client(1));
    d.set_firewall(&[("front_max_conns", "2")]);
    wait_until("the cap of 2 is in force", T, || {
        let s = d.firewall_status();
        s["rules"].as_str().unwrap_or("").contains("ct count over 2") && s["drift"]["drift"] == "in-force"
    });
    // Two connections held open from one source (the front waits 10 s for their first packet).
    let script = format!("exec 3<>/dev/tcp/{PUBLIC_IP}/7742 && echo held && sleep 20");
    let holders: Vec<ChildGuard> = (0..2).map(|_| internet.spawn("holder", "bash", &["-c", &script])).collect();
    for h in &holders {
        h.wait_for_text("held", T);
    }
    assert_eq!(tcp_probe(internet, PUBLIC_IP, 7742, PROBE), Answer::Silent, "a third one from the same source");
    assert_eq!(tcp_probe(other, PUBLIC_IP, 7742, PROBE), Answer::Accepted, "another source is not affected");
    drop(holders);
    wait_until("the source may connect again", T, || tcp_connect(internet, PUBLIC_IP, 7742, PROBE));

    // The same on the pairing door while a window is open (the gate waits 10 s for a TLS handshake).
    d.set_firewall(&[("gate_max_conns", "2")]);
    d.ok(&["pairing", "open", "--for", "5m"]);
    wait_until("the gate's cap of 2 and the window are in force", T, || {
        let s = d.firewall_status();
        let rules = s["rules"].as_str().unwrap_or("");
        rules.contains("7741") && rules.matches("ct count over 2").count() >= 2 && s["drift"]["drift"] == "in-force"
    });
    let script = format!("exec 3<>/dev/tcp/{PUBLIC_IP}/7741 && echo held && sleep 20");
    let holders: Vec<ChildGuard> = (0..2).map(|_| internet.spawn("holder", "bash", &["-c", &script])).collect();
    for h in &holders {
        h.wait_for_text("held", T);
    }
    assert_eq!(tcp_probe(internet, PUBLIC_IP, 7741, PROBE), Answer::Silent, "a third one to 7741 from the same source");
    assert_eq!(tcp_probe(other, PUBLIC_IP, 7741, PROBE), Answer::Accepted, "another source still pairs");
}
