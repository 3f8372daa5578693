//! The management client: one task owns the socket. Commands go in through a channel and are answered in order
//! (openvpn answers commands in the order it got them); `>CLIENT:` notifications come out through an unbounded
//! channel, so the task never blocks on a slow consumer while that consumer waits for a command's answer.
//!
//! At most [`IN_FLIGHT`] commands are with openvpn at a time; the rest wait here, a kill ahead of the others.
//! openvpn reads its management socket 256 bytes per turn of its event loop, and a turn of a server busy with
//! 200 handshakes (a fleet coming back) takes tens of milliseconds: with every CONNECT answer written at once, a
//! revocation's `client-kill` waited behind a hundred of them, over 5 s. Eight in flight (about two turns' worth)
//! keep openvpn fed and put a kill at most two turns from being carried out.

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
    priority: Priority,
    reply: oneshot::Sender<Result<Vec<String>, MgmtError>>,
}

/// Where a command waits for its turn with openvpn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// In the order queued.
    InTurn,
    /// Ahead of every `InTurn` command not yet with openvpn (a revocation's kill).
    First,
}

/// Commands written to openvpn and not yet answered, at most (see the module's documentation).
const IN_FLIGHT: usize = 8;

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
        self.submit(text, multiline, Priority::InTurn).await?.lines().await
    }

    /// Queues `text` for openvpn and returns its answer to await. Commands of one priority are written in the
    /// order they are queued, and openvpn carries them out in the order written.
    async fn submit(&self, text: String, multiline: bool, priority: Priority) -> Result<Answer, MgmtError> {
        let command = text.lines().next().unwrap_or("").to_owned();
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { text, multiline, priority, reply }).await.map_err(|_| MgmtError::Closed)?;
        Ok(Answer { command, rx })
    }

    /// A one-line command; `SUCCESS:` is Ok, anything else an error.
    pub async fn command(&self, text: &str) -> Result<String, MgmtError> {
        self.submit(text.to_owned(), false, Priority::InTurn).await?.success().await
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
        self.submit(text, false, Priority::InTurn).await
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
        self.submit(command, false, Priority::InTurn).await
    }

    /// Ends a session now (the client may reconnect; it is then asked again, and denied if revoked). Goes to
    /// openvpn ahead of every answer still waiting here: a revocation does not wait for a fleet's CONNECTs.
    pub async fn client_kill(&self, cid: u64) -> Result<(), MgmtError> {
        self.client_kill_queued(cid).await?.success().await.map(drop)
    }

    /// [`Mgmt::client_kill`], queued (ahead of the answers, as it): its acknowledgement to be awaited apart.
    pub async fn client_kill_queued(&self, cid: u64) -> Result<Answer, MgmtError> {
        self.submit(format!("client-kill {cid}"), false, Priority::First).await
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
    let mut waiting = Waiting::default();
    loop {
        tokio::select! {
            // What was queued is taken in before openvpn's next answer frees a place: a kill queued meanwhile
            // takes that place. (Requests come from the instance at the pace of openvpn's own events.)
            biased;
            req = requests.recv() => {
                let Some(req) = req else { break };
                waiting.push(req);
            }
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
        }
        // Whatever the turn freed or brought is written now, up to the window.
        if fill_window(&mut write, &mut pending, &mut waiting).await.is_err() {
            break;
        }
    }
    for req in pending.into_iter().map(|(r, _)| r).chain(waiting.drain()) {
        let _ = req.reply.send(Err(MgmtError::Closed));
    }
}

/// Writes waiting commands to openvpn while fewer than [`IN_FLIGHT`] are unanswered. `Err` when the socket is
/// closed (the command that found it so has been answered `Closed`).
async fn fill_window(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    pending: &mut VecDeque<(Request, Vec<String>)>,
    waiting: &mut Waiting,
) -> Result<(), ()> {
    while pending.len() < IN_FLIGHT {
        let Some(req) = waiting.next() else { break };
        let mut text = req.text.clone();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            let _ = req.reply.send(Err(MgmtError::Closed));
            return Err(());
        }
        pending.push_back((req, Vec::new()));
    }
    Ok(())
}

/// Commands not yet written to openvpn, by priority.
#[derive(Default)]
struct Waiting {
    first: VecDeque<Request>,
    in_turn: VecDeque<Request>,
}

impl Waiting {
    fn push(&mut self, req: Request) {
        match req.priority {
            Priority::First => self.first.push_back(req),
            Priority::InTurn => self.in_turn.push_back(req),
        }
    }

    fn next(&mut self) -> Option<Request> {
        self.first.pop_front().or_else(|| self.in_turn.pop_front())
    }

    fn drain(self) -> impl Iterator<Item = Request> {
        self.first.into_iter().chain(self.in_turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixStream;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A management client wired to a stand-in for openvpn's end of the socket.
    fn connected() -> (Mgmt, BufReader<UnixStream>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, _events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ours, rx, events_tx));
        (Mgmt { tx }, BufReader::new(theirs))
    }

    async fn next_line(openvpn: &mut BufReader<UnixStream>) -> String {
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, openvpn.read_line(&mut line)).await.expect("a command in time").unwrap();
        line.trim_end().to_owned()
    }

    /// openvpn's answer to the oldest command it has.
    async fn answer(openvpn: &mut BufReader<UnixStream>, line: &str) {
        tokio::io::AsyncWriteExt::write_all(openvpn.get_mut(), format!("{line}\n").as_bytes()).await.unwrap();
    }

    /// Nothing more arrives within a short while (what the window holds back stays here).
    async fn nothing_more(openvpn: &mut BufReader<UnixStream>) {
        let mut line = String::new();
        let more = tokio::time::timeout(Duration::from_millis(200), openvpn.read_line(&mut line)).await;
        assert!(more.is_err(), "openvpn got more than the window: {line:?}");
    }

    #[tokio::test]
    async fn a_kill_overtakes_the_answers_waiting_beyond_the_window() {
        let (mgmt, mut openvpn) = connected();
        let mut answers = Vec::new();
        for cid in 0..20u64 {
            answers.push(
                mgmt.client_auth_queued(cid, 1, &[format!("ifconfig-push 10.8.0.{} 255.255.0.0", cid + 2)])
                    .await
                    .unwrap(),
            );
        }
        // openvpn gets the first IN_FLIGHT answers (three lines each) and no more while it has not answered.
        for cid in 0..IN_FLIGHT as u64 {
            assert_eq!(next_line(&mut openvpn).await, format!("client-auth {cid} 1"));
            next_line(&mut openvpn).await;
            assert_eq!(next_line(&mut openvpn).await, "END");
        }
        nothing_more(&mut openvpn).await;

        let kill = mgmt.submit("client-kill 99".into(), false, Priority::First).await.unwrap();
        // One answer from openvpn frees one place: the kill takes it, ahead of the twelve answers still waiting.
        answer(&mut openvpn, "SUCCESS: client-auth command succeeded").await;
        assert_eq!(next_line(&mut openvpn).await, "client-kill 99");
        nothing_more(&mut openvpn).await;

        // openvpn answers everything in order; every command gets its own answer.
        for _ in 1..IN_FLIGHT {
            answer(&mut openvpn, "SUCCESS: client-auth command succeeded").await;
        }
        answer(&mut openvpn, "SUCCESS: client-kill command succeeded").await;
        tokio::time::timeout(DEADLINE, kill.success()).await.unwrap().expect("the kill answered SUCCESS");
        for cid in IN_FLIGHT as u64..20 {
            assert_eq!(next_line(&mut openvpn).await, format!("client-auth {cid} 1"));
            next_line(&mut openvpn).await;
            assert_eq!(next_line(&mut openvpn).await, "END");
            answer(&mut openvpn, "SUCCESS: client-auth command succeeded").await;
        }
        for answer in answers {
            tokio::time::timeout(DEADLINE, answer.success()).await.unwrap().expect("each answer SUCCESS");
        }
    }

    #[tokio::test]
    async fn waiting_commands_fail_as_closed_when_openvpn_goes() {
        let (mgmt, mut openvpn) = connected();
        let mut answers = Vec::new();
        for cid in 0..(IN_FLIGHT as u64 + 3) {
            answers.push(mgmt.client_deny_queued(cid, 1, "revoked").await.unwrap());
        }
        for _ in 0..IN_FLIGHT {
            next_line(&mut openvpn).await;
        }
        drop(openvpn);
        for answer in answers {
            let got = tokio::time::timeout(DEADLINE, answer.success()).await.unwrap();
            assert!(matches!(got, Err(MgmtError::Closed)), "{got:?}");
        }
    }
}
