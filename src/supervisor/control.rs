//! The control socket of a running `serve` (`<root>/vpn/run/control.sock`, in a 0700 directory): how another
//! cas-vpn process (the CLI's `revoke`, `admin-vpn issue`, `status`) reaches the supervisor. One JSON line in,
//! one JSON line out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::Registry;
use super::instance::InstanceStatus;
use crate::domain::Name;

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
    let path = socket_path(root);
    let io = |source| ControlError::Io { path: path.clone(), source };
    let mut stream = match UnixStream::connect(&path).await {
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

/// Serves the control socket until the task is dropped.
pub async fn serve(
    root: PathBuf,
    registry: Registry,
    reload: mpsc::Sender<oneshot::Sender<()>>,
) -> Result<(), ControlError> {
    let path = socket_path(&root);
    let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
    crate::sys::fs::ensure_dir(&dir, 0o700)
        .map_err(|e| ControlError::Io { path: dir.clone(), source: std::io::Error::other(e.to_string()) })?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| ControlError::Io { path: path.clone(), source })?;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (registry, reload) = (registry.clone(), reload.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Kill { name }) => Response::Killed { sessions: registry.kill(&name).await },
                Ok(Request::Reload) => {
                    let (tx, rx) = oneshot::channel();
                    if reload.send(tx).await.is_ok() && rx.await.is_ok() {
                        Response::Reloaded
                    } else {
                        Response::Error { message: "shutting down".into() }
                    }
                }
                Ok(Request::Status) => Response::Status { instances: registry.status().await },
                Err(e) => Response::Error { message: format!("bad request: {e}") },
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
            }
        });
    }
}
