//! What the servers of cas-vpn's unix sockets (the signer's, the VPN control socket, `serve net`'s) share: the
//! socket bound `root:GROUP 0660` (`0600` under one uid), and one bounded JSON line in, one line out, from a caller
//! identified by its uid (`SO_PEERCRED`), which each server then authorises.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

/// Binds `path` (its directory made when missing, a stale socket replaced): owned `root:gid` with mode 0660 when
/// the services' group is given, else 0600 (one uid: nobody else may connect).
pub fn bind(path: &Path, gid: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, Some(0), Some(g))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(if gid.is_some() { 0o660 } else { 0o600 }))?;
    Ok(listener)
}

/// One request from a connection: the caller's uid, what it asked (or why it could not be read), and where to
/// answer. `None` when the caller is unknown or the line never came.
pub async fn read_request<Req: DeserializeOwned>(
    stream: UnixStream,
    max_line: u64,
) -> Option<(u32, Result<Req, String>, OwnedWriteHalf)> {
    let uid = stream.peer_cred().ok()?.uid();
    let (read, write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(max_line)).read_line(&mut line).await.ok()?;
    Some((uid, serde_json::from_str(&line).map_err(|e| format!("bad request: {e}")), write))
}

/// Writes one answer line (a caller that went away is not an error of ours).
pub async fn write_response<Resp: Serialize>(write: &mut OwnedWriteHalf, resp: &Resp) {
    if let Ok(mut text) = serde_json::to_string(resp) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}
