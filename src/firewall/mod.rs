//! The firewall of `serve net`: a pure, typed rule set ([`Plan`]) computed from the configuration and the store,
//! one pure renderer per backend (`nft`, `iptables`, `ufw`), and the engine that installs a rendered plan and
//! reads back what is installed (through `sys::firewall`, the only code that runs the tools).
//!
//! What the plan says (ARCHITECTURE.md, "Firewall"):
//! - on the public interface only these answer: SSH (`ssh_port`, optionally from listed sources), the terminal
//!   front port (7742, capped per source), the ports of issued, unrevoked admin credentials, 7743 and 443 when
//!   `config/firewall` opens them, and while a pairing window is open 7741 on `public_ip`, DNATed to
//!   `gate_bind_ip:7741` (optionally only from the window's sources, capped per source). Everything else arriving
//!   there is dropped, so it gets no TCP answer at all;
//! - the terminal instances' ports (13000-13010) are not doors: the instances listen on `instance_listen_ip`
//!   (loopback) and every terminal comes in through the front port, which relays to its home instance;
//! - a terminal tunnel (`cvt*`) reaches `master_bind_ip:7741` and nothing else; an admin tunnel (`cva*`)
//!   `admin_bind_ip:7777` and nothing else; nothing is forwarded into, out of or between tunnels;
//! - `master_bind_ip` and `admin_bind_ip` answer only their tunnels (and the host itself, over `lo`).
//!
//! The admin UI's bootstrap mode: with `admin_ui_bootstrap=yes` in `config/firewall`, and only until the first
//! admin VPN session (the store records it), 7777 on `public_ip` is DNATed to `admin_bind_ip:7777`, so the very
//! first admin can set up their account from the Internet. The web UI still binds `admin_bind_ip` only.

pub mod engine;
pub mod iptables;
pub mod nft;
pub mod service;
pub mod ufw;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::app::Ctx;
use crate::config::{Config, FirewallConfig, IfName};
use crate::domain::{Cidr, Kind, Subnet, parse_cidrs};

/// The gate's and master's port.
pub const PAIRING_PORT: u16 = 7741;
/// The port of a terminal agent's status endpoint: master probes it inside the tunnel, so the answers (and only
/// those: the reply direction of a connection master opened) come back in from terminal tunnels.
pub const AGENT_STATUS_PORT: u16 = crate::wire::AGENT_STATUS_PORT;
/// The admin UI's port (on `admin_bind_ip`; on `public_ip` only in bootstrap mode).
pub const ADMIN_UI_PORT: u16 = 7777;
/// Port 7743 (served by CAS), opened by `open_7743`.
pub const CAS_PORT: u16 = 7743;
/// HTTPS, opened by `open_443`.
pub const HTTPS_PORT: u16 = 443;
/// Interface name prefixes of the tunnels (`cvt<i>` terminal instances, `cva<k>` admin instances).
pub const TERMINAL_TUNNELS: &str = "cvt";
pub const ADMIN_TUNNELS: &str = "cva";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("firewall: {0}")]
    Plan(String),
    #[error("firewall ({backend}): {source}")]
    Tool { backend: &'static str, source: crate::sys::cmd::CmdError },
    #[error("firewall state {path}: {why}")]
    State { path: String, why: String },
    #[error(transparent)]
    Store(#[from] crate::db::DbError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The pairing window as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Window {
    Closed,
    /// Open until `until` (unix seconds); `from` empty: everyone.
    Open {
        until: i64,
        from: Vec<Cidr>,
    },
}

/// Everything the plan depends on, already read (so [`plan`] is pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The interface the Internet arrives on (configured, or detected from `public_ip`); `None`: unknown.
    pub public_interface: Option<IfName>,
    pub public_ip: Option<Ipv4Addr>,
    pub master_ip: Ipv4Addr,
    pub admin_ip: Ipv4Addr,
    pub gate_ip: Ipv4Addr,
    /// The terminal front port; `None` in Scenario B (cas-vpn runs no VPN).
    pub front_port: Option<u16>,
    /// Ports of issued, unrevoked admin credentials (sorted).
    pub admin_ports: Vec<u16>,
    pub terminal_subnet: Option<Subnet>,
    pub admin_subnet: Option<Subnet>,
    pub window: Window,
    /// The admin UI's bootstrap mode: `admin_ui_bootstrap=yes` in `config/firewall` and no admin VPN session yet.
    pub admin_ui_bootstrap: bool,
    pub fw: FirewallConfig,
}

impl Inputs {
    /// A complete set of inputs for tests (window closed, no admin port, defaults of `config/firewall`).
    #[cfg(test)]
    pub(crate) fn example() -> Inputs {
        Inputs {
            public_interface: Some("eth0".parse().unwrap()),
            public_ip: Some("198.51.100.1".parse().unwrap()),
            master_ip: "203.0.113.1".parse().unwrap(),
            admin_ip: "203.0.113.2".parse().unwrap(),
            gate_ip: "203.0.113.3".parse().unwrap(),
            front_port: Some(7742),
            admin_ports: Vec::new(),
            terminal_subnet: Some("198.18.0.0/16".parse().unwrap()),
            admin_subnet: Some("198.19.0.0/23".parse().unwrap()),
            window: Window::Closed,
            admin_ui_bootstrap: false,
            fw: FirewallConfig::default(),
        }
    }
}

/// One opening on the public interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Door {
    /// What it is for (`ssh`, `terminal-front`, `admin-vpn`, `pairing`, …): a word, used in rule comments.
    pub name: &'static str,
    /// TCP ports (one, or the admin ports).
    pub ports: Vec<u16>,
    /// Sources allowed; empty: everyone.
    pub from: Vec<Cidr>,
    /// Most concurrent connections per source address; `None`: no cap.
    pub per_source_cap: Option<u32>,
    /// When set, the door is `public_ip:port` DNATed to this address (same port).
    pub dnat_to: Option<Ipv4Addr>,
}

/// The whole rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub public_interface: Option<IfName>,
    pub public_ip: Option<Ipv4Addr>,
    pub doors: Vec<Door>,
    pub master_ip: Ipv4Addr,
    pub admin_ip: Ipv4Addr,
    pub terminal_subnet: Option<Subnet>,
    pub admin_subnet: Option<Subnet>,
    pub window: Window,
    /// What the plan could not do, said once (e.g. no public interface known).
    pub warnings: Vec<String>,
}

/// Computes the rule set. Pure: same inputs, same plan.
pub fn plan(i: &Inputs) -> Plan {
    let mut warnings = Vec::new();
    let mut doors = Vec::new();
    let cap = |n: u32| (n > 0).then_some(n);
    match &i.public_interface {
        None => warnings.push(
            "no public interface (set public_ip in config/network or public_interface in config/firewall): \
             nothing on the Internet side is filtered, only the tunnels are"
                .to_owned(),
        ),
        Some(_) => {
            doors.push(Door {
                name: "ssh",
                ports: vec![i.fw.ssh_port],
                from: i.fw.ssh_from.clone(),
                per_source_cap: None,
                dnat_to: None,
            });
            if let Some(front) = i.front_port {
                doors.push(Door {
                    name: "terminal-front",
                    ports: vec![front],
                    from: Vec::new(),
                    per_source_cap: cap(i.fw.front_max_conns),
                    dnat_to: None,
                });
            }
            if !i.admin_ports.is_empty() {
                doors.push(Door {
                    name: "admin-vpn",
                    ports: i.admin_ports.clone(),
                    from: Vec::new(),
                    per_source_cap: None,
                    dnat_to: None,
                });
            }
            if i.fw.open_7743 {
                let from = i.fw.open_7743_from.clone();
                doors.push(Door { name: "cas-7743", ports: vec![CAS_PORT], from, per_source_cap: None, dnat_to: None });
            }
            if i.fw.open_443 {
                let from = i.fw.open_443_from.clone();
                doors.push(Door { name: "https", ports: vec![HTTPS_PORT], from, per_source_cap: None, dnat_to: None });
            }
            match (&i.window, i.public_ip) {
                (Window::Open { from, .. }, Some(_)) => doors.push(Door {
                    name: "pairing",
                    ports: vec![PAIRING_PORT],
                    from: from.clone(),
                    per_source_cap: cap(i.fw.gate_max_conns),
                    dnat_to: Some(i.gate_ip),
                }),
                (Window::Open { .. }, None) => {
                    warnings.push("a pairing window is open but public_ip is not set: 7741 stays closed".to_owned())
                }
                (Window::Closed, _) => {}
            }
            if i.admin_ui_bootstrap && i.public_ip.is_some() {
                doors.push(Door {
                    name: "admin-ui-bootstrap",
                    ports: vec![ADMIN_UI_PORT],
                    from: Vec::new(),
                    per_source_cap: None,
                    dnat_to: Some(i.admin_ip),
                });
            }
        }
    }
    Plan {
        public_interface: i.public_interface.clone(),
        public_ip: i.public_ip,
        doors,
        master_ip: i.master_ip,
        admin_ip: i.admin_ip,
        terminal_subnet: i.terminal_subnet,
        admin_subnet: i.admin_subnet,
        window: i.window.clone(),
        warnings,
    }
}

impl Plan {
    /// When the plan changes by itself: the end of an open pairing window.
    pub fn changes_at(&self) -> Option<i64> {
        match self.window {
            Window::Open { until, .. } => Some(until),
            Window::Closed => None,
        }
    }

    /// Whether a new TCP connection from `src` to local `port`, arriving on the public interface, would be let in
    /// (for the anti-lockout check). Established connections are always kept; this is about new ones.
    pub fn admits(&self, src: Ipv4Addr, port: u16) -> bool {
        self.doors.iter().any(|d| {
            d.dnat_to.is_none()
                && d.ports.contains(&port)
                && (d.from.is_empty() || d.from.iter().any(|c| c.contains(src)))
        })
    }

    /// One line per door, for `status`: what the Internet can reach.
    pub fn exposure(&self) -> Vec<String> {
        self.doors
            .iter()
            .map(|d| {
                let ports = d.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
                let to = match (d.dnat_to, self.public_ip) {
                    (Some(to), Some(p)) => format!("{p}:{ports} -> {to}:{ports}"),
                    _ => format!("tcp {ports}"),
                };
                let from = if d.from.is_empty() {
                    "everyone".to_owned()
                } else {
                    d.from.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",")
                };
                let cap = d.per_source_cap.map_or(String::new(), |n| format!(", at most {n} connections per source"));
                format!("{:<18} {to} from {from}{cap}", d.name)
            })
            .collect()
    }
}

/// Reads the inputs: configuration, the issued admin ports and the window from the store, the public interface
/// from the configuration or the system. `now` decides whether the window is still open.
pub async fn inputs(cfg: &Config, ctx: &Ctx, now: i64) -> Result<Inputs, FirewallError> {
    let net = &cfg.network;
    let vpn = cfg.active_vpn();
    let admin_ports = if vpn.is_some() {
        let mut ports: Vec<u16> =
            ctx.store.list_credentials(Some(Kind::Admin), false).await?.iter().filter_map(|c| c.admin_port).collect();
        ports.sort_unstable();
        ports
    } else {
        Vec::new()
    };
    let (until, from) = ctx.store.pairing_window_from().await?;
    let window = match until.filter(|u| *u > now) {
        Some(until) => {
            let from = parse_cidrs(from.as_deref().unwrap_or(""))
                .map_err(|e| FirewallError::Plan(format!("the stored pairing window's sources: {e}")))?;
            Window::Open { until, from }
        }
        None => Window::Closed,
    };
    let public_interface = match (&cfg.firewall.public_interface, net.public_ip) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(ip)) => crate::sys::firewall::interface_holding(ip).and_then(|n| n.parse().ok()),
        (None, None) => None,
    };
    Ok(Inputs {
        public_interface,
        public_ip: net.public_ip,
        master_ip: net.master_bind_ip,
        admin_ip: net.admin_bind_ip,
        gate_ip: net.gate_bind_ip,
        front_port: vpn.map(|v| v.terminal_front_port),
        admin_ports,
        terminal_subnet: vpn.map(|v| v.terminal_subnet),
        admin_subnet: vpn.map(|v| v.admin_subnet),
        window,
        admin_ui_bootstrap: cfg.firewall.admin_ui_bootstrap && ctx.store.bootstrap_ended().await?.is_none(),
        fw: cfg.firewall.clone(),
    })
}

/// A line diff (`-` removed, `+` added, unchanged lines left out) between two texts, by longest common
/// subsequence; rule sets are a few hundred lines, so the quadratic table is small.
pub fn line_diff(old: &str, new: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}
