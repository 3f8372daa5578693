//! The management client: one task owns the socket. Commands go in through a channel and are answered in order
//! (openvpn answers commands in the order it got them); `>CLIENT:` notifications come out through an unbounded
//! channel, so the task never blocks on a slow consumer while that consumer waits for a command's answer.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::proto::{ClientEvent, Message, Parser, StatusClient, parse_status};

#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error("management socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("management interface closed")]
    Closed,
    #[error("openvpn refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("openvpn did not answer `{command}` in time")]
    Timeout { command: String },
}

struct Request {
    text: String,
    /// Answer ends with a line `END` (status) rather than one SUCCESS/ERROR line.
    multiline: bool,
    reply: oneshot::Sender<Result<Vec<String>, MgmtError>>,
}

/// A handle to an instance's management interface; cheap to clone.
#[derive(Clone)]
pub struct Mgmt {
    tx: mpsc::Sender<Request>,
}

/// How long one command may take: openvpn answers in milliseconds; anything longer means it is stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl Mgmt {
    /// Connects and starts the task. The receiver yields client events until the socket closes.
    pub async fn connect(path: &Path) -> Result<(Mgmt, mpsc::UnboundedReceiver<ClientEvent>), MgmtError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| MgmtError::Connect { path: path.display().to_string(), source })?;
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(stream, rx, events_tx));
        Ok((Mgmt { tx }, events_rx))
    }

    async fn request(&self, text: String, multiline: bool) -> Result<Vec<String>, MgmtError> {
        self.submit(text, multiline).await?.lines().await
    }

    /// Queues `text` for openvpn and returns its answer to await. Commands are written in the order they are
    /// queued, and openvpn carries them out in that order.
    async fn submit(&self, text: String, multiline: bool) -> Result<Answer, MgmtError> {
        let command = text.lines().next().unwrap_or("").to_owned();
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { text, multiline, reply }).await.map_err(|_| MgmtError::Closed)?;
        Ok(Answer { command, rx })
    }

    /// A one-line command; `SUCCESS:` is Ok, anything else an error.
    pub async fn command(&self, text: &str) -> Result<String, MgmtError> {
        self.submit(text.to_owned(), false).await?.success().await
    }

    /// Lets a client in, with per-client config lines (`ifconfig-push …`, `push "…"`).
    pub async fn client_auth(&self, cid: u64, kid: u64, lines: &[String]) -> Result<(), MgmtError> {
        self.client_auth_queued(cid, kid, lines).await?.success().await.map(drop)
    }

    /// [`Mgmt::client_auth`], queued: returns once the command is in line (ahead of any command queued later, a
    /// kill of the same client included), its acknowledgement to be awaited apart.
    pub async fn client_auth_queued(&self, cid: u64, kid: u64, lines: &[String]) -> Result<Answer, MgmtError> {
        let mut text = format!("client-auth {cid} {kid}\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("END");
        self.submit(text, false).await
    }

    /// Lets a renegotiating client go on with nothing new to push.
    pub async fn client_auth_nt(&self, cid: u64, kid: u64) -> Result<(), MgmtError> {
        self.command(&format!("client-auth-nt {cid} {kid}")).await.map(drop)
    }

    /// `reason` is one of our static strings (no quotes); openvpn logs it and tells the client AUTH_FAILED. A
    /// temporary denial (`TEMP[backoff N]:…`) is also sent to the client as openvpn's client-reason: that text is
    /// what makes a client retry by itself (a plain AUTH_FAILED carries no reason, and permanent denials give a
    /// stranger none).
    pub async fn client_deny(&self, cid: u64, kid: u64, reason: &'static str) -> Result<(), MgmtError> {
        self.client_deny_queued(cid, kid, reason).await?.success().await.map(drop)
    }

    /// [`Mgmt::client_deny`], queued (as [`Mgmt::client_auth_queued`]).
    pub async fn client_deny_queued(&self, cid: u64, kid: u64, reason: &'static str) -> Result<Answer, MgmtError> {
        debug_assert!(!reason.contains('"'));
        let command = if reason.starts_with("TEMP[") {
            format!("client-deny {cid} {kid} \"{reason}\" \"{reason}\"")
        } else {
            format!("client-deny {cid} {kid} \"{reason}\"")
        };
        self.submit(command, false).await
    }

    /// Ends a session now (the client may reconnect; it is then asked again, and denied if revoked).
    pub async fn client_kill(&self, cid: u64) -> Result<(), MgmtError> {
        self.command(&format!("client-kill {cid}")).await.map(drop)
    }

    /// Ends a session and sends the client on to its next `remote` (openvpn's `RESTART,[N]`): a drain.
    pub async fn client_kill_to_next_remote(&self, cid: u64) -> Result<(), MgmtError> {
        self.command(&format!("client-kill {cid} RESTART,[N]")).await.map(drop)
    }

    pub async fn status(&self) -> Result<Vec<StatusClient>, MgmtError> {
        let lines = self.request("status 3".into(), true).await?;
        Ok(parse_status(&lines))
    }
}

/// openvpn's answer to one queued command, awaited apart from queuing it (bounded by `COMMAND_TIMEOUT`).
pub struct Answer {
    command: String,
    rx: oneshot::Receiver<Result<Vec<String>, MgmtError>>,
}

impl Answer {
    async fn lines(self) -> Result<Vec<String>, MgmtError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(MgmtError::Closed),
            Err(_) => Err(MgmtError::Timeout { command: self.command }),
        }
    }

    /// The one-line answer, which must say `SUCCESS:`.
    pub async fn success(self) -> Result<String, MgmtError> {
        let command = self.command.clone();
        let answer = self.lines().await?.into_iter().next().unwrap_or_default();
        if answer.starts_with("SUCCESS:") { Ok(answer) } else { Err(MgmtError::Refused { command, answer }) }
    }
}

async fn run(stream: UnixStream, mut requests: mpsc::Receiver<Request>, events: mpsc::UnboundedSender<ClientEvent>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut parser = Parser::default();
    let mut pending: VecDeque<(Request, Vec<String>)> = VecDeque::new();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match parser.feed(&line) {
                    Some(Message::Client(ev)) => {
                        // The consumer is gone (instance stopping): nothing left to answer for.
                        let Ok(()) = events.send(ev) else { break };
                    }
                    Some(Message::Reply(text)) => {
                        let Some((req, mut got)) = pending.pop_front() else {
                            tracing::debug!(line = %text, "unsolicited management line");
                            continue;
                        };
                        if req.multiline && text != "END" && !text.starts_with("ERROR:") {
                            got.push(text);
                            pending.push_front((req, got));
                        } else {
                            if !req.multiline {
                                got.push(text);
                            }
                            let _ = req.reply.send(Ok(got));
                        }
                    }
                    Some(Message::Other(text)) => tracing::trace!(line = %text, "management"),
                    None => {}
                }
            }
            req = requests.recv() => {
                let Some(req) = req else { break };
                let mut text = req.text.clone();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    let _ = req.reply.send(Err(MgmtError::Closed));
                    break;
                }
                pending.push_back((req, Vec::new()));
            }
        }
    }
    for (req, _) in pending {
        let _ = req.reply.send(Err(MgmtError::Closed));
    }
}
