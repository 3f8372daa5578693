//! Running real `openvpn` processes inside namespaces, and reading what they did.
//!
//! openvpn runs in the foreground (no `--daemon`, so its log goes to the captured stdout and `ChildGuard` owns
//! the process) with `--verb 3`, which is the level that logs "Initialization Sequence Completed", the tun device
//! and the address it was given.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::child::ChildGuard;
use super::netns::{Netns, run_cmd};

/// What openvpn (client or server) logs once its tunnel is set up.
pub const INIT_COMPLETED: &str = "Initialization Sequence Completed";

/// Starts `openvpn --config OVPN` as a client inside `ns`; `extra_args` go last, so they override everything.
///
/// Added for tests: `--verb 3`, and `--connect-retry 1 1` so that a client started before its server (or
/// disconnected by it) retries every second instead of backing off up to 5 minutes; `--connect-retry-max` is left
/// unset (retry forever), like a terminal. `--cd` to the config's directory makes relative paths in it work.
pub fn openvpn_client<S: AsRef<OsStr>>(ns: &Netns, ovpn: &Path, extra_args: &[S]) -> ChildGuard {
    spawn_openvpn("openvpn-client", ns, ovpn, &["--verb", "3", "--connect-retry", "1", "1"], extra_args)
}

/// Starts `openvpn --config CONF` (a server config) inside `ns` with `--verb 3`; `extra_args` go last.
pub fn openvpn_server<S: AsRef<OsStr>>(ns: &Netns, conf: &Path, extra_args: &[S]) -> ChildGuard {
    spawn_openvpn("openvpn-server", ns, conf, &["--verb", "3"], extra_args)
}

fn spawn_openvpn<S: AsRef<OsStr>>(
    label: &str,
    ns: &Netns,
    config: &Path,
    defaults: &[&str],
    extra_args: &[S],
) -> ChildGuard {
    let config = config.canonicalize().unwrap_or_else(|e| panic!("{label}: config {}: {e}", config.display()));
    let dir = config.parent().expect("a canonical file path has a parent");
    let mut cmd = ns.cmd("openvpn");
    // Order matters: --cd first (it applies to files read after it), options after --config override the file.
    cmd.arg("--cd").arg(dir).arg("--config").arg(&config).args(defaults).args(extra_args);
    ChildGuard::spawn(format!("{label}@{}", ns.name()), cmd)
}

/// Waits until `openvpn` logged [`INIT_COMPLETED`]; panics after `timeout` or when openvpn exits first.
pub fn wait_initialized(openvpn: &ChildGuard, timeout: Duration) {
    openvpn.wait_for_text(INIT_COMPLETED, timeout);
}

/// The tun device openvpn opened, from its log ("TUN/TAP device tun0 opened", or "DCO device tun0 opened" when
/// the ovpn-dco kernel module is in use). Needed when several clients share one namespace (tun0, tun1, …).
pub fn tun_device(openvpn: &ChildGuard) -> Option<String> {
    openvpn.lines().iter().rev().find_map(|l| {
        let rest = l.strip_suffix(" opened")?;
        let (before, dev) = rest.rsplit_once(' ')?;
        before.ends_with(" device").then(|| dev.to_owned())
    })
}

/// The IPv4 address (and prefix length) on `dev` inside `ns`, read from the kernel (`ip -4 -o addr show`).
pub fn tun_ipv4(ns: &Netns, dev: &str) -> Option<(Ipv4Addr, u8)> {
    let out = run_cmd(Command::new("ip").args(["-n", ns.name(), "-4", "-o", "addr", "show", "dev", dev])).ok()?;
    // "7: tun0    inet 198.18.0.2/24 scope global tun0\       valid_lft forever preferred_lft forever"
    let mut words = out.split_whitespace();
    words.find(|w| *w == "inet")?;
    let (addr, len) = words.next()?.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok()?))
}

/// The tunnel address of an initialized openvpn client: its tun device from the log, its address from the kernel.
/// Panics when either is unknown (call after [`wait_initialized`]).
pub fn client_address(ns: &Netns, openvpn: &ChildGuard) -> Ipv4Addr {
    let dev = tun_device(openvpn).unwrap_or_else(|| panic!("{}: no tun device in its log", openvpn.label()));
    tun_ipv4(ns, &dev).unwrap_or_else(|| panic!("{}: no IPv4 address on {dev} in {}", openvpn.label(), ns.name())).0
}
