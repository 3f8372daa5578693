//! Configuration files under the root directory: `config/network` (CAS format),
//! `config/gate.properties` (Java properties, shared with CAS) and `config/vpn` (ours).
//!
//! Reading is strict: an unknown key, a bad value or an unreadable file is an error that names the file, the line
//! and the key, because a typo silently replaced by a default would put a VPN on the wrong subnet. Writing is
//! atomic (`sys::fs::write_atomic`) and happens only after validation, so a refused value never reaches disk.
//!
//! Every value leaves this module as a validated type (`Host`, `Subnet`, `PortRange`, `Interface`, …): nothing
//! parsed here can carry whitespace, quotes or newlines into an OpenVPN config (invariant 7, ARCHITECTURE.md).

mod error;
mod firewall;
mod gate;
mod network;
mod vpn;

/// The admin web UI's port (on `admin_bind_ip`; also on `public_ip` in bootstrap mode).
pub const ADMIN_UI_PORT: u16 = 7777;

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use firewall::{Backend, FIREWALL_KEYS, FirewallConfig, IfName};
pub use gate::GateConfig;
pub use network::NetworkConfig;
pub use vpn::{Interface, Proto, VpnConfig};

use crate::domain::{ConfPath, shown};

/// The root directory (`--root`, env `CAS_VPN_ROOT`, default `/batm`) and the paths under it.
///
/// Always absolute and free of whitespace, quotes and the like (checked by `ConfPath`): paths under the root are
/// written into OpenVPN configs (`ca`, `crl-verify`, the management socket), so a root that could not appear there
/// is refused up front rather than when the first instance is rendered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Root(PathBuf);

impl Root {
    pub const DEFAULT: &'static str = "/batm";

    /// A root directory; a relative path is made absolute against the current directory (so `--root ./t` works
    /// and rendered configs still carry absolute paths). The directory does not need to exist yet (`init`).
    pub fn new(path: impl AsRef<Path>) -> Result<Root, ConfigError> {
        let path = path.as_ref();
        let err = |why: String| ConfigError::Root { shown: shown(&path.to_string_lossy()), why };
        if path.as_os_str().is_empty() {
            return Err(err("it is empty".into()));
        }
        let abs = std::path::absolute(path).map_err(|e| err(format!("cannot make it absolute: {e}")))?;
        let checked = ConfPath::new(&abs).map_err(|e| err(e.to_string()))?;
        Ok(Root(checked.as_path().to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
    /// `<root>/config`
    pub fn config_dir(&self) -> PathBuf {
        self.0.join("config")
    }
    /// `<root>/config/network`
    pub fn network_file(&self) -> PathBuf {
        self.config_dir().join("network")
    }
    /// `<root>/config/gate.properties`
    pub fn gate_file(&self) -> PathBuf {
        self.config_dir().join("gate.properties")
    }
    /// `<root>/config/vpn`
    pub fn vpn_file(&self) -> PathBuf {
        self.config_dir().join("vpn")
    }
    /// `<root>/config/firewall`
    pub fn firewall_file(&self) -> PathBuf {
        self.config_dir().join("firewall")
    }
    /// `<root>/pki` (0700; CA keys never leave it)
    pub fn pki_dir(&self) -> PathBuf {
        self.0.join("pki")
    }
    /// `<root>/vpn` (one rendered directory per OpenVPN instance)
    pub fn vpn_dir(&self) -> PathBuf {
        self.0.join("vpn")
    }
    /// `<root>/db`
    pub fn db_dir(&self) -> PathBuf {
        self.0.join("db")
    }
    /// `<root>/db/cas-vpn.sqlite`
    pub fn db_path(&self) -> PathBuf {
        self.db_dir().join("cas-vpn.sqlite")
    }
    /// `<root>/app/shared/`: the default of `batm.download`, as CAS has it (trailing slash included).
    pub fn default_download_dir(&self) -> PathBuf {
        self.0.join("app/shared/")
    }
}

impl Default for Root {
    fn default() -> Self {
        Root(PathBuf::from(Self::DEFAULT))
    }
}

impl AsRef<Path> for Root {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// Whether a configuration file was read from disk or absent (and defaults were used). `init` writes the absent
/// ones; `doctor` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Present,
    Missing,
}

/// Who runs the VPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// cas-vpn runs the terminal and admin OpenVPN instances; the gate hands out `.ovpn` files.
    A,
    /// No instances run and the gate hands out no VPN config, only where master is: `batm.vpn-skip=true`, or no
    /// `config/vpn` file (a VPN router in front of the server, as CAS documents it).
    B,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::A => "A",
            Scenario::B => "B",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything under `<root>/config`, loaded and cross-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub root: PathBuf,
    pub network: NetworkConfig,
    pub gate: GateConfig,
    /// `None` when `config/vpn` does not exist (Scenario B).
    pub vpn: Option<VpnConfig>,
    /// `config/firewall` (defaults when missing).
    pub firewall: FirewallConfig,
}

impl Config {
    /// Loads the three files: a missing `network` or `gate.properties` means CAS defaults, a missing `vpn` means
    /// Scenario B. Then runs the checks that need more than one file (`validate`), naming lines where known.
    pub fn load(root: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let root = &Root::new(root)?;
        let (network, net_lines) = network::load_with_lines(root)?;
        let gate = GateConfig::load(root)?;
        let vpn = vpn::load_with_lines(root)?;
        let (vpn, vpn_lines) = match vpn {
            Some((v, l)) => (Some(v), l),
            None => (None, KeyLines::default()),
        };
        let firewall = FirewallConfig::load(root)?;
        let config = Config { root: root.path().to_path_buf(), network, gate, vpn, firewall };
        config.check(Some((&net_lines, &vpn_lines)))?;
        Ok(config)
    }

    /// Loads what can be loaded, for the commands that must work even when an unrelated file is broken (`revoke`,
    /// `crl`, `terminal list`/`show`: a stolen ATM must be revocable while an operator's typo waits to be fixed;
    /// invariant 14). A file that does not parse is replaced by its defaults and its error becomes a warning; so do
    /// the cross-checks. A missing `config/vpn` stays missing (Scenario B), as in `load`.
    pub fn load_lenient(root: impl AsRef<Path>) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let root = &Root::new(root)?;
        let mut warnings = Vec::new();
        let (network, net_lines) = network::load_with_lines(root).unwrap_or_else(|e| {
            warnings.push(e);
            (NetworkConfig::default(), KeyLines::default())
        });
        let gate = GateConfig::load(root).unwrap_or_else(|e| {
            warnings.push(e);
            GateConfig::default_for(root.path())
        });
        let (vpn, vpn_lines) = match vpn::load_with_lines(root) {
            Ok(Some((v, l))) => (Some(v), l),
            Ok(None) => (None, KeyLines::default()),
            Err(e) => {
                warnings.push(e);
                (Some(VpnConfig::default()), KeyLines::default())
            }
        };
        let firewall = FirewallConfig::load(root).unwrap_or_else(|e| {
            warnings.push(e);
            FirewallConfig::default()
        });
        let config = Config { root: root.path().to_path_buf(), network, gate, vpn, firewall };
        if warnings.is_empty()
            && let Err(e) = config.check(Some((&net_lines, &vpn_lines)))
        {
            warnings.push(e);
        }
        Ok((config, warnings))
    }

    /// The configuration `init` starts from: CAS defaults, and the VPN defaults (Scenario A).
    pub fn default_for(root: impl AsRef<Path>) -> Config {
        let root = root.as_ref();
        Config {
            root: root.to_path_buf(),
            network: NetworkConfig::default(),
            gate: GateConfig::default_for(root),
            vpn: Some(VpnConfig::default()),
            firewall: FirewallConfig::default(),
        }
    }

    /// Checks each part and how they fit together: the VPN subnets must not contain a service address (`*_bind_ip`)
    /// nor `public_ip`, or routes pushed to clients would swallow the services they are meant to reach.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(None)
    }

    fn check(&self, lines: Option<(&KeyLines, &KeyLines)>) -> Result<(), ConfigError> {
        let root = self.root_dir();
        let (net_path, vpn_path) = (root.network_file(), root.vpn_file());
        self.network.check(&net_path, lines.map(|l| l.0))?;
        self.gate.validate(&root.gate_file())?;
        let Some(vpn) = &self.vpn else { return Ok(()) };
        vpn.check(&vpn_path, lines.map(|l| l.1))?;

        let mut addresses: Vec<(&'static str, Ipv4Addr)> = self.network.bind_ips().to_vec();
        if let Some(ip) = self.network.public_ip {
            addresses.push(("public_ip", ip));
        }
        for (subnet_key, subnet) in [("terminal_subnet", vpn.terminal_subnet), ("admin_subnet", vpn.admin_subnet)] {
            for &(addr_key, ip) in &addresses {
                if subnet.contains(ip) {
                    let keys = format!(
                        "keys {} and {}",
                        describe(subnet_key, lines.map(|l| l.1), None),
                        describe(addr_key, lines.map(|l| l.0), Some(&net_path)),
                    );
                    return Err(ConfigError::Conflict {
                        path: vpn_path,
                        keys,
                        why: format!(
                            "{subnet} contains {ip}; the service and public addresses must stay outside the VPN \
                             subnets"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Scenario B when `batm.vpn-skip=true` or there is no `config/vpn`; Scenario A otherwise.
    pub fn scenario(&self) -> Scenario {
        if self.gate.vpn_skip || self.vpn.is_none() { Scenario::B } else { Scenario::A }
    }

    /// Why `scenario()` says what it says, for `status` and `doctor`.
    pub fn scenario_reason(&self) -> &'static str {
        if self.gate.vpn_skip {
            "batm.vpn-skip=true in config/gate.properties"
        } else if self.vpn.is_none() {
            "no config/vpn file"
        } else {
            "config/vpn is present and batm.vpn-skip is false"
        }
    }

    /// The VPN settings when cas-vpn runs the VPN (Scenario A); `None` under Scenario B even if `config/vpn`
    /// exists, so that `vpn-skip` cannot be forgotten by a caller that only checks for the file.
    pub fn active_vpn(&self) -> Option<&VpnConfig> {
        match self.scenario() {
            Scenario::A => self.vpn.as_ref(),
            Scenario::B => None,
        }
    }

    /// `<root>/config`
    pub fn config_dir(&self) -> PathBuf {
        self.root_dir().config_dir()
    }
    /// `<root>/config/network`
    pub fn network_path(&self) -> PathBuf {
        self.root_dir().network_file()
    }
    /// `<root>/config/gate.properties`
    pub fn gate_path(&self) -> PathBuf {
        self.root_dir().gate_file()
    }
    /// `<root>/config/vpn`
    pub fn vpn_path(&self) -> PathBuf {
        self.root_dir().vpn_file()
    }
    /// `<root>/config/firewall`
    pub fn firewall_path(&self) -> PathBuf {
        self.root_dir().firewall_file()
    }
    /// `<root>/pki`
    pub fn pki_dir(&self) -> PathBuf {
        self.root_dir().pki_dir()
    }
    /// `<root>/vpn`
    pub fn vpn_dir(&self) -> PathBuf {
        self.root_dir().vpn_dir()
    }
    /// `<root>/db/cas-vpn.sqlite`
    pub fn db_path(&self) -> PathBuf {
        self.root_dir().db_path()
    }

    // `root` is a public PathBuf (callers may build a Config by hand), so the helpers join onto it as given.
    fn root_dir(&self) -> Root {
        Root(self.root.clone())
    }
}

/// Which line each key came from, for error messages about keys that conflict. A key absent from the map was not
/// in the file (its default was used).
pub(crate) type KeyLines = HashMap<&'static str, usize>;

/// `key (line 3)`, `key (default)`, or `key (in /batm/config/network, line 2)`; just `key` when lines are unknown
/// (a config built in code rather than read from a file).
pub(crate) fn describe(key: &str, lines: Option<&KeyLines>, other_file: Option<&Path>) -> String {
    match (lines, other_file) {
        (None, _) => key.to_owned(),
        (Some(l), None) => match l.get(key) {
            Some(n) => format!("{key} (line {n})"),
            None => format!("{key} (default)"),
        },
        (Some(l), Some(p)) => match l.get(key) {
            Some(n) => format!("{key} (in {}, line {n})", p.display()),
            None => format!("{key} (default of {})", p.display()),
        },
    }
}

/// One `key=value` pair of our own line formats (`config/network`, `config/vpn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair<'a> {
    pub line: usize,
    pub key: &'a str,
    pub value: &'a str,
}

/// Splits our simple formats into pairs. `#` starts a comment at the start of a line or after whitespace (so a
/// value may contain `#` only when nothing needs it to). With `many_per_line` a line may hold several
/// whitespace-separated `key=value` pairs (CAS writes `config/network` that way); otherwise the line is one pair
/// and spaces around `=` are allowed.
///
/// Lines are split on `\n` (a trailing `\r` is dropped), so a value can never contain a newline; values are
/// trimmed, so they never start or end with whitespace.
pub(crate) fn split_pairs<'a>(text: &'a str, path: &Path, many_per_line: bool) -> Result<Vec<Pair<'a>>, ConfigError> {
    let mut pairs = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            continue;
        }
        let syntax = |why: String| ConfigError::Syntax { path: path.to_owned(), line, why };
        let tokens: Vec<&str> = if many_per_line { content.split_whitespace().collect() } else { vec![content] };
        for token in tokens {
            let Some((key, value)) = token.split_once('=') else {
                return Err(syntax(format!(
                    "expected key=value, found {}{}",
                    shown(token),
                    if many_per_line { " (no spaces around '=')" } else { "" }
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(syntax(format!("expected key=value, found {} with no key", shown(token))));
            }
            pairs.push(Pair { line, key, value });
        }
    }
    Ok(pairs)
}

fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// Refuses a second occurrence of a key; `seen` maps each known key to its first line.
pub(crate) fn note_line(seen: &mut KeyLines, key: &'static str, line: usize, path: &Path) -> Result<(), ConfigError> {
    if let Some(first) = seen.insert(key, line) {
        return Err(ConfigError::Value {
            path: path.to_owned(),
            line,
            key: key.to_owned(),
            why: format!("set again (first set on line {first}); keep only one"),
        });
    }
    Ok(())
}

/// The mode to write a config file with: the existing file's (an operator or CAS may have set group bits on
/// purpose), else 0644 (these files hold no secrets and CAS's own services read them).
pub(crate) fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644)
}

/// Creates `<root>/config` if it is missing. An existing directory keeps its mode (it may be CAS's).
pub(crate) fn ensure_config_dir(root: &Root) -> Result<(), ConfigError> {
    let dir = root.config_dir();
    if !dir.is_dir() {
        crate::sys::fs::ensure_dir(&dir, 0o755)?;
    }
    Ok(())
}

/// Parses an IPv4 address value, with a message saying what is expected.
pub(crate) fn parse_ipv4(value: &str) -> Result<Ipv4Addr, String> {
    value.parse().map_err(|_| format!("invalid IPv4 address {}: expected a.b.c.d, e.g. 10.3.2.1", shown(value)))
}

/// A service or listen address must be one concrete unicast address: never 0.0.0.0 (invariant 1, ARCHITECTURE.md).
pub(crate) fn check_unicast(ip: Ipv4Addr) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{ip} is not a single unicast address; give the one address to use"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let r = Root::new(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn root_paths() {
        let r = Root::default();
        assert_eq!(r.path(), Path::new("/batm"));
        assert_eq!(r.network_file(), Path::new("/batm/config/network"));
        assert_eq!(r.gate_file(), Path::new("/batm/config/gate.properties"));
        assert_eq!(r.vpn_file(), Path::new("/batm/config/vpn"));
        assert_eq!(r.pki_dir(), Path::new("/batm/pki"));
        assert_eq!(r.vpn_dir(), Path::new("/batm/vpn"));
        assert_eq!(r.db_path(), Path::new("/batm/db/cas-vpn.sqlite"));
        assert_eq!(r.default_download_dir().to_str(), Some("/batm/app/shared/"));
        let rel = Root::new("rel/x").unwrap();
        assert!(rel.path().is_absolute());
        assert!(rel.path().ends_with("rel/x"));
        for bad in ["", "/a b", "/a\nup /bin/sh", "/a\"b"] {
            let e = Root::new(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn split_pairs_handles_comments_and_forms() {
        let p = Path::new("/f");
        let text = "# c\n\na=1 b=2 # trailing\r\nc=x#y\n  d=  \n";
        let pairs = split_pairs(text, p, true).unwrap();
        let got: Vec<_> = pairs.iter().map(|x| (x.line, x.key, x.value)).collect();
        assert_eq!(got, [(3, "a", "1"), (3, "b", "2"), (4, "c", "x#y"), (5, "d", "")]);
        let e = split_pairs("a = 1", p, true).unwrap_err().to_string();
        assert_eq!(e, "/f:1: expected key=value, found \"a\" (no spaces around '=')");
        let single = split_pairs("a = 1 2 # x", p, false).unwrap();
        assert_eq!((single[0].key, single[0].value), ("a", "1 2"));
        assert!(split_pairs("=1", p, false).unwrap_err().to_string().starts_with("/f:1: expected key=value"));
    }

    #[test]
    fn load_of_an_empty_root_is_cas_defaults_and_scenario_b() {
        let (_d, r) = root();
        let c = Config::load(&r).unwrap();
        assert_eq!(c.network, NetworkConfig::default());
        assert_eq!(c.gate.processing_slots, 20);
        assert!(c.vpn.is_none());
        assert_eq!(c.scenario(), Scenario::B);
        assert_eq!(c.scenario_reason(), "no config/vpn file");
        assert!(c.active_vpn().is_none());
        assert_eq!(c.pki_dir(), r.path().join("pki"));
        assert_eq!(c.vpn_dir(), r.path().join("vpn"));
        assert_eq!(c.config_dir(), r.path().join("config"));
        assert_eq!(c.db_path(), r.path().join("db/cas-vpn.sqlite"));
    }

    #[test]
    fn scenario_a_and_vpn_skip() {
        let (_d, r) = root();
        let c = Config::default_for(&r);
        c.network.write(&r).unwrap();
        c.gate.write(&r).unwrap();
        c.vpn.as_ref().unwrap().write(&r).unwrap();
        let c = Config::load(&r).unwrap();
        assert_eq!(c.scenario(), Scenario::A);
        assert_eq!(c.active_vpn(), Some(&VpnConfig::default()));

        let mut gate = c.gate.clone();
        gate.set("batm.vpn-skip", "true").unwrap();
        gate.write(&r).unwrap();
        let c = Config::load(&r).unwrap();
        assert!(c.vpn.is_some(), "the file is still read and checked");
        assert_eq!(c.scenario(), Scenario::B);
        assert_eq!(c.scenario_reason(), "batm.vpn-skip=true in config/gate.properties");
        assert!(c.active_vpn().is_none());
    }

    #[test]
    fn vpn_subnets_must_not_contain_service_addresses() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.config_dir()).unwrap();
        std::fs::write(r.network_file(), "public_ip=203.0.113.5\nmaster_bind_ip=10.8.3.1\n").unwrap();
        std::fs::write(r.vpn_file(), "proto=udp\nterminal_subnet=10.8.0.0/16\n").unwrap();
        let e = Config::load(&r).unwrap_err().to_string();
        let net = r.network_file();
        assert_eq!(
            e,
            format!(
                "{}: keys terminal_subnet (line 2) and master_bind_ip (in {}, line 2): 10.8.0.0/16 contains \
                 10.8.3.1; the service and public addresses must stay outside the VPN subnets",
                r.vpn_file().display(),
                net.display()
            )
        );

        // Same check for a config built in code, and for admin_subnet against a default address.
        let mut c = Config::default_for(&r);
        c.vpn.as_mut().unwrap().admin_subnet = "10.3.2.0/23".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("keys admin_subnet and master_bind_ip: 10.3.2.0/23 contains 10.3.2.1"), "{e}");

        let mut c = Config::default_for(&r);
        c.network.public_ip = Some("10.9.0.7".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("keys admin_subnet and public_ip"), "{e}");
        assert!(Config::default_for(&r).validate().is_ok());
    }

    #[test]
    fn load_reports_the_first_bad_file() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.config_dir()).unwrap();
        std::fs::write(r.vpn_file(), "bogus=1\n").unwrap();
        let e = Config::load(&r).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:1: key bogus: unknown key", r.vpn_file().display())), "{e}");
    }

    #[test]
    fn unreadable_file_names_path_and_os_error() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.network_file()).unwrap(); // a directory where a file should be
        let e = Config::load(&r).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot read {}: ", r.network_file().display())), "{e}");
        assert!(e.contains("directory"), "{e}");
    }
}
