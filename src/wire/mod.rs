//! The wire contract of the gate and master (documented in the README): request and response bodies,
//! shared by the servers and the reference agent so that both sides can never drift apart.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The port of the gate and of master (CAS's).
pub const SERVICE_PORT: u16 = 7741;

/// The port of the agent's status endpoint, on the terminal's own tunnel address (`agent::status`), which only
/// master's probe may reach.
pub const AGENT_STATUS_PORT: u16 = 7744;

/// Terminals reporting a version older than this must upgrade before they pair.
pub const MIN_TERMINAL_VERSION: u32 = 20230801;

/// `POST /v1/pair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The pairing token (`cv1.…`); `null` for the approval flow.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM PKCS#10 request; may be omitted only for a `--server-keygen` terminal.
    #[serde(default)]
    pub csr: Option<String>,
    pub terminal: TerminalInfo,
}

/// What the terminal says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalInfo {
    /// Hardware serial (at most 64 printable ASCII characters, no whitespace).
    #[serde(default)]
    pub serial: Option<String>,
    /// Firmware version, `YYYYMMDD` optionally followed by more (`20240115`, `20240115.2`).
    pub version: String,
    /// The terminal's OpenVPN version as `openvpn --version` prints it (`2.6.14`; OpenVPN 3 core: `3.8.1`).
    /// Optional (older agents do not send it); when sent, a client that cannot use the issued profile is refused
    /// with `426 openvpn_too_old` instead of being handed a profile it cannot connect with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openvpn: Option<String>,
}

/// 200 answer of `POST /v1/pair` and of `GET /v1/pair/{id}` once approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResponse {
    pub terminal: String,
    /// The client profile; `null` under Scenario B (no VPN run by cas-vpn).
    pub ovpn: Option<String>,
    pub master: MasterAddr,
    /// The terminal's certificate (PEM), in both scenarios: with its key it is what master's mutual TLS asks for.
    /// Absent from the answers of gates older than master's mutual TLS (hence optional to read).
    #[serde(default)]
    pub cert: Option<String>,
    /// The terminal CA's certificate (PEM), which master's certificate is verified against. Absent like `cert`.
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterAddr {
    pub host: String,
    pub port: u16,
}

/// 202 answer of the approval flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResponse {
    pub pairing_id: String,
    pub code: String,
}

/// Every error: `{"error": "<stable code>", "message": "…"}`, plus `upgrade` for `upgrade_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeInfo>,
}

/// The stable error codes of the contract (the README's "Errors" list), as `snake_case` text on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    TooLarge,
    Timeout,
    InvalidToken,
    TokenExpired,
    TokenUsed,
    KeyMismatch,
    WindowClosed,
    Banned,
    TooManyAttempts,
    InvalidCsr,
    WeakKey,
    CsrCaRequested,
    CsrNameMismatch,
    UpgradeRequired,
    OpenvpnTooOld,
    SlotsFull,
    UpgradeUnavailable,
    NotInRenewalWindow,
    Rejected,
    Expired,
    AlreadyDelivered,
    TooManyPending,
    NotFound,
    MethodNotAllowed,
    Forbidden,
    Internal,
    /// A code this version does not know (a newer server): a client still reads the rest of the error. Never
    /// sent by a server of this version.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server sends.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::InvalidRequest,
        ErrorCode::TooLarge,
        ErrorCode::Timeout,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::TokenUsed,
        ErrorCode::KeyMismatch,
        ErrorCode::WindowClosed,
        ErrorCode::Banned,
        ErrorCode::TooManyAttempts,
        ErrorCode::InvalidCsr,
        ErrorCode::WeakKey,
        ErrorCode::CsrCaRequested,
        ErrorCode::CsrNameMismatch,
        ErrorCode::UpgradeRequired,
        ErrorCode::OpenvpnTooOld,
        ErrorCode::SlotsFull,
        ErrorCode::UpgradeUnavailable,
        ErrorCode::NotInRenewalWindow,
        ErrorCode::Rejected,
        ErrorCode::Expired,
        ErrorCode::AlreadyDelivered,
        ErrorCode::TooManyPending,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];

    /// The text on the wire (`key_mismatch`), also for logs; `unknown` for a code this version does not know.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenUsed => "token_used",
            ErrorCode::KeyMismatch => "key_mismatch",
            ErrorCode::WindowClosed => "window_closed",
            ErrorCode::Banned => "banned",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::InvalidCsr => "invalid_csr",
            ErrorCode::WeakKey => "weak_key",
            ErrorCode::CsrCaRequested => "csr_ca_requested",
            ErrorCode::CsrNameMismatch => "csr_name_mismatch",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::OpenvpnTooOld => "openvpn_too_old",
            ErrorCode::SlotsFull => "slots_full",
            ErrorCode::UpgradeUnavailable => "upgrade_unavailable",
            ErrorCode::NotInRenewalWindow => "not_in_renewal_window",
            ErrorCode::Rejected => "rejected",
            ErrorCode::Expired => "expired",
            ErrorCode::AlreadyDelivered => "already_delivered",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the upgrade package is: `url` is a path on the gate (`/v1/upgrade/<file>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeInfo {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// master `POST /v1/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub version: String,
    #[serde(default)]
    pub status: serde_json::Map<String, serde_json::Value>,
}

/// The agent's `GET /v1/status` answer to master's probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The terminal's name, as `master.json` says (master checks it is the terminal it meant to probe).
    pub terminal: String,
    /// The firmware version the agent reports in its heartbeats.
    pub version: String,
    /// Seconds since `agent run` started.
    pub uptime_secs: u64,
    /// `running` or `stopped`: the openvpn client the agent runs.
    pub openvpn: String,
    /// The same object as the heartbeat's `status`.
    pub status: serde_json::Map<String, serde_json::Value>,
}

/// master `POST /v1/heartbeat` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub terminal: String,
    /// Unix seconds of the current certificate's end, so a terminal knows when to renew.
    pub cert_not_after: Option<i64>,
    /// Unix seconds from which `POST /v1/renew` is accepted.
    pub renew_after: Option<i64>,
}

/// master `POST /v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    pub cert: String,
}

/// The short code of the approval flow, derived from the SHA-256 of the CSR's SubjectPublicKeyInfo: 40 bits as
/// 8 base32 characters, `ABCD-EFGH`. The terminal computes it from its own key and shows it; the admin compares it
/// with what the gate received, so a request swapped on the way shows a different code.
pub fn pairing_code(spki_sha256: &[u8; 32]) -> String {
    let b32 = base32(&spki_sha256[..5]);
    format!("{}-{}", &b32[..4], &b32[4..8])
}

/// The same code computed from a DER SubjectPublicKeyInfo.
pub fn pairing_code_for_spki(spki_der: &[u8]) -> String {
    pairing_code(&Sha256::digest(spki_der).into())
}

/// Compares a typed code with the real one, ignoring case, spaces and dashes, in constant time.
pub fn code_matches(typed: &str, real: &str) -> bool {
    let norm = |s: &str| -> Vec<u8> {
        s.bytes().filter(|b| !matches!(b, b'-' | b' ')).map(|b| b.to_ascii_uppercase()).collect()
    };
    let (a, b) = (norm(typed), norm(real));
    a.len() == b.len() && a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The numeric date part of a reported version (`20240115.2` → 20240115); `None` when it does not start with
/// eight digits.
pub fn version_date(version: &str) -> Option<u32> {
    let digits = version.get(..8)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = &version[8..];
    if !rest.is_empty() && !rest.starts_with(['.', '-', '+']) {
        return None;
    }
    if rest.len() > 24 || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) {
        return None;
    }
    digits.parse().ok()
}

/// `sha256:<hex>` pins are what operators see; tokens carry the raw 32 bytes.
pub fn pin_text(pin: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(pin))
}

/// Parses `sha256:<hex>`, bare hex, or the base64url form found in tokens.
pub fn parse_pin(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    if let Ok(bytes) = hex::decode(t) {
        return bytes.try_into().ok();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_short_stable_and_compare_loosely() {
        let code = pairing_code(&[0xff; 32]);
        assert_eq!(code, "7777-7777");
        let c = pairing_code(&[
            0x00, 0x44, 0x32, 0x14, 0xc7, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
            9,
        ]);
        assert_eq!(c, "ABCD-EFGH");
        assert!(code_matches("abcd efgh", &c));
        assert!(code_matches("ABCDEFGH", &c));
        assert!(!code_matches("ABCDEFGA", &c));
        assert!(!code_matches("ABCDEFG", &c));
    }

    #[test]
    fn versions() {
        assert_eq!(version_date("20230801"), Some(20230801));
        assert_eq!(version_date("20240115.2"), Some(20240115));
        assert_eq!(version_date("20240115-rc1"), Some(20240115));
        for bad in ["", "2023080", "2023080a", "202308011", "20230801 x", "v20230801", "20230801.\n"] {
            assert_eq!(version_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn error_codes_are_the_documented_snake_case_texts() {
        let readme = include_str!("../../README.md");
        let (_, errors) = readme.split_once("**Errors**").unwrap();
        let (_, list) = errors.split_once("Codes:").unwrap();
        // The list ends with the first code followed by a full stop.
        let (list, _) = list.split_once("`.").unwrap();
        let documented: Vec<&str> = list.split(',').map(|c| c.trim().trim_matches('`')).collect();
        let ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(ours, documented, "ErrorCode::ALL must be the README's list, in its order");
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn a_client_reads_an_error_with_a_code_from_a_newer_server() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error": "quantum_flux", "message": "try later", "hint": 1}"#).unwrap();
        assert_eq!((body.error, body.message.as_str(), body.upgrade), (ErrorCode::Unknown, "try later", None));
    }

    #[test]
    fn pins_round_trip() {
        let pin = [7u8; 32];
        assert_eq!(parse_pin(&pin_text(&pin)), Some(pin));
        assert_eq!(parse_pin(&hex::encode(pin)), Some(pin));
        assert_eq!(parse_pin(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pin)), Some(pin));
        assert_eq!(parse_pin("sha256:00"), None);
    }
}
