//! The signer's socket (`<root>/run/signer.sock`, `root:batm 0660`): its protocol and client. The signer is the
//! only process that holds a CA key; the gate, master and the web UI ask it here. One JSON line in, one out.
//!
//! The request names *what* to sign for, never *how*: the signer looks the credential up in the store itself,
//! checks the caller's uid (`SO_PEERCRED`) against the kinds it may ask for, checks the CSR, and sets subject,
//! serial, validity and usages itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::domain::{Kind, Name};

/// A request line is at most this long (a CSR is at most 16 KiB of PEM).
pub const MAX_LINE: u64 = 64 * 1024;
/// How long a caller waits for an answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("the signer is not running (no {path}): start `cas-vpn serve signer` (part of `serve all`)")]
    NotRunning { path: PathBuf },
    #[error("signer socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the signer did not answer in time")]
    Timeout,
    #[error("the signer answered something unreadable: {0}")]
    Protocol(String),
    #[error("the signer refused: {0}")]
    Refused(String),
    #[error("the signer failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum SignerRequest {
    Ping,
    /// Sign `csr` (PEM) for the active credential `name` of kind `kind`.
    Sign {
        kind: Kind,
        name: Name,
        csr: String,
    },
    /// Make a key and a certificate for the active credential `name` of kind `kind` (server-made keys: the
    /// CAS-compatible `--server-keygen` terminals and admin credentials from the web UI).
    Issue {
        kind: Kind,
        name: Name,
    },
    /// Make a new admin VPN credential `name` (its port, key and certificate) in one step: the store row and its
    /// certificate are written together, so no credential ever exists without its certificate.
    IssueAdmin {
        name: Name,
    },
    /// Make and publish a fresh CRL for `kind` from the store.
    PublishCrl {
        kind: Kind,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum SignerResponse {
    Pong,
    /// `serial`: 32 lowercase hex digits.
    Signed {
        cert: String,
        serial: String,
    },
    /// `key`: the new private key (PEM); it is the caller's to deliver and forget.
    Issued {
        cert: String,
        key: String,
        serial: String,
    },
    /// An admin credential made by `IssueAdmin`: its port, and a key that is the caller's to deliver and forget.
    IssuedAdmin {
        cert: String,
        key: String,
        serial: String,
        port: u16,
    },
    Published {
        crl_number: u64,
        revoked: usize,
        next_update: String,
    },
    /// The request was understood and not allowed (audited by the signer).
    Refused {
        reason: String,
    },
    /// The signer could not do what was allowed (store or file error).
    Error {
        message: String,
    },
}

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("signer.sock")
}

/// Sends one request and returns the answer as it came (including refusals).
pub async fn call(root: &Path, req: &SignerRequest) -> Result<SignerResponse, SignerError> {
    let path = socket_path(root);
    let io = |source| SignerError::Io { path: path.clone(), source };
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(SignerError::NotRunning { path: path.clone() });
        }
        Err(e) => return Err(io(e)),
    };
    let exchange = async {
        let mut line = serde_json::to_string(req).map_err(|e| SignerError::Protocol(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await.map_err(io)?;
        serde_json::from_str(&answer).map_err(|e| SignerError::Protocol(e.to_string()))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| SignerError::Timeout)?
}

/// Asks for a certificate; `Ok((cert_pem, serial_hex))`, refusals and failures as errors.
pub async fn sign(root: &Path, kind: Kind, name: &Name, csr_pem: &str) -> Result<(String, String), SignerError> {
    let req = SignerRequest::Sign { kind, name: name.clone(), csr: csr_pem.to_owned() };
    match call(root, &req).await? {
        SignerResponse::Signed { cert, serial } => Ok((cert, serial)),
        other => Err(unexpected(other)),
    }
}

/// Asks for a server-made key and its certificate; `Ok((key_pem, cert_pem, serial_hex))`.
pub async fn issue(root: &Path, kind: Kind, name: &Name) -> Result<(String, String, String), SignerError> {
    match call(root, &SignerRequest::Issue { kind, name: name.clone() }).await? {
        SignerResponse::Issued { cert, key, serial } => Ok((key, cert, serial)),
        other => Err(unexpected(other)),
    }
}

/// What `issue_admin` made.
pub struct IssuedAdmin {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub port: u16,
}

/// Asks for a new admin VPN credential; refusals (name taken, ports exhausted) and failures as errors.
pub async fn issue_admin(root: &Path, name: &Name) -> Result<IssuedAdmin, SignerError> {
    match call(root, &SignerRequest::IssueAdmin { name: name.clone() }).await? {
        SignerResponse::IssuedAdmin { cert, key, port, .. } => {
            Ok(IssuedAdmin { cert_pem: cert, key_pem: zeroize::Zeroizing::new(key), port })
        }
        other => Err(unexpected(other)),
    }
}

/// What a published CRL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub crl_number: u64,
    pub revoked: usize,
    pub next_update: String,
}

/// Asks for a fresh CRL of `kind`.
pub async fn publish_crl(root: &Path, kind: Kind) -> Result<Published, SignerError> {
    match call(root, &SignerRequest::PublishCrl { kind }).await? {
        SignerResponse::Published { crl_number, revoked, next_update } => {
            Ok(Published { crl_number, revoked, next_update })
        }
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: SignerResponse) -> SignerError {
    match r {
        SignerResponse::Refused { reason } => SignerError::Refused(reason),
        SignerResponse::Error { message } => SignerError::Failed(message),
        other => SignerError::Protocol(format!("unexpected answer {other:?}")),
    }
}
