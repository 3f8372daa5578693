//! The instance plan: which openvpn instances exist, on which port, tun device and address slice. Derived from the
//! config (terminal instances) and the store (one admin instance per live admin credential), never stored.

use std::path::PathBuf;

use serde::Serialize;

use super::{AppError, Ctx};
use crate::config::VpnConfig;
pub use crate::domain::addressing::{FIRST_HOST_INDEX, host_ip, hosts_per_slice, terminal_ip};
use crate::domain::{Kind, Name, Subnet};

/// The address slices of the terminal subnet, one per terminal instance (index = position).
pub fn terminal_slices(vpn: &VpnConfig) -> Result<Vec<Subnet>, AppError> {
    Ok(vpn.terminal_subnet.slices(vpn.terminal_ports.len())?)
}

/// The slice of the admin subnet for the admin instance on `port`.
pub fn admin_slice(vpn: &VpnConfig, port: u16) -> Result<Subnet, AppError> {
    let slices = vpn.admin_subnet.slices(vpn.admin_ports.len())?;
    let i = usize::from(port.saturating_sub(vpn.admin_ports.start()));
    slices.get(i).copied().ok_or_else(|| AppError::Other(format!("admin port {port} is outside admin_ports")))
}

/// The instance being asked.
#[derive(Debug, Clone)]
pub struct InstanceRole {
    pub kind: Kind,
    /// Terminal instances: the index (a terminal must come to its home instance).
    pub index: Option<u32>,
    /// Admin instances: the one credential served.
    pub credential: Option<Name>,
    pub subnet: Subnet,
}

/// What the VPN service needs to run one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: Name,
    pub role: InstanceRole,
    pub port: u16,
    pub config: PathBuf,
    pub management: PathBuf,
    pub pidfile: PathBuf,
    /// The user openvpn runs as (with CAP_NET_ADMIN only); `None`: as this process's user.
    pub run_as: Option<crate::sys::process::Creds>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    /// `terminal-0`…, `admin-12000`…: also the directory name under `<root>/vpn/`.
    pub name: Name,
    pub kind: Kind,
    pub port: u16,
    /// tun device: `cvt0`…, `cva0`….
    pub dev: Name,
    pub subnet: Subnet,
    /// The admin credential an admin instance serves.
    pub credential: Option<Name>,
    /// Terminal instance index (home_instance in the store).
    pub index: Option<u32>,
}

fn name(s: String) -> Result<Name, AppError> {
    Ok(s.parse()?)
}

pub fn terminal_instances(vpn: &VpnConfig) -> Result<Vec<Instance>, AppError> {
    let slices = terminal_slices(vpn)?;
    vpn.terminal_ports
        .iter()
        .zip(slices)
        .enumerate()
        .map(|(i, (port, subnet))| {
            Ok(Instance {
                name: name(format!("terminal-{i}"))?,
                kind: Kind::Terminal,
                port,
                dev: name(format!("cvt{i}"))?,
                subnet,
                credential: None,
                index: Some(i as u32),
            })
        })
        .collect()
}

pub fn admin_instance(vpn: &VpnConfig, credential: &Name, port: u16) -> Result<Instance, AppError> {
    Ok(Instance {
        name: name(format!("admin-{port}"))?,
        kind: Kind::Admin,
        port,
        dev: name(format!("cva{}", port - vpn.admin_ports.start()))?,
        subnet: admin_slice(vpn, port)?,
        credential: Some(credential.clone()),
        index: None,
    })
}

/// Every instance that should run now: all terminal instances, and one per live admin credential.
pub async fn plan(ctx: &Ctx) -> Result<Vec<Instance>, AppError> {
    let vpn = ctx.vpn("the VPN instances")?;
    let mut all = terminal_instances(vpn)?;
    for c in ctx.store.list_credentials(Some(Kind::Admin), false).await? {
        if let Some(port) = c.admin_port {
            all.push(admin_instance(vpn, &c.name, port)?);
        }
    }
    Ok(all)
}

/// Writes every planned instance's `server.conf` (only when its text changed) and returns what the supervisor
/// needs to run them, each with a fingerprint of its config so that a change restarts only that instance.
///
/// With `run_as`, openvpn runs as that user: its instance directories and `server.conf` are given to it, and the
/// server keys it must read are copied into `vpn/keys/` (its own, 0600): the originals in `pki/` stay root's.
pub async fn render_all(
    ctx: &Ctx,
    run_as: Option<crate::sys::process::Creds>,
) -> Result<Vec<(InstanceSpec, [u8; 32])>, AppError> {
    use sha2::{Digest, Sha256};

    use crate::domain::ConfPath;
    use crate::ovpn::{self, AdminServer, TerminalServer};
    use crate::pkifiles::ServerRole;
    use InstanceSpec;

    let vpn = ctx.vpn("the VPN instances")?;
    let pki = &ctx.pki;
    let cp = |p: std::path::PathBuf| -> Result<ConfPath, AppError> { Ok(ConfPath::new(p)?) };
    let keys_dir = ctx.cfg.root.join("vpn").join("keys");
    if let Some(c) = run_as {
        crate::sys::fs::ensure_dir(&keys_dir, 0o700)?;
        give(&keys_dir, c)?;
    }
    let mut out = Vec::new();
    for inst in plan(ctx).await? {
        let dir = ctx.cfg.root.join("vpn").join(inst.name.as_str());
        crate::sys::fs::ensure_dir(&dir, 0o700)?;
        if let Some(c) = run_as {
            give(&dir, c)?;
        }
        let management = cp(dir.join("management.sock"))?;
        let (role, kind) = match inst.kind {
            Kind::Terminal => (ServerRole::TerminalVpn, Kind::Terminal),
            Kind::Admin => (ServerRole::AdminVpn, Kind::Admin),
        };
        let ca = cp(pki.ca_cert_path(kind))?;
        let cert = cp(pki.server_cert_path(role))?;
        let crl = cp(pki.crl_path(kind))?;
        let (key, tls) = match run_as {
            None => (cp(pki.server_key_path(role))?, cp(pki.tls_crypt_v2_path(kind))?),
            Some(c) => (
                cp(copy_for(&pki.server_key_path(role), &keys_dir, c)?)?,
                cp(copy_for(&pki.tls_crypt_v2_path(kind), &keys_dir, c)?)?,
            ),
        };
        let text = match (&inst.credential, inst.index) {
            (None, Some(index)) => ovpn::render(&TerminalServer {
                instance: &inst.name,
                index,
                proto: vpn.proto,
                listen_ip: vpn.instance_listen_ip,
                port: inst.port,
                dev: &inst.dev,
                network: inst.subnet.network(),
                netmask: inst.subnet.netmask(),
                master_ip: ctx.cfg.network.master_bind_ip,
                max_clients: hosts_per_slice(&inst.subnet),
                ca: &ca,
                cert: &cert,
                key: &key,
                crl: &crl,
                tls_crypt_v2: &tls,
                management: &management,
            })?,
            (Some(credential), _) => ovpn::render(&AdminServer {
                instance: &inst.name,
                credential,
                proto: vpn.proto,
                port: inst.port,
                dev: &inst.dev,
                network: inst.subnet.network(),
                netmask: inst.subnet.netmask(),
                admin_ip: ctx.cfg.network.admin_bind_ip,
                ca: &ca,
                cert: &cert,
                key: &key,
                crl: &crl,
                tls_crypt_v2: &tls,
                management: &management,
            })?,
            (None, None) => return Err(AppError::Other(format!("instance {} has no role", inst.name))),
        };
        let config = dir.join("server.conf");
        if crate::sys::fs::read_optional(&config)?.as_deref() != Some(text.as_str()) {
            crate::sys::fs::write_atomic(&config, text.as_bytes(), 0o600)?;
        }
        if let Some(c) = run_as {
            give(&config, c)?;
        }
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let spec = InstanceSpec {
            role: InstanceRole {
                kind: inst.kind,
                index: inst.index,
                credential: inst.credential.clone(),
                subnet: inst.subnet,
            },
            port: inst.port,
            config,
            management: management.as_path().to_owned(),
            pidfile: dir.join("openvpn.pid"),
            run_as,
            name: inst.name,
        };
        out.push((spec, hash));
    }
    Ok(out)
}

/// Gives `path` to openvpn's user (the owner only: modes stay as written).
fn give(path: &std::path::Path, c: crate::sys::process::Creds) -> Result<(), AppError> {
    std::os::unix::fs::chown(path, Some(c.uid), Some(c.gid))
        .map_err(|e| AppError::Other(format!("{}: {e}", path.display())))
}

/// Copies a key openvpn must read into `dir` (0600, owned by its user) when the copy differs; returns its path.
fn copy_for(
    src: &std::path::Path,
    dir: &std::path::Path,
    c: crate::sys::process::Creds,
) -> Result<std::path::PathBuf, AppError> {
    let dst = dir.join(src.file_name().unwrap_or_default());
    let text = crate::sys::fs::read(src)?;
    if crate::sys::fs::read_optional(&dst)?.as_deref() != Some(text.as_str()) {
        crate::sys::fs::write_atomic(&dst, text.as_bytes(), 0o600)?;
    }
    give(&dst, c)?;
    Ok(dst)
}

/// Kills openvpn processes recorded in `<root>/vpn/*/openvpn.pid` by a previous cas-vpn (the second lock behind
/// the parent-death signal). Returns how many were killed.
pub fn kill_orphans(root: &std::path::Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(root.join("vpn")) else { return 0 };
    dirs.flatten().filter(|d| crate::sys::process::kill_orphan(&d.path().join("openvpn.pid"), "openvpn")).count()
}
