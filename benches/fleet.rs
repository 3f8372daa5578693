//! A terminal fleet against one `serve all` (root; real openvpn 2.6 clients in network namespaces): issue 13's
//! 2,000-terminal figures, each printed beside its goal.
//!
//! - cold start: every client started (refused while nothing listens, each retrying on its own schedule), then
//!   `serve all` started (the machine boots while its terminals are already knocking) → every client's tunnel up
//!   and every session in the store, timed from `serve all`'s start (starting the clients is timed apart);
//! - one terminal instance killed (`kill -9` of its openvpn) → its terminals back (the supervisor restarts it);
//! - revoke with every session live: 50 revocations one after the other, from the command's start to the
//!   terminal seeing its session end, and the command's own time (median, p99);
//! - the storm: `serve all` stopped (SIGTERM, as `systemctl restart` does) and started again → every terminal
//!   back, with the profile's own retry settings and no intervention (a terminal not back by the deadline is
//!   *stranded*); 50 more revocations run while the storm is under way (median, p99 of the command);
//! - CPU (utime + stime from `/proc/PID/stat`) of cas-vpn (every `serve all` process) and of all openvpn servers
//!   per phase, RSS of the vpn service (the process holding the sessions) and of all cas-vpn processes together,
//!   and management answers (CONNECT/REAUTH) per second during the storm (the instances' answer histograms).
//!
//! The fleet: `FLEET_N` terminals that must come back (default 2000) plus 100 more to revoke (50 before the storm,
//! 50 during it), `FLEET_PER_SOURCE` (default 10) to a client namespace, each namespace its own source address on
//! the test LAN: the front admits 16 pending connections per source and the firewall 20 connections per source,
//! and a fleet in the field has an address per terminal (or a few behind one NAT), so 10 a source keeps both
//! budgets in play as there without shedding anyone. Clients run with the profile as issued (`connect-retry`,
//! `auth-retry`, keepalive pushed by the server) plus `--route-noexec` (many tun devices share a namespace);
//! their logs go to files on a tmpfs (no reader threads: 2,000 clients), read incrementally every 100 ms.
//!
//! `FLEET_CLIENT_SCHED=idle` runs the clients under `SCHED_IDLE` (they get only the CPU the servers leave, as if
//! they were on machines of their own; see `spawn_client`); the default, `normal`, shares the cores evenly.
//!
//! Run: `scripts/bench-fleet` (`FLEET_N=200 scripts/bench-fleet` for a quick run). Prints `name=value` lines.

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use support::deploy::Deployment;
use support::openvpn::INIT_COMPLETED;
use support::require_root;

/// Terminals revoked with every session live, and (as many again) during the storm.
const REVOKED: usize = 50;
const POLL: Duration = Duration::from_millis(100);
/// Threads starting the clients.
const SPAWNERS: usize = 8;
/// Bounds of each phase: what is not done by then is reported (stranded), never waited for longer.
const COLD_DEADLINE: Duration = Duration::from_secs(240);
const BACK_DEADLINE: Duration = Duration::from_secs(180);
/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const HZ: f64 = 100.0;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One openvpn client: its process (own process group) and its log file, read incrementally.
struct Client {
    name: String,
    child: Child,
    log: File,
    log_path: PathBuf,
    partial: Vec<u8>,
    /// When each "Initialization Sequence Completed" was seen.
    ups: Vec<Instant>,
    /// When each line saying the session ended (reset, restart) was seen.
    downs: Vec<Instant>,
    /// Every "Restart pause, N second(s)" seen: N.
    pauses: Vec<u32>,
    auth_failed: usize,
    /// The tunnel is up as of the last line read.
    up_now: bool,
    /// When each line matching one of [`WHY`] was seen, and which.
    events: Vec<(Instant, usize)>,
    reaped: bool,
}

/// What client log lines say about a lost or refused connection, tallied per phase.
const WHY: &[&str] = &[
    "Connection reset, restarting [-1]",
    "Connection reset, restarting [0]",
    "Connection refused",
    "AUTH_FAILED",
    "TLS Error",
    "TLS key negotiation failed",
    "Connection timed out",
    "server-pushed",
];

/// What `serve all`'s log says about refusals and slow answers, counted after a phase.
const SERVE_WHY: &[&str] = &[
    "refusing connections",
    "connections refused",
    "store did not answer",
    "store unavailable",
    "client denied",
    "home instance unreachable",
    "management command failed",
    "session batch failed",
    "slow kill",
    "session batch slow",
    "cannot record a session change",
];

impl Client {
    fn poll(&mut self, now: Instant) {
        let mut buf = Vec::new();
        if self.log.read_to_end(&mut buf).is_err() || buf.is_empty() {
            return;
        }
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if line.contains(INIT_COMPLETED) {
                self.ups.push(now);
                self.up_now = true;
            } else if line.contains("Connection reset") || line.contains("SIGUSR1") || line.contains("SIGTERM") {
                self.downs.push(now);
                self.up_now = false;
            } else if let Some(rest) = line.split("Restart pause, ").nth(1)
                && let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok())
            {
                self.pauses.push(n);
            }
            if line.contains("AUTH_FAILED") {
                self.auth_failed += 1;
            }
            if let Some(w) = WHY.iter().position(|w| line.contains(w)) {
                self.events.push((now, w));
            }
        }
    }

    /// Whether the tunnel is up as of the last line read.
    fn is_up(&self) -> bool {
        self.up_now
    }

    fn up_after(&self, t: Instant) -> Option<Instant> {
        self.ups.iter().copied().find(|u| *u >= t)
    }

    fn down_after(&self, t: Instant) -> Option<Instant> {
        self.downs.iter().copied().find(|u| *u >= t)
    }

    fn stop(&mut self) {
        if !self.reaped {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Every client of the run; all stopped (SIGTERM to every group at once, then SIGKILL and reap) on drop, also when
/// the bench panics. The namespaces' own drop kills whatever is left inside them.
struct Fleet {
    clients: Vec<Client>,
}

impl Fleet {
    fn poll(&mut self) {
        let now = Instant::now();
        for c in &mut self.clients {
            c.poll(now);
        }
    }

    /// Polls until `done(clients)` or `deadline` has passed; returns whether it was done.
    fn wait(&mut self, deadline: Instant, mut done: impl FnMut(&[Client]) -> bool) -> bool {
        loop {
            self.poll();
            if done(&self.clients) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.clients.iter().filter(|c| !c.reaped).map(|c| c.child.id() as i32).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self.clients.iter().filter(|c| !c.reaped) {
            let _ = killpg(Pid::from_raw(c.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.clients {
            while !c.reaped && Instant::now() < deadline {
                match c.child.try_wait() {
                    Ok(Some(_)) | Err(_) => c.reaped = true,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            c.stop();
        }
    }
}

/// Starts openvpn with `profile` inside the namespace `netns` (entered with setns between fork and exec: an
/// `ip netns exec` per client would cost more CPU than the client's own start), its output into `log`. No parent-death
/// signal: it would follow the spawning thread, and clients are started from several threads at once; the `Fleet`
/// guard stops them, the namespaces' drop kills what is left inside, and `scripts/e2e-cleanup` a killed run's.
///
/// `idle`: run the client under `SCHED_IDLE` (`FLEET_CLIENT_SCHED=idle`). In the field every terminal has its own
/// CPU; here the 2,100 clients share the server's 2 cores and, at the same priority, take about half of them while
/// the fleet comes back, and every wake-up of a server thread (a store query hops threads twice) waits its turn
/// among hundreds of runnable clients (load average over 200). Niceness does not help: 2,100 clients at nice 19
/// still outweigh 11 servers. Under `SCHED_IDLE` a client runs only when no server thread wants the CPU: the nearer
/// model of a fleet on machines of its own. The README gives both runs.
fn spawn_client(netns: &File, profile: &Path, log: &Path, idle: bool) -> Child {
    let out = File::create(log).expect("client log");
    let err = out.try_clone().expect("client log");
    let mut cmd = Command::new("openvpn");
    cmd.arg("--cd")
        .arg(profile.parent().expect("profile dir"))
        .arg("--config")
        .arg(profile)
        .args(["--verb", "3", "--route-noexec"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let fd = netns.as_raw_fd();
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(std::os::fd::BorrowedFd::borrow_raw(fd), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let param = nix::libc::sched_param { sched_priority: 0 };
            if idle && nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start openvpn")
}

/// `(utime + stime)` of `pid` in seconds (0 when it is gone).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / HZ
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// `serve all` (the launcher) and its service children (not their openvpn processes).
fn cas_vpn_pids(launcher: i32) -> Vec<i32> {
    let mut pids = vec![launcher];
    let Ok(dir) = std::fs::read_dir("/proc") else { return pids };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if ppid(pid) == Some(launcher) && cmdline(pid).contains(" serve ") {
            pids.push(pid);
        }
    }
    pids
}

/// The vpn service among `serve all`'s children.
fn vpn_pid(launcher: i32) -> Option<i32> {
    cas_vpn_pids(launcher).into_iter().skip(1).find(|p| cmdline(*p).trim_end().ends_with("serve vpn"))
}

/// CPU seconds so far of cas-vpn's processes and of the openvpn servers.
struct Cpu {
    cas_vpn: f64,
    servers: f64,
    clients: f64,
    at: Instant,
}

fn cpu(d: &Deployment, launcher: i32, fleet: &Fleet) -> Cpu {
    Cpu {
        cas_vpn: cas_vpn_pids(launcher).into_iter().map(cpu_seconds).sum(),
        servers: d.server_openvpn_pids().into_iter().map(cpu_seconds).sum(),
        clients: fleet.pids().into_iter().map(cpu_seconds).sum(),
        at: Instant::now(),
    }
}

fn print_cpu(phase: &str, from: &Cpu, to: &Cpu) {
    let secs = (to.at - from.at).as_secs_f64();
    let pct = |a: f64, b: f64| 100.0 * (b - a).max(0.0) / secs;
    println!(
        "{phase}_cpu_percent_of_one_core cas_vpn={:.0} openvpn_servers={:.0} openvpn_clients={:.0} (over {secs:.1} s)",
        pct(from.cas_vpn, to.cas_vpn),
        pct(from.servers, to.servers),
        pct(from.clients, to.clients)
    );
}

fn print_rss(phase: &str, launcher: i32) {
    let vpn = vpn_pid(launcher).map_or(f64::NAN, rss_mib);
    let all: f64 = cas_vpn_pids(launcher).into_iter().map(rss_mib).sum();
    // RSS counts the binary's pages it touched too (shared with the other services; a debug build's are many):
    // the anonymous part is what the process itself holds.
    // Pss shares each page among the processes that map it (the services run the same binary).
    let rollup = |field: &str| {
        vpn_pid(launcher).map_or(f64::NAN, |p| {
            let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            let kib: f64 = rollup
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(f64::NAN);
            kib / 1024.0
        })
    };
    println!("{phase}_cas_vpn_serve_vpn_rss_mb={vpn:.1}  (goal <= 40)");
    println!("{phase}_cas_vpn_serve_vpn_anonymous_mb={:.1}", rollup("Anonymous:"));
    println!("{phase}_cas_vpn_serve_vpn_pss_mb={:.1}", rollup("Pss:"));
    println!("{phase}_cas_vpn_all_services_rss_mb={all:.1}");
}

/// Sessions in the store, by common name.
fn stored_sessions(d: &Deployment) -> Vec<String> {
    let s = d.status();
    s["sessions"]
        .as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(|s| s["common_name"].as_str().map(str::to_owned)).collect())
}

/// Every instance's answer count and latency sum since it started.
fn answers(d: &Deployment) -> (u64, f64) {
    let s = d.status();
    let running = s["running"].as_array().cloned().unwrap_or_default();
    running.iter().fold((0, 0.0), |(n, sum), i| {
        (n + i["answers"]["count"].as_u64().unwrap_or(0), sum + i["answers"]["sum_seconds"].as_f64().unwrap_or(0.0))
    })
}

fn pauses_summary(fleet: &Fleet, idx: &[usize]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for &i in idx {
        for p in &fleet.clients[i].pauses {
            *counts.entry(*p).or_insert(0usize) += 1;
        }
    }
    counts.iter().map(|(p, n)| format!("{p}s:{n}")).collect::<Vec<_>>().join(",")
}

/// Prints when the clients `idx` were (back) up after `t0`: how many, median, p99, last; and the stranded ones.
fn report_back(phase: &str, fleet: &Fleet, idx: &[usize], t0: Instant, goal: &str) -> usize {
    let backs: Vec<f64> = idx.iter().filter_map(|&i| fleet.clients[i].up_after(t0)).map(|u| ms(u - t0)).collect();
    let stranded: Vec<&str> = idx
        .iter()
        .filter(|&&i| fleet.clients[i].up_after(t0).is_none())
        .map(|&i| fleet.clients[i].name.as_str())
        .collect();
    println!("{phase}_back={} of {}", backs.len(), idx.len());
    println!("{phase}_stranded={}", stranded.len());
    println!("{phase}_to_up_ms_median={:.0}", percentile(&backs, 0.5));
    println!("{phase}_to_up_ms_p99={:.0}", percentile(&backs, 0.99));
    println!("{phase}_to_all_up_ms={:.0}  (goal {goal})", percentile(&backs, 1.0));
    println!("{phase}_client_restart_pauses={}", pauses_summary(fleet, idx));
    if let Some(&first) = idx.iter().find(|&&i| fleet.clients[i].up_after(t0).is_none()) {
        eprintln!(
            "----- {phase}: stranded client {} (last lines) -----\n{}",
            fleet.clients[first].name,
            fleet.clients[first].tail(25)
        );
    }
    stranded.len()
}

/// Client log lines of [`WHY`] seen since `t0`, summed over the fleet.
fn print_why(phase: &str, fleet: &Fleet, t0: Instant) {
    let mut counts = vec![0usize; WHY.len()];
    for c in &fleet.clients {
        for (at, w) in &c.events {
            if *at >= t0 {
                counts[*w] += 1;
            }
        }
    }
    let text: Vec<String> =
        WHY.iter().zip(&counts).filter(|(_, n)| **n > 0).map(|(w, n)| format!("{w:?}:{n}")).collect();
    println!("{phase}_client_log_lines={}", text.join(" "));
    let worst = fleet.clients.iter().max_by_key(|c| c.events.iter().filter(|(at, _)| *at >= t0).count());
    if let Some(c) = worst.filter(|c| c.events.iter().any(|(at, _)| *at >= t0)) {
        eprintln!(
            "----- {phase}: the client with most lost connections, {} (last lines) -----\n{}",
            c.name,
            c.tail(40)
        );
    }
}

/// Lines of `serve all`'s log (still kept) matching [`SERVE_WHY`], from line `from` on.
fn print_serve_why(phase: &str, d: &Deployment, from: usize) {
    let lines = d.serve_log().lines();
    let skip = from.saturating_sub(d.serve_log().mark().saturating_sub(lines.len()));
    let mut counts = vec![0usize; SERVE_WHY.len()];
    for l in lines.iter().skip(skip) {
        if let Some(w) = SERVE_WHY.iter().position(|w| l.contains(w)) {
            counts[w] += 1;
        }
    }
    let text: Vec<String> =
        SERVE_WHY.iter().zip(&counts).filter(|(_, n)| **n > 0).map(|(w, n)| format!("{w:?}:{n}")).collect();
    println!("{phase}_serve_log_lines={} (of {} lines)", text.join(" "), lines.len().saturating_sub(skip));
    // The first line of each kind.
    for w in SERVE_WHY {
        if let Some(example) = lines.iter().skip(skip).find(|l| l.contains(w)) {
            println!("{phase}_serve_log_example={}", example.chars().take(300).collect::<String>());
        }
    }
}

/// Revokes `names` one after the other; the command's time of each (ms) and the failures (a revocation whose
/// kill the running service did not confirm in time exits 1: counted, with its time, and said once).
fn revoke_all(d: &Deployment, names: &[String]) -> (Vec<f64>, usize) {
    let mut failed = 0;
    // The slowest revocation's own log (debug, with sqlx's slow statements), to say where its time went.
    let mut slowest: (f64, String) = (0.0, String::new());
    let times = names
        .iter()
        .map(|n| {
            let t0 = Instant::now();
            let out = d.cli_with_env(&["revoke", n], &[("RUST_LOG", "cas_vpn=debug,sqlx=debug")]);
            let took = ms(t0.elapsed());
            if !out.status.success() {
                failed += 1;
                if failed == 1 {
                    eprintln!("revoke {n}: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
            if took > slowest.0 {
                slowest = (took, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            took
        })
        .collect();
    if slowest.0 > 100.0 {
        eprintln!("----- the slowest revoke, {:.0} ms: its log -----\n{}", slowest.0, slowest.1.trim());
    }
    (times, failed)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    let n = env_usize("FLEET_N", 2000);
    let per_source = env_usize("FLEET_PER_SOURCE", 10).max(1);
    let idle = match std::env::var("FLEET_CLIENT_SCHED").as_deref() {
        Ok("idle") => true,
        Ok("normal") | Err(_) => false,
        Ok(other) => panic!("FLEET_CLIENT_SCHED={other}: expected idle or normal"),
    };
    let total = n + 2 * REVOKED;
    let sources = total.div_ceil(per_source);
    println!("fleet_terminals={n} (+{} revoked during the run)", 2 * REVOKED);
    println!(
        "fleet_clients_per_source_address={per_source} source_addresses={sources} client_sched={}",
        if idle { "idle" } else { "normal" }
    );
    println!("load_average_at_start={}", load_average());

    let mut d = Deployment::new(sources, &[]);
    let names: Vec<String> = (0..total).map(|i| format!("atm-{i:04}")).collect();
    let csv = d.root().join("names.csv");
    std::fs::write(&csv, names.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let out = d.root().join("profiles");
    d.ok(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]);
    // The clients' logs (2,100 files written all through the storm) on a tmpfs: in the field each is on its
    // terminal's own disk. On the server's disk their writeback joined every fsync the server makes (a revocation's
    // store commit and CRL), and the revocations measured the harness's disk. Removed when the run ends.
    let logs_dir = tempfile::Builder::new().prefix("cas-vpn-fleet-logs-").tempdir_in("/dev/shm").expect("tmpfs");
    let logs = logs_dir.path().to_path_buf();
    let netns: Vec<File> = d
        .lan
        .clients()
        .iter()
        .map(|ns| File::open(format!("/run/netns/{}", ns.name())).expect("open the namespace"))
        .collect();
    // Which clients play which part: the fleet, revoked before the storm, revoked during it.
    let fleet_idx: Vec<usize> = (0..n).collect();
    let steady_idx: Vec<usize> = (n..n + REVOKED).collect();
    let storm_idx: Vec<usize> = (n + REVOKED..total).collect();

    // Cold start: the fleet is already knocking (every client started, refused while nothing listens, retrying on
    // its own schedule) when `serve all` starts, as when the server boots while its terminals run. Starting 2,100
    // openvpn processes takes this machine's 2 cores tens of seconds: work each terminal does on its own CPU in the
    // field, so it is timed apart, and the figure runs from `serve all`'s start.
    let spawn_t0 = Instant::now();
    let mut fleet = Fleet { clients: Vec::with_capacity(total) };
    // Started from SPAWNERS threads at once (a terminal fleet does not boot one by one), each client pushed into
    // the guard as soon as it runs, so a failure halfway still stops every one already started.
    let guard = std::sync::Mutex::new(&mut fleet);
    std::thread::scope(|s| {
        for part in 0..SPAWNERS {
            let (guard, names, netns, logs, out, idle) = (&guard, &names, &netns, &logs, &out, idle);
            s.spawn(move || {
                for (i, name) in names.iter().enumerate().skip(part).step_by(SPAWNERS) {
                    let log = logs.join(format!("{name}.log"));
                    let child = spawn_client(&netns[i / per_source], &out.join(format!("{name}.ovpn")), &log, idle);
                    let client = Client {
                        name: name.clone(),
                        child,
                        log: File::open(&log).unwrap(),
                        log_path: log,
                        partial: Vec::new(),
                        ups: Vec::new(),
                        downs: Vec::new(),
                        pauses: Vec::new(),
                        auth_failed: 0,
                        up_now: false,
                        events: Vec::new(),
                        reaped: false,
                    };
                    guard.lock().unwrap_or_else(|e| e.into_inner()).clients.push(client);
                }
            });
        }
    });
    // Back in name order: the index of a client is the index of its name.
    fleet.clients.sort_by(|a, b| a.name.cmp(&b.name));
    let spawned = spawn_t0.elapsed();
    let t0 = Instant::now();
    d.start_service_without_vpn("all");
    let launcher = d.serve_guard().pid() as i32;
    let cpu0 = Cpu { cas_vpn: 0.0, servers: 0.0, clients: cpu(&d, launcher, &fleet).clients, at: t0 };
    fleet.wait(t0 + COLD_DEADLINE, |c| c.iter().all(|c| !c.ups.is_empty()));
    let all_idx: Vec<usize> = (0..total).collect();
    println!("cold_clients_spawned_ms={:.0}  (before serve all starts)", ms(spawned));
    let cold_stranded = report_back("cold", &fleet, &all_idx, t0, "<= 30000, from serve all's start");
    print_why("cold", &fleet, t0);
    print_serve_why("cold", &d, 0);
    let cpu1 = cpu(&d, launcher, &fleet);
    print_cpu("cold", &cpu0, &cpu1);
    println!("load_average_after_cold_start={}", load_average());
    wait_store(&d, &fleet, total - cold_stranded);
    print_rss("steady", launcher);
    let (answered, sum) = answers(&d);
    println!("cold_management_answers={answered} mean_ms={:.1}", 1000.0 * sum / answered.max(1) as f64);

    // One instance killed: its terminals come back by themselves.
    {
        let victim = "terminal-0";
        let on_victim: Vec<usize> = {
            let s = d.status();
            let names_on: Vec<String> = s["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["instance"] == victim)
                .filter_map(|s| s["common_name"].as_str().map(str::to_owned))
                .collect();
            (0..total).filter(|&i| names_on.contains(&fleet.clients[i].name)).collect()
        };
        let pid = d
            .server_openvpn_pids()
            .into_iter()
            .find(|p| cmdline(*p).contains(&format!("{victim}.conf")) || cmdline(*p).contains(&format!("/{victim}/")))
            .expect("the instance's openvpn");
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        fleet.wait(t0 + BACK_DEADLINE, |c| on_victim.iter().all(|&i| c[i].up_after(t0).is_some()));
        report_back("instance_kill", &fleet, &on_victim, t0, "its terminals back, no goal given");
        print_why("instance_kill", &fleet, t0);
    }

    // Revoke with every session live.
    {
        let (mut command, mut ended, mut failures) = (Vec::new(), Vec::new(), 0);
        for &i in &steady_idx {
            let t0 = Instant::now();
            let (_, failed) = revoke_all(&d, std::slice::from_ref(&fleet.clients[i].name));
            command.push(ms(t0.elapsed()));
            failures += failed;
            fleet.wait(t0 + Duration::from_secs(5), |c| c[i].down_after(t0).is_some());
            ended.push(fleet.clients[i].down_after(t0).map_or(f64::NAN, |u| ms(u - t0)));
            // A revoked client retries forever: stop it so the next measurement does not share the cores with it.
            fleet.clients[i].stop();
        }
        println!("revoke_live_count={REVOKED} with {} live sessions, failed={failures}", stored_sessions(&d).len());
        println!("revoke_live_command_ms_median={:.1}", percentile(&command, 0.5));
        println!("revoke_live_command_ms_p99={:.1}", percentile(&command, 0.99));
        println!(
            "revoke_live_to_session_end_ms_median={:.1}  (poll resolution {} ms)",
            percentile(&ended, 0.5),
            POLL.as_millis()
        );
        println!("revoke_live_to_session_end_ms_p99={:.1}", percentile(&ended, 0.99));
    }

    // The storm: serve restarted; revocations while the fleet comes back.
    let storm_names: Vec<String> = storm_idx.iter().map(|&i| fleet.clients[i].name.clone()).collect();
    let before = cpu(&d, launcher, &fleet);
    let t0 = Instant::now();
    d.stop_serve();
    let stopped = t0.elapsed();
    d.start_service_without_vpn("all");
    let launcher = d.serve_guard().pid() as i32;
    let back_now = AtomicUsize::new(0);
    let (revoke_ms, revoke_failed, revokes_during) = std::thread::scope(|s| {
        let revoker = s.spawn(|| {
            // Revoke once the herd is arriving (1% back), not into a quiet server.
            let wait_from = Instant::now();
            while back_now.load(Ordering::Relaxed) < n.div_ceil(100) && wait_from.elapsed() < BACK_DEADLINE {
                std::thread::sleep(Duration::from_millis(20));
            }
            let (times, failed) = revoke_all(&d, &storm_names);
            (times, failed, back_now.load(Ordering::Relaxed))
        });
        fleet.wait(t0 + BACK_DEADLINE, |c| {
            let back = fleet_idx.iter().filter(|&&i| c[i].up_after(t0).is_some()).count();
            back_now.store(back, Ordering::Relaxed);
            back == fleet_idx.len()
        });
        revoker.join().expect("revoker")
    });
    println!("storm_serve_stop_ms={:.0}", ms(stopped));
    let stranded = report_back("storm", &fleet, &fleet_idx, t0, "<= 10000, 0 stranded");
    print_why("storm", &fleet, t0);
    print_serve_why("storm", &d, 0);
    let after = cpu(&d, launcher, &fleet);
    // The new processes' CPU is all spent since t0; the clients' is a difference.
    print_cpu("storm", &Cpu { cas_vpn: 0.0, servers: 0.0, clients: before.clients, at: before.at }, &after);
    println!("storm_revoke_count={REVOKED} failed={revoke_failed} (done while {revokes_during} of {n} were back)");
    println!("storm_revoke_command_ms_median={:.1}", percentile(&revoke_ms, 0.5));
    println!("storm_revoke_command_ms_p99={:.1}  (goal <= 100)", percentile(&revoke_ms, 0.99));
    let (answered, sum) = answers(&d);
    let last_back = fleet_idx.iter().filter_map(|&i| fleet.clients[i].up_after(t0)).max().unwrap_or(t0);
    println!(
        "storm_management_answers={answered} per_second={:.0} mean_ms={:.1}",
        answered as f64 / (last_back - t0).as_secs_f64().max(0.001),
        1000.0 * sum / answered.max(1) as f64
    );
    let revoked_back = storm_idx.iter().filter(|&&i| fleet.clients[i].up_after(t0).is_some()).count();
    let stored = stored_sessions(&d);
    let revoked_in_store = storm_names.iter().filter(|n| stored.contains(n)).count();
    println!(
        "storm_revoked_with_a_session_in_store={revoked_in_store}  (must be 0; {revoked_back} were up for a moment before their revocation)"
    );
    let auth_failed: usize = fleet_idx.iter().map(|&i| fleet.clients[i].auth_failed).sum();
    println!("fleet_auth_failed_lines={auth_failed}");
    for &i in &storm_idx {
        fleet.clients[i].stop();
    }
    wait_store(&d, &fleet, n - stranded);
    print_rss("storm_after", launcher);
    println!("load_average_at_end={}", load_average());
    drop(fleet);
    drop(logs_dir);
}

/// Waits (bounded) until the store holds `want` sessions, and says how many it holds; names a few clients whose
/// tunnel is up but whose session the store does not hold.
fn wait_store(d: &Deployment, fleet: &Fleet, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored = stored_sessions(d);
    while stored.len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        stored = stored_sessions(d);
    }
    println!("sessions_in_store={} (want {want})", stored.len());
    let stored: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
    let missing: Vec<&Client> =
        fleet.clients.iter().filter(|c| !c.reaped && c.is_up() && !stored.contains(c.name.as_str())).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(5).map(|c| c.name.as_str()).collect();
        println!("up_without_a_session_in_store={} e.g. {}", missing.len(), names.join(" "));
        eprintln!("----- up without a session: {} (last lines) -----\n{}", missing[0].name, missing[0].tail(15));
    }
}
