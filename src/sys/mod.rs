//! The only place that touches the operating system: files with modes and owners, child commands, interfaces,
//! processes and their credentials, unix accounts, single-instance locks.
//!
//! Keeping these here means the rest of the crate can be read (and tested) as plain logic, and every command
//! cas-vpn runs goes through one helper that logs its argv and keeps its stderr.

pub mod bulk;
pub mod cmd;
pub mod firewall;
pub mod fs;
pub mod lock;
pub mod net;
pub mod process;
pub mod users;

/// This machine's host name (the first label, lower-cased), when it has one.
pub fn host_name() -> Option<String> {
    let host = nix::unistd::gethostname().ok()?.into_string().ok()?;
    let first = host.split('.').next()?.to_ascii_lowercase();
    (!first.is_empty()).then_some(first)
}

/// This machine's identity: `/etc/machine-id` (systemd's), else the host name.
pub fn machine_id() -> Option<String> {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(host_name)
}
