//! Whether this machine can run the e2e tests at all.
//!
//! They need root (namespaces, tun devices) and a few programs. Every e2e test is `#[ignore]`d, so a plain
//! `cargo test` lists it as ignored instead of passing it without having tested anything; `scripts/test` runs
//! them with `--include-ignored`. A test that is run on a machine that cannot run it fails with the reason (it
//! never passes silently), in CI (`CI=true`) or not.

use std::path::Path;
use std::sync::OnceLock;

/// Programs the harness runs: `ip` (iproute2), `openvpn`, `openssl` (throwaway PKI), `ping` (iputils-ping),
/// `bash` and `timeout` (TCP checks), `perl` (TCP listener; perl-base is essential on Debian).
pub const REQUIRED_PROGRAMS: &[&str] = &["ip", "openvpn", "openssl", "ping", "bash", "timeout", "perl"];

/// Panics, naming what is missing, unless the e2e tests can run here. Every e2e test starts with it.
pub fn require_root() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(why) = CHECK.get_or_init(check) {
        panic!(
            "this e2e test cannot run here: {why}. It needs root, network namespaces and openvpn; a plain `cargo test` \
             ignores it, scripts/test (as root) runs it with --include-ignored"
        );
    }
}

fn check() -> Result<(), String> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push("not running as root (network namespaces and tun devices need it)".to_owned());
    }
    let missing: Vec<&str> = REQUIRED_PROGRAMS.iter().copied().filter(|p| find_program(p).is_none()).collect();
    if !missing.is_empty() {
        problems
            .push(format!("not found in PATH: {} (apt: iproute2 openvpn openssl iputils-ping)", missing.join(", ")));
    }
    if !Path::new("/dev/net/tun").exists() {
        problems.push("/dev/net/tun does not exist".to_owned());
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Looks `program` up in PATH without running it (an executable regular file).
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A fresh temporary directory `$TMPDIR/cv<run id>-<what>XXXXXX`, removed on drop. The run id in its name lets
/// `scripts/e2e-cleanup` remove the ones a killed run left behind (`TempDir`'s own cleanup is a `Drop` too), and
/// only those (see `netns.rs`).
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    let prefix = format!("{}{what}", super::netns::run_prefix());
    tempfile::Builder::new().prefix(&prefix).tempdir().expect("create temporary directory")
}
