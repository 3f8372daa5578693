//! Renders OpenVPN server configs and client profiles from validated values (askama templates in
//! `templates/openvpn/`).
//!
//! Invariant 7 (ARCHITECTURE.md) is held twice: every field is a validated type (`Name`, `ConfPath`, `Host`, addresses,
//! numbers, `Pem`), and the `ConfToken` escaper refuses to render any interpolated value that could split or end
//! a config line. Inline blocks take only `Pem`, which cannot contain `</`.

mod pem;

use std::fmt;
use std::net::Ipv4Addr;

use askama::Template;

pub use crate::config::Proto;
use crate::domain::{ConfPath, Host, Kind, Name};
pub use pem::{Pem, PemError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("refusing to render an OpenVPN config: {0} (a value with whitespace, a quote or a control character)")]
    Template(#[from] askama::Error),
}

/// The escaper for `.conf`/`.ovpn` templates: writes values verbatim, but fails on anything that is not a single
/// safe config token. Validated types never trip it; it is the lock behind the lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfToken;

impl askama::filters::Escaper for ConfToken {
    fn write_escaped_str<W: fmt::Write>(&self, mut dest: W, s: &str) -> fmt::Result {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'#;\\<>`".contains(c)) {
            return Err(fmt::Error);
        }
        dest.write_str(s)
    }
}

#[derive(Template)]
#[template(path = "openvpn/terminal-server.conf")]
pub struct TerminalServer<'a> {
    pub instance: &'a Name,
    pub index: u32,
    pub proto: Proto,
    pub listen_ip: Ipv4Addr,
    pub port: u16,
    pub dev: &'a Name,
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub master_ip: Ipv4Addr,
    pub max_clients: u32,
    pub ca: &'a ConfPath,
    pub cert: &'a ConfPath,
    pub key: &'a ConfPath,
    pub crl: &'a ConfPath,
    pub tls_crypt_v2: &'a ConfPath,
    pub management: &'a ConfPath,
}

#[derive(Template)]
#[template(path = "openvpn/admin-server.conf")]
pub struct AdminServer<'a> {
    pub instance: &'a Name,
    pub credential: &'a Name,
    pub proto: Proto,
    pub port: u16,
    pub dev: &'a Name,
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub admin_ip: Ipv4Addr,
    pub ca: &'a ConfPath,
    pub cert: &'a ConfPath,
    pub key: &'a ConfPath,
    pub crl: &'a ConfPath,
    pub tls_crypt_v2: &'a ConfPath,
    pub management: &'a ConfPath,
}

#[derive(Template)]
#[template(path = "openvpn/client.ovpn")]
pub struct ClientProfile<'a> {
    pub kind: Kind,
    pub name: &'a Name,
    pub proto: Proto,
    /// Every node's public address, one `remote` line each (several nodes on one store).
    pub hosts: &'a [Host],
    /// `remote-random` (terminals with several nodes: spread them over the nodes).
    pub remote_random: bool,
    pub port: u16,
    pub server_name: &'a Name,
    /// Terminals retry after a denial; admins (a person at a keyboard) see it and stop.
    pub retry_auth: bool,
    /// A terminal's reconnection period in seconds (`connect-retry N N`; `app::profile::terminal_retry_secs`).
    pub retry_secs: u16,
    pub ca: &'a Pem,
    pub cert: &'a Pem,
    pub key: Option<&'a Pem>,
    pub key_file: Option<&'a ConfPath>,
    pub tls_crypt_v2: &'a Pem,
}

/// Renders a template; the text always ends with a newline (Jinja drops the template's last one).
pub fn render(t: &impl Template) -> Result<String, RenderError> {
    let mut text = t.render()?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
