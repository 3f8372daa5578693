//! `serve signer`: the only process that holds a CA key. It answers a narrow set of requests on
//! `<root>/run/signer.sock` (`root:batm 0660`): sign a CSR for an active credential of the right kind (looked up
//! here, never trusted from the caller), publish a CRL. It also keeps the CRLs fresh (an expired CRL locks out
//! every client). It has no network listener.
//!
//! Who may ask what (`SO_PEERCRED`): root and the signer's own uid anything; the web UI's user (`batmadmin`)
//! terminal and admin certificates and CRLs; the gate and master users terminal certificates only. Everything
//! else is refused, and every refusal and every signature is an audit row naming the caller.

use std::path::Path;
use std::sync::Arc;

use cas_pki::{Ca, Validity};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::app::accounts::{self, Accounts, UserMode};
use crate::app::group_commit::GroupCommit;
use crate::app::{AppError, Ctx, crl, csr};
use crate::config::VpnConfig;
use crate::control::server;
use crate::control::signer::{MAX_LINE, SignerRequest, SignerResponse, socket_path};
use crate::db::NewAudit;
use crate::domain::{Actor, Kind, Name};

/// Who is calling, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// uid 0 or the signer's own uid (it could read the keys anyway).
    Owner,
    Gate,
    Master,
    Admin,
    Other,
}

impl Caller {
    pub fn of(uid: u32, own_uid: u32, accounts: Option<&Accounts>) -> Caller {
        if uid == 0 || uid == own_uid {
            return Caller::Owner;
        }
        match accounts.and_then(|a| a.service_of(uid)) {
            Some("gate") => Caller::Gate,
            Some("master") => Caller::Master,
            Some("admin") => Caller::Admin,
            _ => Caller::Other,
        }
    }

    /// May this caller make this request at all? (The store checks come after.)
    pub fn may(self, req: &SignerRequest) -> bool {
        match (self, req) {
            (Caller::Other, _) => false,
            (_, SignerRequest::Ping) | (Caller::Owner, _) => true,
            (Caller::Admin, _) => true,
            (Caller::Gate | Caller::Master, SignerRequest::IssueAdmin { .. }) => false,
            (Caller::Gate | Caller::Master, SignerRequest::Sign { kind: Kind::Terminal, .. }) => true,
            (Caller::Gate | Caller::Master, _) => false,
        }
    }

    /// Who the audit row names. Root is the CLI (the services that run as root do not call the signer); the
    /// signer's own uid when it is not root is only a uid: under one uid for everything (development, tests)
    /// the caller could be any service or the CLI.
    fn actor(self, uid: u32) -> Actor {
        match self {
            Caller::Owner if uid == 0 => Actor::cli(uid, crate::sys::users::name_of(uid).as_deref()),
            Caller::Owner | Caller::Other => Actor::Uid(uid),
            Caller::Gate => Actor::Gate,
            Caller::Master => Actor::Master,
            Caller::Admin => Actor::Admin,
        }
    }
}

struct Signer {
    ctx: Arc<Ctx>,
    /// The audit rows of signatures, written together when several are signed at once (group commit): one
    /// transaction a group rather than one write each, which under a burst of pairings would queue behind the
    /// gate's writes for the store's one write lock, row by row.
    audits: GroupCommit<(NewAudit, i64), Result<(), String>>,
    terminal: Ca,
    admin: Ca,
    accounts: Option<Accounts>,
    own_uid: u32,
}

/// `serve signer` until `stop` turns true.
pub async fn run_signer(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let accounts = accounts::lookup(&UserMode::from_env()?)?;
    let signer = Arc::new(Signer {
        terminal: ctx.pki.load_ca(Kind::Terminal)?,
        admin: ctx.pki.load_ca(Kind::Admin)?,
        own_uid: nix::unistd::geteuid().as_raw(),
        accounts,
        audits: GroupCommit::new(MAX_AUDIT_GROUP),
        ctx: ctx.clone(),
    });
    for kind in [Kind::Terminal, Kind::Admin] {
        if !crl::is_fresh(&ctx, kind)? {
            crl::refresh(&ctx, kind).await?;
        }
    }
    let listener = bind(&ctx.cfg.root, signer.accounts.as_ref())?;
    tracing::info!(socket = %socket_path(&ctx.cfg.root).display(), "signer listening");
    let mut crl_timer = tokio::time::interval(crl::check_period(&ctx));
    // Several nodes on one store: a CRL another node made is published here within this period.
    let mut adopt_timer = tokio::time::interval(ADOPT_EVERY);
    adopt_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let s = signer.clone();
                tokio::spawn(async move { s.answer(stream).await });
            }
            _ = adopt_timer.tick() => {
                for kind in [Kind::Terminal, Kind::Admin] {
                    match crl::adopt(&ctx, kind).await {
                        Ok(Some(n)) => tracing::info!(ca = %kind, number = n, "CRL from the store published (made by another node)"),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(ca = %kind, error = %e, "CRL adoption skipped"),
                    }
                }
            }
            _ = crl_timer.tick() => {
                for kind in [Kind::Terminal, Kind::Admin] {
                    if !crl::is_fresh(&ctx, kind).unwrap_or(false) {
                        match crl::refresh(&ctx, kind).await {
                            Ok(r) => tracing::info!(ca = %kind, number = r.crl_number, next_update = %r.next_update, "CRL renewed"),
                            Err(e) => tracing::error!(ca = %kind, error = %e, "CRL renewal failed"),
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_file(socket_path(&ctx.cfg.root));
    Ok(())
}

/// At most this many audit rows share one transaction.
const MAX_AUDIT_GROUP: usize = 256;

/// How often the signer looks for a newer CRL in the store (one small query; the text only when newer).
const ADOPT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket `root:batm 0660` (`0600` in single-uid mode), replacing a stale one.
fn bind(root: &Path, accounts: Option<&Accounts>) -> Result<UnixListener, AppError> {
    let path = socket_path(root);
    crate::control::server::bind(&path, accounts.map(|a| a.gid))
        .map_err(|e| AppError::Other(format!("signer socket {}: {e}", path.display())))
}

impl Signer {
    async fn answer(&self, stream: UnixStream) {
        let Some((uid, req, mut write)) = server::read_request::<SignerRequest>(stream, MAX_LINE).await else {
            return;
        };
        let caller = Caller::of(uid, self.own_uid, self.accounts.as_ref());
        let resp = match req {
            Ok(req) => self.handle(caller, uid, req).await,
            Err(why) => self.refuse(caller, uid, "request", "-", why).await,
        };
        server::write_response(&mut write, &resp).await;
    }

    async fn handle(&self, caller: Caller, uid: u32, req: SignerRequest) -> SignerResponse {
        if !caller.may(&req) {
            let what = match &req {
                SignerRequest::Sign { kind, .. } => format!("{kind} certificates"),
                SignerRequest::Issue { kind, .. } => format!("server-made {kind} keys"),
                SignerRequest::IssueAdmin { .. } => "admin VPN credentials".into(),
                SignerRequest::PublishCrl { .. } => "CRLs".into(),
                SignerRequest::Ping => "anything".into(),
            };
            let subject = match &req {
                SignerRequest::Sign { name, .. }
                | SignerRequest::Issue { name, .. }
                | SignerRequest::IssueAdmin { name } => name.to_string(),
                _ => "-".into(),
            };
            return self.refuse(caller, uid, "request", &subject, format!("uid {uid} may not ask for {what}")).await;
        }
        match req {
            SignerRequest::Ping => SignerResponse::Pong,
            SignerRequest::PublishCrl { kind } => match crl::refresh(&self.ctx, kind).await {
                Ok(r) => SignerResponse::Published {
                    crl_number: r.crl_number,
                    revoked: r.revoked,
                    next_update: r.next_update,
                },
                Err(e) => SignerResponse::Error { message: e.to_string() },
            },
            SignerRequest::Sign { kind, name, csr } => {
                if let Err(why) = self.active(kind, &name).await {
                    return self.answer_refusal(caller, uid, "sign", &name, why).await;
                }
                let checked = match csr::check(&csr, Some(name.as_str())) {
                    Ok(c) => c,
                    Err(e) => return self.refuse(caller, uid, "sign", name.as_str(), format!("CSR: {e}")).await,
                };
                let (ca, validity) = self.ca_and_validity(kind);
                match ca.sign_csr(&checked.csr, name.as_str(), validity) {
                    Ok((cert, serial)) => match self.audited(caller, uid, kind, &name, &serial.to_hex()).await {
                        Ok(serial) => SignerResponse::Signed { cert, serial },
                        Err(e) => e,
                    },
                    Err(e) => SignerResponse::Error { message: e.to_string() },
                }
            }
            SignerRequest::IssueAdmin { name } => self.issue_admin(caller, uid, &name).await,
            SignerRequest::Issue { kind, name } => {
                if let Err(why) = self.active(kind, &name).await {
                    return self.answer_refusal(caller, uid, "issue", &name, why).await;
                }
                let defaults = VpnConfig::default();
                let key_type = self.ctx.cfg.vpn.as_ref().unwrap_or(&defaults).key_type;
                let (ca, validity) = self.ca_and_validity(kind);
                match ca.issue_client(name.as_str(), key_type, validity) {
                    Ok(issued) => match self.audited(caller, uid, kind, &name, &issued.serial.to_hex()).await {
                        Ok(serial) => SignerResponse::Issued {
                            cert: issued.cert_pem,
                            key: issued.key.to_pem().to_string(),
                            serial,
                        },
                        Err(e) => e,
                    },
                    Err(e) => SignerResponse::Error { message: e.to_string() },
                }
            }
        }
    }

    /// A new admin credential: key and certificate made here, the store row and certificate committed together
    /// (the lowest free port), the signature audited; a name in use or no free port is a refusal.
    async fn issue_admin(&self, caller: Caller, uid: u32, name: &Name) -> SignerResponse {
        let Some(vpn) = self.ctx.cfg.active_vpn() else {
            return self.refuse(caller, uid, "issue", name.as_str(), "no VPN is configured (Scenario B)".into()).await;
        };
        let (ca, validity) = self.ca_and_validity(Kind::Admin);
        let issued = match ca.issue_client(name.as_str(), vpn.key_type, validity) {
            Ok(i) => i,
            Err(e) => return SignerResponse::Error { message: e.to_string() },
        };
        let cert = match crate::app::new_cert(&issued.cert_pem) {
            Ok(c) => c,
            Err(e) => return SignerResponse::Error { message: e.to_string() },
        };
        let port = match self.ctx.store.create_admin(name, vpn.admin_ports, &cert, self.ctx.clock.now()).await {
            Ok(cred) => cred.admin_port.unwrap_or_default(),
            Err(e @ (crate::db::DbError::NameTaken { .. } | crate::db::DbError::PortsExhausted { .. })) => {
                return self.refuse(caller, uid, "issue", name.as_str(), e.to_string()).await;
            }
            Err(e) => return SignerResponse::Error { message: e.to_string() },
        };
        match self.audited(caller, uid, Kind::Admin, name, &issued.serial.to_hex()).await {
            Ok(serial) => SignerResponse::IssuedAdmin {
                cert: issued.cert_pem,
                key: issued.key.to_pem().to_string(),
                serial,
                port,
            },
            Err(e) => e,
        }
    }

    /// `Ok` when `name` is an existing, unrevoked credential of `kind`; else why not (`Err(None)`: store error).
    async fn active(&self, kind: Kind, name: &Name) -> Result<(), Result<String, String>> {
        let cred = self.ctx.store.credential_by_name(name).await.map_err(|e| Err(e.to_string()))?;
        match cred {
            None => Err(Ok("no such credential".to_owned())),
            Some(c) if c.kind != kind => Err(Ok(format!("{name} is a {} credential, not {kind}", c.kind))),
            Some(c) if c.is_revoked() => Err(Ok(format!("{name} is revoked"))),
            Some(_) => Ok(()),
        }
    }

    async fn answer_refusal(
        &self,
        caller: Caller,
        uid: u32,
        what: &str,
        name: &Name,
        why: Result<String, String>,
    ) -> SignerResponse {
        match why {
            Ok(reason) => self.refuse(caller, uid, what, name.as_str(), reason).await,
            Err(message) => SignerResponse::Error { message },
        }
    }

    /// The CA of `kind` and a validity from now (the context's clock: the system clock but in tests).
    fn ca_and_validity(&self, kind: Kind) -> (&Ca, Validity) {
        let defaults = VpnConfig::default();
        let vpn = self.ctx.cfg.vpn.as_ref().unwrap_or(&defaults);
        let (ca, days) = match kind {
            Kind::Terminal => (&self.terminal, vpn.terminal_cert_days),
            Kind::Admin => (&self.admin, vpn.admin_cert_days),
        };
        (ca, Validity::days_from(crate::app::to_datetime(self.ctx.clock.now()), days))
    }

    /// Audits a certificate about to be handed out; an unaudited certificate is not handed out.
    async fn audited(
        &self,
        caller: Caller,
        uid: u32,
        kind: Kind,
        name: &Name,
        serial: &str,
    ) -> Result<String, SignerResponse> {
        let detail = format!("{kind} certificate, serial {serial}");
        let actor = caller.actor(uid);
        let row = NewAudit {
            actor: actor.clone(),
            source: None,
            action: "signer.sign".into(),
            subject: name.to_string(),
            detail,
        };
        let store = self.ctx.store.clone();
        let write = move |rows: Vec<(NewAudit, i64)>| {
            let store = store.clone();
            async move {
                let written = store.audit_many(&rows).await.map_err(|e| e.to_string());
                vec![written; rows.len()]
            }
        };
        self.audits
            .submit((row, self.ctx.clock.now()), write)
            .await
            .unwrap_or_else(|| Err("the audit writer stopped".into()))
            .map_err(|e| SignerResponse::Error { message: format!("audit: {e}") })?;
        tracing::info!(caller = %actor, %name, %serial, "signed");
        Ok(serial.to_owned())
    }

    async fn refuse(&self, caller: Caller, uid: u32, what: &str, subject: &str, reason: String) -> SignerResponse {
        let actor = caller.actor(uid);
        tracing::warn!(%actor, what, subject, %reason, "signer refused a request");
        let _ = self
            .ctx
            .store
            .audit(&actor, "signer.refused", subject, &format!("{what}: {reason}"), self.ctx.clock.now())
            .await;
        SignerResponse::Refused { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Name;

    fn sign(kind: Kind) -> SignerRequest {
        SignerRequest::Sign { kind, name: "atm-1".parse::<Name>().unwrap(), csr: String::new() }
    }

    #[test]
    fn callers_may_ask_only_for_their_kind() {
        let crl = SignerRequest::PublishCrl { kind: Kind::Terminal };
        for c in [Caller::Gate, Caller::Master] {
            assert!(c.may(&sign(Kind::Terminal)));
            assert!(!c.may(&sign(Kind::Admin)), "{c:?} must not get admin certificates");
            assert!(!c.may(&crl));
        }
        let issue = |kind| SignerRequest::Issue { kind, name: "atm-1".parse::<Name>().unwrap() };
        for c in [Caller::Gate, Caller::Master, Caller::Other] {
            assert!(
                !c.may(&issue(Kind::Terminal)) && !c.may(&issue(Kind::Admin)),
                "{c:?} may not get a server-made key"
            );
        }
        assert!(Caller::Admin.may(&issue(Kind::Admin)) && Caller::Owner.may(&issue(Kind::Terminal)));
        assert!(Caller::Admin.may(&sign(Kind::Admin)) && Caller::Admin.may(&crl));
        assert!(Caller::Owner.may(&sign(Kind::Admin)));
        let admin = SignerRequest::IssueAdmin { name: "alice".parse::<Name>().unwrap() };
        assert!(Caller::Admin.may(&admin) && Caller::Owner.may(&admin));
        for c in [Caller::Gate, Caller::Master, Caller::Other] {
            assert!(!c.may(&admin), "{c:?} may not make admin credentials");
        }
        for r in [sign(Kind::Terminal), crl, SignerRequest::Ping] {
            assert!(!Caller::Other.may(&r));
        }
    }
}
