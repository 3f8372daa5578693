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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::app::accounts::{self, Accounts, UserMode};
use crate::app::{AppError, Ctx, crl, csr};
use crate::config::VpnConfig;
use crate::control::signer::{MAX_LINE, SignerRequest, SignerResponse, socket_path};
use crate::domain::{Actor, Kind};

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
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let s = signer.clone();
                tokio::spawn(async move { s.answer(stream).await });
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

/// Binds the socket `root:batm 0660` (`0600` in single-uid mode), replacing a stale one.
fn bind(root: &Path, accounts: Option<&Accounts>) -> Result<UnixListener, AppError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(root);
    let err = |e: std::io::Error| AppError::Other(format!("signer socket {}: {e}", path.display()));
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(err)?;
    let mode = match accounts {
        Some(a) => {
            std::os::unix::fs::chown(&path, Some(0), Some(a.gid)).map_err(err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

impl Signer {
    async fn answer(&self, stream: UnixStream) {
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "signer: no peer credentials; closing");
                return;
            }
        };
        let caller = Caller::of(uid, self.own_uid, self.accounts.as_ref());
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read.take(MAX_LINE)).read_line(&mut line).await.is_err() {
            return;
        }
        let resp = match serde_json::from_str::<SignerRequest>(&line) {
            Ok(req) => self.handle(caller, uid, req).await,
            Err(e) => self.refuse(caller, uid, "request", "-", format!("unreadable request: {e}")).await,
        };
        if let Ok(mut text) = serde_json::to_string(&resp) {
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        }
    }

    async fn handle(&self, caller: Caller, uid: u32, req: SignerRequest) -> SignerResponse {
        if !caller.may(&req) {
            let what = match &req {
                SignerRequest::Sign { kind, .. } => format!("{kind} certificates"),
                SignerRequest::PublishCrl { .. } => "CRLs".into(),
                SignerRequest::Ping => "anything".into(),
            };
            let subject = match &req {
                SignerRequest::Sign { name, .. } => name.to_string(),
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
                let store = &self.ctx.store;
                let cred = match store.credential_by_name(&name).await {
                    Ok(c) => c,
                    Err(e) => return SignerResponse::Error { message: e.to_string() },
                };
                let why = match &cred {
                    None => Some("no such credential".to_owned()),
                    Some(c) if c.kind != kind => Some(format!("{name} is a {} credential, not {kind}", c.kind)),
                    Some(c) if c.is_revoked() => Some(format!("{name} is revoked")),
                    Some(_) => None,
                };
                if let Some(why) = why {
                    return self.refuse(caller, uid, "sign", name.as_str(), why).await;
                }
                let checked = match csr::check(&csr, Some(name.as_str())) {
                    Ok(c) => c,
                    Err(e) => return self.refuse(caller, uid, "sign", name.as_str(), format!("CSR: {e}")).await,
                };
                let defaults = VpnConfig::default();
                let vpn = self.ctx.cfg.vpn.as_ref().unwrap_or(&defaults);
                let (ca, days) = match kind {
                    Kind::Terminal => (&self.terminal, vpn.terminal_cert_days),
                    Kind::Admin => (&self.admin, vpn.admin_cert_days),
                };
                // Dated by the context's clock (the system clock but in tests), like every other decision.
                let validity = Validity::days_from(crate::app::to_datetime(self.ctx.clock.now()), days);
                match ca.sign_csr(&checked.csr, name.as_str(), validity) {
                    Ok((cert, serial)) => {
                        let serial = serial.to_hex();
                        let detail = format!("{kind} certificate, serial {serial}");
                        if let Err(e) = store
                            .audit(&caller.actor(uid), "signer.sign", name.as_str(), &detail, self.ctx.clock.now())
                            .await
                        {
                            // An unaudited signature is not handed out.
                            return SignerResponse::Error { message: format!("audit: {e}") };
                        }
                        tracing::info!(caller = %caller.actor(uid), %name, %serial, "signed");
                        SignerResponse::Signed { cert, serial }
                    }
                    Err(e) => SignerResponse::Error { message: e.to_string() },
                }
            }
        }
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
        assert!(Caller::Admin.may(&sign(Kind::Admin)) && Caller::Admin.may(&crl));
        assert!(Caller::Owner.may(&sign(Kind::Admin)));
        for r in [sign(Kind::Terminal), crl, SignerRequest::Ping] {
            assert!(!Caller::Other.may(&r));
        }
    }
}
