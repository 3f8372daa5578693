//! Bulk revocation figure with real openvpn in network namespaces (root): `BULK_N` (default 1,000) terminals
//! connected at once (real openvpn clients, `BULK_PER_NS` (default 20: the front port's per-source cap,
//! `front_max_conns`) per client namespace, routes not executed), then all revoked by one `revoke --file` → every session gone (each client sees its reset, and the
//! store holds none), side by side with the 1 s goal. Run: `scripts/bench-bulk`. Prints `name=value` lines.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::deploy::Deployment;
use support::openvpn::INIT_COMPLETED;
use support::{openvpn_client, require_root, wait_until};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ended(l: &str) -> bool {
    ["Connection reset", "SIGUSR1", "AUTH_FAILED", "SIGTERM"].iter().any(|s| l.contains(s))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    let n = env("BULK_N", 1000);
    let per_ns = env("BULK_PER_NS", 20).max(1);
    let mut d = Deployment::new(n.div_ceil(per_ns), &[]);
    let names: Vec<String> = (0..n).map(|i| format!("atm-{i:04}")).collect();
    let csv = d.root().join("names.csv");
    std::fs::write(&csv, names.join("\n") + "\n").unwrap();
    let out = d.root().join("profiles");
    d.ok(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]);
    d.start();

    let t0 = Instant::now();
    let clients: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ns = d.lan.client(i / per_ns);
            openvpn_client(ns, &out.join(format!("{name}.ovpn")), &["--route-noexec", "--connect-retry", "1", "5"])
        })
        .collect();
    wait_until("every client initialised", Duration::from_secs(900), || {
        clients.iter().all(|c| c.contains(INIT_COMPLETED))
    });
    wait_until("every session in the store", Duration::from_secs(120), || {
        d.status()["sessions"].as_array().map_or(0, Vec::len) == n
    });
    println!("bulk_clients_{n}_connected_s={:.1}", t0.elapsed().as_secs_f64());

    let marks: Vec<usize> = clients.iter().map(|c| c.mark()).collect();
    let t0 = Instant::now();
    let r = d.json(&["revoke", "--file", csv.to_str().unwrap()]);
    let returned = t0.elapsed();
    assert_eq!(r["revoked"].as_u64(), Some(n as u64), "{r}");
    for (c, mark) in clients.iter().zip(&marks) {
        c.wait_for_line_from(*mark, ended, Duration::from_secs(30));
    }
    let every_client = t0.elapsed();
    wait_until("no session left in the store", Duration::from_secs(30), || {
        d.status()["sessions"].as_array().map_or(0, Vec::len) == 0
    });
    let store_empty = t0.elapsed();
    println!("bulk_revoke_{n}_killed_sessions={}", r["killed_sessions"]);
    println!("bulk_revoke_{n}_command_ms={:.0}", returned.as_secs_f64() * 1000.0);
    println!("bulk_revoke_{n}_every_client_disconnected_ms={:.0}", every_client.as_secs_f64() * 1000.0);
    println!("bulk_revoke_{n}_store_holds_no_session_ms={:.0}", store_empty.as_secs_f64() * 1000.0);
    println!("goal_bulk_revoke_{n}_every_session_gone_ms=1000");
    support::ChildGuard::stop_all(clients);
}
