//! VPN runtime figures with real openvpn in network namespaces (root): `serve` cold start to every terminal
//! instance ready, revoke → session gone, and 200 real terminal clients connected at once with cas-vpn's RSS.
//! Run: `scripts/bench-vpn` (or `cargo bench --bench vpn`). Prints `name=value` lines.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::deploy::Deployment;
use support::openvpn::INIT_COMPLETED;
use support::{openvpn_client, require_root, wait_until};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cold_start() {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut d = Deployment::new(1, &[]);
        runs.push(d.start().as_secs_f64() * 1000.0);
    }
    println!("serve_cold_start_11_instances_ms_median={:.0}", percentile(&mut runs, 0.5));
    println!("serve_cold_start_11_instances_ms_max={:.0}", percentile(&mut runs, 1.0));
}

fn revoke_latency() {
    const N: usize = 10;
    let (d, clients) = Deployment::with_connected_terminals(N);
    let (mut cmd_ms, mut gone_ms) = (Vec::new(), Vec::new());
    for (i, c) in clients.iter().enumerate() {
        let mark = c.mark();
        let t0 = Instant::now();
        d.ok(&["revoke", &format!("atm-{i}")]);
        cmd_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        c.wait_for_line_from(mark, |l| l.contains("Connection reset") || l.contains("SIGUSR1"), Duration::from_secs(5));
        gone_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("revoke_command_ms_median={:.1}", percentile(&mut cmd_ms, 0.5));
    println!("revoke_to_client_disconnected_ms_median={:.1}", percentile(&mut gone_ms.clone(), 0.5));
    println!("revoke_to_client_disconnected_ms_max={:.1}", percentile(&mut gone_ms, 1.0));
}

fn two_hundred_clients() {
    const N: usize = 200;
    let mut d = Deployment::new(1, &[]);
    let csv = d.root().join("names.csv");
    std::fs::write(&csv, (0..N).map(|i| format!("atm-{i:03}\n")).collect::<String>()).unwrap();
    let out = d.root().join("profiles");
    d.ok(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]);
    d.start();
    let serve_pid = d.serve_guard().pid();
    let idle_rss = rss_kib(serve_pid);
    let ns = d.lan.client(0);
    let t0 = Instant::now();
    // All in one namespace: routes are not executed (200 tun devices would fight over the same route), the
    // sessions are what is measured.
    let clients: Vec<_> = (0..N)
        .map(|i| {
            openvpn_client(ns, &out.join(format!("atm-{i:03}.ovpn")), &["--route-noexec", "--connect-retry", "1", "5"])
        })
        .collect();
    wait_until("every client initialised", Duration::from_secs(120), || {
        clients.iter().all(|c| c.contains(INIT_COMPLETED))
    });
    let connected = t0.elapsed();
    wait_until("200 sessions in the store", Duration::from_secs(60), || {
        d.status()["sessions"].as_array().map_or(0, Vec::len) == N
    });
    let rss = rss_kib(serve_pid);
    let spread: Vec<usize> = {
        let s = d.status();
        s["running"].as_array().unwrap().iter().map(|i| i["sessions"].as_u64().unwrap_or(0) as usize).collect()
    };
    println!("clients_200_connect_all_ms={}", connected.as_millis());
    println!("clients_200_sessions_in_store={N}");
    println!("clients_200_sessions_per_instance={spread:?}");
    println!("cas_vpn_rss_idle_mb={:.1}", idle_rss as f64 / 1024.0);
    println!("cas_vpn_rss_200_clients_mb={:.1}", rss as f64 / 1024.0);
    support::ChildGuard::stop_all(clients);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "cold" {
        cold_start();
    }
    if only.is_empty() || only == "revoke" {
        revoke_latency();
    }
    if only.is_empty() || only == "clients" {
        two_hundred_clients();
    }
}
