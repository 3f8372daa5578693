//! `ChildGuard`: a long-running process (openvpn, cas-vpn, a listener) owned by one test.
//!
//! - It runs in its own process group, so `Drop` can stop it together with anything it forked, and so a Ctrl-C
//!   aimed at `cargo test` is not what stops it (the guard is).
//! - stdout and stderr are read line by line by background threads into one shared buffer; tests wait for a line
//!   (`wait_for_line`) instead of sleeping, and a failing test prints the last lines so CI logs show why.
//! - `Drop`: SIGTERM to the group, up to 2 s for a clean exit, SIGKILL to the group, reap.
//!
//! Set `CV_E2E_ECHO=1` to also echo every line live to stderr, prefixed with the guard's label.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// Lines kept per process; older ones are dropped (indices keep counting, see [`ChildGuard::mark`]). A whole fleet
/// bench phase of `serve all` (openvpn's lines for 2,000 clients) fits.
const MAX_LINES: usize = 200_000;
/// Lines printed to stderr when a guard is dropped during a panic.
const DUMP_LINES: usize = 50;
/// How long `Drop` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// Sleeps 1, 2, 4, … ms up to [`POLL`]: openvpn exits within a few ms of SIGTERM, and a flat 20 ms per process
/// would add seconds to tearing down a few hundred clients.
fn backoff(round: &mut u32) {
    std::thread::sleep(Duration::from_millis(1 << (*round).min(5)).min(POLL));
    *round += 1;
}

struct Captured {
    state: Mutex<Lines>,
    changed: Condvar,
}

struct Lines {
    /// Absolute index of `lines[0]`.
    first: usize,
    lines: VecDeque<String>,
    /// Pipes (stdout, stderr) not yet at end of file.
    open: usize,
}

impl Lines {
    fn end(&self) -> usize {
        self.first + self.lines.len()
    }

    fn find(&self, from: usize, pred: &dyn Fn(&str) -> bool) -> Option<(usize, String)> {
        (from.max(self.first)..self.end())
            .map(|i| (i, &self.lines[i - self.first]))
            .find(|(_, l)| pred(l))
            .map(|(i, l)| (i, l.clone()))
    }
}

/// Outcome of one look at the buffer.
enum Look {
    Found(usize, String),
    /// Both pipes are closed: nothing more will ever arrive.
    Ended,
    Pending,
}

/// A running child process; stopped (whole process group) and reaped on drop.
pub struct ChildGuard {
    label: String,
    child: Child,
    captured: Arc<Captured>,
    /// Set once the child has been reaped: from then on its pid may belong to someone else, so no more signals.
    reaped: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin null, stdout/stderr captured) in a new process group. Panics when it cannot start.
    ///
    /// Build `cmd` with [`super::Netns::cmd`] to run it inside a namespace (`ip netns exec` execs the program in
    /// place, so the pid is the program's own).
    pub fn spawn(label: impl Into<String>, mut cmd: Command) -> ChildGuard {
        let label = label.into();
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let captured = Arc::new(Captured {
            state: Mutex::new(Lines { first: 0, lines: VecDeque::new(), open: 2 }),
            changed: Condvar::new(),
        });
        let echo = std::env::var_os("CV_E2E_ECHO").is_some_and(|v| !v.is_empty() && v != "0");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_reader(stdout, Arc::clone(&captured), &label, echo);
        spawn_reader(stderr, Arc::clone(&captured), &label, echo);
        ChildGuard { label, child, captured, reaped: None }
    }

    /// The label given at spawn (shown in panics and dumps).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Index the next captured line will get: pass it to [`ChildGuard::wait_for_line_from`] to wait only for
    /// lines printed after this point (e.g. the second "Initialization Sequence Completed" after a reconnect).
    pub fn mark(&self) -> usize {
        self.lock().end()
    }

    /// Snapshot of the captured lines still kept (stdout and stderr interleaved in arrival order).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Whether any captured line contains `needle` (no waiting).
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().find(0, &|l: &str| l.contains(needle)).is_some()
    }

    /// Waits for any captured line (also ones already printed) matching `pred`; returns it. Panics after `timeout`,
    /// or at once when the process closed its output without printing one.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_line_from(0, pred, timeout).1
    }

    /// [`ChildGuard::wait_for_line`] for a line containing `needle` (names it in the panic message).
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_desc(0, &|l: &str| l.contains(needle), timeout, &format!("{needle:?}")).1
    }

    /// Waits for a line with index ≥ `from` (see [`ChildGuard::mark`]) matching `pred`; returns (index, line).
    pub fn wait_for_line_from(&self, from: usize, pred: impl Fn(&str) -> bool, timeout: Duration) -> (usize, String) {
        self.wait_for_line_desc(from, &pred, timeout, "a line matching the predicate")
    }

    fn wait_for_line_desc(
        &self,
        from: usize,
        pred: &dyn Fn(&str) -> bool,
        timeout: Duration,
        what: &str,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            match look(&st, from, pred) {
                Look::Found(i, l) => return (i, l),
                Look::Ended => {
                    drop(st);
                    self.panic_ended(what)
                }
                Look::Pending => {}
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                panic!("{}: no line {what} within {timeout:?} (its last lines follow when it is dropped)", self.label);
            }
            // Woken by every new line; the timeout only bounds the wait.
            st = self.captured.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Async [`ChildGuard::wait_for_line`]: polls without blocking the runtime thread.
    pub async fn wait_for_line_async(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_line_from_async(0, pred, timeout).await.1
    }

    /// Async [`ChildGuard::wait_for_line_from`].
    pub async fn wait_for_line_from_async(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = look(&self.lock(), from, &pred);
            match seen {
                Look::Found(i, l) => return (i, l),
                Look::Ended => self.panic_ended("a line matching the predicate"),
                Look::Pending if Instant::now() >= deadline => {
                    panic!(
                        "{}: no matching line within {timeout:?} (its last lines follow when it is dropped)",
                        self.label
                    )
                }
                Look::Pending => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn panic_ended(&self, what: &str) -> ! {
        panic!("{} closed its output ({}) without printing {what}", self.label, self.describe_state())
    }

    /// Whether the process is still running (an exited but unreaped child counts as not running).
    pub fn is_running(&self) -> bool {
        self.reaped.is_none() && matches!(self.peek(), Ok(WaitStatus::StillAlive))
    }

    /// Sends `sig` to the process itself (not its group), e.g. SIGHUP or SIGUSR1 to openvpn.
    pub fn signal(&self, sig: Signal) {
        assert!(self.reaped.is_none(), "{} was already reaped", self.label);
        kill(self.pgid(), sig).unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.label));
    }

    /// Waits for the process to exit by itself; SIGKILLs what is left of its group, reaps it and returns the
    /// status. Panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let mut round = 0;
        while !self.has_exited() {
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.label);
            backoff(&mut round);
        }
        self.reap()
    }

    /// Stops the process like `Drop` does (SIGTERM, up to 2 s, SIGKILL) and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.reaped {
            return status;
        }
        let _ = killpg(self.pgid(), Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        let mut round = 0;
        while !self.has_exited() && Instant::now() < deadline {
            backoff(&mut round);
        }
        self.reap()
    }

    /// Stops many processes at once: SIGTERM to every group first, so they shut down in parallel, then the
    /// usual per-process wait and reap. Use it to tear down a load test's clients.
    pub fn stop_all(guards: impl IntoIterator<Item = ChildGuard>) {
        let guards: Vec<ChildGuard> = guards.into_iter().collect();
        for g in guards.iter().filter(|g| g.reaped.is_none()) {
            let _ = killpg(g.pgid(), Signal::SIGTERM);
        }
        drop(guards);
    }

    /// SIGKILL to the group, then reap. Called only while the child is unreaped: an exited child stays a zombie
    /// until reaped, which keeps its pid (= pgid) from being reused, so the group signal cannot hit a stranger.
    fn reap(&mut self) -> ExitStatus {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let status = self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.label));
        self.reaped = Some(status);
        status
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// waitid(WNOWAIT): the child's state without reaping it.
    fn peek(&self) -> nix::Result<WaitStatus> {
        waitid(Id::Pid(self.pgid()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT)
    }

    fn has_exited(&self) -> bool {
        // An error (ECHILD) means it is gone already.
        !matches!(self.peek(), Ok(WaitStatus::StillAlive))
    }

    fn describe_state(&self) -> String {
        if let Some(status) = self.reaped {
            return format!("reaped: {status}");
        }
        match self.peek() {
            Ok(WaitStatus::StillAlive) => "still running".to_owned(),
            Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("state unknown: {e}"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A predicate that panicked while the lock was held must not make every later look panic too.
        self.captured.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until both pipes reached end of file, so a dump includes the last words of the process.
    /// Bounded because a grandchild that left the group may still hold the pipes open.
    fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.open > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self.captured.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn dump(&self) {
        let st = self.lock();
        let skip = st.lines.len().saturating_sub(DUMP_LINES);
        let status = self.reaped.map_or_else(|| "not reaped".to_owned(), |s| s.to_string());
        let mut out = format!(
            "----- {} (pid {}, {status}): last {} of {} lines -----\n",
            self.label,
            self.child.id(),
            st.lines.len() - skip,
            st.end()
        );
        for line in st.lines.iter().skip(skip) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!("----- end of {} -----", self.label));
        eprintln!("{out}");
    }
}

fn look(st: &Lines, from: usize, pred: &dyn Fn(&str) -> bool) -> Look {
    match st.find(from, pred) {
        Some((i, l)) => Look::Found(i, l),
        None if st.open == 0 => Look::Ended,
        None => Look::Pending,
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.stop();
        }
        self.drain(Duration::from_secs(1));
        if std::thread::panicking() {
            self.dump();
        }
    }
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard").field("label", &self.label).field("pid", &self.child.id()).finish()
    }
}

fn spawn_reader(stream: impl Read + Send + 'static, captured: Arc<Captured>, label: &str, echo: bool) {
    let label = label.to_owned();
    std::thread::Builder::new()
        .name(format!("capture {label}"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // Lossy: a stray non-UTF-8 byte in a log must not lose the whole line.
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                        if echo {
                            eprintln!("[{label}] {line}");
                        }
                        let mut st = captured.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.lines.push_back(line);
                        if st.lines.len() > MAX_LINES {
                            st.lines.pop_front();
                            st.first += 1;
                        }
                        drop(st);
                        captured.changed.notify_all();
                    }
                }
            }
            captured.state.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
            captured.changed.notify_all();
        })
        .expect("spawn capture thread");
}
