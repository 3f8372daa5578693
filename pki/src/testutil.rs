//! Helpers for tests that check our output with the real `openssl` and `openvpn` command-line tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory holding PEM files for the CLI tools.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temporary directory") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `name` and returns the full path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write scratch file");
        p
    }
}

/// Output of a finished command: success flag and stdout+stderr as text.
pub struct Run {
    pub ok: bool,
    pub text: String,
}

fn run(program: &str, args: &[&str]) -> Run {
    let Output { status, stdout, stderr } =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&stderr));
    Run { ok: status.success(), text }
}

/// Runs `openssl ARGS...`. The openssl CLI is a hard requirement of the test suite.
pub fn openssl(args: &[&str]) -> Run {
    run("openssl", args)
}

/// Runs `openvpn ARGS...`; callers check [`require_openvpn`] first.
pub fn openvpn(args: &[&str]) -> Run {
    let program = openvpn_program().expect("openvpn is installed");
    run(program.to_str().expect("UTF-8 path"), args)
}

/// `openssl verify -CAfile CA [extra...] CERT`.
pub fn openssl_verify(ca_pem: &str, cert_pem: &str, extra: &[&str]) -> Run {
    let s = Scratch::new();
    let ca = s.write("ca.pem", ca_pem);
    let cert = s.write("cert.pem", cert_pem);
    let mut args = vec!["verify", "-CAfile", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(cert.to_str().unwrap());
    openssl(&args)
}

/// `openssl x509 -text -noout` of a certificate.
pub fn x509_text(cert_pem: &str) -> String {
    let s = Scratch::new();
    let cert = s.write("cert.pem", cert_pem);
    let r = openssl(&["x509", "-in", cert.to_str().unwrap(), "-text", "-noout"]);
    assert!(r.ok, "openssl x509 failed: {}", r.text);
    r.text
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the openvpn binary is: the first one on `PATH`, else Debian's `/usr/sbin` (not on a non-root
/// user's `PATH`).
pub fn openvpn_program() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("openvpn")).find(|p| is_executable(p)));
    on_path.or_else(|| {
        ["/usr/sbin/openvpn", "/usr/local/sbin/openvpn"].iter().map(PathBuf::from).find(|p| is_executable(p))
    })
}

/// Panics unless the openvpn binary can be used. Tests that call it are `#[ignore]`d (a plain `cargo test` lists
/// them as ignored) and run by `scripts/test` with `--include-ignored`; without openvpn they fail, never pass.
pub fn require_openvpn() {
    if openvpn_program().is_none() {
        panic!(
            "this test needs `openvpn` (2.6), which is not installed (not on PATH, not in /usr/sbin); a plain `cargo \
             test` ignores it, scripts/test runs it with --include-ignored"
        );
    }
}
