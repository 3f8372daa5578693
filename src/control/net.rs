//! The control socket of `serve net` (`<root>/run/net.sock`, `root:batm 0660`): its protocol and client. The CLI
//! pokes it after every change the firewall depends on (pairing window opened or closed, admin credential issued
//! or revoked), so the rules follow within a second instead of at the next periodic check. No socket means no
//! `serve net` runs: nothing to tell, and not an error. The server side is `firewall::service`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ControlError;

/// How long a poke waits for `serve net` to have the new rules in force.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum NetRequest {
    /// Re-read the configuration and the store, and install the plan if it is not what is installed.
    Reload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "lowercase")]
pub enum NetResponse {
    /// The plan (`sha256:…` of its rules) is in force; `changed`: rules were installed to get there.
    Reloaded {
        plan: String,
        changed: bool,
    },
    Error {
        message: String,
    },
}

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("net.sock")
}

/// Asks the running `serve net` to reload; `Ok(None)` when none runs.
pub async fn reload(root: &Path) -> Result<Option<NetResponse>, ControlError> {
    super::exchange(&socket_path(root), &NetRequest::Reload, RELOAD_TIMEOUT).await
}
