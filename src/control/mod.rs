//! The control socket of the running VPN service (`<root>/vpn/run/control.sock`): its protocol and client. How
//! another cas-vpn process (the CLI's `revoke`, `admin-vpn issue`, `status`, the web UI) reaches the supervisor.
//! One JSON line in, one JSON line out. The server side is `vpn::control`.

pub mod net;
pub mod server;
pub mod signer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::domain::lifecycle::State;
use crate::domain::{Kind, Name};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the running cas-vpn did not answer in time")]
    Timeout,
    #[error("the running cas-vpn answered something unreadable: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// Kill every live session of this credential, on every instance.
    Kill {
        name: Name,
    },
    /// Re-plan instances from the store (an admin credential was issued or revoked).
    Reload,
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "lowercase")]
pub enum Response {
    Killed { sessions: usize },
    Reloaded,
    Status { instances: Vec<InstanceStatus> },
    Error { message: String },
}

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("vpn").join("run").join("control.sock")
}

/// Sends one request to the running `serve`. `Ok(None)` when none runs (no socket, or nobody listening).
pub async fn request(root: &Path, req: &Request, timeout: Duration) -> Result<Option<Response>, ControlError> {
    exchange(&socket_path(root), req, timeout).await
}

/// One JSON line out, one JSON line back over the unix socket at `path`; `Ok(None)` when nothing listens there.
pub(crate) async fn exchange<Q: Serialize, A: serde::de::DeserializeOwned>(
    path: &Path,
    req: &Q,
    timeout: Duration,
) -> Result<Option<A>, ControlError> {
    let io = |source| ControlError::Io { path: path.to_owned(), source };
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    let exchange = async {
        let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await.map_err(io)?;
        serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ControlError::Timeout)?.map(Some)
}

/// One instance as the running service reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceStatus {
    pub name: Name,
    pub kind: Kind,
    pub port: u16,
    #[serde(flatten)]
    pub state: State,
    /// Process running and its management interface connected: connections can be answered.
    pub ready: bool,
    pub restarts: u64,
    pub crash_loop: bool,
    pub sessions: usize,
}
