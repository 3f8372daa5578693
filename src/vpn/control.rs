//! The server side of the control socket (protocol and client: `crate::control`).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::Registry;
use crate::control::{ControlError, Request, Response, socket_path};

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
