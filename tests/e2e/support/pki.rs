//! A throwaway PKI made with the `openssl` CLI (EC P-256), for tests that need a plain openvpn pair without
//! cas-vpn: a self-signed root and leaf certificates with the key usages openvpn's `remote-cert-tls` checks.
//! Everything lives in a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::env::temp_dir;
use super::netns::run_cmd;

/// Our own openssl config, so the result does not depend on the host's /etc/ssl/openssl.cnf (whose default
/// `v3_ca` section would clash with extensions given on the command line).
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Which extended key usage a leaf certificate gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A leaf certificate and its (unencrypted) key, as absolute paths.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A temporary CA able to issue leaf certificates.
pub struct TestPki {
    dir: TempDir,
    cnf: PathBuf,
    /// The self-signed root certificate (PEM).
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
}

impl TestPki {
    /// A new CA "cv-e2e-ca" valid for 2 days, in a fresh temporary directory.
    pub fn generate() -> TestPki {
        let dir = temp_dir("pki");
        let cnf = dir.path().join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF).expect("write openssl.cnf");
        let (ca_cert, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        openssl(
            Command::new("openssl")
                .args(["req", "-config"])
                .arg(&cnf)
                .args(["-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"])
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_cert)
                .args(["-days", "2", "-subj", "/CN=cv-e2e-ca", "-extensions", "ca_ext"]),
        );
        TestPki { dir, cnf, ca_cert, ca_key }
    }

    /// The temporary directory holding every file (a good place for configs too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate with CN `name` (alphanumerics, '-', '_') and a random serial.
    pub fn issue(&self, name: &str, usage: Usage) -> Leaf {
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "bad CN {name:?}");
        let d = self.dir.path();
        let (key, csr, cert) =
            (d.join(format!("{name}.key")), d.join(format!("{name}.csr")), d.join(format!("{name}.crt")));
        let subj = format!("/CN={name}");
        openssl(
            Command::new("openssl")
                .args(["req", "-config"])
                .arg(&self.cnf)
                .args(["-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", &subj]),
        );
        // 63 random bits: positive, and unique enough that two certificates never share a serial.
        let serial = format!("0x{:016x}", rand_u64() >> 1);
        let ext = match usage {
            Usage::Server => "server_ext",
            Usage::Client => "client_ext",
        };
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.ca_cert)
                .arg("-CAkey")
                .arg(&self.ca_key)
                .args(["-set_serial", &serial, "-days", "2", "-extfile"])
                .arg(&self.cnf)
                .args(["-extensions", ext, "-out"])
                .arg(&cert),
        );
        Leaf { cert, key }
    }
}

fn openssl(cmd: &mut Command) {
    run_cmd(cmd).unwrap_or_else(|e| panic!("{e}"));
}

/// Random bits from std's randomly keyed hasher (keeps the harness free of extra crates).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}
