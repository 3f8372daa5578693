//! Interfaces and the tunnel isolation firewall. Only `serve net` calls this, inside whatever network namespace
//! it runs in (tests run it in a namespace of their own).

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

/// The isolation rules, as an nft script for cas-vpn's own table (replaced whole on every apply):
/// - a terminal tunnel (`cvt*`) may reach only master_bind_ip on this host, and nothing through it;
/// - an admin tunnel (`cva*`) may reach only admin_bind_ip, and nothing through it.
///
/// Routes pushed to clients are a convenience; these rules are what holds when a client adds routes of its own.
pub fn isolation_ruleset(master_ip: Ipv4Addr, admin_ip: Ipv4Addr) -> String {
    format!(
        "table inet cas_vpn_tunnels\n\
         delete table inet cas_vpn_tunnels\n\
         table inet cas_vpn_tunnels {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -10; policy accept;\n\
         \t\tiifname \"cvt*\" ip daddr != {master_ip} drop\n\
         \t\tiifname \"cva*\" ip daddr != {admin_ip} drop\n\
         \t\tiifname \"cvt*\" meta nfproto ipv6 drop\n\
         \t\tiifname \"cva*\" meta nfproto ipv6 drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority -10; policy accept;\n\
         \t\tiifname \"cvt*\" drop\n\
         \t\tiifname \"cva*\" drop\n\
         \t\toifname \"cvt*\" drop\n\
         \t\toifname \"cva*\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Applies the isolation ruleset atomically (`nft -f` runs a script as one transaction).
pub fn apply_isolation(master_ip: Ipv4Addr, admin_ip: Ipv4Addr) -> Result<(), CmdError> {
    let script = isolation_ruleset(master_ip, admin_ip);
    let mut f = tempfile::NamedTempFile::new().map_err(|source| CmdError::Spawn { program: "nft".into(), source })?;
    std::io::Write::write_all(&mut f, script.as_bytes())
        .map_err(|source| CmdError::Spawn { program: "nft".into(), source })?;
    run("nft", [std::ffi::OsStr::new("-f"), f.path().as_os_str()])?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_names_only_the_service_addresses() {
        let r = super::isolation_ruleset("203.0.113.1".parse().unwrap(), "203.0.113.2".parse().unwrap());
        assert!(r.contains("iifname \"cvt*\" ip daddr != 203.0.113.1 drop"));
        assert!(r.contains("iifname \"cva*\" ip daddr != 203.0.113.2 drop"));
        assert!(r.contains("chain forward"));
    }
}
