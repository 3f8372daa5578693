//! Client profiles (`.ovpn`): the CA, the client's certificate, its key when the server made it, and a
//! tls-crypt-v2 client key wrapped natively (no openvpn process per client) with metadata naming the credential.

use cas_pki::{ClientMetadata, PrivateKey, TlsCryptV2ServerKey};

use super::{AppError, Ctx};
use crate::domain::{ConfPath, Host, Kind, Name};
use crate::ovpn::{self, ClientProfile, Pem, Proto};
use crate::pkifiles::ServerRole;

/// What the tls-crypt-v2 metadata of a client key says: `cv1:t:<name>` or `cv1:a:<name>`. The terminal front reads
/// it (after checking the key's HMAC) to send a terminal to its home instance.
pub fn metadata_for(kind: Kind, name: &Name) -> ClientMetadata {
    let k = match kind {
        Kind::Terminal => 't',
        Kind::Admin => 'a',
    };
    ClientMetadata::User(format!("cv1:{k}:{name}").into_bytes())
}

/// Shortest and longest reconnection period a terminal profile gets (`connect-retry N N`, seconds).
pub const RETRY_SECS: std::ops::RangeInclusive<u16> = 2..=5;

/// A terminal's reconnection period: the same for the same name, spread evenly over [`RETRY_SECS`] across a fleet.
/// openvpn 2.x has no jitter of its own, so a fleet with one period would come back from a restart as one herd at
/// the same second; spread over a few periods it arrives in waves the front and the instances take in turn. Short,
/// because under `auth-retry nointeract` this period is also every other pause (openvpn's own 10 s, its backoff
/// and a server's `TEMP[backoff N]` are all capped by it): see ARCHITECTURE.md, "A fleet's storm".
pub fn terminal_retry_secs(name: &Name) -> u16 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_str().as_bytes());
    let span = RETRY_SECS.end() - RETRY_SECS.start() + 1;
    RETRY_SECS.start() + u16::from_be_bytes([h[0], h[1]]) % span
}

/// Parses metadata written by `metadata_for`; anything else is `None`.
pub fn parse_metadata(m: &ClientMetadata) -> Option<(Kind, Name)> {
    let ClientMetadata::User(bytes) = m else { return None };
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("cv1:")?;
    let (k, name) = rest.split_once(':')?;
    let kind = match k {
        "t" => Kind::Terminal,
        "a" => Kind::Admin,
        _ => return None,
    };
    Some((kind, name.parse().ok()?))
}

/// Loaded once, then renders any number of profiles of one kind (bulk import renders thousands).
pub struct ProfileMaker {
    kind: Kind,
    ca: Pem,
    /// This node's public address first, then every other node's the store knows (one `remote` line each;
    /// refreshed by [`ProfileMaker::load_nodes`]).
    hosts: std::sync::RwLock<Vec<Host>>,
    proto: Proto,
    front_port: u16,
    server_name: Name,
    tls: TlsCryptV2ServerKey,
}

impl ProfileMaker {
    /// Reads the CA and the tls-crypt-v2 key; profiles name this node only until [`ProfileMaker::load_nodes`].
    pub fn new(ctx: &Ctx, kind: Kind) -> Result<ProfileMaker, AppError> {
        let vpn = ctx.vpn("a client profile")?;
        let host = crate::cluster::public_address(&ctx.cfg)
            .ok_or_else(|| AppError::NoPublicAddress { path: ctx.cfg.network_path() })?;
        let hosts = std::sync::RwLock::new(vec![host]);
        let role = match kind {
            Kind::Terminal => ServerRole::TerminalVpn,
            Kind::Admin => ServerRole::AdminVpn,
        };
        Ok(ProfileMaker {
            kind,
            ca: Pem::new(&ctx.pki.read_ca_cert(kind)?)?,
            hosts,
            proto: vpn.proto,
            front_port: vpn.terminal_front_port,
            server_name: role.common_name().parse()?,
            tls: ctx.pki.load_tls_crypt_v2(kind)?,
        })
    }

    /// Every node the store knows goes into the profiles as a `remote` (this node's address first). A node
    /// appears once its `serve vpn` has registered; an address that is not a valid host is left out, loudly.
    /// Returns how many addresses the profiles list when that changed, `None` when it did not.
    pub async fn load_nodes(&self, store: &crate::db::Store) -> Result<Option<usize>, AppError> {
        Ok(self.take_nodes(&store.list_nodes().await?))
    }

    /// [`ProfileMaker::load_nodes`] with the node rows already read.
    pub fn take_nodes(&self, nodes: &[crate::db::NodeRow]) -> Option<usize> {
        let Ok(mut hosts) = self.hosts.write() else { return None };
        let before = hosts.len();
        hosts.truncate(1);
        for node in nodes {
            match node.address.parse::<Host>() {
                Ok(h) if !hosts.contains(&h) => hosts.push(h),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %node.name, error = %e, "node address left out of client profiles"),
            }
        }
        (hosts.len() != before).then_some(hosts.len())
    }

    /// Renders one profile with a fresh random tls-crypt-v2 client key. `port`: the admin credential's own port; terminals always use the front port.
    pub fn render(
        &self,
        name: &Name,
        cert_pem: &str,
        key: Option<&PrivateKey>,
        key_file: Option<&ConfPath>,
        port: Option<u16>,
    ) -> Result<String, AppError> {
        let wrapped =
            self.tls.wrap_client_key(&metadata_for(self.kind, name)).map_err(|e| AppError::Ca(e.to_string()))?;
        self.render_with(name, cert_pem, key, key_file, port, &wrapped)
    }

    /// Renders the profile of a certificate whose private key the client keeps (the gate's CSR flows): the
    /// tls-crypt-v2 client key is derived from the server key, the name and the certificate serial, so rendering
    /// the same certificate again gives the same bytes (a retried pairing gets the same answer) and no client key
    /// is stored anywhere.
    pub fn render_for_certificate(&self, name: &Name, cert_pem: &str, serial: &str) -> Result<String, AppError> {
        let mut context = name.as_str().as_bytes().to_vec();
        context.push(0);
        context.extend_from_slice(serial.as_bytes());
        let wrapped = self
            .tls
            .wrap_derived_client_key(&context, &metadata_for(self.kind, name))
            .map_err(|e| AppError::Ca(e.to_string()))?;
        self.render_with(name, cert_pem, None, None, None, &wrapped)
    }

    fn render_with(
        &self,
        name: &Name,
        cert_pem: &str,
        key: Option<&PrivateKey>,
        key_file: Option<&ConfPath>,
        port: Option<u16>,
        wrapped: &cas_pki::TlsCryptV2ClientKey,
    ) -> Result<String, AppError> {
        let tls = Pem::new(&wrapped.to_pem())?;
        let cert = Pem::new(cert_pem)?;
        let key_pem = key.map(|k| Pem::new(&k.to_pem())).transpose()?;
        let hosts = self.hosts.read().map(|h| h.clone()).map_err(|_| AppError::Other("profile hosts lock".into()))?;
        Ok(ovpn::render(&ClientProfile {
            kind: self.kind,
            name,
            proto: self.proto,
            hosts: &hosts,
            remote_random: self.kind == Kind::Terminal && hosts.len() > 1,
            port: port.unwrap_or(self.front_port),
            server_name: &self.server_name,
            retry_auth: self.kind == Kind::Terminal,
            retry_secs: terminal_retry_secs(name),
            ca: &self.ca,
            cert: &cert,
            key: key_pem.as_ref(),
            key_file,
            tls_crypt_v2: &tls,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_periods_are_stable_per_name_and_spread_over_the_range() {
        let name = |i: usize| -> Name { format!("atm-{i:04}").parse().unwrap() };
        assert_eq!(terminal_retry_secs(&name(7)), terminal_retry_secs(&name(7)));
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..2000 {
            let s = terminal_retry_secs(&name(i));
            assert!(RETRY_SECS.contains(&s), "{s}");
            *seen.entry(s).or_insert(0) += 1;
        }
        let even = 2000 / RETRY_SECS.len();
        assert_eq!(seen.len(), RETRY_SECS.len(), "every period is used: {seen:?}");
        assert!(seen.values().all(|&n| n > even * 3 / 4 && n < even * 5 / 4), "spread evenly: {seen:?}");
    }

    #[test]
    fn metadata_round_trip_and_refusals() {
        let n: Name = "atm-7".parse().unwrap();
        assert_eq!(parse_metadata(&metadata_for(Kind::Terminal, &n)), Some((Kind::Terminal, n.clone())));
        assert_eq!(parse_metadata(&metadata_for(Kind::Admin, &n)), Some((Kind::Admin, n)));
        for bad in ["", "cv1:x:atm", "cv2:t:atm", "cv1:t:../x", "cv1:t:"] {
            assert_eq!(parse_metadata(&ClientMetadata::User(bad.as_bytes().to_vec())), None, "{bad}");
        }
        assert_eq!(parse_metadata(&ClientMetadata::Timestamp(5)), None);
    }
}
