//! A whole cas-vpn deployment for e2e tests: an installation root configured with test addresses only, `cas-vpn
//! serve vpn` running in the server namespace of a `Lan`, and helpers to make credentials and connect real
//! openvpn clients from the client namespaces. The CLI runs in the host namespace: it talks to the store and to
//! serve's control socket (a filesystem socket), never to the network.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{ChildGuard, Lan, Netns, openvpn_client, temp_dir, wait_until};

/// The server's address on the test LAN: what profiles connect to.
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const MASTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ADMIN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const GATE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cas-vpn")
}

/// `cas-vpn agent pair --gate GATE --token TOKEN --dir DIR` run inside `ns` (a terminal on the Internet side).
pub fn agent_pair(ns: &Netns, gate: &str, token: &str, dir: &Path) -> Output {
    ns.cmd(bin()).args(["agent", "pair", "--gate", gate, "--token", token]).arg("--dir").arg(dir).output().unwrap()
}

pub struct Deployment {
    // Field order is drop order: serve stops before the namespaces go, the root goes last.
    serve: Option<ChildGuard>,
    /// `serve net` and `serve signer` beside a `serve vpn` (stopped after it).
    helpers: Vec<ChildGuard>,
    /// `CAS_VPN_SERVICE_USERS` for every command: `none` (one uid) unless a test asks for real users.
    users: String,
    /// `CAS_VPN_DATABASE_URL` for every command (`None`: the root's SQLite store).
    database_url: Option<String>,
    pub lan: Lan,
    pub root: tempfile::TempDir,
}

impl Deployment {
    /// A LAN with `clients` client namespaces and an initialised root; `vpn` overrides config/vpn keys.
    pub fn new(clients: usize, vpn: &[(&str, &str)]) -> Deployment {
        Deployment::with_users(clients, vpn, "none")
    }

    /// As `new`, with the services under the users of `users` (a prefix, or `none`).
    pub fn with_users(clients: usize, vpn: &[(&str, &str)], users: &str) -> Deployment {
        Deployment::build(clients, vpn, users, None)
    }

    /// As `new`, on the PostgreSQL database at `database_url` (see `support::pg`).
    pub fn on_postgres(clients: usize, vpn: &[(&str, &str)], database_url: &str) -> Deployment {
        Deployment::build(clients, vpn, "none", Some(database_url.to_owned()))
    }

    /// A LAN with `clients` client namespaces and a root made by `cas-vpn restore BACKUP` (the passphrase in
    /// `CAS_VPN_BACKUP_PASSPHRASE`) onto an empty directory, SQLite under it.
    pub fn restored(clients: usize, backup: &Path, passphrase: &str) -> (Deployment, Output) {
        let lan = Lan::new(clients);
        let root = temp_dir("root");
        let d = Deployment { serve: None, helpers: Vec::new(), users: "none".into(), database_url: None, lan, root };
        let mut cmd = Command::new(bin());
        cmd.env("CAS_VPN_ROOT", d.root()).env("CAS_VPN_SERVICE_USERS", "none");
        cmd.env("CAS_VPN_BACKUP_PASSPHRASE", passphrase).env_remove("CAS_VPN_DATABASE_URL");
        let out = cmd.arg("restore").arg(backup).arg("--json").output().unwrap();
        (d, out)
    }

    fn build(clients: usize, vpn: &[(&str, &str)], users: &str, database_url: Option<String>) -> Deployment {
        let lan = Lan::new(clients);
        let root = temp_dir("root");
        std::fs::create_dir_all(root.path().join("config")).unwrap();
        std::fs::write(
            root.path().join("config/network"),
            format!(
                "public_ip={PUBLIC_IP}\nmaster_bind_ip={MASTER_IP}\ngate_bind_ip={GATE_IP}\nadmin_bind_ip={ADMIN_IP}\n"
            ),
        )
        .unwrap();
        let d = Deployment { serve: None, helpers: Vec::new(), users: users.to_owned(), database_url, lan, root };
        d.ok(&["init"]);
        let mut keys =
            vec![("terminal_subnet", "198.18.0.0/16"), ("admin_subnet", "198.19.0.0/23"), ("interface", "cvsvc0")];
        keys.extend_from_slice(vpn);
        d.set_vpn(&keys);
        d
    }

    /// Rewrites keys of config/vpn (replacing their lines).
    pub fn set_vpn(&self, keys: &[(&str, &str)]) {
        self.set_keys("config/vpn", keys);
    }

    /// Rewrites keys of config/firewall (replacing their lines).
    pub fn set_firewall(&self, keys: &[(&str, &str)]) {
        self.set_keys("config/firewall", keys);
    }

    /// Rewrites keys of a `key=value` file under the root: their old lines go, the new ones are appended.
    fn set_keys(&self, file: &str, keys: &[(&str, &str)]) {
        let path = self.root.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !keys.iter().any(|(k, _)| l.starts_with(&format!("{k}="))))
            .map(str::to_owned)
            .collect();
        lines.extend(keys.iter().map(|(k, v)| format!("{k}={v}")));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    /// The CLI run inside the server namespace: for `firewall …`, which lists and installs rules in the namespace
    /// it runs in (the host's firewall is never touched). `env` adds variables (e.g. `SSH_CONNECTION`).
    pub fn server_cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.server().cmd(bin());
        cmd.env("CAS_VPN_ROOT", self.root())
            .env("CAS_VPN_SERVICE_USERS", &self.users)
            .env_remove("SSH_CONNECTION")
            .args(args);
        self.set_database(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// `cas-vpn firewall status --json` in the server namespace.
    pub fn firewall_status(&self) -> serde_json::Value {
        let out = self.server_cli(&["firewall", "status", "--json"], &[]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("firewall status: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    }

    /// Waits until serve net has the plan in force.
    pub fn wait_firewall(&self, timeout: Duration) {
        wait_until("the firewall plan is in force", timeout, || self.firewall_status()["drift"]["drift"] == "in-force");
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn server(&self) -> &Netns {
        self.lan.server()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    /// As [`Deployment::cli`], with `env` set for the command too (e.g. `RUST_LOG`).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.env("CAS_VPN_ROOT", self.root()).env("CAS_VPN_SERVICE_USERS", &self.users).args(args);
        cmd.envs(env.iter().copied());
        self.set_database(&mut cmd);
        cmd.output().unwrap()
    }

    fn set_database(&self, cmd: &mut Command) {
        match &self.database_url {
            Some(url) => cmd.env("CAS_VPN_DATABASE_URL", url),
            None => cmd.env_remove("CAS_VPN_DATABASE_URL"),
        };
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "cas-vpn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Starts `serve net` and `serve signer`, then `serve vpn` (the VPN alone: tests stand their own listeners
    /// in for master and the admin UI) in the server namespace and waits until every instance is ready; returns
    /// how long the VPN took.
    pub fn start(&mut self) -> Duration {
        for helper in ["net", "signer"] {
            let cmd = self.serve_cmd(helper);
            self.helpers.push(ChildGuard::spawn(helper, cmd));
        }
        let master = MASTER_IP.to_string();
        wait_until("serve net put the service addresses up", Duration::from_secs(10), || {
            self.server()
                .cmd("ip")
                .args(["-o", "addr"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&master))
        });
        self.start_service("vpn")
    }

    fn serve_cmd(&self, what: &str) -> Command {
        let mut cmd = self.server().cmd(bin());
        cmd.env("CAS_VPN_ROOT", self.root())
            .env("CAS_VPN_SERVICE_USERS", &self.users)
            .env("RUST_LOG", "info")
            .args(["serve", what]);
        self.set_database(&mut cmd);
        cmd
    }

    /// Starts `serve WHAT` (`vpn` after `start`'s helpers, or `all`: the launcher with every service) and waits
    /// until every VPN instance is ready.
    pub fn start_service(&mut self, what: &str) -> Duration {
        assert!(self.serve.is_none(), "already serving");
        let t0 = Instant::now();
        let cmd = self.serve_cmd(what);
        self.serve = Some(ChildGuard::spawn("serve", cmd));
        self.wait_ready(Duration::from_secs(20));
        t0.elapsed()
    }

    /// Starts `serve WHAT` without waiting for VPN instances (Scenario B plans none): the caller waits for what it
    /// needs.
    pub fn start_service_without_vpn(&mut self, what: &str) {
        assert!(self.serve.is_none(), "already serving");
        let cmd = self.serve_cmd(what);
        self.serve = Some(ChildGuard::spawn("serve", cmd));
    }

    /// Waits until `serve` reports every planned instance running and ready.
    pub fn wait_ready(&self, timeout: Duration) {
        wait_until("every instance is ready", timeout, || {
            let out = self.cli(&["status", "--json"]);
            let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return false };
            let planned = s["instances"].as_array().map_or(0, Vec::len);
            let running = s["running"].as_array().cloned().unwrap_or_default();
            planned > 0 && running.len() == planned && running.iter().all(|i| i["ready"] == true)
        });
    }

    /// The running serve, to read its log.
    pub fn serve_log(&self) -> &ChildGuard {
        self.serve.as_ref().expect("serving")
    }

    pub fn serve_guard(&mut self) -> &mut ChildGuard {
        self.serve.as_mut().expect("serving")
    }

    /// Stops the running serve as an operator's restart does (SIGTERM to its process group, up to 2 s, then
    /// SIGKILL) and waits until it is gone; `start_service` starts it again.
    pub fn stop_serve(&mut self) -> std::process::ExitStatus {
        self.serve.take().expect("serving").stop()
    }

    /// kill -9 of the cas-vpn process itself (not its children: they must go by themselves).
    pub fn kill9_serve(&mut self) {
        let mut g = self.serve.take().expect("serving");
        g.signal(nix::sys::signal::Signal::SIGKILL);
        g.wait_exit(Duration::from_secs(5));
    }

    /// openvpn processes running in the server namespace.
    pub fn server_openvpn_pids(&self) -> Vec<i32> {
        self.server().pids_of("openvpn")
    }

    /// A terminal with a server-made profile; returns a copy of the profile (revocation deletes the pending one).
    pub fn terminal(&self, name: &str) -> PathBuf {
        let r = self.json(&["terminal", "add", name, "--server-keygen"]);
        let copy = self.root().join(format!("client-{name}.ovpn"));
        std::fs::copy(r["profile"].as_str().unwrap(), &copy).unwrap();
        copy
    }

    pub fn tunnel_ip(&self, name: &str) -> Ipv4Addr {
        self.json(&["terminal", "show", name])["tunnel_ip"].as_str().unwrap().parse().unwrap()
    }

    /// An admin credential; returns its profile and port.
    pub fn admin(&self, name: &str) -> (PathBuf, u16) {
        let path = self.root().join(format!("admin-{name}.ovpn"));
        let r = self.json(&["admin-vpn", "issue", name, "--out", path.to_str().unwrap()]);
        (path, r["port"].as_u64().unwrap() as u16)
    }

    /// A deployment serving one terminal per client namespace (`atm-0`, `atm-1`, …), each connected; returns the
    /// clients in namespace order once every tunnel is up.
    pub fn with_connected_terminals(n: usize) -> (Deployment, Vec<ChildGuard>) {
        let mut d = Deployment::new(n, &[]);
        let profiles: Vec<PathBuf> = (0..n).map(|i| d.terminal(&format!("atm-{i}"))).collect();
        d.start();
        let clients: Vec<ChildGuard> = profiles.iter().enumerate().map(|(i, p)| d.connect(i, p)).collect();
        for c in &clients {
            super::wait_initialized(c, Duration::from_secs(20));
        }
        (d, clients)
    }

    /// Runs an openvpn client from client namespace `i`.
    pub fn connect(&self, i: usize, profile: &Path) -> ChildGuard {
        openvpn_client::<&str>(self.lan.client(i), profile, &[])
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    /// Live sessions (from the store) of credential `name`.
    pub fn sessions_of(&self, name: &str) -> usize {
        self.status()["sessions"].as_array().unwrap().iter().filter(|s| s["common_name"] == name).count()
    }

    /// The running instance entry named `name`.
    pub fn instance(&self, name: &str) -> serde_json::Value {
        self.status()["running"].as_array().unwrap().iter().find(|i| i["name"] == name).cloned().unwrap_or_default()
    }
}

/// The text between `<tag>` and `</tag>` in a profile.
pub fn inline(profile: &str, tag: &str) -> String {
    let start = profile.find(&format!("<{tag}>\n")).expect("tag") + tag.len() + 3;
    let end = profile.find(&format!("</{tag}>")).expect("end tag");
    profile[start..end].to_owned()
}

/// A copy of `profile` with its `remote` line pointing at another port (to knock on the wrong instance).
pub fn retarget(profile: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(profile).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("remote ") { format!("remote {PUBLIC_IP} {port}") } else { l.to_owned() })
        .collect();
    let path = profile.with_extension(format!("{port}.ovpn"));
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    path
}
