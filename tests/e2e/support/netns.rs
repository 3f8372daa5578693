//! Network namespaces owned by one test, and the names of everything the e2e harness creates.
//!
//! # Names: one run id per test process
//!
//! Each test process (a *run*) takes a run id, six lowercase hex digits, and puts it into the name of every
//! network namespace, interface and temporary directory it creates, always as the prefix `cv<run id>-`:
//!
//! | what | name | example |
//! |---|---|---|
//! | namespace | `cv<run id>-<role>-<n>` | `cv3fa91c-srv-0`, `cv3fa91c-c1-4` |
//! | interface (bridge, veth end) | `cv<run id>-<n><kind>` | `cv3fa91c-2br`, `cv3fa91c-5a`, `cv3fa91c-5b` |
//! | temporary directory | `$TMPDIR/cv<run id>-<what><random>` | `/tmp/cv3fa91c-pkiAb12Cd` |
//!
//! `<n>` is a counter of the process, so names never repeat within a run. Interface names must fit Linux's limit
//! of 15 characters (`IFNAMSIZ` - 1; [`ifnames`] checks it); namespace names have no such limit. The interfaces
//! are created inside the run's namespaces and vanish with them; the host's namespace never holds one.
//!
//! # Liveness: the run's lock
//!
//! The run id is taken by creating `/run/cas-vpn-e2e/<run id>.lock` (exclusively: two live runs never share an id)
//! and holding an exclusive `flock` on it for the life of the test process. The kernel releases the lock when the
//! process dies, however it dies (kill -9 included), and the descriptor is close-on-exec, so processes the run
//! started and that outlive it (openvpn, cas-vpn) do not keep it. `scripts/e2e-cleanup` removes the namespaces,
//! veths and temporary directories of a run only when it can take that run's lock itself (`flock -n`), i.e. when
//! the run is over; a live run's (this machine may run several test processes at once) and anything whose name
//! does not start with `cv<6 hex>-` are never touched. The lock file outlives its run (the harness has no hook at
//! process exit); the next cleanup removes it.
//!
//! Everything a test configures lives inside namespaces it created: the host's interfaces, routes and firewall are
//! never touched.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::child::ChildGuard;

/// First letters of every name the e2e tests create (the full prefix of a run is [`run_prefix`]).
pub const PREFIX: &str = "cv";

/// Where runs keep their lock files, `<run id>.lock` (read by `scripts/e2e-cleanup`).
pub const LOCK_DIR: &str = "/run/cas-vpn-e2e";

/// Linux's longest interface name (`IFNAMSIZ` is 16, with the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// This process's run: its id and the lock that says it is alive.
struct Run {
    id: String,
    /// Never dropped (a static): the kernel releases it when the process exits or is killed.
    _lock: Flock<File>,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| take_run_id().unwrap_or_else(|e| panic!("e2e: cannot take a run id in {LOCK_DIR}: {e}")))
}

/// A run id from a random number. The first character is a decimal digit: cas-vpn's firewall knows its tunnel
/// devices by the globs `cvt*` and `cva*`, so a run id starting with `a` made the run's LAN bridge (`cva…`) look
/// like an admin tunnel, and every packet from the test "Internet" was dropped (1 run in 16).
pub fn make_id(r: u64) -> String {
    format!("{}{:05x}", r % 10, (r >> 8) & 0xf_ffff)
}

/// Creates `LOCK_DIR/<random id>.lock` exclusively and locks it; retries with another id on a clash.
fn take_run_id() -> io::Result<Run> {
    std::fs::create_dir_all(LOCK_DIR)?;
    for _ in 0..64 {
        let id = make_id(random_u64());
        let path = Path::new(LOCK_DIR).join(format!("{id}.lock"));
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        // Blocking: `scripts/e2e-cleanup` holds a lock it tests for a moment only.
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))?;
        // The cleanup script may have found the file before we locked it, taken its lock and removed it (a run
        // with no lock is over). Then ours is the lock of a file nobody can see: take another id.
        let ours = lock.metadata()?;
        match std::fs::metadata(&path) {
            Ok(m) if (m.dev(), m.ino()) == (ours.dev(), ours.ino()) => {
                // For people reading the directory: which process holds the lock.
                let _ = writeln!(&*lock, "{}", std::process::id());
                return Ok(Run { id, _lock: lock });
            }
            _ => continue,
        }
    }
    Err(io::Error::other("no free run id after 64 tries"))
}

/// This run's id (a decimal digit and five lowercase hex digits), taken on first use (see the module doc).
pub fn run_id() -> &'static str {
    &run().id
}

/// `cv<run id>-`: the start of every name this run gives a namespace, interface or temporary directory.
pub fn run_prefix() -> String {
    format!("{PREFIX}{}-", run_id())
}

/// The path of this run's lock file.
pub fn run_lock_path() -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{}.lock", run_id()))
}

/// A number never returned before in this process.
fn next_n() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Interface names `cv<run id>-<n><kind>`, one per kind, sharing one fresh `<n>` (e.g. both ends of a veth pair:
/// `ifnames(["a", "b"])`). Panics when a name would exceed [`MAX_IFNAME`].
pub fn ifnames<const K: usize>(kinds: [&str; K]) -> [String; K] {
    let n = next_n();
    kinds.map(|kind| {
        assert!(!kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase()), "interface kind {kind:?}");
        let name = format!("{}{n}{kind}", run_prefix());
        assert!(name.len() <= MAX_IFNAME, "interface name {name} is longer than {MAX_IFNAME} characters");
        name
    })
}

/// Random bits from std's randomly keyed hasher, mixed with the pid and the time (no extra crate).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
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
    /// Creates `cv<run id>-<role>-<n>` with `lo` up. Panics when `ip netns add` fails (the test cannot do anything
    /// useful).
    pub fn new(role: &str) -> Netns {
        // Only alphanumerics: the name ends up in paths (/run/netns) and in shell commands of the cleanup script.
        let role: String = role.chars().filter(char::is_ascii_alphanumeric).collect();
        for _ in 0..16 {
            let name = format!("{}{role}-{}", run_prefix(), next_n());
            match run_cmd(Command::new("ip").args(["netns", "add", &name])) {
                Ok(_) => {
                    let ns = Netns { name };
                    ns.ip(&["link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{}: lo up: {e}", ns.name));
                    return ns;
                }
                // Left over from a dead run that had the same id (its lock file was gone): take the next number.
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

    /// The processes inside whose command name (`/proc/PID/comm`) is `comm`, e.g. `openvpn`.
    pub fn pids_of(&self, comm: &str) -> Vec<i32> {
        self.pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| String::from_utf8_lossy(&c).trim() == comm)
            })
            .collect()
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
