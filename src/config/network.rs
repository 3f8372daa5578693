//! `config/network`: where the services live, in CAS's own format.
//!
//! CAS's `batm-manage` writes `key=value` pairs, one per line or several on one line separated by spaces
//! (`public_ip=1.2.3.4 master_bind_ip=10.3.2.1 …`), so both forms are read. The file is shared with CAS, so the
//! keys and defaults are CAS's: `master_bind_ip=10.3.2.1`, `gate_bind_ip=10.3.1.1`, `admin_bind_ip=10.3.2.2`.

use std::net::Ipv4Addr;
use std::path::Path;

use super::{ConfigError, FileState, KeyLines, Root, describe, split_pairs};
use crate::sys::fs::{read_optional, write_atomic};

/// The keys of `config/network`, in the order `render` writes them.
pub const NETWORK_KEYS: [&str; 4] = ["public_ip", "master_bind_ip", "gate_bind_ip", "admin_bind_ip"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The server's public address: where terminals and admins connect. Optional until something needs it (a
    /// client `.ovpn` with no `public_hostname` in `config/vpn`).
    pub public_ip: Option<Ipv4Addr>,
    /// master's address (terminal tunnels route to it only).
    pub master_bind_ip: Ipv4Addr,
    /// The gate's address (the public 7741 is forwarded to it while a pairing window is open).
    pub gate_bind_ip: Ipv4Addr,
    /// The admin UI's address (admin tunnels route to it only).
    pub admin_bind_ip: Ipv4Addr,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            public_ip: None,
            master_bind_ip: Ipv4Addr::new(10, 3, 2, 1),
            gate_bind_ip: Ipv4Addr::new(10, 3, 1, 1),
            admin_bind_ip: Ipv4Addr::new(10, 3, 2, 2),
        }
    }
}

impl NetworkConfig {
    /// Parses the text of `config/network`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse_with_lines(text, path).map(|(c, _)| c)
    }

    /// One key per line, with a header comment. `parse(render())` gives back the same value.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# cas-vpn / CAS network settings: key=value, one per line (several per line, space-separated, also work).\n\
             # The *_bind_ip addresses live on the dummy interface cas-vpn creates (config/vpn `interface`).\n",
        );
        match self.public_ip {
            Some(ip) => out.push_str(&format!("public_ip={ip}\n")),
            // Written empty rather than left out, so an operator sees the key exists.
            None => out.push_str(
                "# public_ip is not set: client .ovpn files need it (or public_hostname in config/vpn).\npublic_ip=\n",
            ),
        }
        for (key, ip) in self.bind_ips() {
            out.push_str(&format!("{key}={ip}\n"));
        }
        out
    }

    /// Reads `<root>/config/network`; a missing file gives the CAS defaults and `FileState::Missing`.
    pub fn load(root: impl AsRef<Path>) -> Result<(Self, FileState), ConfigError> {
        let path = Root::new(root)?.network_file();
        match read_optional(&path)? {
            Some(text) => Ok((Self::parse(&text, &path)?, FileState::Present)),
            None => Ok((Self::default(), FileState::Missing)),
        }
    }

    /// Validates, then writes `<root>/config/network` atomically (creating `<root>/config` if needed).
    pub fn write(&self, root: impl AsRef<Path>) -> Result<(), ConfigError> {
        let root = Root::new(root)?;
        let path = root.network_file();
        self.validate(&path)?;
        super::ensure_config_dir(&root)?;
        write_atomic(&path, self.render().as_bytes(), super::file_mode(&path))?;
        Ok(())
    }

    /// The checks that involve more than one key (also run by `parse` and `write`): every address is a single
    /// unicast address, the three service addresses differ (gate and master share port 7741, and the firewall
    /// tells admin from master by address) and none is the public address (invariant 1, ARCHITECTURE.md).
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check(path, None)
    }

    pub(crate) fn check(&self, path: &Path, lines: Option<&KeyLines>) -> Result<(), ConfigError> {
        let conflict = |keys: &[&str], why: String| {
            let described: Vec<String> = keys.iter().map(|k| describe(k, lines, None)).collect();
            let keys = match described.as_slice() {
                [one] => format!("key {one}"),
                many => format!("keys {}", many.join(" and ")),
            };
            ConfigError::Conflict { path: path.to_owned(), keys, why }
        };
        let mut all = self.bind_ips().to_vec();
        if let Some(ip) = self.public_ip {
            all.insert(0, ("public_ip", ip));
        }
        for (key, ip) in &all {
            super::check_unicast(*ip).map_err(|why| conflict(&[key], why))?;
        }
        for (i, (a, ip_a)) in all.iter().enumerate() {
            for (b, ip_b) in &all[i + 1..] {
                if ip_a == ip_b {
                    return Err(conflict(&[a, b], format!("both are {ip_a}; each service needs its own address")));
                }
            }
        }
        Ok(())
    }

    /// The three service addresses with their key names.
    pub fn bind_ips(&self) -> [(&'static str, Ipv4Addr); 3] {
        [
            ("master_bind_ip", self.master_bind_ip),
            ("gate_bind_ip", self.gate_bind_ip),
            ("admin_bind_ip", self.admin_bind_ip),
        ]
    }
}

pub(crate) fn parse_with_lines(text: &str, path: &Path) -> Result<(NetworkConfig, KeyLines), ConfigError> {
    let mut config = NetworkConfig::default();
    let mut seen = KeyLines::default();
    for pair in split_pairs(text, path, true)? {
        let value_err = |why: String| ConfigError::Value {
            path: path.to_owned(),
            line: pair.line,
            key: super::error::shown_key(pair.key),
            why,
        };
        let Some(&key) = NETWORK_KEYS.iter().find(|k| **k == pair.key) else {
            return Err(value_err(format!("unknown key; expected one of {}", NETWORK_KEYS.join(", "))));
        };
        super::note_line(&mut seen, key, pair.line, path)?;
        if key == "public_ip" && pair.value.is_empty() {
            config.public_ip = None;
            continue;
        }
        let ip = super::parse_ipv4(pair.value).map_err(value_err)?;
        super::check_unicast(ip).map_err(value_err)?;
        match key {
            "public_ip" => config.public_ip = Some(ip),
            "master_bind_ip" => config.master_bind_ip = ip,
            "gate_bind_ip" => config.gate_bind_ip = ip,
            _ => config.admin_bind_ip = ip,
        }
    }
    config.check(path, Some(&seen))?;
    Ok((config, seen))
}

/// `load` that also returns which line each key came from (for `Config`'s cross-file messages); defaults when the
/// file is missing.
pub(crate) fn load_with_lines(root: &Root) -> Result<(NetworkConfig, KeyLines), ConfigError> {
    let path = root.network_file();
    match read_optional(&path)? {
        Some(text) => parse_with_lines(&text, &path),
        None => Ok((NetworkConfig::default(), KeyLines::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/batm/config/network";

    fn parse(text: &str) -> Result<NetworkConfig, String> {
        NetworkConfig::parse(text, Path::new(P)).map_err(|e| e.to_string())
    }

    #[test]
    fn per_line_form() {
        let c =
            parse("public_ip=203.0.113.7\nmaster_bind_ip=10.1.1.1\nadmin_bind_ip=10.1.1.2\ngate_bind_ip=10.1.1.3\n")
                .unwrap();
        assert_eq!(c.public_ip, Some(Ipv4Addr::new(203, 0, 113, 7)));
        assert_eq!(c.master_bind_ip, Ipv4Addr::new(10, 1, 1, 1));
        assert_eq!(c.admin_bind_ip, Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(c.gate_bind_ip, Ipv4Addr::new(10, 1, 1, 3));
    }

    #[test]
    fn one_line_form_with_comments() {
        let c = parse(
            "# written by batm-manage\n\npublic_ip=1.2.3.4 master_bind_ip=10.3.2.9   gate_bind_ip=10.3.1.9 # gate\n",
        )
        .unwrap();
        assert_eq!(c.public_ip, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(c.master_bind_ip, Ipv4Addr::new(10, 3, 2, 9));
        assert_eq!(c.gate_bind_ip, Ipv4Addr::new(10, 3, 1, 9));
        assert_eq!(c.admin_bind_ip, Ipv4Addr::new(10, 3, 2, 2), "absent key keeps its default");
    }

    #[test]
    fn cas_fixtures() {
        let c = parse(include_str!("../../tests/fixtures/config/network")).unwrap();
        assert_eq!(c.public_ip, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(c.master_bind_ip, Ipv4Addr::new(10, 1, 1, 1));
        assert_eq!(c.admin_bind_ip, Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(c.gate_bind_ip, Ipv4Addr::new(10, 1, 1, 3));
        let one = parse(include_str!("../../tests/fixtures/config/network-one-line")).unwrap();
        assert_eq!(one.public_ip, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(one.master_bind_ip, Ipv4Addr::new(10, 3, 2, 1));
        assert_eq!(one.gate_bind_ip, Ipv4Addr::new(10, 3, 1, 1));
        assert_eq!(one.admin_bind_ip, Ipv4Addr::new(10, 3, 2, 2));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            parse("public_ip=1.2.3.4\n\npublic_ip=1.2.3.5\n").unwrap_err(),
            "/batm/config/network:3: key public_ip: set again (first set on line 1); keep only one"
        );
        assert_eq!(
            parse("master_bind_ip=10.3.2.1 master_bind_ip=10.3.2.1").unwrap_err(),
            "/batm/config/network:1: key master_bind_ip: set again (first set on line 1); keep only one"
        );
        assert_eq!(
            parse("public_ip=1.2.3.4\nmaster_ip=10.0.0.1\n").unwrap_err(),
            "/batm/config/network:2: key master_ip: unknown key; expected one of public_ip, master_bind_ip, \
             gate_bind_ip, admin_bind_ip"
        );
        assert_eq!(
            parse("# x\ngate_bind_ip=10.3.1.300\n").unwrap_err(),
            "/batm/config/network:2: key gate_bind_ip: invalid IPv4 address \"10.3.1.300\": expected a.b.c.d, e.g. \
             10.3.2.1"
        );
        assert_eq!(
            parse("master_bind_ip=0.0.0.0").unwrap_err(),
            "/batm/config/network:1: key master_bind_ip: 0.0.0.0 is not a single unicast address; give the one \
             address to use"
        );
        assert_eq!(
            parse("public_ip = 1.2.3.4").unwrap_err(),
            "/batm/config/network:1: expected key=value, found \"public_ip\" (no spaces around '=')"
        );
        let e = parse("bad\u{1b}[2Jkey=1").unwrap_err();
        assert!(e.contains("key \"bad\\u{1b}[2Jkey\": unknown key"), "{e}");
        assert!(parse("master_bind_ip=\"10.3.2.1\"").is_err(), "quotes are not part of an address");
    }

    #[test]
    fn cross_key_checks() {
        assert_eq!(
            parse("master_bind_ip=10.3.1.1\n").unwrap_err(),
            "/batm/config/network: keys master_bind_ip (line 1) and gate_bind_ip (default): both are 10.3.1.1; each \
             service needs its own address"
        );
        let e = parse("public_ip=10.3.2.2").unwrap_err();
        assert!(e.starts_with("/batm/config/network: keys public_ip (line 1) and admin_bind_ip (default)"), "{e}");
        let c = NetworkConfig { admin_bind_ip: Ipv4Addr::new(10, 3, 2, 1), ..Default::default() };
        let e = c.validate(Path::new(P)).unwrap_err().to_string();
        assert!(e.starts_with("/batm/config/network: keys master_bind_ip and admin_bind_ip: both are"), "{e}");
    }

    #[test]
    fn render_round_trips() {
        for c in [
            NetworkConfig::default(),
            NetworkConfig { public_ip: Some(Ipv4Addr::new(198, 51, 100, 4)), ..Default::default() },
        ] {
            let text = c.render();
            assert!(text.starts_with("# "));
            assert_eq!(parse(&text).unwrap(), c, "{text}");
        }
        assert_eq!(parse("public_ip=\n").unwrap().public_ip, None);
    }

    #[test]
    fn load_missing_then_write_then_load() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path()).unwrap();
        let (c, state) = NetworkConfig::load(&root).unwrap();
        assert_eq!((c, state), (NetworkConfig::default(), FileState::Missing));

        let c = NetworkConfig { public_ip: Some(Ipv4Addr::new(192, 0, 2, 10)), ..Default::default() };
        c.write(&root).unwrap();
        assert_eq!(NetworkConfig::load(&root).unwrap(), (c, FileState::Present));

        // Nothing is written when validation fails.
        let bad = NetworkConfig { gate_bind_ip: c.master_bind_ip, ..c };
        assert!(bad.write(&root).is_err());
        assert_eq!(NetworkConfig::load(&root).unwrap().0, c);
    }
}
