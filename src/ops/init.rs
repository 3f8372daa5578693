//! `cas-vpn init`: creates whatever is missing (config files, PKI, store, first CRLs) and keeps whatever exists.
//! Idempotent: a second run changes nothing and says so.

use std::net::Ipv4Addr;
use std::path::Path;

use cas_pki::{AltName, KeyType};
use serde::Serialize;

use super::{Ctx, OpsError, crl};
use crate::app::accounts::{self, UserMode};
use crate::app::new_cert;
use crate::config::{GateConfig, NetworkConfig, VpnConfig};
use crate::domain::{Kind, Name};
use crate::pkifiles::{PkiDir, ServerRole};
use crate::sys::fs::ensure_dir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Kept,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub what: String,
    pub action: Action,
}

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub root: String,
    pub steps: Vec<Step>,
    /// False when the run changed nothing.
    pub changed: bool,
    /// SHA-256 fingerprint of the web UI's certificate, to compare with what the browser shows.
    pub web_fingerprint: Option<String>,
    /// `--web-bootstrap`: the first web user's one-time setup link, on the public address.
    pub bootstrap_url: Option<String>,
}

/// The web UI's self-signed certificate lives two years; `init` remakes it in its last 30 days.
const WEB_CERT_DAYS: u32 = 730;

#[derive(Default)]
pub struct InitOptions {
    pub public_ip: Option<Ipv4Addr>,
    pub key_type: Option<KeyType>,
    /// Turn the web UI's bootstrap mode on (public 7777 until the first admin VPN session) and, when there is no
    /// web user yet, make the first one (`admin`) with a setup link on the public address.
    pub web_bootstrap: bool,
}

pub async fn init(root: &Path, database_url: Option<&str>, opts: InitOptions) -> Result<InitReport, OpsError> {
    let mut steps = Vec::new();
    let mut step = |what: &str, action| steps.push(Step { what: what.to_owned(), action });
    ensure_dir(&root.join("config"), 0o755)?;

    // Config files: create when missing; only an explicit, different --public-ip changes an existing one.
    let network_path = root.join("config").join("network");
    if network_path.exists() {
        let (mut net, _) = NetworkConfig::load(root)?;
        match opts.public_ip {
            Some(ip) if net.public_ip != Some(ip) => {
                net.public_ip = Some(ip);
                net.write(root)?;
                step("config/network (public_ip)", Action::Updated);
            }
            _ => step("config/network", Action::Kept),
        }
    } else {
        let net = NetworkConfig { public_ip: opts.public_ip, ..NetworkConfig::default() };
        net.write(root)?;
        step("config/network", Action::Created);
    }
    if root.join("config").join("gate.properties").exists() {
        step("config/gate.properties", Action::Kept);
    } else {
        GateConfig::default_for(root).write(root)?;
        step("config/gate.properties", Action::Created);
    }
    if root.join("config").join("vpn").exists() {
        step("config/vpn", Action::Kept);
    } else {
        let vpn = VpnConfig { key_type: opts.key_type.unwrap_or_default(), ..VpnConfig::default() };
        vpn.write(root)?;
        step("config/vpn", Action::Created);
    }
    if root.join("config").join("firewall").exists() {
        step("config/firewall", Action::Kept);
    } else {
        crate::config::FirewallConfig::default().write(root)?;
        step("config/firewall", Action::Created);
    }

    let store_is_new = database_url.is_none() && !root.join("db").join("cas-vpn.sqlite").exists();
    let ctx = Ctx::open(root, database_url).await?;
    let defaults = VpnConfig::default();
    let vpn = ctx.cfg.vpn.as_ref().unwrap_or(&defaults);
    let key_type = vpn.key_type;
    let pki: &PkiDir = &ctx.pki;
    pki.ensure_dirs()?;
    crate::sys::fs::sweep_temps(pki.dir());
    crate::app::pending::recover_pending(&ctx).await?;

    for kind in [Kind::Terminal, Kind::Admin] {
        let ca = if pki.has_ca(kind) {
            step(&format!("pki/{kind}-ca"), Action::Kept);
            pki.load_ca(kind)?
        } else {
            let ca = pki.create_ca(kind, key_type, vpn.ca_days)?;
            step(&format!("pki/{kind}-ca"), Action::Created);
            ca
        };
        let roles: &[ServerRole] = match kind {
            Kind::Terminal => &[ServerRole::TerminalVpn, ServerRole::Gate],
            Kind::Admin => &[ServerRole::AdminVpn],
        };
        for &role in roles {
            // A server cert from an older CA (the CA was remade after a crash) is remade too.
            let current = issued_by(pki, role, &ca);
            if current {
                step(&format!("pki/{}", role.common_name()), Action::Kept);
                continue;
            }
            let issued = pki.create_server(&ca, role, key_type, vpn.server_cert_days)?;
            ctx.store.record_server_cert(kind, &new_cert(&issued.cert_pem)?, ctx.clock.now()).await?;
            step(&format!("pki/{}", role.common_name()), Action::Created);
        }
        if kind == Kind::Terminal {
            ensure_master_cert(&ctx, &ca, key_type, vpn.server_cert_days, &mut step).await?;
        }
        if pki.has_tls_crypt_v2(kind) {
            step(&format!("pki/tls-crypt-v2-{kind}"), Action::Kept);
        } else {
            pki.create_tls_crypt_v2(kind)?;
            step(&format!("pki/tls-crypt-v2-{kind}"), Action::Created);
        }
        if crl::is_fresh(&ctx, kind)? {
            step(&format!("pki/crl-{kind}"), Action::Kept);
        } else {
            crl::refresh(&ctx, kind).await?;
            step(&format!("pki/crl-{kind}"), Action::Created);
        }
    }
    // The web UI's TLS certificate names its address (and the public one, for bootstrap); remade when either
    // changed or it nears its end.
    let web_addresses: Vec<std::net::IpAddr> = std::iter::once(ctx.cfg.network.admin_bind_ip)
        .chain(ctx.cfg.network.public_ip)
        .map(std::net::IpAddr::V4)
        .collect();
    if pki.web_cert_covering(&web_addresses).is_some() {
        step("pki/web-ui", Action::Kept);
    } else {
        pki.create_web_cert(&web_addresses, key_type, WEB_CERT_DAYS)?;
        step("pki/web-ui", Action::Created);
    }
    step(&format!("store ({})", ctx.store.backend()), if store_is_new { Action::Created } else { Action::Kept });

    // Service users and who owns what: only as root, and only when services get their own users.
    let mode = UserMode::from_env()?;
    if mode != UserMode::Single && nix::unistd::geteuid().is_root() {
        let (accounts, created) = accounts::ensure(&mode, root)?
            .ok_or_else(|| OpsError::Other("the service users could not be created".into()))?;
        step(&format!("service users ({})", accounts.group), if created { Action::Created } else { Action::Kept });
        super::ownership::apply(root, &accounts, &ctx.cfg.gate.download_dir)?;
    }

    let bootstrap_url = if opts.web_bootstrap { web_bootstrap(&ctx, &mut step).await? } else { None };
    let changed = steps.iter().any(|s| s.action != Action::Kept);
    Ok(InitReport {
        root: root.display().to_string(),
        steps,
        changed,
        web_fingerprint: pki.web_fingerprint(),
        bootstrap_url,
    })
}

/// master's TLS certificate, issued by the terminal CA (terminals verify master against the CA they got at
/// pairing) for `master_bind_ip` and `batm.master.hostname`, the names a terminal may be told to reach master by.
/// Remade when either changed or the CA is not its issuer.
async fn ensure_master_cert(
    ctx: &Ctx,
    ca: &cas_pki::Ca,
    key_type: KeyType,
    days: u32,
    step: &mut impl FnMut(&str, Action),
) -> Result<(), OpsError> {
    let role = ServerRole::Master;
    let mut names = vec![AltName::Ip(ctx.cfg.network.master_bind_ip.into())];
    if let Some(h) = &ctx.cfg.gate.master_hostname {
        let name =
            h.as_str().parse::<std::net::IpAddr>().map_or_else(|_| AltName::Dns(h.as_str().to_owned()), AltName::Ip);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let pki = &ctx.pki;
    let issued_by_ca = issued_by(pki, role, ca);
    let same_names = pki
        .server_cert_names(role)
        .is_some_and(|have| have.len() == names.len() && names.iter().all(|n| have.contains(n)));
    let what = format!("pki/{}", role.common_name());
    if issued_by_ca && same_names {
        step(&what, Action::Kept);
        return Ok(());
    }
    let existed = pki.has_server(role);
    let issued = pki.create_named_server(ca, role, &names, key_type, days)?;
    ctx.store.record_server_cert(Kind::Terminal, &new_cert(&issued.cert_pem)?, ctx.clock.now()).await?;
    step(&what, if existed { Action::Updated } else { Action::Created });
    Ok(())
}

/// Whether `role`'s server certificate exists and was issued by `ca` (a CA remade after a crash makes it stale).
fn issued_by(pki: &PkiDir, role: ServerRole, ca: &cas_pki::Ca) -> bool {
    pki.has_server(role)
        && pki
            .read_server_cert(role)
            .ok()
            .and_then(|pem| openssl::x509::X509::from_pem(pem.as_bytes()).ok())
            .zip(openssl::x509::X509::from_pem(ca.cert_pem().as_bytes()).ok())
            .is_some_and(|(cert, ca)| ca.issued(&cert) == openssl::x509::X509VerifyResult::OK)
}

/// `init --web-bootstrap`: bootstrap mode on in `config/firewall`, and the first web user with a one-time setup link
/// on the public address (none when a web user exists already: `web-user add NAME --renew` makes new links).
async fn web_bootstrap(ctx: &Ctx, step: &mut impl FnMut(&str, Action)) -> Result<Option<String>, OpsError> {
    let public_ip =
        ctx.cfg.network.public_ip.ok_or_else(|| OpsError::NoPublicAddress { path: ctx.cfg.network_path() })?;
    if ctx.store.bootstrap_ended().await?.is_some() {
        return Err(OpsError::Other(
            "bootstrap mode has ended for good (an admin VPN session was seen): use `cas-vpn web-user add NAME` and \
             open the link through an admin tunnel"
                .into(),
        ));
    }
    let mut fw = ctx.cfg.firewall.clone();
    if fw.admin_ui_bootstrap {
        step("web UI bootstrap mode", Action::Kept);
    } else {
        fw.admin_ui_bootstrap = true;
        fw.write(&ctx.cfg.root)?;
        step("web UI bootstrap mode", Action::Updated);
    }
    if !ctx.store.list_web_users().await?.is_empty() {
        step("first web user", Action::Kept);
        return Ok(None);
    }
    let admin: Name = "admin".parse()?;
    let added = super::web_users::add_at(ctx, &admin, false, public_ip).await?;
    step("first web user (admin)", Action::Created);
    Ok(Some(added.setup_url))
}
