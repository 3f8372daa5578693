//! Flood figures (root; real openvpn and `serve all` in network namespaces): a new terminal's pairing through the
//! public gate and its VPN connect to the first heartbeat on master, without a flood and under each flood of idle
//! connections on its own (5,000 attempts at 400/s: the front 7742 and the gate from one address and from 100,
//! master from inside a compromised terminal's tunnel), with the ratio to no flood and how many connections each
//! flood got opened. Run: `scripts/bench-flood` (or `cargo bench --bench flood`). Prints `name=value` lines.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::deploy::{Deployment, GATE_IP, MASTER_IP, PUBLIC_IP};
use support::flood::{Timing, add_sources, flood, pair_connect_heartbeat};
use support::{require_root, tcp_connect, temp_dir, wait_until};

const T: Duration = Duration::from_secs(60);
/// Terminals measured per case (the median is printed).
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    require_root();
    let mut d = Deployment::new(3, &[]);
    d.start_service("all");
    wait_until("the gate listens", T, || tcp_connect(d.server(), GATE_IP, 7741, Duration::from_secs(1)));
    d.ok(&["pairing", "open", "--for", "1h"]);
    let (legit, attacker) = (d.lan.client(0), d.lan.client(1));
    let x_dir = temp_dir("agent-x");
    let (_, _x_agent) = pair_connect_heartbeat(&d, attacker, "atm-x", x_dir.path(), T);
    let many = add_sources(attacker);

    let mut n = 0;
    let mut measure = |case: &str| -> (f64, f64) {
        let mut timings: Vec<Timing> = Vec::new();
        for _ in 0..RUNS {
            n += 1;
            let dir = temp_dir("agent");
            let (t, agent) = pair_connect_heartbeat(&d, legit, &format!("atm-{n}"), dir.path(), T);
            drop(agent);
            timings.push(t);
        }
        let pair = median(timings.iter().map(|t| t.pair.as_secs_f64() * 1000.0).collect());
        let connect = median(timings.iter().map(|t| t.connect.as_secs_f64() * 1000.0).collect());
        println!("{case}_pair_ms_median={pair:.0}");
        println!("{case}_connect_to_heartbeat_ms_median={connect:.0}");
        (pair, connect)
    };
    let (base_pair, base_connect) = measure("no_flood");

    let front = SocketAddr::new(PUBLIC_IP.into(), 7742);
    let gate = SocketAddr::new(PUBLIC_IP.into(), 7741);
    let master = SocketAddr::new(MASTER_IP.into(), 7741);
    let cases = [
        ("front_1_source", Vec::new(), front),
        ("front_100_sources", many.clone(), front),
        ("gate_1_source", Vec::new(), gate),
        ("gate_100_sources", many.clone(), gate),
        ("master_from_a_tunnel", Vec::new(), master),
    ];
    for (case, sources, target) in cases {
        let f = flood(attacker, case, sources, target, 400);
        // The flood builds up for a second before the terminals start (it runs about 12 s in all).
        std::thread::sleep(Duration::from_secs(1));
        let (pair, connect) = measure(case);
        let opened = f.join().expect("flood thread").len();
        println!("{case}_connections_opened={opened}");
        println!("{case}_pair_ratio={:.2}", pair / base_pair);
        println!("{case}_connect_ratio={:.2}", connect / base_connect);
    }
}
