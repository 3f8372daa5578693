//! The `.ovpn` the gate delivers in the CSR and approval flows: the terminal CA, the terminal's certificate and a
//! tls-crypt-v2 client key derived from that certificate (see `tlscrypt`), never a private key. Rendering the same
//! certificate twice gives the same bytes, which is what makes a retried pairing return the same answer.

use cas_pki::TlsCryptV2ServerKey;

use super::tlscrypt::Deriver;
use crate::domain::{Host, Kind, Name};
use crate::ops::{Ctx, OpsError};
use crate::ovpn::{self, ClientProfile, Pem, Proto};
use crate::pkifiles::ServerRole;

pub struct Delivery {
    ca: Pem,
    host: Host,
    proto: Proto,
    front_port: u16,
    server_name: Name,
    tls: Deriver,
}

impl Delivery {
    /// `None` under Scenario B: the gate then hands out no VPN config.
    pub fn new(ctx: &Ctx) -> Result<Option<Delivery>, OpsError> {
        let Some(vpn) = ctx.cfg.active_vpn() else { return Ok(None) };
        let host = match (&vpn.public_hostname, ctx.cfg.network.public_ip) {
            (Some(h), _) => h.clone(),
            (None, Some(ip)) => Host::from(ip),
            (None, None) => return Err(OpsError::NoPublicAddress { path: ctx.cfg.network_path() }),
        };
        let server: TlsCryptV2ServerKey = ctx.pki.load_tls_crypt_v2(Kind::Terminal)?;
        Ok(Some(Delivery {
            ca: Pem::new(&ctx.pki.read_ca_cert(Kind::Terminal)?)?,
            host,
            proto: vpn.proto,
            front_port: vpn.terminal_front_port,
            server_name: ServerRole::TerminalVpn.common_name().parse()?,
            tls: Deriver::new(server).map_err(OpsError::Ca)?,
        }))
    }

    /// The profile of terminal `name` for its certificate `cert_pem` (serial `serial`, lowercase hex).
    pub fn render(&self, name: &Name, cert_pem: &str, serial: &str) -> Result<String, OpsError> {
        let tls = Pem::new(&self.tls.client_key_pem(name, serial).map_err(OpsError::Ca)?)?;
        let cert = Pem::new(cert_pem)?;
        Ok(ovpn::render(&ClientProfile {
            kind: Kind::Terminal,
            name,
            proto: self.proto,
            host: &self.host,
            port: self.front_port,
            server_name: &self.server_name,
            retry_auth: true,
            ca: &self.ca,
            cert: &cert,
            key: None,
            key_file: None,
            tls_crypt_v2: &tls,
        })?)
    }
}
