//! Validated newtypes for every value that can reach an OpenVPN config, a file name or a log line.
//!
//! Invariant 7 (ARCHITECTURE.md): no whitespace, quote, newline or path separator can reach a template. The types here
//! are the only way to get such a value, so a template that takes them cannot be handed hostile text.

mod actor;
pub mod addressing;
pub mod budget;
mod duration;
pub mod health;
mod kind;
pub mod lifecycle;
mod name;
mod net;
mod openvpn_version;
mod pairing_state;
mod path;
pub mod renewal;
pub mod takeover;
mod token;

pub use actor::{Actor, UnixUser};
pub use duration::{Dur, Since};
pub use health::Health;
pub use kind::Kind;
pub use name::Name;
pub use net::{Cidr, Host, PortRange, Subnet, check_tunnel_side_ip, parse_cidrs};
pub use openvpn_version::OpenVpnVersion;
pub use pairing_state::PairingState;
pub use path::ConfPath;
pub use token::PairingToken;

/// Why a value was refused. The message says what is wrong with the value, never echoing more of it than is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid name {shown}: {why}")]
    Name { shown: String, why: &'static str },
    #[error("invalid host {shown}: {why}")]
    Host { shown: String, why: &'static str },
    #[error("invalid subnet {shown}: {why}")]
    Subnet { shown: String, why: String },
    #[error("invalid port range {shown}: {why}")]
    PortRange { shown: String, why: &'static str },
    #[error("invalid path {shown}: {why}")]
    Path { shown: String, why: &'static str },
    #[error("invalid duration {shown}: {why}")]
    Duration { shown: String, why: String },
    #[error(
        "invalid time {shown}: expected an RFC 3339 time (2026-01-31T08:00:00Z) or a duration back from now (24h, 7d)"
    )]
    Since { shown: String },
    #[error("invalid pairing token: {why}")]
    Token { why: &'static str },
    #[error("invalid credential kind {shown}: expected terminal or admin")]
    Kind { shown: String },
    #[error(
        "invalid actor {shown}: expected cli:USER, web:NAME, api:NAME, admin, gate, master, vpn, signer, net or uid:N"
    )]
    Actor { shown: String },
    #[error("invalid pairing state {shown}: expected pending, approved or rejected")]
    PairingState { shown: String },
    #[error("invalid OpenVPN version {shown}: {why}")]
    OpenVpnVersion { shown: String, why: &'static str },
    #[error("invalid renewal setting or report: {why}")]
    Renewal { why: &'static str },
    #[error("invalid renewal failure code {shown}: {why}")]
    FailureCode { shown: String, why: &'static str },
}

/// Renders untrusted input for an error message: escaped (so a newline cannot forge a log line) and cut short.
pub(crate) fn shown(raw: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = raw.chars().take(MAX).flat_map(char::escape_debug).collect();
    if raw.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// Characters that must not reach a terminal as they are: control characters (C0, DEL, C1: newlines, escape
/// sequences) and the invisible format characters that reorder or hide text (bidi overrides and isolates,
/// zero-width characters, line and paragraph separators). `cas-vpn audit` escapes them; a renewal failure's
/// detail refuses them.
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}
