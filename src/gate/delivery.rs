//! The `.ovpn` the gate delivers in the CSR and approval flows: the terminal CA, the terminal's certificate and a
//! tls-crypt-v2 client key derived from that certificate (`ProfileMaker::render_for_certificate`), never a private
//! key. Rendering the same certificate twice gives the same bytes, which is what makes a retried pairing return
//! the same answer.

use crate::app::profile::ProfileMaker;
use crate::app::{AppError, Ctx};
use crate::domain::{Kind, Name};

pub struct Delivery(ProfileMaker);

impl Delivery {
    /// `None` under Scenario B: the gate then hands out no VPN config.
    pub fn new(ctx: &Ctx) -> Result<Option<Delivery>, AppError> {
        if ctx.cfg.active_vpn().is_none() {
            return Ok(None);
        }
        Ok(Some(Delivery(ProfileMaker::new(ctx, Kind::Terminal)?)))
    }

    /// Takes the store's current node list into the profiles (at start, then periodically).
    /// Returns how many addresses the profiles list when that changed.
    pub async fn load_nodes(&self, store: &crate::db::Store) -> Result<Option<usize>, AppError> {
        self.0.load_nodes(store).await
    }

    /// The profile of terminal `name` for its certificate `cert_pem` (serial `serial`, lowercase hex).
    pub fn render(&self, name: &Name, cert_pem: &str, serial: &str) -> Result<String, AppError> {
        self.0.render_for_certificate(name, cert_pem, serial)
    }
}
