//! Child processes that cannot outlive cas-vpn: each runs in its own process group with a parent-death signal
//! (SIGKILL when cas-vpn dies, even by kill -9), and its pid is kept in a file so that a restarted cas-vpn can
//! remove anything a previous one left behind.
//!
//! Why openvpn is not told to drop privileges itself (`user`/`group`): the kernel clears the parent-death signal
//! when a process changes its credentials, so an openvpn that dropped them would survive a kill -9 of cas-vpn.
//! Instead the child changes credentials *before* exec, keeping only CAP_NET_ADMIN, and sets the parent-death
//! signal after that (ARCHITECTURE.md, "openvpn runs as its own user").

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Spawns `program args…` in a new process group with SIGKILL as its parent-death signal, stdout and stderr piped.
///
/// With `run_as`, the child runs under those credentials keeping one capability, `CAP_NET_ADMIN` (ambient, so it
/// survives the exec of a program without file capabilities): what openvpn needs for its tun device and addresses,
/// and nothing else. The parent-death signal is set after the credential change (which clears it).
pub fn spawn_guarded(program: &str, args: &[String], run_as: Option<Creds>) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    cmd.kill_on_drop(true);
    let parent = nix::unistd::getpid();
    // SAFETY: pre_exec runs in the forked child before exec: only raw system calls (prctl, setgroups, setgid,
    // setuid, capset, getppid), no allocation and no locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(c) = run_as {
                drop_to_net_admin(c)?;
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl: then nobody would ever send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
    tracing::debug!(program, ?args, ?run_as, "spawn");
    cmd.spawn()
}

/// Linux capability number of CAP_NET_ADMIN (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;

/// In a forked child: become `c` keeping only CAP_NET_ADMIN, as an ambient capability.
fn drop_to_net_admin(c: Creds) -> std::io::Result<()> {
    use nix::libc;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let err = std::io::Error::last_os_error;
    // Keep the permitted set across setuid, so CAP_NET_ADMIN can be made effective and ambient afterwards.
    nix::sys::prctl::set_keepcaps(true).map_err(std::io::Error::from)?;
    let gid = nix::unistd::Gid::from_raw(c.gid);
    nix::unistd::setgroups(&[gid]).map_err(std::io::Error::from)?;
    nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(c.uid)).map_err(std::io::Error::from)?;
    let bit = 1u32 << CAP_NET_ADMIN;
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [
        Data { effective: bit, permitted: bit, inheritable: bit },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: capset with a v3 header and two data words, as the kernel ABI defines them.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(err());
    }
    // SAFETY: plain prctl call with integer arguments.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN as libc::c_ulong, 0, 0) }
        != 0
    {
        return Err(err());
    }
    Ok(())
}

/// The credentials a child runs under: its uid, its primary gid and its only supplementary group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

/// Spawns a cas-vpn service child: in its own process group, stdin closed, stdout/stderr shared with the parent,
/// optionally under other credentials (supplementary groups reduced to `gid`, then gid, then uid), and with
/// SIGKILL as its parent-death signal. The signal is set *after* the credential change, because the kernel clears
/// it on a credential change, and the parent is checked to be alive after that.
pub fn spawn_service(
    program: &Path,
    args: &[String],
    creds: Option<Creds>,
    env_set: &[(&str, &str)],
    env_remove: &[&str],
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    for k in env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in env_set {
        cmd.env(k, v);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: pre_exec runs in the forked child before exec: only raw system calls (setgroups, setgid, setuid,
    // prctl, getppid), no allocation and no locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(c) = creds {
                let gid = nix::unistd::Gid::from_raw(c.gid);
                nix::unistd::setgroups(&[gid]).map_err(std::io::Error::from)?;
                nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(c.uid)).map_err(std::io::Error::from)?;
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
    tracing::debug!(program = %program.display(), ?args, ?creds, "spawn service");
    cmd.spawn()
}

/// Runs `program args` to completion and returns its standard output (lossy UTF-8). Standard error is discarded;
/// a non-zero exit is still an answer (`openvpn --version` exits 1).
pub fn output_of(program: &str, args: &[&str]) -> std::io::Result<String> {
    let out = std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it): a command whose stdout reader went away
/// then ends silently with status 141, like any Unix tool, instead of panicking in `println!`.
pub fn default_sigpipe() {
    // SAFETY: installs the default disposition; no handler code runs.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

/// Sends `sig` to process `pid` alone (not its group: a `serve vpn`'s openvpn children must not get its SIGHUP).
pub fn signal_process(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
}

/// Sends `sig` to the whole process group of `pid` (the child is its group's leader).
pub fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// Kills the process recorded in `pidfile` if it is still an `expected` process (checked through
/// /proc/PID/cmdline, so a recycled pid of an unrelated process is never touched), then removes the file.
/// Returns whether something was killed.
pub fn kill_orphan(pidfile: &Path, expected: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(pidfile) else { return false };
    let _ = std::fs::remove_file(pidfile);
    let Ok(pid) = text.trim().parse::<i32>() else { return false };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains(expected) {
        return false;
    }
    tracing::warn!(pid, pidfile = %pidfile.display(), "killing an orphan left by a previous cas-vpn");
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    true
}

/// Ignores SIGHUP from now on, so that a process that must finish a step (a firewall rollback) survives the end
/// of the SSH session it was started from.
pub fn ignore_hangup() {
    // SAFETY: SIG_IGN installs no handler code; changing a disposition is async-signal-safe.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn) };
}
