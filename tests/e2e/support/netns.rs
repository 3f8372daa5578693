//! Network namespaces owned by one test.
//!
//! Every namespace is named `cv<role><6 hex>` so that `scripts/e2e-cleanup` can find leftovers from a run that was
//! killed before its `Drop`s ran, and so that nothing here can ever be confused with the host's own namespaces.
//! Everything a test configures lives inside namespaces it created: the host's interfaces, routes and firewall are
//! never touched (DESIGN.md section 7).

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::child::ChildGuard;

/// Prefix of every namespace and interface the e2e tests create (and the only ones `scripts/e2e-cleanup` removes).
pub const PREFIX: &str = "cv";

/// Six lowercase hex digits, never repeated within this process.
///
/// A random per-process base plus a counter: names made by one process can never collide (interfaces only need to
/// be unique inside one namespace, and one process makes all of them), while concurrent test processes start from
/// different bases; a rare cross-process namespace clash is caught by `ip netns add` and retried.
pub fn short_id() -> String {
    static BASE: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = *BASE.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.finish() as u32
    });
    let n = base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:06x}", n & 0xff_ffff)
}

/// Runs `cmd` to completion; stdout on success, an error naming the command and quoting its stderr otherwise.
pub fn run_cmd(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| io::Error::new(e.kind(), format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace created for one test, with `lo` up; killed and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cv<role><6 hex>` with `lo` up. Panics when `ip netns add` fails (the test cannot do anything useful).
    pub fn new(role: &str) -> Netns {
        // Only alphanumerics: the name ends up in paths (/run/netns) and in shell commands of the cleanup script.
        let role: String = role.chars().filter(char::is_ascii_alphanumeric).collect();
        for _ in 0..16 {
            let name = format!("{PREFIX}{role}{}", short_id());
            match run_cmd(Command::new("ip").args(["netns", "add", &name])) {
                Ok(_) => {
                    let ns = Netns { name };
                    ns.ip(&["link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{}: lo up: {e}", ns.name));
                    return ns;
                }
                // Another test process picked the same name: take the next one.
                Err(e) if e.to_string().contains("File exists") => continue,
                Err(e) => panic!("cannot create network namespace {name}: {e}"),
            }
        }
        panic!("cannot find a free network namespace name for role {role:?}");
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: add arguments, then run it.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Like [`Netns::cmd`], for async tests.
    pub fn tokio_cmd(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `argv` (program first) inside the namespace to completion: its stdout, or an error with its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> io::Result<String> {
        let (program, args) = argv.split_first().expect("Netns::run needs at least a program");
        run_cmd(self.cmd(program).args(args))
    }

    /// `ip -n NAME args…`: cheaper than `run(["ip", …])` (no second exec) for configuring the namespace.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> io::Result<String> {
        run_cmd(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts a long-running `program args…` inside the namespace (see [`ChildGuard`]).
    pub fn spawn<S: AsRef<OsStr>>(&self, label: &str, program: impl AsRef<OsStr>, args: &[S]) -> ChildGuard {
        let mut cmd = self.cmd(program);
        cmd.args(args);
        ChildGuard::spawn(format!("{label}@{}", self.name), cmd)
    }

    /// Sets a sysctl of this namespace, e.g. `("net/ipv4/ip_forward", "1")`.
    ///
    /// Written through /proc/sys from a process inside the namespace: the `net/` tree there belongs to the netns
    /// of the process that opens it, so the host's value is untouched (and `sysctl` need not be installed).
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let key = key.replace('.', "/");
        self.run(&["sh", "-c", "printf '%s\\n' \"$1\" > \"/proc/sys/$0\"", &key, value]).map(drop)
    }

    /// Pids of the processes currently inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        run_cmd(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process inside, until none is left (a dying process may have forked) or 2 s passed.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!("e2e: processes {pids:?} survive SIGKILL in {}; deleting it anyway", self.name);
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes keep a namespace (and its tun devices, veths, sockets) alive after `ip netns del`: kill first.
        self.kill_all();
        // Never panic here: a second panic while unwinding aborts the whole test binary and hides the first one.
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("e2e: cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// Names of all network namespaces `ip netns list` shows (first word of each line; the rest is `(id: N)`).
pub fn list_netns() -> Vec<String> {
    run_cmd(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}
