//! The VPN runtime end to end (issue "VPN runtime"): real `cas-vpn serve vpn` and real openvpn clients in
//! network namespaces. Each test builds its own deployment and removes it, also when it fails.

use std::time::{Duration, Instant};

use crate::support::deploy::{ADMIN_IP, Deployment, MASTER_IP, PUBLIC_IP, retarget};
use crate::support::openvpn::INIT_COMPLETED;
use crate::support::{
    client_address, require_root, tcp_connect, tcp_listener, tun_device, wait_initialized, wait_until,
};

const CONNECT: Duration = Duration::from_secs(20);
const PROBE: Duration = Duration::from_secs(2);

/// Lines an openvpn client prints when the server turned it away (TLS refused, denied, or reset).
fn refused(l: &str) -> bool {
    ["AUTH_FAILED", "TLS Error", "VERIFY ERROR", "Connection reset", "TLS key negotiation failed", "SIGUSR1"]
        .iter()
        .any(|s| l.contains(s))
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn terminal_connects_through_the_front_port_and_reaches_only_master() {
    require_root();
    let mut d = Deployment::new(1, &[]);
    let profile = d.terminal("atm-1");
    let expected_ip = d.tunnel_ip("atm-1");
    d.start();
    let _master = tcp_listener(d.server(), MASTER_IP, 7741);
    let _admin = tcp_listener(d.server(), ADMIN_IP, 7777);

    let client = d.connect(0, &profile);
    assert!(std::fs::read_to_string(&profile).unwrap().contains(&format!("remote {PUBLIC_IP} 7742")));
    wait_initialized(&client, CONNECT);
    let ns = d.lan.client(0);
    assert_eq!(client_address(ns, &client), expected_ip, "the stable address allocated at creation");

    // Pushed: a route to master only.
    let routes = ns.ip(&["-4", "route"]).unwrap();
    assert!(routes.contains(&MASTER_IP.to_string()), "{routes}");
    assert!(!routes.contains(&ADMIN_IP.to_string()), "{routes}");
    assert!(tcp_connect(ns, MASTER_IP, 7741, PROBE), "master is reachable through the tunnel");

    // A terminal that routes admin_bind_ip into its tunnel itself still cannot reach it (isolation rules).
    let dev = tun_device(&client).unwrap();
    ns.ip(&["route", "add", &format!("{ADMIN_IP}/32"), "dev", &dev]).unwrap();
    assert!(!tcp_connect(ns, ADMIN_IP, 7777, PROBE), "admin_bind_ip must be unreachable from a terminal tunnel");
    assert!(tcp_connect(ns, MASTER_IP, 7741, PROBE), "and master still is");

    // The session is in the store with the real (pre-NAT) address the front saw, and the terminal is online.
    wait_until("the session is recorded", CONNECT, || d.sessions_of("atm-1") == 1);
    let s = d.status();
    let session = s["sessions"].as_array().unwrap().iter().find(|s| s["common_name"] == "atm-1").unwrap().clone();
    assert_eq!(session["tunnel_ip"], expected_ip.to_string());
    assert!(session["real_addr"].as_str().unwrap().starts_with(&d.lan.client_ip(0).to_string()), "{session}");
    let list = d.json(&["terminal", "list"]);
    assert_eq!(list[0]["state"], "online");
    // Its server-made profile came out of band (never through the gate): the first session counts as its pairing,
    // so master (which answers paired terminals only) answers it.
    assert!(d.json(&["terminal", "show", "atm-1"])["paired_at"].is_string(), "a connected terminal is paired");
    // Its CONNECT answer was timed (`/metrics`' casvpn_mgmt_answer_seconds): a cumulative histogram the vpn service
    // reports in its status.
    let running = d.status()["running"].as_array().unwrap().clone();
    let home = running.iter().find(|i| i["sessions"] == 1).expect("the instance holding the session");
    let answers = &home["answers"];
    let count = answers["count"].as_u64().unwrap();
    let buckets: Vec<u64> = answers["buckets"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
    assert!(count >= 1, "{home}");
    assert!(answers["sum_seconds"].as_f64().unwrap() > 0.0, "{home}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]) && *buckets.last().unwrap() <= count, "{home}");

    // Invariants 6 and 10: no key material reaches serve's log (CA keys, server keys, tls-crypt-v2 keys, the
    // terminal's own key from its profile).
    let log = d.serve_guard().lines().join("\n");
    for secret in
        ["pki/terminal-ca.key", "pki/admin-ca.key", "pki/terminal-server.key", "pki/tls-crypt-v2-terminal.key"]
            .map(|f| std::fs::read_to_string(d.root().join(f)).unwrap())
            .into_iter()
            .chain([crate::support::deploy::inline(&std::fs::read_to_string(&profile).unwrap(), "key")])
    {
        let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(body.len() > 40);
        assert!(!log.contains(&body[..40]), "key material in serve's log");
    }
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn admin_vpn_one_credential_one_port_one_session() {
    require_root();
    let mut d = Deployment::new(3, &[]);
    let terminal = d.terminal("atm-1");
    d.start();
    // Issued while serve runs: its instance starts without restarting anything else.
    let before = d.instance("terminal-0")["pid"].clone();
    let (alice, alice_port) = d.admin("alice");
    let (_bob, bob_port) = d.admin("bob");
    assert_eq!((alice_port, bob_port), (12000, 12001));
    d.wait_ready(CONNECT);
    assert_eq!(d.instance("terminal-0")["pid"], before, "terminal instances untouched by admin changes");
    let _admin_ui = tcp_listener(d.server(), ADMIN_IP, 7777);
    let _master = tcp_listener(d.server(), MASTER_IP, 7741);

    let a1 = d.connect(0, &alice);
    wait_initialized(&a1, CONNECT);
    let ns = d.lan.client(0);
    assert!(tcp_connect(ns, ADMIN_IP, 7777, PROBE), "admin reaches admin_bind_ip");
    let dev = tun_device(&a1).unwrap();
    ns.ip(&["route", "add", &format!("{MASTER_IP}/32"), "dev", &dev]).unwrap();
    assert!(!tcp_connect(ns, MASTER_IP, 7741, PROBE), "admin tunnels reach admin_bind_ip only");

    // A terminal credential on an admin port: refused (other CA, and no CONNECT answer would let it in).
    let t_on_admin = d.connect(1, &retarget(&terminal, alice_port));
    t_on_admin.wait_for_line(refused, CONNECT);
    assert!(!t_on_admin.contains(INIT_COMPLETED));
    // Alice's credential on Bob's port: refused.
    let alice_on_bob = d.connect(2, &retarget(&alice, bob_port));
    alice_on_bob.wait_for_line(refused, CONNECT);
    assert!(!alice_on_bob.contains(INIT_COMPLETED));
    // Alice's credential on the terminal front port: refused (its key names an admin, not a terminal).
    let alice_on_front = d.connect(2, &retarget(&alice, 7742));
    alice_on_front.wait_for_line(refused, CONNECT);
    assert!(!alice_on_front.contains(INIT_COMPLETED));
    drop((t_on_admin, alice_on_bob, alice_on_front));
    assert_eq!(d.sessions_of("atm-1"), 0);

    // A second session of Alice's credential: the newest wins, there are never two.
    wait_until("alice's first session is recorded", CONNECT, || d.sessions_of("alice") == 1);
    let mark = a1.mark();
    let a2 = d.connect(1, &alice);
    wait_initialized(&a2, CONNECT);
    a1.wait_for_line_from(mark, refused, CONNECT);
    wait_until("one alice session", CONNECT, || d.sessions_of("alice") == 1);
    let s = d.status();
    let live = s["sessions"].as_array().unwrap().iter().find(|s| s["common_name"] == "alice").unwrap().clone();
    assert!(live["real_addr"].as_str().unwrap().starts_with(&d.lan.client_ip(1).to_string()), "{live}");
    // Stop the first client from retrying so the check below is about the winner only.
    drop(a1);
    assert!(tcp_connect(d.lan.client(1), ADMIN_IP, 7777, PROBE));

    // Revoking Alice stops her instance and frees her port.
    let r = d.json(&["revoke", "alice"]);
    assert_eq!(r["killed_sessions"], 1);
    assert_eq!(r["freed_port"], 12000);
    wait_until("alice's instance is gone", CONNECT, || d.instance("admin-12000").is_null());
}

/// `revoke --file`: several live terminals revoked by one command (one transaction, one CRL, one `kill-many`)
/// are all disconnected within a second and never get back in; a terminal not on the list is untouched.
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn revoke_file_ends_every_listed_session_and_none_returns() {
    require_root();
    let (d, clients) = Deployment::with_connected_terminals(4);
    let _master = tcp_listener(d.server(), MASTER_IP, 7741);
    wait_until("four sessions recorded", CONNECT, || (0..4).all(|i| d.sessions_of(&format!("atm-{i}")) == 1));

    let list = d.root().join("stolen.txt");
    std::fs::write(&list, "# stolen in one night\natm-0\natm-1\n\natm-2\n").unwrap();
    let marks: Vec<usize> = clients.iter().map(|c| c.mark()).collect();
    let t0 = Instant::now();
    let r = d.json(&["revoke", "--file", list.to_str().unwrap()]);
    let returned = t0.elapsed();
    assert_eq!((r["revoked"].as_u64(), r["killed_sessions"].as_u64()), (Some(3), Some(3)), "{r}");
    for (c, mark) in clients.iter().zip(&marks).take(3) {
        c.wait_for_line_from(*mark, refused, Duration::from_secs(1));
    }
    let gone = t0.elapsed();
    eprintln!("revoke --file returned after {returned:?}; every listed client saw its session end after {gone:?}");
    assert!(gone <= Duration::from_secs(1), "every session must end within 1 s, took {gone:?}");
    for i in 0..3 {
        assert_eq!(d.sessions_of(&format!("atm-{i}")), 0, "atm-{i}");
    }

    // They keep retrying and are refused every time.
    wait_until("three refused reconnection attempts each", CONNECT, || {
        clients
            .iter()
            .zip(&marks)
            .take(3)
            .all(|(c, m)| c.lines()[*m..].iter().filter(|l| l.contains("TCP connection established")).count() >= 3)
    });
    for (i, (c, m)) in clients.iter().zip(&marks).take(3).enumerate() {
        assert!(!c.lines()[*m..].iter().any(|l| l.contains(INIT_COMPLETED)), "revoked atm-{i} got back in");
    }
    // atm-3 was not on the list.
    assert_eq!(d.sessions_of("atm-3"), 1);
    assert!(tcp_connect(d.lan.client(3), MASTER_IP, 7741, PROBE));
    assert_eq!(clients[3].lines().iter().filter(|l| l.contains(INIT_COMPLETED)).count(), 1, "atm-3 reconnected");
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn revoke_ends_the_session_within_a_second_and_it_never_returns() {
    require_root();
    let (d, clients) = Deployment::with_connected_terminals(2);
    let (c1, c2) = (&clients[0], &clients[1]);
    let _master = tcp_listener(d.server(), MASTER_IP, 7741);
    wait_until("both sessions recorded", CONNECT, || d.sessions_of("atm-0") == 1 && d.sessions_of("atm-1") == 1);

    let mark = c1.mark();
    let t0 = Instant::now();
    let r = d.json(&["revoke", "atm-0"]);
    let returned = t0.elapsed();
    assert_eq!(r["killed_sessions"], 1, "{r}");
    // The client sees its session end (the server resets it).
    let (_, line) = c1.wait_for_line_from(mark, refused, Duration::from_secs(1));
    let gone = t0.elapsed();
    eprintln!("revoke returned after {returned:?}; the client saw `{line}` after {gone:?}");
    assert!(gone <= Duration::from_secs(1), "session must end within 1 s, took {gone:?}");
    assert_eq!(d.sessions_of("atm-0"), 0);

    // It keeps retrying (connect-retry, auth-retry nointeract) and is refused every time: the front closes
    // connections whose key names a revoked terminal; behind it the CRL and the CONNECT answer refuse it too.
    wait_until("three refused reconnection attempts", CONNECT, || {
        c1.lines()[mark..].iter().filter(|l| l.contains("TCP connection established")).count() >= 3
    });
    assert!(!c1.lines()[mark..].iter().any(|l| l.contains(INIT_COMPLETED)), "a revoked terminal never gets back in");

    // The other terminal is untouched.
    assert!(tcp_connect(d.lan.client(1), MASTER_IP, 7741, PROBE));
    assert_eq!(d.sessions_of("atm-1"), 1);
    assert_eq!(c2.lines().iter().filter(|l| l.contains(INIT_COMPLETED)).count(), 1, "atm-1 never reconnected");

    // A second `serve vpn` on the same root is refused at once and changes nothing: the session table and the
    // running openvpn processes (which a second supervisor would once have killed as "orphans") stay.
    let openvpns = d.server_openvpn_pids();
    let second = d
        .server()
        .cmd(crate::support::deploy::bin())
        .env("CAS_VPN_ROOT", d.root())
        .env("CAS_VPN_SERVICE_USERS", "none")
        .args(["serve", "vpn"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"), "{second:?}");
    assert_eq!(d.sessions_of("atm-1"), 1, "the second serve touched the session table");
    assert_eq!(d.server_openvpn_pids(), openvpns, "the second serve touched the running openvpn processes");
    assert!(tcp_connect(d.lan.client(1), MASTER_IP, 7741, PROBE), "atm-1 is still connected");
}

/// Continues a stopped process when dropped (also when the test fails halfway).
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A revocation does not depend on the terminal's openvpn server answering: the front cuts the terminal's relay,
/// which ends the session's transport at once (an openvpn server busy with a fleet's handshakes answers a
/// `client-kill` seconds late; a stopped one never does).
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_revocation_ends_a_terminal_session_while_its_openvpn_server_does_not_answer() {
    require_root();
    let (d, clients) = Deployment::with_connected_terminals(1);
    let c = &clients[0];
    wait_until("the session is recorded", CONNECT, || d.sessions_of("atm-0") == 1);
    let home = format!("terminal-{}", d.json(&["terminal", "show", "atm-0"])["home_instance"]);
    let pid = d.instance(&home)["pid"].as_u64().unwrap() as i32;

    let stopped = Stopped::stop(pid);
    let mark = c.mark();
    let t0 = Instant::now();
    let r = d.json(&["revoke", "atm-0"]);
    let returned = t0.elapsed();
    assert_eq!(r["killed_sessions"], 1, "{r}");
    let (_, line) = c.wait_for_line_from(mark, refused, Duration::from_secs(1));
    let gone = t0.elapsed();
    eprintln!("openvpn stopped: revoke returned after {returned:?}; the client saw `{line}` after {gone:?}");
    // openvpn's own answer would have taken the management timeout (5 s), and the command would have failed.
    assert!(returned <= Duration::from_secs(2), "revoke waited on the stopped openvpn: {returned:?}");
    assert_eq!(d.sessions_of("atm-0"), 0);

    // openvpn goes on: it finds the connection closed, and the terminal is refused from then on.
    drop(stopped);
    wait_until("three refused reconnection attempts", CONNECT, || {
        c.lines()[mark..].iter().filter(|l| l.contains("TCP connection established")).count() >= 3
    });
    assert!(!c.lines()[mark..].iter().any(|l| l.contains(INIT_COMPLETED)), "a revoked terminal never gets back in");
    assert_eq!(d.instance(&home)["pid"].as_u64(), Some(pid as u64), "the instance's openvpn was not restarted");
    assert_eq!(d.sessions_of("atm-0"), 0);
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_killed_instance_is_back_within_two_seconds_and_its_clients_return() {
    require_root();
    let (d, clients) = Deployment::with_connected_terminals(1);
    let c = &clients[0];
    let home = format!("terminal-{}", d.json(&["terminal", "show", "atm-0"])["home_instance"]);
    let pid = d.instance(&home)["pid"].as_u64().unwrap() as i32;
    let mark = c.mark();
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the instance runs again with a new pid and is ready", Duration::from_secs(2), || {
        let i = d.instance(&home);
        i["ready"] == true && i["pid"].as_u64().is_some_and(|p| p as i32 != pid)
    });
    eprintln!("instance back after {:?}", t0.elapsed());
    assert_eq!(d.instance(&home)["restarts"], 1);
    c.wait_for_line_from(mark, |l| l.contains(INIT_COMPLETED), CONNECT);
    wait_until("the session is recorded again", CONNECT, || d.sessions_of("atm-0") == 1);
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn kill_9_of_cas_vpn_leaves_no_openvpn_and_a_restart_recovers() {
    require_root();
    let (mut d, clients) = Deployment::with_connected_terminals(1);
    let c = &clients[0];
    assert_eq!(d.server_openvpn_pids().len(), 11);

    d.kill9_serve();
    wait_until("no openvpn left in the server namespace", Duration::from_secs(2), || {
        d.server_openvpn_pids().is_empty()
    });

    let mark = c.mark();
    d.start();
    assert_eq!(d.server_openvpn_pids().len(), 11);
    c.wait_for_line_from(mark, |l| l.contains(INIT_COMPLETED), CONNECT);
    wait_until("the session is recorded again", CONNECT, || d.sessions_of("atm-0") == 1);
    let s = d.status();
    assert_eq!(s["sessions"].as_array().unwrap().len(), 1, "stale sessions of the killed serve were cleared");
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn the_crl_is_renewed_before_it_can_expire() {
    require_root();
    // A CRL that lives 8 seconds: serve must keep replacing it, or every client would be locked out.
    let mut d = Deployment::new(1, &[("crl_validity", "8s")]);
    d.ok(&["crl"]);
    let first = crl_next_update(&d);
    let p = d.terminal("atm-1");
    d.start();
    wait_until("the first CRL's nextUpdate has passed", Duration::from_secs(15), || {
        time::OffsetDateTime::now_utc() > first + time::Duration::seconds(1)
    });
    let now_next = crl_next_update(&d);
    assert!(now_next > time::OffsetDateTime::now_utc(), "the CRL on disk is current");
    let c = d.connect(0, &p);
    wait_initialized(&c, CONNECT);
}

fn crl_next_update(d: &Deployment) -> time::OffsetDateTime {
    let s = d.status();
    let e = s["expiry"].as_array().unwrap().iter().find(|e| e["what"] == "terminal CRL").unwrap().clone();
    time::OffsetDateTime::parse(e["not_after"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_config_change_restarts_only_the_instances_it_touches() {
    require_root();
    let (mut d, clients) = Deployment::with_connected_terminals(1);
    let c = &clients[0];
    let pids = |d: &Deployment| -> Vec<(String, u64)> {
        d.status()["running"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i["pid"].as_u64().unwrap_or(0)))
            .collect()
    };
    let before = pids(&d);
    assert_eq!(before.len(), 11);

    // One more terminal instance: the slices of the first eleven do not move, so they must not restart.
    d.set_vpn(&[("terminal_ports", "13000-13011")]);
    let mark = c.mark();
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("terminal-11 runs", CONNECT, || d.instance("terminal-11")["ready"] == true);
    let after = pids(&d);
    assert_eq!(after.len(), 12);
    for (name, pid) in &before {
        assert!(after.contains(&(name.clone(), *pid)), "{name} was restarted");
    }
    assert!(!c.lines()[mark..].iter().any(|l| l.contains("Connection reset")), "the client was not disturbed");

    // A config that no longer parses changes nothing.
    d.set_vpn(&[("terminal_ports", "not-a-range")]);
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    d.serve_guard().wait_for_text("configuration does not load", CONNECT);
    d.set_vpn(&[("terminal_ports", "13000-13011")]);
    assert_eq!(pids(&d), after, "nothing restarted on a config that did not load");
}

/// `batm.vpn-skip` switched while `serve vpn` runs: Scenario B stops every openvpn and the front port (one INFO
/// line), and switching back starts them again; `status` shows what really runs.
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn a_live_switch_to_scenario_b_and_back_stops_and_starts_the_vpn() {
    require_root();
    let mut d = Deployment::new(1, &[]);
    d.start();
    assert!(!d.server_openvpn_pids().is_empty());
    let props = d.root().join("config/gate.properties");
    let original = std::fs::read_to_string(&props).unwrap();

    std::fs::write(&props, original.replace("batm.vpn-skip=false", "batm.vpn-skip=true")).unwrap();
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    d.serve_guard().wait_for_text("Scenario B now", CONNECT);
    wait_until("no openvpn runs", CONNECT, || d.server_openvpn_pids().is_empty());
    wait_until("status shows nothing running", CONNECT, || {
        let s = d.status();
        s["scenario"] == "B" && s["running"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(!tcp_connect(d.server(), PUBLIC_IP, 7742, PROBE), "the front port is closed under Scenario B");

    std::fs::write(&props, &original).unwrap();
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    d.serve_guard().wait_for_text("Scenario A now", CONNECT);
    d.wait_ready(CONNECT);
    assert!(tcp_connect(d.server(), PUBLIC_IP, 7742, PROBE), "the front port is open again");
}

/// `serve all` started under Scenario B runs no `serve vpn`; a switch to Scenario A (here with SIGHUP, else within
/// 30 s) starts it, with one INFO line, and its instances come up; `status` shows it running.
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn serve_all_started_under_scenario_b_starts_the_vpn_on_a_switch_to_a() {
    require_root();
    let mut d = Deployment::new(1, &[]);
    let props = d.root().join("config/gate.properties");
    let original = std::fs::read_to_string(&props).unwrap();
    std::fs::write(&props, original.replace("batm.vpn-skip=false", "batm.vpn-skip=true")).unwrap();
    d.set_firewall(&[("manage", "no")]);
    // Under Scenario B the service addresses are the operator's.
    d.server().ip(&["addr", "add", &format!("{MASTER_IP}/32"), "dev", "lo"]).unwrap();
    d.server().ip(&["addr", "add", "203.0.113.3/32", "dev", "lo"]).unwrap();
    d.start_service_without_vpn("all");
    wait_until("master listens", CONNECT, || tcp_connect(d.server(), MASTER_IP, 7741, PROBE));
    assert!(d.server_openvpn_pids().is_empty());
    let vpn_runs = |d: &Deployment| {
        d.status()["services"].as_array().unwrap().iter().any(|s| s["service"] == "vpn" && s["running"] == true)
    };
    assert!(!vpn_runs(&d));

    std::fs::write(&props, &original).unwrap();
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    d.serve_guard().wait_for_text("Scenario A now: starting the VPN service", CONNECT);
    d.wait_ready(CONNECT);
    assert!(vpn_runs(&d));
    assert!(!d.server_openvpn_pids().is_empty());

    // `serve all` passes SIGHUP on to vpn and master: both see a switch back to B at once (on their own they look
    // every 30 s, so both within 5 s of the signal would be a 1-in-36 coincidence without it).
    std::fs::write(&props, original.replace("batm.vpn-skip=false", "batm.vpn-skip=true")).unwrap();
    let mark = d.serve_log().mark();
    d.serve_guard().signal(nix::sys::signal::Signal::SIGHUP);
    let quick = Duration::from_secs(5);
    d.serve_guard().wait_for_line_from(mark, |l| l.contains("Scenario B now: stopping every VPN instance"), quick);
    d.serve_guard().wait_for_line_from(mark, |l| l.contains("master: Scenario B now"), quick);
    wait_until("no openvpn runs", CONNECT, || d.server_openvpn_pids().is_empty());
}

/// Two parties holding one admin credential (a stolen profile): "newest wins" would have them kick each other
/// forever; after `takeover::LIMIT` takeovers from different addresses the credential is suspended, both are
/// refused, status and doctor say so, and once the operator resumes it the owner gets back in.
#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn two_parties_fighting_over_an_admin_credential_get_it_suspended() {
    require_root();
    let mut d = Deployment::new(2, &[]);
    d.start();
    let (alice, _) = d.admin("alice");
    d.wait_ready(CONNECT);
    let _admin_ui = tcp_listener(d.server(), ADMIN_IP, 7777);
    let state = |d: &Deployment| d.json(&["admin-vpn", "list"])[0]["state"].as_str().unwrap_or_default().to_owned();

    let owner = d.connect(0, &alice);
    wait_initialized(&owner, CONNECT);
    let thief = d.connect(1, &alice);
    wait_until("the fight gets alice suspended", Duration::from_secs(120), || state(&d) == "suspended");
    wait_until("no alice session is left", CONNECT, || d.sessions_of("alice") == 0);
    let (mark_owner, mark_thief) = (owner.mark(), thief.mark());
    drop(thief);
    // From now on every attempt is refused.
    wait_until("the owner's next attempt is refused", CONNECT, || {
        owner.lines()[mark_owner..].iter().any(|l| refused(l))
    });
    assert!(!owner.lines()[mark_owner..].iter().any(|l| l.contains(INIT_COMPLETED)), "a suspended credential got in");
    let _ = mark_thief;
    let warnings = d.status()["warnings"].to_string();
    assert!(warnings.contains("alice is suspended"), "{warnings}");
    let doctor = String::from_utf8(d.cli(&["doctor"]).stdout).unwrap();
    assert!(doctor.contains("suspended after repeated takeovers: alice"), "{doctor}");
    drop(owner);

    // The operator resumes it; the owner connects again.
    let r = d.json(&["admin-vpn", "resume", "alice"]);
    assert_eq!(r["resumed"], true, "{r}");
    let back = d.connect(0, &alice);
    wait_initialized(&back, CONNECT);
    // Its session row is written beside the instance (batched): it shows within moments of the tunnel.
    wait_until("alice shows online again", CONNECT, || state(&d) == "online");
}
