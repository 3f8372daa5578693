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
