//! `config/vpn`: cas-vpn's own VPN settings (ports, subnets, key type, lifetimes). Its absence means Scenario B.
//!
//! The format is ours, so it is strict: `key=value`, one per line, `#` comments; an unknown key, a repeated key or
//! a bad value is an error naming the line. Values are parsed into validated types, and the keys are checked
//! against each other (ports that overlap, subnets too small for their instances, …) before anything is used.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use super::error::shown_key;
use super::{ConfigError, KeyLines, Root, describe, split_pairs};
use crate::domain::{DomainError, Dur, Host, Name, PortRange, Subnet, shown};
use crate::sys::fs::{read_optional, write_atomic};
use cas_pki::KeyType;

/// Every key of `config/vpn`, in the order `render` writes them, with the comment written above it.
pub const VPN_KEYS: [(&str, &str); 21] = [
    ("terminal_front_port", "Public port terminals connect to; connections are spread over the terminal instances."),
    ("terminal_ports", "Ports of the terminal OpenVPN instances (one instance per port), on instance_listen_ip."),
    ("terminal_per_instance", "Most terminals one terminal instance serves."),
    ("terminal_subnet", "Tunnel addresses of terminals, sliced evenly between the terminal instances."),
    ("admin_ports", "Public ports of the admin OpenVPN instances: one per admin credential, one session each."),
    (
        "admin_subnet",
        "Tunnel addresses of admins, sliced between the admin instances (a /29 or larger each: 51 ports need a /23).",
    ),
    ("proto", "Transport of every instance: tcp or udp."),
    ("key_type", "Type of new keys: ec-p256, rsa-2048 or rsa-3072 (older terminals may need rsa-2048)."),
    ("terminal_cert_days", "Validity of a terminal certificate, in days."),
    ("admin_cert_days", "Validity of an admin VPN credential, in days."),
    ("server_cert_days", "Validity of the OpenVPN server and gate TLS certificates, in days."),
    ("ca_days", "Validity of the terminal and admin root CAs, in days."),
    (
        "crl_days",
        "Days from a CRL's issue to its nextUpdate (CRLs are reissued long before; an expired one locks out everyone).",
    ),
    (
        "crl_validity",
        "Overrides crl_days with a finer lifetime (e.g. 6h); empty means crl_days. Renewed when half is left.",
    ),
    (
        "renew_before_days",
        "Terminals renew their certificate this many days before it expires (less than terminal_cert_days).",
    ),
    ("public_hostname", "Host name client .ovpn files connect to; empty means public_ip from config/network."),
    ("interface", "Dummy interface cas-vpn creates for the *_bind_ip service addresses (1-15 of a-z 0-9 _ -)."),
    ("instance_listen_ip", "Address the terminal instances listen on, behind terminal_front_port."),
    ("token_ttl", "Lifetime of a pairing token, e.g. 30m, 24h, 7d."),
    (
        "terminal_heartbeat",
        "Heartbeat period of the terminals (agent run --heartbeat); 3 missed make a terminal's agent silent.",
    ),
    ("node", "This node's name when several VPN nodes share one PostgreSQL store; empty means the host name."),
];

/// Ports cas-vpn itself uses on the server (gate and master on 7741, admin bootstrap on 7777): no VPN port may take
/// them, or an instance listening on all addresses would collide with the services.
const RESERVED_PORTS: [u16; 2] = [7741, 7777];

/// `*_days` above this is a typo (a hundred years), and keeps date arithmetic far from overflow.
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnConfig {
    pub terminal_front_port: u16,
    pub terminal_ports: PortRange,
    pub terminal_per_instance: u32,
    pub terminal_subnet: Subnet,
    pub admin_ports: PortRange,
    pub admin_subnet: Subnet,
    pub proto: Proto,
    pub key_type: KeyType,
    pub terminal_cert_days: u32,
    pub admin_cert_days: u32,
    pub server_cert_days: u32,
    pub ca_days: u32,
    pub crl_days: u32,
    /// A CRL lifetime finer than days (tests, special policies); `None` means `crl_days`.
    pub crl_validity: Option<Dur>,
    pub renew_before_days: u32,
    pub public_hostname: Option<Host>,
    pub interface: Interface,
    pub instance_listen_ip: Ipv4Addr,
    pub token_ttl: Dur,
    /// The terminals' heartbeat period: health counts the agent silent after `domain::health::MISSED_HEARTBEATS`.
    pub terminal_heartbeat: Dur,
    /// This node's name (several nodes on one PostgreSQL store); `None`: the host name.
    pub node: Option<Name>,
}

impl Default for VpnConfig {
    fn default() -> Self {
        let parse_default = |s: &str| s.parse::<Subnet>().expect("default subnets are valid");
        VpnConfig {
            terminal_front_port: 7742,
            terminal_ports: PortRange::new(13000, 13010).expect("default range is valid"),
            terminal_per_instance: 200,
            terminal_subnet: parse_default("10.8.0.0/16"),
            admin_ports: PortRange::new(12000, 12050).expect("default range is valid"),
            admin_subnet: parse_default("10.9.0.0/23"),
            proto: Proto::Tcp,
            key_type: KeyType::default(),
            terminal_cert_days: 730,
            admin_cert_days: 365,
            server_cert_days: 1825,
            ca_days: 7300,
            crl_days: 30,
            crl_validity: None,
            renew_before_days: 60,
            public_hostname: None,
            interface: Interface("batm0".into()),
            instance_listen_ip: Ipv4Addr::LOCALHOST,
            token_ttl: Dur(std::time::Duration::from_secs(24 * 3600)),
            terminal_heartbeat: Dur(std::time::Duration::from_secs(60)),
            node: None,
        }
    }
}

impl VpnConfig {
    /// Parses the text of `config/vpn` (keys not given keep their defaults) and checks the keys against each other;
    /// `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse_with_lines(text, path).map(|(c, _)| c)
    }

    /// Every key, each with a one-line comment above it. `parse(render())` gives back the same value.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# cas-vpn VPN settings: key=value, one per line. Remove this file (or set batm.vpn-skip=true in\n\
             # gate.properties) for Scenario B: no VPN instances, the gate hands out no VPN config.\n",
        );
        for (key, comment) in VPN_KEYS {
            out.push_str(&format!("\n# {comment}\n{key}={}\n", self.value(key)));
        }
        out
    }

    /// The value of `key` as written in the file.
    fn value(&self, key: &str) -> String {
        match key {
            "terminal_front_port" => self.terminal_front_port.to_string(),
            "terminal_ports" => self.terminal_ports.to_string(),
            "terminal_per_instance" => self.terminal_per_instance.to_string(),
            "terminal_subnet" => self.terminal_subnet.to_string(),
            "admin_ports" => self.admin_ports.to_string(),
            "admin_subnet" => self.admin_subnet.to_string(),
            "proto" => self.proto.to_string(),
            "key_type" => self.key_type.to_string(),
            "terminal_cert_days" => self.terminal_cert_days.to_string(),
            "admin_cert_days" => self.admin_cert_days.to_string(),
            "server_cert_days" => self.server_cert_days.to_string(),
            "ca_days" => self.ca_days.to_string(),
            "crl_days" => self.crl_days.to_string(),
            "crl_validity" => self.crl_validity.map(render_dur).unwrap_or_default(),
            "renew_before_days" => self.renew_before_days.to_string(),
            "public_hostname" => self.public_hostname.as_ref().map(Host::to_string).unwrap_or_default(),
            "interface" => self.interface.to_string(),
            "instance_listen_ip" => self.instance_listen_ip.to_string(),
            "token_ttl" => render_dur(self.token_ttl),
            "terminal_heartbeat" => render_dur(self.terminal_heartbeat),
            "node" => self.node.as_ref().map(Name::to_string).unwrap_or_default(),
            _ => unreachable!("only VPN_KEYS are rendered"),
        }
    }

    /// Sets one key from its text; the error says what is wrong and what is expected.
    fn apply(&mut self, key: &str, v: &str) -> Result<(), String> {
        let domain = |e: DomainError| e.to_string();
        match key {
            "terminal_front_port" => self.terminal_front_port = parse_port(v)?,
            "terminal_ports" => self.terminal_ports = v.parse().map_err(domain)?,
            "terminal_per_instance" => self.terminal_per_instance = parse_count(v)?,
            "terminal_subnet" => self.terminal_subnet = v.parse().map_err(domain)?,
            "admin_ports" => self.admin_ports = v.parse().map_err(domain)?,
            "admin_subnet" => self.admin_subnet = v.parse().map_err(domain)?,
            "proto" => self.proto = v.parse()?,
            "key_type" => {
                self.key_type = v
                    .parse()
                    .map_err(|_| format!("invalid key type {}: expected ec-p256, rsa-2048 or rsa-3072", shown(v)))?
            }
            "terminal_cert_days" => self.terminal_cert_days = parse_days(v)?,
            "admin_cert_days" => self.admin_cert_days = parse_days(v)?,
            "server_cert_days" => self.server_cert_days = parse_days(v)?,
            "ca_days" => self.ca_days = parse_days(v)?,
            "crl_days" => self.crl_days = parse_days(v)?,
            "crl_validity" => self.crl_validity = if v.is_empty() { None } else { Some(v.parse().map_err(domain)?) },
            "renew_before_days" => self.renew_before_days = parse_days(v)?,
            "public_hostname" => {
                self.public_hostname = if v.is_empty() { None } else { Some(v.parse().map_err(domain)?) }
            }
            "interface" => self.interface = v.parse()?,
            "instance_listen_ip" => {
                let ip = super::parse_ipv4(v)?;
                super::check_unicast(ip)?;
                self.instance_listen_ip = ip;
            }
            "token_ttl" => self.token_ttl = v.parse().map_err(domain)?,
            "terminal_heartbeat" => {
                let d: Dur = v.parse().map_err(domain)?;
                if d.as_secs() == 0 {
                    return Err(format!("{} is too short: expected at least 1s, e.g. 60s", shown(v)));
                }
                self.terminal_heartbeat = d;
            }
            "node" => self.node = if v.is_empty() { None } else { Some(v.parse().map_err(domain)?) },
            _ => unreachable!("only VPN_KEYS are applied"),
        }
        Ok(())
    }

    /// Reads `<root>/config/vpn`; `None` when it does not exist (Scenario B).
    pub fn load(root: impl AsRef<Path>) -> Result<Option<Self>, ConfigError> {
        Ok(load_with_lines(&Root::new(root)?)?.map(|(c, _)| c))
    }

    /// Validates, then writes `<root>/config/vpn` atomically (creating `<root>/config` if needed).
    pub fn write(&self, root: impl AsRef<Path>) -> Result<(), ConfigError> {
        let root = Root::new(root)?;
        let path = root.vpn_file();
        self.validate(&path)?;
        super::ensure_config_dir(&root)?;
        write_atomic(&path, self.render().as_bytes(), super::file_mode(&path))?;
        Ok(())
    }

    /// Checks the keys against each other (and each value again, as code may have set the public fields). The
    /// checks that need `config/network` are in `Config::validate`.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check(path, None)
    }

    pub(crate) fn check(&self, path: &Path, lines: Option<&KeyLines>) -> Result<(), ConfigError> {
        let conflict = |keys: &[&str], why: String| {
            let described: Vec<String> = keys.iter().map(|k| describe(k, lines, None)).collect();
            let keys = match described.as_slice() {
                [one] => format!("key {one}"),
                [init @ .., last] => format!("keys {} and {last}", init.join(", ")),
                [] => unreachable!("a conflict names at least one key"),
            };
            ConfigError::Conflict { path: path.to_owned(), keys, why }
        };

        // Values code could have set out of range.
        for (key, days) in self.days() {
            check_days(days).map_err(|why| conflict(&[key], why))?;
        }
        if self.terminal_per_instance == 0 {
            return Err(conflict(&["terminal_per_instance"], "must be at least 1".into()));
        }
        if self.terminal_front_port == 0 {
            return Err(conflict(&["terminal_front_port"], "port 0 is not a port".into()));
        }
        super::check_unicast(self.instance_listen_ip).map_err(|why| conflict(&["instance_listen_ip"], why))?;

        // Ports: distinct from each other and from the services'.
        let front = PortRange::new(self.terminal_front_port, self.terminal_front_port)
            .map_err(|e| conflict(&["terminal_front_port"], e.to_string()))?;
        let ports = [
            ("terminal_front_port", front),
            ("terminal_ports", self.terminal_ports),
            ("admin_ports", self.admin_ports),
        ];
        for (key, range) in ports {
            if let Some(p) = RESERVED_PORTS.iter().find(|p| range.contains(**p)) {
                return Err(conflict(
                    &[key],
                    format!("{range} includes port {p}, which the gate, master or admin use"),
                ));
            }
        }
        for (i, (a, ra)) in ports.iter().enumerate() {
            for (b, rb) in &ports[i + 1..] {
                if ra.overlaps(rb) {
                    return Err(conflict(
                        &[a, b],
                        format!("port ranges {ra} and {rb} overlap; each port serves one purpose"),
                    ));
                }
            }
        }

        if self.renew_before_days >= self.terminal_cert_days {
            return Err(conflict(
                &["renew_before_days", "terminal_cert_days"],
                format!(
                    "renew_before_days ({}) must be less than terminal_cert_days ({}), or terminals would renew forever",
                    self.renew_before_days, self.terminal_cert_days
                ),
            ));
        }

        // Subnets: apart, and big enough for their instances.
        if self.terminal_subnet.overlaps(&self.admin_subnet) {
            return Err(conflict(
                &["terminal_subnet", "admin_subnet"],
                format!(
                    "{} and {} overlap; terminals and admins need separate address space",
                    self.terminal_subnet, self.admin_subnet
                ),
            ));
        }
        let slices = self
            .terminal_subnet
            .slices(self.terminal_ports.len())
            .map_err(|e| conflict(&["terminal_subnet", "terminal_ports"], e.to_string()))?;
        let slice = slices[0];
        let size = 1u64 << (32 - slice.prefix_len());
        // Each instance runs `topology subnet` on its slice: the network, the server and the broadcast address are
        // not for clients.
        let needed = u64::from(self.terminal_per_instance) + 3;
        if size < needed {
            return Err(conflict(
                &["terminal_subnet", "terminal_ports", "terminal_per_instance"],
                format!(
                    "{} split for {} instances gives each a /{} ({size} addresses), but {} terminals per instance need \
                     {needed} (with network, server and broadcast); use a larger subnet or fewer terminals per instance",
                    self.terminal_subnet,
                    self.terminal_ports.len(),
                    slice.prefix_len(),
                    self.terminal_per_instance
                ),
            ));
        }
        self.admin_subnet
            .slices(self.admin_ports.len())
            .map_err(|e| conflict(&["admin_subnet", "admin_ports"], e.to_string()))?;
        for (key, subnet) in [("terminal_subnet", self.terminal_subnet), ("admin_subnet", self.admin_subnet)] {
            if subnet.contains(self.instance_listen_ip) {
                return Err(conflict(
                    &[key, "instance_listen_ip"],
                    format!("{subnet} contains {}; instances must listen outside the tunnels", self.instance_listen_ip),
                ));
            }
        }
        Ok(())
    }

    fn days(&self) -> [(&'static str, u32); 6] {
        [
            ("terminal_cert_days", self.terminal_cert_days),
            ("admin_cert_days", self.admin_cert_days),
            ("server_cert_days", self.server_cert_days),
            ("ca_days", self.ca_days),
            ("crl_days", self.crl_days),
            ("renew_before_days", self.renew_before_days),
        ]
    }

    /// Each terminal instance: its port and its slice of `terminal_subnet`, in port order.
    pub fn terminal_instances(&self) -> Result<Vec<(u16, Subnet)>, DomainError> {
        let slices = self.terminal_subnet.slices(self.terminal_ports.len())?;
        Ok(self.terminal_ports.iter().zip(slices).collect())
    }

    /// Each admin instance: its port and its slice of `admin_subnet`, in port order.
    pub fn admin_instances(&self) -> Result<Vec<(u16, Subnet)>, DomainError> {
        let slices = self.admin_subnet.slices(self.admin_ports.len())?;
        Ok(self.admin_ports.iter().zip(slices).collect())
    }
}

pub(crate) fn parse_with_lines(text: &str, path: &Path) -> Result<(VpnConfig, KeyLines), ConfigError> {
    let mut config = VpnConfig::default();
    let mut seen = KeyLines::default();
    for pair in split_pairs(text, path, false)? {
        let value_err =
            |why: String| ConfigError::Value { path: path.to_owned(), line: pair.line, key: shown_key(pair.key), why };
        let Some(&(key, _)) = VPN_KEYS.iter().find(|(k, _)| *k == pair.key) else {
            let known: Vec<&str> = VPN_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(value_err(format!("unknown key; expected one of {}", known.join(", "))));
        };
        super::note_line(&mut seen, key, pair.line, path)?;
        config.apply(key, pair.value).map_err(value_err)?;
    }
    config.check(path, Some(&seen))?;
    Ok((config, seen))
}

pub(crate) fn load_with_lines(root: &Root) -> Result<Option<(VpnConfig, KeyLines)>, ConfigError> {
    let path = root.vpn_file();
    match read_optional(&path)? {
        Some(text) => Ok(Some(parse_with_lines(&text, &path)?)),
        None => Ok(None),
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("invalid port {}: expected a number from 1 to 65535", shown(v))),
    }
}

fn parse_count(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid count {}: expected a whole number of at least 1", shown(v))),
    }
}

fn parse_days(v: &str) -> Result<u32, String> {
    let n = v.parse::<u32>().map_err(|_| format!("invalid number of days {}: expected 1 to {MAX_DAYS}", shown(v)))?;
    check_days(n)?;
    Ok(n)
}

fn check_days(n: u32) -> Result<(), String> {
    if !(1..=MAX_DAYS).contains(&n) {
        return Err(format!("{n} days is out of range: expected 1 to {MAX_DAYS}"));
    }
    Ok(())
}

/// `24h` rather than humantime's `1day`: the largest whole unit of days (from two days on), hours, minutes or
/// seconds, which is how an operator would write it.
fn render_dur(d: Dur) -> String {
    let secs = d.0.as_secs();
    if d.0.subsec_nanos() != 0 {
        return d.to_string();
    }
    if secs.is_multiple_of(86_400) && secs >= 2 * 86_400 {
        return format!("{}d", secs / 86_400);
    }
    for (unit, size) in [("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// The transport of every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("invalid proto {}: expected tcp or udp", shown(s))),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of the dummy interface that carries the service addresses: 1 to 15 characters (the kernel's IFNAMSIZ
/// less the NUL) of `[a-z0-9_-]`, not starting with `-`.
///
/// Why so narrow: the name is passed to `ip link`/`ip addr` and written into firewall rules, so it must not look
/// like an option (`-`), a path (`/`, `..`) or carry whitespace or quotes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interface(String);

impl Interface {
    pub const MAX_LEN: usize = 15;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Interface {
    fn default() -> Self {
        Interface("batm0".into())
    }
}

impl FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| format!("invalid interface name {}: {why}", shown(s));
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(err("expected 1 to 15 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')) {
            return Err(err("only a-z, 0-9, '_' and '-' are allowed, e.g. batm0"));
        }
        if s.starts_with('-') {
            return Err(err("it must not start with '-'"));
        }
        Ok(Interface(s.to_owned()))
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/batm/config/vpn";

    fn parse(text: &str) -> Result<VpnConfig, String> {
        VpnConfig::parse(text, Path::new(P)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_round_trip() {
        let d = VpnConfig::default();
        let text = d.render();
        assert_eq!(parse(&text).unwrap(), d, "{text}");
        assert!(text.contains("\nterminal_ports=13000-13010\n"));
        assert!(text.contains("\ntoken_ttl=24h\n"));
        assert!(text.contains("\npublic_hostname=\n"));
        // Every key, each with a one-line comment right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (key, _) in VPN_KEYS {
            let i = lines.iter().position(|l| l.starts_with(&format!("{key}="))).unwrap();
            assert!(lines[i - 1].starts_with("# "), "{key}");
        }
        assert_eq!(parse("").unwrap(), d);
        assert!(d.validate(Path::new(P)).is_ok());
    }

    #[test]
    fn every_key_set_round_trips() {
        let text = "terminal_front_port=443\nterminal_ports=20000-20003\nterminal_per_instance=50\n\
                    terminal_subnet=198.18.0.0/22\nadmin_ports=20100-20101\nadmin_subnet=198.19.0.0/28\nproto=udp\n\
                    key_type=rsa-3072\nterminal_cert_days=400\nadmin_cert_days=90\nserver_cert_days=800\n\
                    ca_days=3650\ncrl_days=7\nrenew_before_days=30\npublic_hostname=vpn.example.com\n\
                    interface=cv_0\ninstance_listen_ip=192.0.2.1\ntoken_ttl=90m\n";
        let c = parse(text).unwrap();
        assert_eq!(c.terminal_front_port, 443);
        assert_eq!(c.terminal_ports.len(), 4);
        assert_eq!(c.proto, Proto::Udp);
        assert_eq!(c.key_type.to_string(), "rsa-3072");
        assert_eq!(c.public_hostname.as_ref().unwrap().as_str(), "vpn.example.com");
        assert_eq!(c.interface.as_str(), "cv_0");
        assert_eq!(c.token_ttl.as_secs(), 5400);
        assert_eq!(parse(&c.render()).unwrap(), c);
        assert_ne!(c, VpnConfig::default());
        let inst = c.terminal_instances().unwrap();
        assert_eq!(inst[0], (20000, "198.18.0.0/24".parse().unwrap()));
        assert_eq!(inst[3], (20003, "198.18.3.0/24".parse().unwrap()));
        let admin = c.admin_instances().unwrap();
        assert_eq!(admin, [(20100, "198.19.0.0/29".parse().unwrap()), (20101, "198.19.0.8/29".parse().unwrap())]);
    }

    #[test]
    fn fixture_parses() {
        let c = parse(include_str!("../../tests/fixtures/config/vpn")).unwrap();
        assert_eq!(c.proto, Proto::Udp);
        assert_eq!(c.terminal_ports.to_string(), "13000-13003");
        assert_eq!(c.public_hostname.unwrap().as_str(), "vpn.example.com");
        assert_eq!(c.crl_days, 15);
    }

    #[test]
    fn every_key_bad_once() {
        let cases = [
            ("terminal_front_port", "0", "invalid port \"0\": expected a number from 1 to 65535"),
            (
                "terminal_ports",
                "13000-1200",
                "invalid port range \"13000-1200\": start must be 1 or more and not after end",
            ),
            ("terminal_per_instance", "0", "invalid count \"0\": expected a whole number of at least 1"),
            (
                "terminal_subnet",
                "10.8.0.1/16",
                "invalid subnet \"10.8.0.1/16\": host bits are set; did you mean 10.8.0.0/16?",
            ),
            ("admin_ports", "12000-x", "invalid port range \"12000-x\""),
            ("admin_subnet", "10.9.0.0", "invalid subnet \"10.9.0.0\": expected a.b.c.d/len"),
            ("proto", "TCP", "invalid proto \"TCP\": expected tcp or udp"),
            ("key_type", "rsa-1024", "invalid key type \"rsa-1024\": expected ec-p256, rsa-2048 or rsa-3072"),
            ("terminal_cert_days", "-1", "invalid number of days \"-1\": expected 1 to 36500"),
            ("admin_cert_days", "0", "0 days is out of range: expected 1 to 36500"),
            ("server_cert_days", "1e3", "invalid number of days \"1e3\""),
            ("ca_days", "99999", "99999 days is out of range"),
            ("crl_days", "", "invalid number of days \"\""),
            ("crl_validity", "soon", "invalid duration \"soon\""),
            ("renew_before_days", "0", "0 days is out of range"),
            ("public_hostname", "a b", "invalid host \"a b\""),
            ("interface", "../x", "invalid interface name \"../x\": only a-z, 0-9, '_' and '-' are allowed"),
            ("instance_listen_ip", "0.0.0.0", "0.0.0.0 is not a single unicast address"),
            ("token_ttl", "0s", "invalid duration \"0s\": must be at least one second"),
            ("terminal_heartbeat", "soon", "invalid duration \"soon\""),
            ("node", "vpn 2", "invalid name \"vpn 2\""),
        ];
        assert_eq!(cases.len(), VPN_KEYS.len(), "one case per key");
        for (key, value, why) in cases {
            let text = format!("# a comment\nproto=tcp\n{key}={value}\n");
            let text = if key == "proto" { text.replace("proto=tcp\n", "\n") } else { text };
            let e = parse(&text).unwrap_err();
            let prefix = format!("/batm/config/vpn:3: key {key}: {why}");
            assert!(e.starts_with(&prefix), "\n got: {e}\nwant: {prefix}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            parse("proto=tcp\nproto=udp\n").unwrap_err(),
            "/batm/config/vpn:2: key proto: set again (first set on line 1); keep only one"
        );
        assert_eq!(
            parse("\nterminal_port=1\n").unwrap_err(),
            "/batm/config/vpn:2: key terminal_port: unknown key; expected one of terminal_front_port, \
             terminal_ports, terminal_per_instance, terminal_subnet, admin_ports, admin_subnet, proto, key_type, \
             terminal_cert_days, admin_cert_days, server_cert_days, ca_days, crl_days, crl_validity, renew_before_days, \
             public_hostname, interface, instance_listen_ip, token_ttl, terminal_heartbeat, node"
        );
        assert_eq!(parse("just words\n").unwrap_err(), "/batm/config/vpn:1: expected key=value, found \"just words\"");
        // Spaces around '=' and trailing comments are fine.
        assert_eq!(parse("proto = udp   # faster on lossy links\n").unwrap().proto, Proto::Udp);
    }

    #[test]
    fn hostile_values_refused() {
        for (line, bad) in [
            ("public_hostname=x\nup /bin/sh", "expected key=value"),
            ("public_hostname=a b", "invalid host"),
            ("public_hostname=\"vpn.example.com\"", "invalid host"),
            ("public_hostname='vpn'", "invalid host"),
            ("interface=../x", "invalid interface"),
            ("interface=batm0 up", "invalid interface"),
            ("interface=-batm", "must not start with '-'"),
            ("interface=\"batm0\"", "invalid interface"),
            ("interface=waytoolonginterface", "1 to 15 characters"),
            ("interface=BATM0", "only a-z"),
            ("instance_listen_ip=127.0.0.1;x", "invalid IPv4"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(bad), "{line:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn overlaps_and_sizes() {
        let cases = [
            (
                "admin_ports=13005-13020",
                "keys terminal_ports (default) and admin_ports (line 1): port ranges 13000-13010 and 13005-13020 overlap",
            ),
            (
                "terminal_front_port=13000",
                "keys terminal_front_port (line 1) and terminal_ports (default): port ranges 13000-13000 and 13000-13010 overlap",
            ),
            ("terminal_front_port=12001", "keys terminal_front_port (line 1) and admin_ports (default)"),
            ("admin_ports=7700-7800", "key admin_ports (line 1): 7700-7800 includes port 7741"),
            ("terminal_front_port=7777", "key terminal_front_port (line 1): 7777-7777 includes port 7777"),
            (
                "admin_subnet=10.8.200.0/24",
                "keys terminal_subnet (default) and admin_subnet (line 1): 10.8.0.0/16 and 10.8.200.0/24 overlap",
            ),
            ("terminal_subnet=10.9.0.0/16", "keys terminal_subnet (line 1) and admin_subnet (default)"),
            (
                "terminal_subnet=10.8.0.0/22",
                "keys terminal_subnet (line 1), terminal_ports (default) and terminal_per_instance (default): 10.8.0.0/22 split for 11 instances gives each a /26 (64 addresses), but 200 terminals per instance need 203",
            ),
            (
                "terminal_subnet=10.8.0.0/28",
                "keys terminal_subnet (line 1) and terminal_ports (default): invalid subnet \"10.8.0.0/28\": too small to give 11 instances",
            ),
            (
                "admin_subnet=10.9.0.0/26",
                "keys admin_subnet (line 1) and admin_ports (default): invalid subnet \"10.9.0.0/26\": too small to give 51 instances",
            ),
            (
                "renew_before_days=730",
                "keys renew_before_days (line 1) and terminal_cert_days (default): renew_before_days (730) must be less than terminal_cert_days (730)",
            ),
            (
                "instance_listen_ip=10.8.0.1",
                "keys terminal_subnet (default) and instance_listen_ip (line 1): 10.8.0.0/16 contains 10.8.0.1",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            let want = format!("/batm/config/vpn: {want}");
            assert!(e.starts_with(&want), "{text}\n got: {e}\nwant: {want}");
        }
        // Exactly fitting is fine: /24 slices of 256 addresses hold 253 terminals.
        assert!(parse("terminal_subnet=10.8.0.0/20\nterminal_per_instance=253\n").is_ok());
        assert!(parse("terminal_subnet=10.8.0.0/20\nterminal_per_instance=254\n").is_err());
    }

    #[test]
    fn validate_catches_fields_set_by_code() {
        let p = Path::new(P);
        let c = VpnConfig { crl_days: 0, ..Default::default() };
        assert_eq!(
            c.validate(p).unwrap_err().to_string(),
            "/batm/config/vpn: key crl_days: 0 days is out of range: expected 1 to 36500"
        );
        let c = VpnConfig { terminal_per_instance: 0, ..Default::default() };
        assert!(c.validate(p).is_err());
        let c = VpnConfig { admin_ports: PortRange::new(13010, 13020).unwrap(), ..Default::default() };
        assert!(
            c.validate(p).unwrap_err().to_string().starts_with("/batm/config/vpn: keys terminal_ports and admin_ports")
        );
    }

    #[test]
    fn load_write_and_nothing_written_when_invalid() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path()).unwrap();
        assert_eq!(VpnConfig::load(&root).unwrap(), None);
        let c = VpnConfig { proto: Proto::Udp, ..Default::default() };
        c.write(&root).unwrap();
        assert_eq!(VpnConfig::load(&root).unwrap(), Some(c.clone()));
        let bad = VpnConfig { renew_before_days: 9999, ..c.clone() };
        assert!(bad.write(&root).is_err());
        assert_eq!(VpnConfig::load(&root).unwrap(), Some(c));
    }

    #[test]
    fn durations_render_in_their_largest_unit() {
        for (s, want) in
            [("24h", "24h"), ("48h", "2d"), ("90m", "90m"), ("45s", "45s"), ("7d", "7d"), ("1h 30s", "3630s")]
        {
            assert_eq!(render_dur(s.parse().unwrap()), want);
        }
    }
}
