//! Several cas-vpn nodes sharing one store (issue "Many VPN nodes on one PostgreSQL"), for `tests/e2e/nodes.rs` and
//! `benches/nodes.rs`.
//!
//! ```text
//!   node i   (namespace lan.client(i), public_ip 198.51.100.(10+i), its own root, its own `serve all`) ─┐
//!   client j (namespace lan.client(nodes + j), 198.51.100.(10+nodes+j): openvpn or `agent run`) ───────┼─ bridge
//!                                                                    (the Internet switch, lan.server()) ─┘
//!   every node ── unix socket (a file: reachable from any namespace) ──► one PostgreSQL database (`PgDb`)
//! ```
//!
//! A node is a whole installation root (`config/`, `pki/`): node 1 is made with `init`; every further node is a
//! copy of node 1's `config/` and `pki/` (nothing else: not `db/`, `run/`, `vpn/`) with its own `public_ip` (in
//! `config/network`) and name (`node=` in `config/vpn`), then `init` again (idempotent), as an operator would add a
//! machine. Node names are `n1`, `n2`, … (index 0 is `n1`). The service addresses (master, gate, admin) are the
//! same on every node: each node is its own namespace, as each would be its own machine.
//!
//! The CLI runs in the host namespace against a node's root (the store and the control socket are files). Queries
//! that only read the store go through a node whose `serve vpn` is not stopped (`status` asks the control socket
//! too, and a stopped process would make it wait).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::deploy::{ADMIN_IP, GATE_IP, MASTER_IP, bin};
use super::openvpn::INIT_COMPLETED;
use super::pg::PgDb;
use super::{ChildGuard, Lan, Netns, openvpn_client, temp_dir, wait_until};

/// How often a node's gate re-reads the nodes its profiles list as `remote`s (`src/gate`'s `NODES_EVERY`).
pub const GATE_NODES_EVERY: Duration = Duration::from_secs(5);

/// How long a node's `serve all` may take to have every instance ready and to be registered.
pub const START: Duration = Duration::from_secs(40);

/// Lines an openvpn client prints when the server turned it away or went away (TLS refused, denied, reset).
pub fn refused(l: &str) -> bool {
    ["AUTH_FAILED", "TLS Error", "VERIFY ERROR", "Connection reset", "TLS key negotiation failed", "SIGUSR1"]
        .iter()
        .any(|s| l.contains(s))
}

/// The node address an openvpn log line names (`… with [AF_INET]198.51.100.11:7742`), if any.
pub fn peer_address(line: &str) -> Option<Ipv4Addr> {
    let rest = &line[line.find("[AF_INET]")? + "[AF_INET]".len()..];
    rest.split(':').next()?.parse().ok()
}

/// Where the nodes' store is.
enum Store {
    /// One PostgreSQL database for every node.
    Postgres(PgDb),
    /// Node 1's own SQLite file, which every other node is pointed at (a refused set-up: SQLite serves one node).
    Sqlite,
}

pub struct Cluster {
    // Field order is drop order: the services stop first, then the namespaces go, then the roots, the database last.
    serves: Vec<Option<ChildGuard>>,
    /// `serve all`s killed by [`Cluster::kill9`], kept for their logs.
    killed: Vec<ChildGuard>,
    pub lan: Lan,
    roots: Vec<tempfile::TempDir>,
    /// `CAS_VPN_DATABASE_URL` of each node (`None`: its own SQLite store).
    urls: Vec<Option<String>>,
    /// Nodes whose `serve vpn` is stopped (SIGSTOP): never asked anything.
    stopped: Vec<bool>,
    /// When each node's `serve all` was last started, and when it was seen registered and live after that.
    started: Vec<Option<Instant>>,
    registered: Vec<Option<Instant>>,
    nodes: usize,
    store: Store,
}

impl Cluster {
    /// `nodes` nodes on one fresh PostgreSQL database (`CAS_VPN_TEST_PG_URL`; panics without it) and `clients`
    /// client namespaces, all on one LAN. `vpn` adds config/vpn keys (every node gets the same). Nothing is served
    /// yet: call [`Cluster::start_all`].
    pub fn postgres(nodes: usize, clients: usize, vpn: &[(&str, &str)]) -> Cluster {
        let db = PgDb::create();
        let url = db.socket_url.clone();
        Cluster::build(nodes, clients, vpn, Store::Postgres(db), |_, _| Some(url.clone()))
    }

    /// `nodes` roots sharing node 1's SQLite file: node 1 uses its own store, the others are pointed at that file
    /// with `CAS_VPN_DATABASE_URL=sqlite://…`.
    pub fn sqlite(nodes: usize, clients: usize) -> Cluster {
        Cluster::build(nodes, clients, &[], Store::Sqlite, |i, first_root| {
            (i > 0).then(|| format!("sqlite://{}", first_root.join("db/cas-vpn.sqlite").display()))
        })
    }

    fn build(
        nodes: usize,
        clients: usize,
        vpn: &[(&str, &str)],
        store: Store,
        url_of: impl Fn(usize, &Path) -> Option<String>,
    ) -> Cluster {
        assert!((1..=9).contains(&nodes), "1 to 9 nodes");
        let lan = Lan::new(nodes + clients);
        let mut c = Cluster {
            serves: (0..nodes).map(|_| None).collect(),
            killed: Vec::new(),
            lan,
            roots: Vec::new(),
            urls: Vec::new(),
            stopped: vec![false; nodes],
            started: vec![None; nodes],
            registered: vec![None; nodes],
            nodes,
            store,
        };
        for i in 0..nodes {
            let root = temp_dir(&format!("node{}-", i + 1));
            let url = url_of(i, c.roots.first().map_or(root.path(), |r| r.path()));
            c.roots.push(root);
            c.urls.push(url);
            if i == 0 {
                std::fs::create_dir_all(c.root(0).join("config")).unwrap();
                std::fs::write(
                    c.root(0).join("config/network"),
                    format!(
                        "public_ip={}\nmaster_bind_ip={MASTER_IP}\ngate_bind_ip={GATE_IP}\nadmin_bind_ip={ADMIN_IP}\n",
                        c.address(0)
                    ),
                )
                .unwrap();
                c.ok(0, &["init"]);
                // Two terminal instances a node (not eleven): three nodes on two shared cores.
                let mut keys = vec![
                    ("terminal_subnet", "198.18.0.0/16"),
                    ("admin_subnet", "198.19.0.0/23"),
                    ("interface", "cvsvc0"),
                    ("terminal_ports", "13000-13001"),
                ];
                keys.extend_from_slice(vpn);
                set_keys(&c.root(0).join("config/vpn"), &keys);
            } else {
                // A further node: node 1's config/ and pki/, nothing else.
                for dir in ["config", "pki"] {
                    let out =
                        Command::new("cp").arg("-a").arg(c.root(0).join(dir)).arg(c.root(i)).output().expect("cp");
                    assert!(out.status.success(), "cp -a {dir}: {}", String::from_utf8_lossy(&out.stderr));
                }
                set_keys(&c.root(i).join("config/network"), &[("public_ip", &c.address(i).to_string())]);
            }
            set_keys(&c.root(i).join("config/vpn"), &[("node", &c.name(i))]);
            c.ok(i, &["init"]);
        }
        c
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// `n1`, `n2`, … for node 0, 1, ….
    pub fn name(&self, node: usize) -> String {
        format!("n{}", node + 1)
    }

    /// The node's public address: 198.51.100.(10+node).
    pub fn address(&self, node: usize) -> Ipv4Addr {
        self.lan.client_ip(node)
    }

    /// The node whose public address is `ip`.
    pub fn node_at(&self, ip: Ipv4Addr) -> Option<usize> {
        (0..self.nodes).find(|&i| self.address(i) == ip)
    }

    pub fn root(&self, node: usize) -> &Path {
        self.roots[node].path()
    }

    /// The namespace node `node` runs in.
    pub fn node_ns(&self, node: usize) -> &Netns {
        self.lan.client(node)
    }

    /// Client namespace `j`.
    pub fn client_ns(&self, j: usize) -> &Netns {
        self.lan.client(self.nodes + j)
    }

    /// The PostgreSQL database (panics on the SQLite set-up).
    pub fn db(&self) -> &PgDb {
        match &self.store {
            Store::Postgres(db) => db,
            Store::Sqlite => panic!("this cluster runs on SQLite"),
        }
    }

    fn env(&self, node: usize, cmd: &mut Command) {
        cmd.env("CAS_VPN_ROOT", self.root(node)).env("CAS_VPN_SERVICE_USERS", "none").env_remove("SSH_CONNECTION");
        match &self.urls[node] {
            Some(url) => cmd.env("CAS_VPN_DATABASE_URL", url),
            None => cmd.env_remove("CAS_VPN_DATABASE_URL"),
        };
    }

    /// `cas-vpn ARGS` on node `node`'s root (in the host namespace).
    pub fn cli(&self, node: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        self.env(node, &mut cmd);
        cmd.args(args).output().unwrap()
    }

    /// [`Cluster::cli`] that must succeed; its stdout.
    pub fn ok(&self, node: usize, args: &[&str]) -> String {
        let out = self.cli(node, args);
        assert!(
            out.status.success(),
            "cas-vpn {args:?} on {}: {}{}",
            self.name(node),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `cas-vpn ARGS --json` on node `node`'s root, parsed.
    pub fn json(&self, node: usize, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(node, &a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("cas-vpn {a:?}: not JSON ({e}): {text}"))
    }

    /// A command running the cas-vpn binary inside node `node`'s namespace with its root and store.
    pub fn node_cmd(&self, node: usize, args: &[&str]) -> Command {
        let mut cmd = self.node_ns(node).cmd(bin());
        self.env(node, &mut cmd);
        cmd.env("RUST_LOG", "info").args(args);
        cmd
    }

    /// Starts `serve all` on node `node` in its namespace and waits until every VPN instance is ready and the node
    /// is registered and live; returns how long that took.
    pub fn start(&mut self, node: usize) -> Duration {
        assert!(self.serves[node].is_none(), "{} already serves", self.name(node));
        let t0 = Instant::now();
        self.started[node] = Some(t0);
        let cmd = self.node_cmd(node, &["serve", "all"]);
        self.serves[node] = Some(ChildGuard::spawn(format!("serve-{}", self.name(node)), cmd));
        self.wait_ready(node, START);
        let name = self.name(node);
        wait_until(&format!("{name} is registered and live"), START, || {
            self.node_entry(&name).is_some_and(|n| n["live"] == true)
        });
        self.registered[node] = Some(Instant::now());
        t0.elapsed()
    }

    /// When node `node`'s `serve all` was last started.
    pub fn started_at(&self, node: usize) -> Instant {
        self.started[node].unwrap_or_else(|| panic!("{} never started", self.name(node)))
    }

    /// Waits until node `node`'s gate hands out profiles listing every node: it re-reads the nodes every
    /// `GATE_NODES_EVERY` and logs "profiles now list N node address(es)" when the list changes.
    pub fn wait_gate_knows_every_node(&self, node: usize) {
        let serve = self.serves[node].as_ref().unwrap_or_else(|| panic!("{} is not serving", self.name(node)));
        let want = format!("profiles now list {} node address(es)", self.nodes);
        serve.wait_for_line(|l| l.contains(&want), GATE_NODES_EVERY * 3);
    }

    /// Starts every node, one after the other (profiles made after this list every node).
    pub fn start_all(&mut self) {
        for i in 0..self.nodes {
            let took = self.start(i);
            eprintln!("{} serves after {took:?}", self.name(i));
        }
    }

    /// Waits until node `node`'s `serve vpn` reports every planned instance running and ready.
    pub fn wait_ready(&self, node: usize, timeout: Duration) {
        wait_until(&format!("every instance of {} is ready", self.name(node)), timeout, || {
            let out = self.cli(node, &["status", "--json"]);
            let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return false };
            let planned = s["instances"].as_array().map_or(0, Vec::len);
            let running = s["running"].as_array().cloned().unwrap_or_default();
            planned > 0 && running.len() == planned && running.iter().all(|i| i["ready"] == true)
        });
    }

    /// Node `node`'s `serve all`, to read its log.
    pub fn serve_log(&self, node: usize) -> &ChildGuard {
        self.serves[node].as_ref().unwrap_or_else(|| panic!("{} does not serve", self.name(node)))
    }

    /// Whether node `node`'s `serve all` still runs.
    pub fn serving(&self, node: usize) -> bool {
        self.serves[node].as_ref().is_some_and(ChildGuard::is_running)
    }

    /// kill -9 of node `node`'s `serve all` (the launcher); its children (services, openvpn) die with it by their
    /// parent-death signal. Waits until no openvpn is left in the node's namespace; returns when the kill was sent.
    pub fn kill9(&mut self, node: usize) -> Instant {
        let name = self.name(node);
        let mut g = self.serves[node].take().unwrap_or_else(|| panic!("{name} does not serve"));
        let t0 = Instant::now();
        g.signal(Signal::SIGKILL);
        g.wait_exit(Duration::from_secs(5));
        wait_until(&format!("no openvpn left on {name}"), Duration::from_secs(5), || {
            self.openvpn_pids(node).is_empty()
        });
        self.stopped[node] = false;
        // Kept (not dropped) so that a failing test still dumps its last lines.
        self.killed.push(g);
        t0
    }

    /// openvpn processes in node `node`'s namespace.
    pub fn openvpn_pids(&self, node: usize) -> Vec<i32> {
        self.node_ns(node).pids_of("openvpn")
    }

    /// The pid of node `node`'s `serve vpn` (a child of its `serve all`), from `status`.
    pub fn serve_vpn_pid(&self, node: usize) -> i32 {
        let s = self.json(node, &["status"]);
        let vpn = s["services"].as_array().unwrap().iter().find(|s| s["service"] == "vpn").cloned().unwrap_or_default();
        assert_eq!(vpn["running"], true, "{}: serve vpn does not run: {s}", self.name(node));
        vpn["pid"].as_i64().unwrap_or_else(|| panic!("no pid of serve vpn in {vpn}")) as i32
    }

    /// SIGSTOP to node `node`'s `serve vpn`: it stops answering (heartbeats, events, the front relay), its openvpn
    /// children keep their sessions. Returns its pid for [`Cluster::sigcont`].
    pub fn sigstop(&mut self, node: usize) -> i32 {
        let pid = self.serve_vpn_pid(node);
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        self.stopped[node] = true;
        pid
    }

    /// SIGCONT to the `serve vpn` stopped by [`Cluster::sigstop`].
    pub fn sigcont(&mut self, node: usize, pid: i32) {
        kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
        self.stopped[node] = false;
    }

    /// A node that can answer a read of the store: serving and not stopped, else any not stopped.
    fn viewer(&self) -> usize {
        (0..self.nodes)
            .find(|&i| !self.stopped[i] && self.serving(i))
            .or_else(|| (0..self.nodes).find(|&i| !self.stopped[i]))
            .expect("every node is stopped")
    }

    /// `node list --json` (through any node: the list is the store's).
    pub fn node_list(&self) -> serde_json::Value {
        self.json(self.viewer(), &["node", "list"])
    }

    /// The `node list` entry of node `name`.
    pub fn node_entry(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(self.viewer(), &["node", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list["nodes"].as_array()?.iter().find(|n| n["name"] == name).cloned()
    }

    /// The store's live sessions as (node, common name), from `status --json` (through any node: sessions are
    /// the store's).
    pub fn sessions(&self) -> Vec<(String, String)> {
        let s = self.json(self.viewer(), &["status"]);
        let sessions = s["sessions"].as_array().cloned().unwrap_or_default();
        sessions
            .iter()
            .map(|x| {
                let node =
                    x["node"].as_str().unwrap_or_else(|| panic!("status --json: a session without its node: {x}"));
                (node.to_owned(), x["common_name"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// Sessions of credential `name` the store holds for node `node`.
    pub fn sessions_on(&self, node: usize, name: &str) -> usize {
        let n = self.name(node);
        self.sessions().iter().filter(|(on, cn)| cn == name && *on == n).count()
    }

    /// The nodes (indices) the store has a session of `name` on, one entry per session.
    pub fn nodes_of(&self, name: &str) -> Vec<usize> {
        self.sessions()
            .iter()
            .filter(|(_, cn)| cn == name)
            .filter_map(|(on, _)| (0..self.nodes).find(|&i| self.name(i) == *on))
            .collect()
    }

    /// Waits until the store has exactly `count` sessions of `name` on `node`; returns how long it took.
    pub fn wait_sessions_on(&self, node: usize, name: &str, count: usize, timeout: Duration) -> Duration {
        wait_until(&format!("{count} session(s) of {name} on {}", self.name(node)), timeout, || {
            self.sessions_on(node, name) == count
        })
    }

    /// A terminal with a server-made profile (made on node 1; every node's public address is a `remote` of it);
    /// returns a copy of the profile (revocation deletes the pending one).
    pub fn terminal(&self, name: &str) -> PathBuf {
        let r = self.json(self.viewer(), &["terminal", "add", name, "--server-keygen"]);
        let copy = self.root(0).join(format!("client-{name}.ovpn"));
        std::fs::copy(r["profile"].as_str().unwrap(), &copy).unwrap();
        copy
    }

    /// `terminal show NAME --json`.
    pub fn terminal_show(&self, name: &str) -> serde_json::Value {
        self.json(self.viewer(), &["terminal", "show", name])
    }

    /// The terminal's stable tunnel address, from the store.
    pub fn tunnel_ip(&self, name: &str) -> Ipv4Addr {
        self.terminal_show(name)["tunnel_ip"].as_str().unwrap().parse().unwrap()
    }

    /// Runs an openvpn client (the harness's: `--connect-retry 1 1`, `extra` last) in client namespace `j`.
    pub fn connect(&self, j: usize, profile: &Path, extra: &[&str]) -> ChildGuard {
        openvpn_client(self.client_ns(j), profile, extra)
    }

    /// The node an openvpn client's current (last) connection is with, from its own log (`Peer Connection
    /// Initiated with [AF_INET]ADDR:7742`), looking at lines from `from` (see [`ChildGuard::mark`]) on.
    pub fn client_node(&self, client: &ChildGuard, from: usize) -> Option<usize> {
        since(client, from)
            .iter()
            .rev()
            .filter(|l| l.contains("Peer Connection Initiated"))
            .find_map(|l| peer_address(l))
            .and_then(|ip| self.node_at(ip))
    }

    /// The nodes an openvpn client opened a TCP connection to since line `from` (each once, in order).
    pub fn nodes_tried(&self, client: &ChildGuard, from: usize) -> Vec<usize> {
        let mut tried = Vec::new();
        for l in since(client, from).iter().filter(|l| l.contains("TCP connection established")) {
            if let Some(n) = peer_address(l).and_then(|ip| self.node_at(ip))
                && !tried.contains(&n)
            {
                tried.push(n);
            }
        }
        tried
    }

    /// Waits for a new "Initialization Sequence Completed" of `client` after line `from`; returns how long it took.
    pub fn wait_connected_from(&self, client: &ChildGuard, from: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        client.wait_for_line_from(from, |l| l.contains(INIT_COMPLETED), timeout);
        t0.elapsed()
    }
}

/// The lines `client` printed from line `from` on (see [`ChildGuard::mark`]; the harness keeps 20,000 lines, more
/// than any test here prints, so line indices are positions in [`ChildGuard::lines`]).
pub fn since(client: &ChildGuard, from: usize) -> Vec<String> {
    let lines = client.lines();
    lines.get(from..).map(<[String]>::to_vec).unwrap_or_default()
}

/// The address in 198.18.0.0/15 (the test's terminal and admin subnets) on any interface of `ns`: a terminal's
/// tunnel address, whichever tun device it has (e.g. an `agent run`'s openvpn).
pub fn tunnel_address(ns: &Netns) -> Option<Ipv4Addr> {
    let out = ns.ip(&["-4", "-o", "addr", "show"]).ok()?;
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        let ip: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
        (ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18).then_some(ip)
    })
}

/// The `remote` lines of a profile, in order (`remote HOST PORT`).
pub fn remotes(profile: &Path) -> Vec<String> {
    std::fs::read_to_string(profile)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("remote "))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// A copy of `profile` that tries node address `first` first: the same `remote` lines with `first`'s moved to the
/// front, and without `remote-random`. A test uses it to put a terminal on a chosen node while keeping every other
/// node as its next remotes (what a terminal whose random pick was that node would hold).
pub fn preferring(profile: &Path, first: Ipv4Addr) -> PathBuf {
    rewrite_remotes(profile, first, true, "first")
}

/// A copy of `profile` whose only `remote` is node address `only` (a terminal that can reach that node alone).
pub fn only(profile: &Path, only: Ipv4Addr) -> PathBuf {
    rewrite_remotes(profile, only, false, "only")
}

fn rewrite_remotes(profile: &Path, node: Ipv4Addr, keep_others: bool, tag: &str) -> PathBuf {
    let text = std::fs::read_to_string(profile).unwrap();
    let is_node = |l: &str| l.split_whitespace().nth(1) == Some(node.to_string().as_str());
    let all: Vec<&str> = text.lines().filter(|l| l.starts_with("remote ")).collect();
    let mine: Vec<&str> = all.iter().copied().filter(|l| is_node(l)).collect();
    assert!(!mine.is_empty(), "{} has no remote {node}: {all:?}", profile.display());
    let mut ordered: Vec<&str> = mine.clone();
    if keep_others {
        ordered.extend(all.iter().copied().filter(|l| !is_node(l)));
    }
    let mut out = Vec::new();
    let mut placed = false;
    for l in text.lines() {
        if l.starts_with("remote ") {
            if !placed {
                out.extend(ordered.iter().map(|s| (*s).to_owned()));
                placed = true;
            }
        } else if l.trim() != "remote-random" {
            out.push(l.to_owned());
        }
    }
    let stem = profile.file_stem().unwrap().to_string_lossy().into_owned();
    let path = profile.with_file_name(format!("{stem}.{tag}-{node}.ovpn"));
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    path
}

/// Rewrites keys of a `key=value` file: their old lines go, the new ones are appended.
pub fn set_keys(path: &Path, keys: &[(&str, &str)]) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !keys.iter().any(|(k, _)| l.starts_with(&format!("{k}="))))
        .map(str::to_owned)
        .collect();
    lines.extend(keys.iter().map(|(k, v)| format!("{k}={v}")));
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Median and p-th percentile helpers for figures.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
