//! Figures of many VPN nodes on one PostgreSQL (root, PostgreSQL from `CAS_VPN_TEST_PG_URL`; real openvpn and two
//! `serve all` nodes in network namespaces, `support::cluster`):
//! - cross-node revoke: 50 terminals connected to node n2, each revoked on node n1; from the command's start to the
//!   terminal seeing its session end (median, p99, max; goal p99 ≤ 200 ms), and the command's own time;
//! - failover: 20 terminals on n2 (profiles listing both nodes, n2 first), `kill -9` of n2's `serve all`; from the
//!   kill to each terminal's tunnel being up again on n1 (median, max), with the profile's own retry settings
//!   (`connect-retry 5 60`, as a real terminal has them).
//!
//! Terminals come from several client namespaces, ten a namespace (each node's firewall caps connections per
//! source).
//!
//! Run: `scripts/bench-nodes` (or `cargo bench --bench nodes`). Prints `name=value` lines; `BENCH_ONLY=revoke|failover`.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, percentile, preferring, refused};
use support::openvpn::INIT_COMPLETED;
use support::{ChildGuard, require_root, wait_until};

const REVOKED: usize = 50;
const MOVED: usize = 20;
/// Terminals sharing one client namespace (one source address): each node's firewall lets a source hold at most
/// 20 connections to the front port (`front_max_conns`), and a terminal fleet has an address per terminal anyway.
const PER_SOURCE: usize = 10;
/// Client namespaces: the revoked terminals', then the moved ones'.
const SOURCES: usize = REVOKED.div_ceil(PER_SOURCE) + MOVED.div_ceil(PER_SOURCE);
const T: Duration = Duration::from_secs(120);
const N1: usize = 0;
const N2: usize = 1;

/// `count` terminals `PREFIX-NNN` made in one import on node n1; their profiles (every node a `remote`).
fn import(c: &Cluster, prefix: &str, count: usize) -> Vec<(String, PathBuf)> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:03}")).collect();
    let csv = c.root(N1).join(format!("{prefix}.csv"));
    std::fs::write(&csv, names.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let out = c.root(N1).join(format!("profiles-{prefix}"));
    c.ok(N1, &["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]);
    names.into_iter().map(|n| (n.clone(), out.join(format!("{n}.ovpn")))).collect()
}

/// One openvpn client per profile, `PER_SOURCE` to a client namespace from namespace `first` on (routes not
/// executed: several tun devices there), each preferring node `node`; waits until all are up and their sessions on
/// `node` are in the store.
fn connect_all(
    c: &Cluster,
    terminals: &[(String, PathBuf)],
    first: usize,
    node: usize,
    extra: &[&str],
) -> Vec<ChildGuard> {
    let mut args = vec!["--route-noexec"];
    args.extend_from_slice(extra);
    let clients: Vec<ChildGuard> = terminals
        .iter()
        .enumerate()
        .map(|(i, (_, p))| c.connect(first + i / PER_SOURCE, &preferring(p, c.address(node)), &args))
        .collect();
    wait_until("every client is up", T, || clients.iter().all(|g| g.contains(INIT_COMPLETED)));
    let names: Vec<&str> = terminals.iter().map(|(n, _)| n.as_str()).collect();
    let on = c.name(node);
    wait_until(&format!("every session is on {on}"), T, || {
        let sessions = c.sessions();
        names.iter().all(|n| sessions.iter().any(|(node, cn)| cn == n && *node == on))
    });
    clients
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn revoke(c: &Cluster) {
    let terminals = import(c, "rv", REVOKED);
    let mut clients: Vec<Option<ChildGuard>> = connect_all(c, &terminals, 0, N2, &[]).into_iter().map(Some).collect();
    let (mut command, mut ended) = (Vec::new(), Vec::new());
    for (i, (name, _)) in terminals.iter().enumerate() {
        let client = clients[i].take().expect("connected");
        let mark = client.mark();
        let t0 = Instant::now();
        let r = c.json(N1, &["revoke", name]);
        command.push(ms(t0.elapsed()));
        client.wait_for_line_from(mark, refused, Duration::from_secs(5));
        ended.push(ms(t0.elapsed()));
        let acked = r["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["acknowledged"] == true));
        assert!(acked, "{name}: not every node acknowledged: {r}");
        // A revoked client retries forever: stop it, so the next measurement does not share the cores with it.
        drop(client);
    }
    println!("revoke_cross_node_count={REVOKED}");
    println!("revoke_cross_node_to_session_end_ms_median={:.1}", percentile(&ended, 0.5));
    println!("revoke_cross_node_to_session_end_ms_p99={:.1}  (goal <= 200)", percentile(&ended, 0.99));
    println!("revoke_cross_node_to_session_end_ms_max={:.1}", percentile(&ended, 1.0));
    println!("revoke_command_ms_median={:.1}", percentile(&command, 0.5));
    println!("revoke_command_ms_max={:.1}", percentile(&command, 1.0));
}

fn failover(c: &mut Cluster) {
    let terminals = import(c, "fo", MOVED);
    // The profile's own retry settings (the harness's default is `--connect-retry 1 1`).
    let clients = connect_all(c, &terminals, REVOKED.div_ceil(PER_SOURCE), N2, &["--connect-retry", "5", "60"]);
    let marks: Vec<usize> = clients.iter().map(ChildGuard::mark).collect();
    let t0 = c.kill9(N2);
    let backs: Vec<f64> = std::thread::scope(|s| {
        let watchers: Vec<_> = clients
            .iter()
            .zip(&marks)
            .map(|(g, &mark)| {
                s.spawn(move || {
                    g.wait_for_line_from(mark, |l| l.contains(INIT_COMPLETED), T);
                    ms(t0.elapsed())
                })
            })
            .collect();
        watchers.into_iter().map(|w| w.join().expect("watcher")).collect()
    });
    let moved = clients.iter().zip(&marks).filter(|(g, m)| c.client_node(g, **m) == Some(N1)).count();
    let names: Vec<&str> = terminals.iter().map(|(n, _)| n.as_str()).collect();
    let on = c.name(N1);
    wait_until("every session is on n1 in the store", T, || {
        let sessions = c.sessions();
        names.iter().all(|n| sessions.iter().any(|(node, cn)| cn == n && *node == on))
    });
    let stored = t0.elapsed();
    println!("failover_terminals={MOVED}");
    println!("failover_terminals_on_n1={moved}");
    println!("failover_kill_to_tunnel_up_ms_median={:.0}", percentile(&backs, 0.5));
    println!("failover_kill_to_tunnel_up_ms_max={:.0}  (goal <= 30000, the e2e deadline)", percentile(&backs, 1.0));
    println!("failover_kill_to_every_session_in_store_ms={:.0}", ms(stored));
    ChildGuard::stop_all(clients);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let mut c = Cluster::postgres(2, SOURCES, &[]);
    c.start_all();
    if only.is_empty() || only == "revoke" {
        revoke(&c);
    }
    if only.is_empty() || only == "failover" {
        failover(&mut c);
    }
}
