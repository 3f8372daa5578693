//! `config/firewall`: which doors the firewall of `serve net` opens besides the ones cas-vpn needs (7742, the
//! issued admin ports, 7741 during a pairing window), and how. Ours, so as strict as `config/vpn`: `key=value`,
//! one per line, `#` comments; an unknown or repeated key, or a bad value, is an error naming file, line and key.
//! A missing file means the defaults (cas-vpn manages the firewall with nft, SSH on 22 open to everyone).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::error::shown_key;
use super::{ConfigError, KeyLines, Root, split_pairs};
use crate::domain::{Cidr, Dur, parse_cidrs, shown};
use crate::sys::fs::{read_optional, write_atomic};

/// Every key of `config/firewall`, in the order `render` writes them, with the comment written above it.
pub const FIREWALL_KEYS: [(&str, &str); 13] = [
    (
        "manage",
        "yes: serve net installs the firewall and keeps it in force (drift is repaired); no: the firewall, tunnel \
         isolation included, is yours.",
    ),
    (
        "backend",
        "nft (cas-vpn's own tables), iptables (its own CASVPN-* chains, hooked in once) or ufw (what ufw can express).",
    ),
    ("public_interface", "Interface the Internet arrives on; empty: the one holding public_ip (config/network)."),
    ("ssh_port", "SSH port: always open (a plan that would cut the SSH session applying it is refused)."),
    ("ssh_from", "Who may reach SSH: comma-separated a.b.c.d/len or a.b.c.d; empty: everyone."),
    ("open_7743", "yes opens TCP 7743 (served by CAS, not by cas-vpn) on the public interface."),
    ("open_7743_from", "Who may reach 7743 (comma-separated CIDRs); empty: everyone."),
    ("open_443", "yes opens TCP 443 (e.g. a reverse proxy in front of CAS) on the public interface."),
    ("open_443_from", "Who may reach 443 (comma-separated CIDRs); empty: everyone."),
    (
        "front_max_conns",
        "Most concurrent connections one source address may hold to the terminal front port; 0: no cap.",
    ),
    ("gate_max_conns", "Most concurrent connections one source address may hold to 7741 during a window; 0: no cap."),
    ("drift_check", "How often serve net compares the installed rules with the plan and repairs them, e.g. 30s."),
    (
        "admin_ui_bootstrap",
        "yes opens the admin web UI (7777) on public_ip, forwarded to admin_bind_ip, until the first admin VPN \
         session; then it closes for good. For the first setup only (`cas-vpn init --web-bootstrap`).",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    pub manage: bool,
    pub backend: Backend,
    /// `None`: detect the interface holding `public_ip`.
    pub public_interface: Option<IfName>,
    pub ssh_port: u16,
    /// Empty: everyone.
    pub ssh_from: Vec<Cidr>,
    pub open_7743: bool,
    pub open_7743_from: Vec<Cidr>,
    pub open_443: bool,
    pub open_443_from: Vec<Cidr>,
    /// 0: no cap.
    pub front_max_conns: u32,
    pub gate_max_conns: u32,
    pub drift_check: Dur,
    /// The web UI on public 7777 until the first admin VPN session.
    pub admin_ui_bootstrap: bool,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            manage: true,
            backend: Backend::Nft,
            public_interface: None,
            ssh_port: 22,
            ssh_from: Vec::new(),
            open_7743: false,
            open_7743_from: Vec::new(),
            open_443: false,
            open_443_from: Vec::new(),
            // A terminal holds one VPN connection; a few more cover reconnects behind one NAT address per site.
            front_max_conns: 20,
            // Pairing is one request per terminal; a site pairing a batch behind one address stays well below.
            gate_max_conns: 10,
            drift_check: Dur(std::time::Duration::from_secs(30)),
            admin_ui_bootstrap: false,
        }
    }
}

impl FirewallConfig {
    /// Parses the text of `config/firewall`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config = FirewallConfig::default();
        let mut seen = KeyLines::default();
        for pair in split_pairs(text, path, false)? {
            let value_err = |why: String| ConfigError::Value {
                path: path.to_owned(),
                line: pair.line,
                key: shown_key(pair.key),
                why,
            };
            let Some(&(key, _)) = FIREWALL_KEYS.iter().find(|(k, _)| *k == pair.key) else {
                let known: Vec<&str> = FIREWALL_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(value_err(format!("unknown key; expected one of {}", known.join(", "))));
            };
            super::note_line(&mut seen, key, pair.line, path)?;
            config.apply(key, pair.value).map_err(value_err)?;
        }
        Ok(config)
    }

    /// Every key, each with a one-line comment above it. `parse(render())` gives back the same value.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# cas-vpn firewall settings: key=value, one per line. serve net computes the rules from this file,\n\
             # config/network, config/vpn and the store (issued admin ports, the pairing window); see\n\
             # `cas-vpn firewall plan`.\n",
        );
        for (key, comment) in FIREWALL_KEYS {
            out.push_str(&format!("\n# {comment}\n{key}={}\n", self.value(key)));
        }
        out
    }

    fn value(&self, key: &str) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let list = |l: &[Cidr]| l.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",");
        match key {
            "manage" => yes_no(self.manage),
            "backend" => self.backend.to_string(),
            "public_interface" => self.public_interface.as_ref().map(IfName::to_string).unwrap_or_default(),
            "ssh_port" => self.ssh_port.to_string(),
            "ssh_from" => list(&self.ssh_from),
            "open_7743" => yes_no(self.open_7743),
            "open_7743_from" => list(&self.open_7743_from),
            "open_443" => yes_no(self.open_443),
            "open_443_from" => list(&self.open_443_from),
            "front_max_conns" => self.front_max_conns.to_string(),
            "gate_max_conns" => self.gate_max_conns.to_string(),
            "drift_check" => self.drift_check.to_string(),
            "admin_ui_bootstrap" => yes_no(self.admin_ui_bootstrap),
            _ => unreachable!("only FIREWALL_KEYS are rendered"),
        }
    }

    fn apply(&mut self, key: &str, v: &str) -> Result<(), String> {
        let cidrs = |v: &str| parse_cidrs(v).map_err(|e| e.to_string());
        match key {
            "manage" => self.manage = parse_yes_no(v)?,
            "backend" => self.backend = v.parse()?,
            "public_interface" => self.public_interface = if v.is_empty() { None } else { Some(v.parse()?) },
            "ssh_port" => {
                self.ssh_port = match v.parse::<u16>() {
                    Ok(p) if p >= 1 => p,
                    _ => return Err(format!("invalid port {}: expected a number from 1 to 65535", shown(v))),
                }
            }
            "ssh_from" => self.ssh_from = cidrs(v)?,
            "open_7743" => self.open_7743 = parse_yes_no(v)?,
            "open_7743_from" => self.open_7743_from = cidrs(v)?,
            "open_443" => self.open_443 = parse_yes_no(v)?,
            "open_443_from" => self.open_443_from = cidrs(v)?,
            "front_max_conns" => self.front_max_conns = parse_cap(v)?,
            "gate_max_conns" => self.gate_max_conns = parse_cap(v)?,
            // `Dur` is at least one second: tests use 1s, production 30s.
            "drift_check" => self.drift_check = v.parse().map_err(|e: crate::domain::DomainError| e.to_string())?,
            "admin_ui_bootstrap" => self.admin_ui_bootstrap = parse_yes_no(v)?,
            _ => unreachable!("only FIREWALL_KEYS are applied"),
        }
        Ok(())
    }

    /// Reads `<root>/config/firewall`; a missing file gives the defaults.
    pub fn load(root: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = Root::new(root)?.firewall_file();
        match read_optional(&path)? {
            Some(text) => Self::parse(&text, &path),
            None => Ok(Self::default()),
        }
    }

    /// Writes `<root>/config/firewall` atomically (creating `<root>/config` if needed).
    pub fn write(&self, root: impl AsRef<Path>) -> Result<(), ConfigError> {
        let root = Root::new(root)?;
        let path = root.firewall_file();
        super::ensure_config_dir(&root)?;
        write_atomic(&path, self.render().as_bytes(), super::file_mode(&path))?;
        Ok(())
    }
}

fn parse_yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("invalid value {}: expected yes or no", shown(v))),
    }
}

fn parse_cap(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n <= 65_535 => Ok(n),
        _ => Err(format!("invalid connection cap {}: expected 0 (no cap) to 65535", shown(v))),
    }
}

/// Which tool installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Nft,
    Iptables,
    Ufw,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
            Backend::Ufw => "ufw",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nft" => Ok(Backend::Nft),
            "iptables" => Ok(Backend::Iptables),
            "ufw" => Ok(Backend::Ufw),
            _ => Err(format!("invalid backend {}: expected nft, iptables or ufw", shown(s))),
        }
    }
}

/// A network interface name as the kernel allows it and firewall rules can quote safely: 1 to 15 of a-z, A-Z,
/// 0-9, `.`, `_`, `-`, not starting with `-` (no quotes, spaces or wildcards reach a rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| format!("invalid interface name {}: {why}", shown(s));
        if s.is_empty() || s.len() > 15 {
            return Err(err("expected 1 to 15 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(err("only a-z, A-Z, 0-9, '.', '_' and '-' are allowed, e.g. eth0"));
        }
        if s.starts_with('-') {
            return Err(err("it must not start with '-'"));
        }
        Ok(IfName(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parses_back_and_every_key_is_commented() {
        let mut c = FirewallConfig::default();
        assert_eq!(FirewallConfig::parse(&c.render(), Path::new("/f")).unwrap(), c);
        c.public_interface = Some("eth0".parse().unwrap());
        c.ssh_from = parse_cidrs("198.51.100.7, 192.0.2.0/24").unwrap();
        c.open_443 = true;
        c.drift_check = "1s".parse().unwrap();
        let text = c.render();
        assert_eq!(FirewallConfig::parse(&text, Path::new("/f")).unwrap(), c);
        for (key, _) in FIREWALL_KEYS {
            let at = text.find(&format!("\n{key}=")).unwrap_or_else(|| panic!("{key} missing"));
            assert!(text[..at].lines().last().unwrap().starts_with("# "), "{key} has no comment");
        }
        assert!(text.contains("ssh_from=192.0.2.0/24,198.51.100.7/32\n"), "{text}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("/batm/config/firewall");
        let e = FirewallConfig::parse("ssh_port=22\nbogus=1\n", p).unwrap_err().to_string();
        assert!(
            e.starts_with("/batm/config/firewall:2: key bogus: unknown key; expected one of manage, backend"),
            "{e}"
        );
        let e = FirewallConfig::parse("backend=pf\n", p).unwrap_err().to_string();
        assert_eq!(e, "/batm/config/firewall:1: key backend: invalid backend \"pf\": expected nft, iptables or ufw");
        let e = FirewallConfig::parse("\nssh_from=10.0.0.1/8\n", p).unwrap_err().to_string();
        assert!(e.starts_with("/batm/config/firewall:2: key ssh_from: invalid subnet"), "{e}");
        let e = FirewallConfig::parse("manage=yes\nmanage=no\n", p).unwrap_err().to_string();
        assert!(e.contains(":2: key manage: set again"), "{e}");
        let e = FirewallConfig::parse("public_interface=eth0\"x\n", p).unwrap_err().to_string();
        assert!(e.contains("key public_interface: invalid interface name"), "{e}");
        let e = FirewallConfig::parse("drift_check=10ms\n", p).unwrap_err().to_string();
        assert!(e.contains("key drift_check: invalid duration"), "{e}");
    }
}
