//! Floods of idle TCP connections, and a legitimate terminal's pairing → VPN → first heartbeat, for the flood test
//! (`tests/e2e/flood.rs`) and its benchmark (`benches/flood.rs`).
//!
//! Bounded: a flood makes at most `ATTEMPTS` connection attempts within `FLOOD_FOR`, at a set rate, only to an
//! address inside the test's own namespaces, and holds what it opened until it is joined.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::deploy::{Deployment, PUBLIC_IP, agent_pair, bin};
use super::{ChildGuard, Netns, spawn_in_netns};

/// Connection attempts per flood.
pub const ATTEMPTS: usize = 5000;
/// No flood runs longer than this.
pub const FLOOD_FOR: Duration = Duration::from_secs(25);
/// Extra source addresses of a many-sources flood.
pub const SOURCES: u8 = 100;

/// Opens up to `ATTEMPTS` connections to `target` from `sources` in turn (none: the route's own address), at most
/// `per_sec` a second, and returns those it opened, still open (the server closes what it refuses; the rest idle).
pub fn flood(
    ns: &Netns,
    label: &str,
    sources: Vec<Ipv4Addr>,
    target: SocketAddr,
    per_sec: u32,
) -> JoinHandle<Vec<std::net::TcpStream>> {
    spawn_in_netns(ns, label, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
            let mut pending = tokio::task::JoinSet::new();
            let mut held = Vec::new();
            for i in 0..ATTEMPTS {
                if started.elapsed() > FLOOD_FOR {
                    break;
                }
                tick.tick().await;
                let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                pending.spawn(async move {
                    let sock = tokio::net::TcpSocket::new_v4().ok()?;
                    if let Some(s) = source {
                        sock.bind(SocketAddr::new(s.into(), 0)).ok()?;
                    }
                    let stream = tokio::time::timeout(Duration::from_secs(2), sock.connect(target)).await.ok()?.ok()?;
                    stream.into_std().ok()
                });
                while let Some(done) = pending.try_join_next() {
                    held.extend(done.ok().flatten());
                }
            }
            while let Some(done) = pending.join_next().await {
                held.extend(done.ok().flatten());
            }
            held
        })
    })
}

/// Gives `ns`'s LAN interface `SOURCES` more addresses (198.51.100.100-199) and returns them.
pub fn add_sources(ns: &Netns) -> Vec<Ipv4Addr> {
    let addrs = ns.ip(&["-o", "-4", "addr", "show"]).unwrap();
    let dev = addrs
        .lines()
        .find(|l| l.contains("198.51.100."))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a LAN interface")
        .to_owned();
    let many: Vec<Ipv4Addr> = (0..SOURCES).map(|i| Ipv4Addr::new(198, 51, 100, 100 + i)).collect();
    for ip in &many {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", &dev]).unwrap();
    }
    many
}

/// How long a new terminal took: pairing through the public gate, then VPN up to its first heartbeat on master.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub pair: Duration,
    pub connect: Duration,
}

impl Timing {
    pub fn total(&self) -> Duration {
        self.pair + self.connect
    }
}

/// Makes terminal `name`, pairs it from `ns` through `public_ip:7741` (a window must be open), runs its agent and
/// waits for its first heartbeat through the tunnel. Returns the timing and the agent (stopped on drop).
pub fn pair_connect_heartbeat(
    d: &Deployment,
    ns: &Netns,
    name: &str,
    dir: &Path,
    within: Duration,
) -> (Timing, ChildGuard) {
    let token = d.ok(&["terminal", "add", name]).trim().to_owned();
    let t0 = Instant::now();
    let out = agent_pair(ns, &format!("{PUBLIC_IP}:7741"), &token, dir);
    if !out.status.success() {
        let log = d.serve_log().lines();
        let tail = log[log.len().saturating_sub(80)..].join("\n");
        panic!("{name}: agent pair: {}\nthe end of serve's log:\n{tail}", String::from_utf8_lossy(&out.stderr));
    }
    let pair = t0.elapsed();
    let t1 = Instant::now();
    let agent = ns.spawn(name, bin(), &["agent", "run", "--dir", dir.to_str().unwrap(), "--heartbeat", "1s"]);
    agent.wait_for_text("heartbeat ok", within);
    (Timing { pair, connect: t1.elapsed() }, agent)
}
