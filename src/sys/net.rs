//! Interfaces. Only `serve net` calls this, inside whatever network namespace it runs in (tests run it in a
//! namespace of their own). The firewall's tools are run by `sys::firewall`.

use std::net::Ipv4Addr;

use super::cmd::{CmdError, run};

/// Creates the interface holding the service addresses (idempotent), adds each address as a /32, and brings it
/// up. Addresses already there are kept; nothing else is touched.
///
/// A `dummy` interface where the kernel has the module; otherwise (some container kernels) a bridge with no ports,
/// which holds local addresses the same way and forwards nothing.
pub fn ensure_dummy(name: &str, addrs: &[Ipv4Addr]) -> Result<(), CmdError> {
    let exists = run("ip", ["link", "show", "dev", name]).is_ok();
    if !exists && let Err(e) = run("ip", ["link", "add", name, "type", "dummy"]) {
        tracing::warn!(interface = name, error = %e, "no dummy interfaces here; using a port-less bridge");
        run("ip", ["link", "add", name, "type", "bridge"])?;
    }
    let shown = run("ip", ["-4", "-o", "addr", "show", "dev", name])?;
    for a in addrs {
        let cidr = format!("{a}/32");
        if !shown.split_whitespace().any(|w| w == cidr) {
            run("ip", ["addr", "add", &cidr, "dev", name])?;
        }
    }
    run("ip", ["link", "set", name, "up"])?;
    Ok(())
}
/// Whether a process running as `uid:gid` (no other groups) may open `/dev/net/tun` for reading and writing.
pub fn tun_usable_by(uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata("/dev/net/tun") else { return false };
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o600 == 0o600
    } else if m.gid() == gid {
        mode & 0o060 == 0o060
    } else {
        mode & 0o006 == 0o006
    }
}

/// The local address the kernel picks to reach `to`: a UDP socket is connected there (which only consults the
/// routing table; nothing is sent) and asked for its own address. It is the source address `to` would see.
pub fn source_address_towards(to: std::net::IpAddr) -> std::io::Result<std::net::IpAddr> {
    let any: std::net::SocketAddr =
        if to.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect((to, 9))?;
    Ok(s.local_addr()?.ip())
}

/// The interface holding `ip`, when that interface is a tun device (it has `/sys/class/net/NAME/tun_flags`).
pub fn tun_holding(ip: std::net::IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let held = sa.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip()));
        let held = held.or_else(|| sa.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())));
        if held == Some(ip) {
            let tun = std::path::Path::new("/sys/class/net").join(&a.interface_name).join("tun_flags").exists();
            return tun.then_some(a.interface_name);
        }
    }
    None
}
