//! Whether this machine can run the e2e tests at all.
//!
//! They need root (namespaces, tun devices) and a few programs. On a developer machine without them the tests
//! skip with a message; in CI (`CI=true`) a missing prerequisite is a failure, because DESIGN.md section 7 says
//! e2e tests must run there and a silent skip would pass a CI run that tested nothing.

use std::path::Path;
use std::sync::OnceLock;

/// Programs the harness runs: `ip` (iproute2), `openvpn`, `openssl` (throwaway PKI), `ping` (iputils-ping),
/// `bash` and `timeout` (TCP checks), `perl` (TCP listener; perl-base is essential on Debian).
pub const REQUIRED_PROGRAMS: &[&str] = &["ip", "openvpn", "openssl", "ping", "bash", "timeout", "perl"];

/// True when the e2e tests can run here. Otherwise: panics when `CI=true`, else prints "skipping e2e: …" and
/// returns false, so a test starts with `if !require_root() { return; }`.
pub fn require_root() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    match CHECK.get_or_init(check) {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("e2e tests must run in CI (CI=true) but cannot: {why}")
        }
        Err(why) => {
            eprintln!("skipping e2e: {why}");
            false
        }
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

/// Prefix of every temporary directory the harness makes, so `scripts/e2e-cleanup` can remove the ones a killed
/// run left behind (`TempDir`'s own cleanup is a `Drop` too).
pub const TEMP_PREFIX: &str = "cv-e2e-";

/// A fresh temporary directory named `cv-e2e-<what>XXXXXX`, removed on drop.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("{TEMP_PREFIX}{what}")).tempdir().expect("create temporary directory")
}
