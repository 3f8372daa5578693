//! Network values that reach configs: `Host` (a `remote` target), `Subnet` (an IPv4 network) and `PortRange`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::{DomainError, shown};

/// An IP address or a DNS host name (RFC 1123 labels), written into `remote` lines and JSON answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Host(String);

impl Host {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Ipv4Addr> for Host {
    fn from(ip: Ipv4Addr) -> Self {
        Host(ip.to_string())
    }
}

impl FromStr for Host {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| DomainError::Host { shown: shown(s), why };
        if s.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Host(s.to_owned()));
        }
        if s.is_empty() || s.len() > 253 {
            return Err(err("must be 1 to 253 characters"));
        }
        for label in s.trim_end_matches('.').split('.') {
            let b = label.as_bytes();
            if b.is_empty() || b.len() > 63 {
                return Err(err("each label must be 1 to 63 characters"));
            }
            if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
                return Err(err("only letters, digits, '-' and '.' are allowed"));
            }
            if b[0] == b'-' || b[b.len() - 1] == b'-' {
                return Err(err("a label cannot start or end with '-'"));
            }
        }
        Ok(Host(s.to_owned()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: honours width and alignment in tables.
        f.pad(&self.0)
    }
}

/// An IPv4 network given as `a.b.c.d/len`, with no host bits set, prefix 8..=30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet(Ipv4Net);

impl Subnet {
    pub fn net(&self) -> Ipv4Net {
        self.0
    }
    pub fn network(&self) -> Ipv4Addr {
        self.0.network()
    }
    pub fn netmask(&self) -> Ipv4Addr {
        self.0.netmask()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }

    /// Splits the network into `count` equal slices (rounded up to a power of two), in order. Each instance of a
    /// VPN gets its own slice, so that its tun device has a route of its own.
    pub fn slices(&self, count: usize) -> Result<Vec<Subnet>, DomainError> {
        let bits = usize::BITS - count.saturating_sub(1).leading_zeros();
        let new_len = u32::from(self.0.prefix_len()) + bits;
        let err = |why: String| DomainError::Subnet { shown: shown(&self.to_string()), why };
        // openvpn's `server` directive (topology subnet) needs a /29 or larger.
        if new_len > 29 {
            return Err(err(format!("too small to give {count} instances a /29 or larger each")));
        }
        let subnets = self.0.subnets(new_len as u8).map_err(|e| err(e.to_string()))?.take(count).map(Subnet).collect();
        Ok(subnets)
    }
}

impl FromStr for Subnet {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DomainError::Subnet { shown: shown(s), why };
        let net: Ipv4Net = s.parse().map_err(|_| err("expected a.b.c.d/len, e.g. 10.8.0.0/16".into()))?;
        if net.addr() != net.network() {
            return Err(err(format!("host bits are set; did you mean {}?", net.trunc())));
        }
        if !(8..=30).contains(&net.prefix_len()) {
            return Err(err("prefix length must be between 8 and 30".into()));
        }
        Ok(Subnet(net))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A source network for firewall rules: `a.b.c.d/len` with no host bits (any length, /0 to /32), or a bare address
/// (read as `/32`). Unlike [`Subnet`] it may be a single host or the whole Internet, because it says who may knock,
/// not where tunnels live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(Ipv4Net);

impl Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DomainError::Subnet { shown: shown(s), why };
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Cidr(Ipv4Net::from(ip)));
        }
        let net: Ipv4Net = s.parse().map_err(|_| err("expected a.b.c.d/len or a.b.c.d, e.g. 192.0.2.0/24".into()))?;
        if net.addr() != net.network() {
            return Err(err(format!("host bits are set; did you mean {}?", net.trunc())));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always with its length, so a rule reads the same whether the operator wrote `/32` or not.
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A comma-separated list of [`Cidr`]s (`192.0.2.0/24,198.51.100.7`); empty text is the empty list. Sorted and
/// deduplicated, so two spellings of one list render the same rules.
pub fn parse_cidrs(text: &str) -> Result<Vec<Cidr>, DomainError> {
    let mut out =
        text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::parse).collect::<Result<Vec<Cidr>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An inclusive range of TCP/UDP ports, `start-end` (or a single port), never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    pub fn new(start: u16, end: u16) -> Result<Self, DomainError> {
        let shown = format!("\"{start}-{end}\"");
        if start == 0 {
            return Err(DomainError::PortRange { shown, why: "port 0 is not a port" });
        }
        if start > end {
            return Err(DomainError::PortRange { shown, why: "start is after end" });
        }
        Ok(PortRange { start, end })
    }
    pub fn start(&self) -> u16 {
        self.start
    }
    pub fn end(&self) -> u16 {
        self.end
    }
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> + use<> {
        self.start..=self.end
    }
}

impl FromStr for PortRange {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| DomainError::PortRange { shown: shown(s), why };
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let a: u16 = a.trim().parse().map_err(|_| err("expected PORT or START-END with ports 1-65535"))?;
        let b: u16 = b.trim().parse().map_err(|_| err("expected PORT or START-END with ports 1-65535"))?;
        PortRange::new(a, b).map_err(|_| err("start must be 1 or more and not after end"))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!("vpn.example.com".parse::<Host>().is_ok());
        assert!("192.0.2.1".parse::<Host>().is_ok());
        for bad in ["", "a b", "x\nup /bin/sh", "-a.com", "a_b.com", "\"x\"", &"a".repeat(300)] {
            assert!(bad.parse::<Host>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnets_and_slices() {
        let s: Subnet = "198.18.0.0/16".parse().unwrap();
        let slices = s.slices(11).unwrap();
        assert_eq!(slices.len(), 11);
        assert_eq!(slices[0].to_string(), "198.18.0.0/20");
        assert_eq!(slices[10].to_string(), "198.18.160.0/20");
        assert!("10.0.0.1/16".parse::<Subnet>().is_err());
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("198.18.0.0/24".parse::<Subnet>().unwrap().slices(128).is_err());
    }

    #[test]
    fn port_ranges() {
        let r: PortRange = "13000-13010".parse().unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!("7742".parse::<PortRange>().unwrap().len(), 1);
        for bad in ["0-5", "10-5", "x", "1-70000", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
    }
}

/// Whether a service reachable only through the tunnels (master, the web UI) may listen on `ip`: one concrete,
/// non-public address. Private, loopback, link-local, shared
/// (100.64/10), benchmarking (198.18/15) and documentation ranges are non-public (tests use the last ones).
pub fn check_tunnel_side_ip(ip: Ipv4Addr, service: &str) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!("0.0.0.0 would expose {service} on every address; give it a tunnel-side address"));
    }
    if ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{ip} is not a single unicast address"));
    }
    let o = ip.octets();
    let shared = o[0] == 100 && (o[1] & 0xc0) == 64;
    let benchmarking = o[0] == 198 && (o[1] & 0xfe) == 18;
    let non_public =
        ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_documentation() || shared || benchmarking;
    if !non_public {
        return Err(format!("{ip} is a public address; {service} must listen on a tunnel-side (private) address only"));
    }
    Ok(())
}

#[cfg(test)]
mod tunnel_side_tests {
    use super::*;

    #[test]
    fn tunnel_side_addresses() {
        for ok in [
            "10.3.2.1",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "198.18.0.1",
            "198.19.255.1",
            "203.0.113.5",
            "192.0.2.1",
            "198.51.100.1",
        ] {
            assert!(check_tunnel_side_ip(ok.parse().unwrap(), "master").is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0", "8.8.8.8", "1.1.1.1", "255.255.255.255", "224.0.0.1", "100.128.0.1", "198.20.0.1"] {
            assert!(check_tunnel_side_ip(bad.parse().unwrap(), "admin").is_err(), "{bad}");
        }
    }
}
