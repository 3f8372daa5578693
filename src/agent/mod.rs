//! The reference terminal agent (`cas-vpn agent pair|run`): what tests use, and what an integrator runs on a
//! terminal without CAS firmware. It speaks only the documented wire contract (`gate::wire`).
//!
//! Files in the agent's directory (0700):
//! - `client.key` (0600): the terminal's key, made before anything is sent, reused by every retry;
//! - `client.ovpn` (0600): the profile from the gate, plus a `key` line naming the current key file (Scenario A
//!   only: under Scenario B the gate hands out no profile);
//! - `client.crt`: the terminal's current certificate, and `terminal-ca.crt`: the terminal CA, both from the
//!   gate's answer in either scenario: master's mutual TLS presents the first (with the key file whose public key
//!   it certifies) and verifies master against the second;
//! - `master.json`: where master is (written last: its presence means "paired");
//! - `gate.pin`: the gate's key pin (from the token, or recorded on first use in the approval flow);
//! - `pairing.json`: an approval-flow pairing in progress (to resume polling);
//! - `renew.json` and `client-<hex>.key`: a certificate renewal in progress and its new key.
//!
//! Trust: with a token, the gate is authenticated by the pin the token carries and by nothing else. The approval
//! flow has no token, hence no pin: pass `--gate-pin` (shown by `cas-vpn pairing status`), or the agent trusts the
//! key it sees on first contact (TOFU), says so loudly, records it in `gate.pin` and holds every later contact to
//! it. The code an admin compares is computed by the agent from its own key, so a request swapped on the way
//! cannot be approved by mistake; a TOFU gate impersonated on first contact could still hand out a bad profile,
//! which is why `--gate-pin` is the recommended form.

pub mod bench;

pub mod run;

pub mod status;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cas_pki::{KeyType, PrivateKey};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::domain::{ConfPath, PairingToken};
use crate::http::client::{self as http, HttpError, Reply, Target, Trust};
use crate::sys::fs::{ensure_dir, read_optional, write_atomic};
use crate::wire::{
    ErrorBody, ErrorCode, MasterAddr, PairRequest, PairResponse, PendingResponse, SERVICE_PORT, TerminalInfo,
    UpgradeInfo, pairing_code_for_spki, pin_text,
};

/// The firmware version the agent reports (YYYYMMDD).
pub const AGENT_VERSION: &str = "20261101";
pub const KEY_FILE: &str = "client.key";
pub const OVPN_FILE: &str = "client.ovpn";
pub const CERT_FILE: &str = "client.crt";
pub const CA_FILE: &str = "terminal-ca.crt";
pub const MASTER_FILE: &str = "master.json";
pub const PIN_FILE: &str = "gate.pin";
pub const PAIRING_FILE: &str = "pairing.json";
/// Largest answer the agent reads from the gate or master.
const MAX_ANSWER: usize = 256 * 1024;
/// One request must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Busy answers (429/503 with Retry-After) waited out before the agent gives up (at most a minute each).
const BUSY_RETRIES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the gate refused ({status}, {code}): {message}")]
    Refused { status: u16, code: ErrorCode, message: String },
    /// An error answer without the documented JSON body (a proxy in the way, a broken server).
    #[error("{message} (HTTP {status})")]
    Unreadable { status: u16, message: &'static str },
    #[error("this terminal must upgrade first: {message}{}", .upgrade.as_ref().map(|u| format!(" (package {} sha256 {} size {})", u.url, u.sha256, u.size)).unwrap_or_default())]
    UpgradeRequired { message: String, upgrade: Option<UpgradeInfo> },
    #[error("the gate shows code {theirs} but this terminal's key gives {ours}: the request was altered on the way")]
    CodeMismatch { ours: String, theirs: String },
    #[error("an administrator rejected this pairing")]
    Rejected,
    #[error("the pairing expired before it was approved: run `agent pair --wait-approval` again")]
    Expired,
    #[error("gave up waiting for approval after {0} s")]
    WaitTimeout(u64),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Local(String),
}

impl From<crate::sys::fs::FsError> for AgentError {
    fn from(e: crate::sys::fs::FsError) -> Self {
        AgentError::Local(e.to_string())
    }
}

/// `agent pair`.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// `HOST:PORT` of the gate (port 7741 when omitted).
    pub gate: String,
    /// The token (zero-touch flow); `None`: approval flow.
    pub token: Option<PairingToken>,
    /// The gate's pin for the approval flow (`sha256:<hex>`); `None`: trust on first use.
    pub gate_pin: Option<[u8; 32]>,
    pub dir: PathBuf,
    pub serial: Option<String>,
    pub version: String,
    /// The local OpenVPN's version, reported to the gate (see [`openvpn_version`]).
    pub openvpn: Option<String>,
    pub poll_every: Duration,
    /// Give up waiting for approval after this (`None`: wait as long as the pairing lives).
    pub wait_timeout: Option<Duration>,
}

/// The version `program --version` prints (`OpenVPN 2.6.14 x86_64-pc-linux-gnu …` → `2.6.14`), if it runs and the
/// version is one the gate would understand.
pub fn openvpn_version(program: &str) -> Option<String> {
    let out = crate::sys::process::output_of(program, &["--version"]).ok()?;
    let first = out.lines().next()?;
    let version = first.split_whitespace().skip_while(|w| !w.eq_ignore_ascii_case("openvpn")).nth(1)?;
    version.parse::<crate::domain::OpenVpnVersion>().ok().map(|_| version.to_owned())
}

/// What `pair` tells its caller while it works (the CLI prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairEvent {
    KeyCreated(PathBuf),
    KeyReused(PathBuf),
    /// Approval flow without `--gate-pin`: the gate's key is trusted as first seen.
    TrustOnFirstUse {
        pin: String,
    },
    /// The gate answered busy (429/503); the request is sent again after `retry_after_secs`.
    Busy {
        status: u16,
        retry_after_secs: u64,
    },
    /// Waiting for an admin: show these.
    Pending {
        pairing_id: String,
        code: String,
    },
    /// A poll failed (network); still waiting.
    PollFailed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub terminal: String,
    pub dir: String,
    /// The profile written, `None` under Scenario B (no VPN run by cas-vpn).
    pub ovpn: Option<String>,
    pub master: MasterAddr,
    /// True when the directory was paired already (nothing was sent).
    pub already_paired: bool,
}

/// `master.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterFile {
    pub terminal: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PairingFile {
    pairing_id: String,
    code: String,
}

/// Pairs this terminal: key first (kept, 0600), then the gate; writes the profile and `master.json`. Running it
/// again after a failure reuses the key, so the gate answers the same; running it once paired changes nothing.
pub async fn pair(opts: &PairOptions, events: &(dyn Fn(PairEvent) + Sync)) -> Result<PairReport, AgentError> {
    let dir = std::path::absolute(&opts.dir).map_err(|e| AgentError::Local(format!("{}: {e}", opts.dir.display())))?;
    ensure_dir(&dir, 0o700)?;
    if let Some(m) = read_master(&dir)? {
        let ovpn = dir.join(OVPN_FILE);
        return Ok(PairReport {
            terminal: m.terminal,
            dir: dir.display().to_string(),
            ovpn: ovpn.is_file().then(|| ovpn.display().to_string()),
            master: MasterAddr { host: m.host, port: m.port },
            already_paired: true,
        });
    }

    // The key exists before anything leaves this machine: a retry after any failure presents the same key.
    let key_path = dir.join(KEY_FILE);
    let key = match read_optional(&key_path)? {
        Some(pem) => {
            let k =
                PrivateKey::from_pem(&pem).map_err(|e| AgentError::Local(format!("{}: {e}", key_path.display())))?;
            events(PairEvent::KeyReused(key_path.clone()));
            k
        }
        None => {
            let k = PrivateKey::generate(KeyType::EcP256).map_err(|e| AgentError::Local(e.to_string()))?;
            write_atomic(&key_path, k.to_pem().as_bytes(), 0o600)?;
            events(PairEvent::KeyCreated(key_path.clone()));
            k
        }
    };
    let csr = make_csr(&key)?;
    let our_code = pairing_code_for_spki(&key.public_key_der());

    let saved_pin = read_optional(&dir.join(PIN_FILE))?.and_then(|t| crate::wire::parse_pin(&t));
    let trust = match (&opts.token, opts.gate_pin) {
        (Some(t), Some(p)) if *t.pin() != p => {
            return Err(AgentError::Usage("--gate-pin differs from the pin inside the token".into()));
        }
        (Some(t), _) => Trust::Pin(*t.pin()),
        (None, Some(p)) => Trust::Pin(p),
        (None, None) => saved_pin.map_or(Trust::FirstUse, Trust::Pin),
    };
    let mut target = Target::parse(&opts.gate, SERVICE_PORT, Some(trust.clone()))?;
    let request = PairRequest {
        token: opts.token.as_ref().map(PairingToken::expose),
        csr: Some(csr),
        terminal: TerminalInfo {
            serial: opts.serial.clone(),
            version: opts.version.clone(),
            openvpn: opts.openvpn.clone(),
        },
    };

    let saved_pairing: Option<PairingFile> =
        read_optional(&dir.join(PAIRING_FILE))?.and_then(|t| serde_json::from_str(&t).ok());
    let answer = match (opts.token.is_none(), saved_pairing) {
        // An approval we were already waiting for: keep polling (works with the window closed).
        (true, Some(p)) if matches!(trust, Trust::Pin(_)) => {
            events(PairEvent::Pending { pairing_id: p.pairing_id.clone(), code: p.code.clone() });
            wait_for_approval(opts, &dir, &target, &p.pairing_id, events).await?
        }
        _ => {
            let mut busy = 0;
            let reply = loop {
                let reply =
                    http::send_json(&target, Method::POST, "/v1/pair", Some(&request), REQUEST_TIMEOUT, MAX_ANSWER)
                        .await?;
                // A busy gate (its slots, its approval queue, or this address's attempts all in flight) says when
                // to come back: an unattended terminal waits and tries again rather than giving up.
                let retryable = matches!(reply.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
                if !retryable || busy >= BUSY_RETRIES {
                    break reply;
                }
                busy += 1;
                let secs = reply
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(5)
                    .clamp(1, 60);
                events(PairEvent::Busy { status: reply.status.as_u16(), retry_after_secs: secs });
                tokio::time::sleep(Duration::from_secs(secs)).await;
            };
            if let (Trust::FirstUse, Some(pin)) = (trust, reply.peer_pin) {
                write_atomic(&dir.join(PIN_FILE), format!("{}\n", pin_text(&pin)).as_bytes(), 0o600)?;
                events(PairEvent::TrustOnFirstUse { pin: pin_text(&pin) });
                target.tls = Some(Trust::Pin(pin));
            }
            match reply.status {
                StatusCode::OK => reply.json::<PairResponse>().map_err(AgentError::Protocol)?,
                StatusCode::ACCEPTED => {
                    let p: PendingResponse = reply.json().map_err(AgentError::Protocol)?;
                    if !crate::wire::code_matches(&p.code, &our_code) {
                        return Err(AgentError::CodeMismatch { ours: our_code, theirs: p.code });
                    }
                    let file = PairingFile { pairing_id: p.pairing_id.clone(), code: our_code.clone() };
                    let text = serde_json::to_string(&file).map_err(|e| AgentError::Local(e.to_string()))?;
                    write_atomic(&dir.join(PAIRING_FILE), text.as_bytes(), 0o600)?;
                    events(PairEvent::Pending { pairing_id: p.pairing_id.clone(), code: our_code.clone() });
                    wait_for_approval(opts, &dir, &target, &p.pairing_id, events).await?
                }
                _ => return Err(refusal(&reply)),
            }
        }
    };
    finish(&dir, &key, answer)
}

async fn wait_for_approval(
    opts: &PairOptions,
    dir: &Path,
    target: &Target,
    id: &str,
    events: &(dyn Fn(PairEvent) + Sync),
) -> Result<PairResponse, AgentError> {
    let started = tokio::time::Instant::now();
    let path = format!("/v1/pair/{id}");
    loop {
        if let Some(limit) = opts.wait_timeout
            && started.elapsed() >= limit
        {
            return Err(AgentError::WaitTimeout(limit.as_secs()));
        }
        tokio::time::sleep(opts.poll_every).await;
        let reply = match http::send_json(target, Method::GET, &path, None::<&()>, REQUEST_TIMEOUT, MAX_ANSWER).await {
            Ok(r) => r,
            Err(e @ HttpError::PinMismatch { .. }) => return Err(e.into()),
            Err(e) => {
                events(PairEvent::PollFailed(e.to_string()));
                continue;
            }
        };
        match reply.status {
            StatusCode::ACCEPTED => continue,
            StatusCode::OK => {
                let _ = std::fs::remove_file(dir.join(PAIRING_FILE));
                return reply.json::<PairResponse>().map_err(AgentError::Protocol);
            }
            StatusCode::FORBIDDEN if error_code(&reply) == Some(ErrorCode::Rejected) => {
                let _ = std::fs::remove_file(dir.join(PAIRING_FILE));
                return Err(AgentError::Rejected);
            }
            StatusCode::GONE => {
                let _ = std::fs::remove_file(dir.join(PAIRING_FILE));
                return Err(AgentError::Expired);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                events(PairEvent::PollFailed(format!("gate busy ({})", reply.status)));
                continue;
            }
            _ => return Err(refusal(&reply)),
        }
    }
}

/// Writes what the gate sent: the profile (with a `key` line for our key unless the server made the key), the
/// certificate and the CA master's mutual TLS needs, and then `master.json`, each atomically.
fn finish(dir: &Path, key: &PrivateKey, answer: PairResponse) -> Result<PairReport, AgentError> {
    let mut ovpn_path = None;
    // A server-made profile carries the key: it goes to a file of its own, like a renewed key, for master's TLS.
    let server_key = answer.ovpn.as_deref().and_then(|t| inline_block(t, "key"));
    let cert = answer
        .cert
        .clone()
        .or_else(|| answer.ovpn.as_deref().and_then(|t| inline_block(t, "cert")))
        .ok_or_else(|| AgentError::Protocol("the gate sent no certificate".into()))?;
    let ca = answer
        .ca
        .clone()
        .or_else(|| answer.ovpn.as_deref().and_then(|t| inline_block(t, "ca")))
        .ok_or_else(|| AgentError::Protocol("the gate sent no CA certificate".into()))?;
    match &server_key {
        Some(pem) => {
            let k = PrivateKey::from_pem(pem).map_err(|e| AgentError::Protocol(format!("the server-made key: {e}")))?;
            if cert_spki(&cert) != Some(k.public_key_der()) {
                return Err(AgentError::Protocol("the server-made key does not match its certificate".into()));
            }
            let file = format!("client-{}.key", hex::encode(rand::random::<[u8; 6]>()));
            write_atomic(&dir.join(file), k.to_pem().as_bytes(), 0o600)?;
        }
        // The certificate must be for the key we hold.
        None if cert_spki(&cert) != Some(key.public_key_der()) => {
            return Err(AgentError::Protocol("the gate certified a key that is not this terminal's".into()));
        }
        None => {}
    }
    if let Some(text) = &answer.ovpn {
        let profile = if server_key.is_some() { text.clone() } else { set_key_line(text, &dir.join(KEY_FILE))? };
        let p = dir.join(OVPN_FILE);
        write_atomic(&p, profile.as_bytes(), 0o600)?;
        ovpn_path = Some(p.display().to_string());
    }
    write_atomic(&dir.join(CA_FILE), ca.as_bytes(), 0o644)?;
    write_atomic(&dir.join(CERT_FILE), cert.as_bytes(), 0o600)?;
    let m =
        MasterFile { terminal: answer.terminal.clone(), host: answer.master.host.clone(), port: answer.master.port };
    let text = serde_json::to_string_pretty(&m).map_err(|e| AgentError::Local(e.to_string()))?;
    write_atomic(&dir.join(MASTER_FILE), format!("{text}\n").as_bytes(), 0o600)?;
    let _ = std::fs::remove_file(dir.join(PAIRING_FILE));
    Ok(PairReport {
        terminal: answer.terminal,
        dir: dir.display().to_string(),
        ovpn: ovpn_path,
        master: answer.master,
        already_paired: false,
    })
}

/// What the terminal presents to master and checks master with.
pub(crate) struct Identity {
    pub cert_pem: String,
    /// The key file certified by `cert_pem`; `None` when the key is inline in a server-made profile.
    pub key_path: Option<PathBuf>,
    pub key_pem: zeroize::Zeroizing<String>,
    pub ca_pem: String,
}

/// The current identity: `client.crt` and `terminal-ca.crt` (or, for a directory paired before they existed, the
/// profile's `<cert>` and `<ca>`), and the key file among `client.key` and `client-*.key` whose public key the
/// certificate carries (or the profile's inline key). Found by the key, not by a name, so that a renewal
/// interrupted at any point leaves a consistent pair.
pub(crate) fn identity(dir: &Path) -> Result<Identity, AgentError> {
    let profile = read_optional(&dir.join(OVPN_FILE))?;
    let from_profile = |tag: &str| profile.as_deref().and_then(|p| inline_block(p, tag));
    let cert_pem = read_optional(&dir.join(CERT_FILE))?
        .or_else(|| from_profile("cert"))
        .ok_or_else(|| AgentError::Local(format!("{}: no certificate: pair again", dir.display())))?;
    let ca_pem = read_optional(&dir.join(CA_FILE))?
        .or_else(|| from_profile("ca"))
        .ok_or_else(|| AgentError::Local(format!("{}: no terminal CA certificate: pair again", dir.display())))?;
    let spki = cert_spki(&cert_pem)
        .ok_or_else(|| AgentError::Local(format!("{}: unreadable certificate", dir.join(CERT_FILE).display())))?;
    let mut candidates = vec![dir.join(KEY_FILE)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("client-") && n.ends_with(".key"))
            })
            .collect();
        more.sort();
        candidates.extend(more);
    }
    for p in candidates {
        let Some(pem) = read_optional(&p)? else { continue };
        if PrivateKey::from_pem(&pem).is_ok_and(|k| k.public_key_der() == spki) {
            return Ok(Identity { cert_pem, key_path: Some(p), key_pem: zeroize::Zeroizing::new(pem), ca_pem });
        }
    }
    if let Some(pem) = from_profile("key")
        && PrivateKey::from_pem(&pem).is_ok_and(|k| k.public_key_der() == spki)
    {
        return Ok(Identity { cert_pem, key_path: None, key_pem: zeroize::Zeroizing::new(pem), ca_pem });
    }
    Err(AgentError::Local(format!("{}: no key file belongs to the current certificate", dir.display())))
}

pub(crate) fn read_master(dir: &Path) -> Result<Option<MasterFile>, AgentError> {
    let p = dir.join(MASTER_FILE);
    read_optional(&p)?
        .map(|t| serde_json::from_str(&t).map_err(|e| AgentError::Local(format!("{}: {e}", p.display()))))
        .transpose()
}

/// A PKCS#10 request for `key` with an empty subject: the gate decides the name.
pub(crate) fn make_csr(key: &PrivateKey) -> Result<String, AgentError> {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serialize_request(key).and_then(|r| r.pem()).map_err(|e| AgentError::Local(format!("cannot build a CSR: {e}")))
}

fn refusal(reply: &Reply) -> AgentError {
    match reply.json::<ErrorBody>() {
        Ok(e) if e.error == ErrorCode::UpgradeRequired => {
            AgentError::UpgradeRequired { message: e.message, upgrade: e.upgrade }
        }
        Ok(e) => AgentError::Refused { status: reply.status.as_u16(), code: e.error, message: e.message },
        Err(_) => AgentError::Unreadable {
            status: reply.status.as_u16(),
            message: "the gate's answer was not the documented JSON error",
        },
    }
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    reply.json::<ErrorBody>().ok().map(|e| e.error)
}

/// The text between `<tag>` and `</tag>`.
pub(crate) fn inline_block(profile: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>\n");
    let start = profile.find(&open)? + open.len();
    let end = start + profile[start..].find(&format!("</{tag}>"))?;
    Some(profile[start..end].to_owned())
}

/// The DER SubjectPublicKeyInfo of a PEM certificate.
pub(crate) fn cert_spki(cert_pem: &str) -> Option<Vec<u8>> {
    let x = openssl::x509::X509::from_pem(cert_pem.as_bytes()).ok()?;
    x.public_key().ok()?.public_key_to_der().ok()
}

/// The profile with any inline `<key>` block and any `key` line removed and `key <path>` added.
pub(crate) fn set_key_line(profile: &str, key_path: &Path) -> Result<String, AgentError> {
    let key_path = ConfPath::new(key_path).map_err(|e| AgentError::Local(e.to_string()))?;
    let mut out = String::with_capacity(profile.len() + 64);
    let mut in_key = false;
    for line in profile.lines() {
        if line == "<key>" {
            in_key = true;
            continue;
        }
        if in_key {
            in_key = line != "</key>";
            continue;
        }
        if line.starts_with("key ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("key {}\n", key_path.as_path().display()));
    Ok(out)
}

/// The profile with its `<cert>` block replaced.
pub(crate) fn set_cert(profile: &str, cert_pem: &str) -> Option<String> {
    let start = profile.find("<cert>\n")? + "<cert>\n".len();
    let end = start + profile[start..].find("</cert>")?;
    let mut cert = cert_pem.trim_end().to_owned();
    cert.push('\n');
    Some(format!("{}{}{}", &profile[..start], cert, &profile[end..]))
}

/// The `key` line's path of a profile written by the agent.
pub(crate) fn key_line(profile: &str) -> Option<PathBuf> {
    profile.lines().find_map(|l| l.strip_prefix("key ")).map(|p| PathBuf::from(p.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str =
        "client\n<ca>\nCA\n</ca>\n<cert>\nOLD\n</cert>\n<key>\nSECRET\n</key>\n<tls-crypt-v2>\nT\n</tls-crypt-v2>\n";

    #[test]
    fn profile_edits() {
        let p = set_key_line(PROFILE, Path::new("/d/client.key")).unwrap();
        assert!(!p.contains("SECRET") && !p.contains("<key>"));
        assert!(p.ends_with("key /d/client.key\n"));
        assert_eq!(key_line(&p), Some(PathBuf::from("/d/client.key")));
        let p2 = set_key_line(&p, Path::new("/d/client-ab.key")).unwrap();
        assert_eq!(p2.matches("\nkey ").count(), 1);
        let p3 = set_cert(&p2, "NEW\n").unwrap();
        assert!(p3.contains("<cert>\nNEW\n</cert>") && !p3.contains("OLD"));
        assert_eq!(inline_block(&p3, "cert").as_deref(), Some("NEW\n"));
        assert!(set_key_line(PROFILE, Path::new("/d/with space.key")).is_err());
    }
}
