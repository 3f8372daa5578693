//! `agent run`: keeps the terminal connected. Runs the openvpn client when there is a profile (Scenario A;
//! restarted with backoff whenever it exits), heartbeats master every period over mutual TLS (its certificate and
//! key, master verified against the terminal CA and the name in `master.json`: `http::mtls`), and renews the
//! certificate once master says the renewal window has begun. Server restarts are ridden out: openvpn reconnects
//! by itself, failed heartbeats are retried sooner.
//!
//! Renewal is crash-safe: the new key is written (0600) and recorded in `renew.json` before the CSR is sent, so a
//! retry presents the same key and master answers with the same certificate; the profile (if any) is then
//! rewritten atomically (new `<cert>`, `key` line naming the new key file), then `client.crt`, and only then is
//! the old key deleted. The next connection to master presents the new certificate.
//!
//! A failed renewal is reported in the following heartbeats (`status.renew_failed`: when, a code, the message)
//! until a renewal succeeds, so the operator sees failures master never saw (master unreachable, an unusable
//! answer, a full disk).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cas_pki::{KeyType, PrivateKey};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::{
    AgentError, CERT_FILE, Identity, KEY_FILE, MasterFile, OVPN_FILE, cert_spki, identity, key_line, make_csr,
    read_master, set_cert, set_key_line,
};
use crate::domain::renewal::{FailureCode, FailureDetail};
use crate::http::client::{self as http, Target, Trust};
use crate::http::mtls::ClientTls;
use crate::sys::fs::{read_optional, write_atomic};
use crate::wire::{ErrorBody, HeartbeatRequest, HeartbeatResponse, RenewRequest, RenewResponse};

pub const RENEW_FILE: &str = "renew.json";
/// After a failed heartbeat, the next one comes at most this soon.
const RETRY_SOON: Duration = Duration::from_secs(5);
/// openvpn restarts back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    pub heartbeat: Duration,
    /// `HOST:PORT` of master instead of what `master.json` says.
    pub master: Option<String>,
    /// The openvpn program.
    pub openvpn: String,
    pub version: String,
}

/// What `run` reports as it goes (the CLI prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    OpenVpnStarted { pid: u32 },
    OpenVpnExited { status: String, restart_in: Duration },
    Heartbeat { terminal: String, renew_after: Option<i64> },
    HeartbeatFailed(String),
    Renewed { not_after: Option<String> },
    RenewFailed(String),
    Stopped,
}

#[derive(Debug, Serialize, Deserialize)]
struct RenewState {
    /// File name (in the agent directory) of the key being renewed to.
    key: String,
}

/// Runs until `stop` turns true.
pub async fn run(
    opts: &RunOptions,
    mut stop: watch::Receiver<bool>,
    events: &(dyn Fn(RunEvent) + Sync),
) -> Result<(), AgentError> {
    let dir = std::path::absolute(&opts.dir).map_err(|e| AgentError::Local(e.to_string()))?;
    let master = read_master(&dir)?
        .ok_or_else(|| AgentError::Usage(format!("{} is not paired: run `cas-vpn agent pair` first", dir.display())))?;
    let target = match &opts.master {
        Some(hp) => Target::parse(hp, crate::wire::SERVICE_PORT, None)?,
        None => Target { host: master.host.clone(), port: master.port, tls: None, source: None },
    };
    identity(&dir)?;
    sweep_keys(&dir);
    let profile_path = dir.join(OVPN_FILE);
    // Scenario A: the status endpoint master probes, on the tunnel address while openvpn runs (`agent::status`).
    let shared = super::status::Shared::new(master.terminal.clone(), opts.version.clone(), dir.clone());
    let status_task = if profile_path.is_file() {
        let who = super::status::Master::resolve(&master).await?;
        Some(tokio::spawn(super::status::keep_serving(shared.clone(), who, stop.clone())))
    } else {
        None
    };

    let mut child: Option<tokio::process::Child> = None;
    let mut backoff = Duration::from_secs(1);
    let mut start_at = tokio::time::Instant::now();
    let mut next_beat = tokio::time::Instant::now();
    // The last failed renewal, reported in every heartbeat until one succeeds.
    let mut renew_failed: Option<FailureReport> = None;
    loop {
        if child.is_none() && profile_path.is_file() && tokio::time::Instant::now() >= start_at {
            child = Some(start_openvpn(&opts.openvpn, &dir, events)?);
        }
        shared.set_openvpn_running(child.is_some());
        enum Wake {
            Stop,
            Exited(String),
            Start,
            Beat,
        }
        let waiting_to_start = child.is_none() && profile_path.is_file();
        let wake = tokio::select! {
            _ = stop.wait_for(|s| *s) => Wake::Stop,
            status = async {
                match child.as_mut() {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            } => Wake::Exited(status.map_or_else(|e| e.to_string(), |s| s.to_string())),
            _ = tokio::time::sleep_until(start_at), if waiting_to_start => Wake::Start,
            _ = tokio::time::sleep_until(next_beat) => Wake::Beat,
        };
        match wake {
            Wake::Stop => break,
            Wake::Start => {}
            Wake::Exited(status) => {
                child = None;
                events(RunEvent::OpenVpnExited { status, restart_in: backoff });
                start_at = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Wake::Beat => {
                let running = child.is_some();
                match heartbeat(&target, &master, &dir, &opts.version, running, renew_failed.as_ref()).await {
                    Ok(hb) => {
                        backoff = Duration::from_secs(1);
                        events(RunEvent::Heartbeat { terminal: hb.terminal.clone(), renew_after: hb.renew_after });
                        next_beat = tokio::time::Instant::now() + opts.heartbeat;
                        let due = hb.renew_after.is_some_and(|t| t <= crate::app::now());
                        if due {
                            match renew(&target, &master, &dir).await {
                                Ok(Some(not_after)) => {
                                    renew_failed = None;
                                    events(RunEvent::Renewed { not_after });
                                    // The new certificate takes effect with a fresh openvpn.
                                    if let Some(c) = child.take() {
                                        stop_child(c).await;
                                    }
                                    start_at = tokio::time::Instant::now();
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    renew_failed = Some(FailureReport::of(&e));
                                    events(RunEvent::RenewFailed(e.to_string()));
                                    next_beat = tokio::time::Instant::now() + opts.heartbeat.min(RETRY_SOON * 6);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        events(RunEvent::HeartbeatFailed(e.to_string()));
                        next_beat = tokio::time::Instant::now() + opts.heartbeat.min(RETRY_SOON);
                    }
                }
            }
        }
    }
    if let Some(c) = child.take() {
        stop_child(c).await;
    }
    shared.set_openvpn_running(false);
    if let Some(t) = status_task {
        let _ = t.await;
    }
    events(RunEvent::Stopped);
    Ok(())
}

fn start_openvpn(
    program: &str,
    dir: &Path,
    events: &(dyn Fn(RunEvent) + Sync),
) -> Result<tokio::process::Child, AgentError> {
    let args = vec!["--cd".to_owned(), dir.display().to_string(), "--config".to_owned(), OVPN_FILE.to_owned()];
    let mut c = crate::sys::process::spawn_guarded(program, &args, None)
        .map_err(|e| AgentError::Local(format!("cannot start {program}: {e}")))?;
    // Drain its output (a full pipe would stall it); keep it in the log at debug level.
    if let Some(out) = c.stdout.take() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "openvpn", "{l}");
            }
        });
    }
    if let Some(err) = c.stderr.take() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "openvpn", "{l}");
            }
        });
    }
    events(RunEvent::OpenVpnStarted { pid: c.id().unwrap_or(0) });
    Ok(c)
}

/// SIGTERM to openvpn's process group, then SIGKILL if it has not exited within 5 s.
async fn stop_child(mut c: tokio::process::Child) {
    if let Some(pid) = c.id() {
        crate::sys::process::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_ok() {
            return;
        }
    }
    let _ = c.kill().await;
}

/// `target` with master's mutual TLS set up from the current identity (re-read: a renewal changes it).
fn mutual(target: &Target, master: &MasterFile, id: &Identity) -> Result<Target, AgentError> {
    let tls = ClientTls::new(&id.ca_pem, &id.cert_pem, &id.key_pem, &master.host)
        .map_err(|e| AgentError::Local(format!("master's TLS: {e}")))?;
    Ok(Target { tls: Some(Trust::Mutual(tls)), ..target.clone() })
}

/// A failed renewal as a heartbeat reports it (`status.renew_failed`, the README's wire contract).
#[derive(Debug, Clone, Serialize)]
struct FailureReport {
    /// Unix seconds.
    at: i64,
    error: FailureCode,
    message: FailureDetail,
}

impl FailureReport {
    fn of(e: &AgentError) -> FailureReport {
        let code = match e {
            AgentError::Refused { code, .. } => code.as_str(),
            AgentError::Http(_) => "unreachable",
            AgentError::Unreadable { .. } => "unreadable_answer",
            AgentError::Protocol(_) => "protocol",
            AgentError::Local(_) | AgentError::Usage(_) => "local",
            _ => "other",
        };
        FailureReport {
            at: crate::app::now(),
            error: code.parse().unwrap_or_else(|_| "other".parse().expect("a valid code")),
            message: FailureDetail::lossy(&e.to_string()),
        }
    }
}

async fn heartbeat(
    target: &Target,
    master: &MasterFile,
    dir: &Path,
    version: &str,
    running: bool,
    renew_failed: Option<&FailureReport>,
) -> Result<HeartbeatResponse, AgentError> {
    let id = identity(dir)?;
    let target = mutual(target, master, &id)?;
    let mut status = heartbeat_status(dir, running);
    if let Some(f) = renew_failed {
        let v = serde_json::to_value(f).map_err(|e| AgentError::Local(e.to_string()))?;
        status.insert("renew_failed".into(), v);
    }
    let body = HeartbeatRequest { version: version.to_owned(), status };
    let reply =
        http::send_json(&target, Method::POST, "/v1/heartbeat", Some(&body), Duration::from_secs(20), 64 * 1024)
            .await?;
    if reply.status != StatusCode::OK {
        return Err(master_refusal(&reply));
    }
    reply.json().map_err(AgentError::Protocol)
}

/// The heartbeat's `status` object (also in the status endpoint's answer): whether openvpn runs, and when the
/// current certificate ends.
pub(crate) fn heartbeat_status(dir: &Path, running: bool) -> serde_json::Map<String, serde_json::Value> {
    let not_after =
        identity(dir).ok().and_then(|id| cas_pki::cert_info(&id.cert_pem).ok()).map(|i| i.not_after.unix_timestamp());
    let mut status = serde_json::Map::new();
    status.insert("openvpn".into(), (if running { "running" } else { "stopped" }).into());
    if let Some(t) = not_after {
        status.insert("cert_not_after".into(), t.into());
    }
    status
}

/// Renews the certificate. `Ok(None)`: master says it is not time yet.
async fn renew(target: &Target, master: &MasterFile, dir: &Path) -> Result<Option<Option<String>>, AgentError> {
    let profile_path = dir.join(OVPN_FILE);
    let profile = read_optional(&profile_path)?;
    let id = identity(dir)?;
    let target = mutual(target, master, &id)?;
    let old_key = id.key_path;

    // The new key and its record exist before the request leaves, so a retry presents the same key.
    let state_path = dir.join(RENEW_FILE);
    let state: Option<RenewState> = read_optional(&state_path)?.and_then(|t| serde_json::from_str(&t).ok());
    let existing = state.and_then(|s| {
        let p = dir.join(&s.key);
        read_optional(&p).ok().flatten().and_then(|pem| PrivateKey::from_pem(&pem).ok()).map(|k| (s.key, k))
    });
    let (file, key) = match existing {
        Some(x) => x,
        None => {
            let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| AgentError::Local(e.to_string()))?;
            let file = format!("client-{}.key", hex::encode(rand::random::<[u8; 6]>()));
            write_atomic(&dir.join(&file), key.to_pem().as_bytes(), 0o600)?;
            let text = serde_json::to_string(&RenewState { key: file.clone() })
                .map_err(|e| AgentError::Local(e.to_string()))?;
            write_atomic(&state_path, text.as_bytes(), 0o600)?;
            (file, key)
        }
    };
    let body = RenewRequest { csr: make_csr(&key)? };
    let reply =
        http::send_json(&target, Method::POST, "/v1/renew", Some(&body), Duration::from_secs(30), 64 * 1024).await?;
    match reply.status {
        StatusCode::OK => {}
        StatusCode::CONFLICT => return Ok(None),
        _ => return Err(master_refusal(&reply)),
    }
    let cert = reply.json::<RenewResponse>().map_err(AgentError::Protocol)?.cert;
    if cert_spki(&cert) != Some(key.public_key_der()) {
        return Err(AgentError::Protocol("master certified a key that is not the one sent".into()));
    }
    if let Some(profile) = profile {
        let new_profile =
            set_cert(&profile, &cert).ok_or_else(|| AgentError::Protocol("the profile has no <cert> block".into()))?;
        let new_profile = set_key_line(&new_profile, &dir.join(&file))?;
        write_atomic(&profile_path, new_profile.as_bytes(), 0o600)?;
    }
    write_atomic(&dir.join(CERT_FILE), cert.as_bytes(), 0o600)?;
    let _ = std::fs::remove_file(&state_path);
    if let Some(old) = old_key
        && old.parent() == Some(dir)
        && old != dir.join(&file)
    {
        let _ = std::fs::remove_file(old);
    }
    let not_after = cas_pki::cert_info(&cert).ok().map(|i| crate::app::rfc3339(i.not_after.unix_timestamp()));
    Ok(Some(not_after))
}

/// Removes key files a crash left behind: neither the profile's key, nor the one `client.crt` certifies, nor the
/// one a renewal is waiting for.
fn sweep_keys(dir: &Path) {
    let profile = read_optional(&dir.join(OVPN_FILE)).ok().flatten();
    let current = profile.as_deref().and_then(key_line);
    let certified = identity(dir).ok().and_then(|i| i.key_path);
    let pending = read_optional(&dir.join(RENEW_FILE))
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str::<RenewState>(&t).ok())
        .map(|s| dir.join(s.key));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !(n.starts_with("client-") && n.ends_with(".key")) {
            continue;
        }
        let p = e.path();
        if Some(&p) != current.as_ref()
            && Some(&p) != pending.as_ref()
            && Some(&p) != certified.as_ref()
            && p != dir.join(KEY_FILE)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn master_refusal(reply: &http::Reply) -> AgentError {
    match reply.json::<ErrorBody>() {
        Ok(e) => AgentError::Refused { status: reply.status.as_u16(), code: e.error, message: e.message },
        Err(_) => AgentError::Unreadable {
            status: reply.status.as_u16(),
            message: "master did not answer with the documented JSON",
        },
    }
}
