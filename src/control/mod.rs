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
    /// Kill every live session of each of these credentials (a bulk revocation), answered with the total. A
    /// client sends at most [`KILL_BATCH`] names per request (the server bounds its request line); a service
    /// from before this request answers an error, and the client falls back to one `kill` per name.
    #[serde(rename = "kill-many")]
    KillMany {
        names: Vec<Name>,
    },
    /// Re-plan instances from the store (an admin credential was issued or revoked).
    Reload,
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "lowercase")]
pub enum Response {
    Killed {
        sessions: usize,
    },
    Reloaded,
    /// Each instance's state; `answers` per instance was added later (an older client ignores it).
    Status {
        instances: Vec<InstanceStatus>,
    },
    Error {
        message: String,
    },
}

/// Names per `kill-many` request: 256 names of at most 64 bytes fit the server's request line with room to spare.
pub const KILL_BATCH: usize = 256;

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
    /// How long this instance's CONNECT/REAUTH questions took to answer, since the instance started (added for
    /// `/metrics`; a service from before it answers without it, read as empty).
    #[serde(default)]
    pub answers: AnswerLatency,
}

/// Upper bounds (seconds) of the answer-latency buckets: a store answer is milliseconds; 3 s is the deadline
/// after which openvpn is told to retry (a passing fault).
pub const ANSWER_BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A histogram of management answer latencies (from openvpn's `>CLIENT:CONNECT`/`REAUTH` reaching the vpn
/// service to openvpn acknowledging its `client-auth`/`client-deny`), as Prometheus keeps one: cumulative
/// buckets, count and sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerLatency {
    /// Upper bounds in seconds, ascending (`le`); empty when the service did not measure.
    pub bounds: Vec<f64>,
    /// Answers that took at most the bound of the same index (cumulative).
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl AnswerLatency {
    /// An empty histogram over `ANSWER_BOUNDS`.
    pub fn new() -> AnswerLatency {
        AnswerLatency {
            bounds: ANSWER_BOUNDS.to_vec(),
            buckets: vec![0; ANSWER_BOUNDS.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }

    /// Counts one answer that took `took`.
    pub fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter_mut()) {
            if secs <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += secs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_latency_buckets_are_cumulative() {
        let mut h = AnswerLatency::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(9));
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets, vec![1, 1, 1, 2, 2, 2, 2, 2, 2, 2]);
        assert!((h.sum_seconds - 9.043).abs() < 1e-9);
    }

    #[test]
    fn a_status_without_answers_still_reads() {
        // What a vpn service from before the metrics answers.
        let old = r#"{"response":"status","instances":[{"name":"terminal-0","kind":"terminal","port":13000,
            "state":"exited","ready":false,"restarts":2,"crash_loop":false,"sessions":0}]}"#;
        let Response::Status { instances } = serde_json::from_str(&old.replace('\n', "")).unwrap() else {
            panic!("not a status")
        };
        assert_eq!(instances[0].restarts, 2);
        assert_eq!(instances[0].answers, AnswerLatency::default());
    }
}
