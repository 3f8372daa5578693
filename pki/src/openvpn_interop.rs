//! End-to-end checks of this crate's output against a real OpenVPN 2.6.
//!
//! A TLS server and client run on the loopback interface with `--dev null` (no tun device, no privileges)
//! in point-to-point TLS mode, using our CA, certificates, CRL and natively wrapped tls-crypt-v2 client key.
//! This is the proof the field notes ask for: OpenVPN itself accepts what we generate, including
//! `remote-cert-tls` key usages, `crl-verify` and the tls-crypt-v2 metadata as its verify hook sees it.

use std::fs::File;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::testutil::{Scratch, openvpn_program, require_openvpn};
use crate::{Ca, ClientMetadata, KeyType, RevocationReason, Revoked, TlsCryptV2ServerKey, Validity, VerifiedCsr};

const DONE: &str = "Initialization Sequence Completed";

/// A child process that is killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Everything one handshake needs, as PEM text.
struct Material {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    crl: String,
    tls_crypt_server: String,
    tls_crypt_client: String,
    /// Expected user metadata; when set, the server runs a `--tls-crypt-v2-verify` script checking it.
    expect_metadata: Option<&'static str>,
}

struct Outcome {
    completed: bool,
    server_log: String,
    client_log: String,
}

/// Starts server and client, waits until both report completion or `stop_when` shows in the server log.
fn handshake(m: &Material, stop_when: &str) -> Outcome {
    let s = Scratch::new();
    let path = |name: &str, content: &str| s.write(name, content).to_str().unwrap().to_string();
    let ca = path("ca.pem", &m.ca);
    let server_cert = path("server.pem", &m.server_cert);
    let server_key = path("server.key", &m.server_key);
    let client_cert = path("client.pem", &m.client_cert);
    let client_key = path("client.key", &m.client_key);
    let crl = path("crl.pem", &m.crl);
    let tc_server = path("tc-server.key", &m.tls_crypt_server);
    let tc_client = path("tc-client.key", &m.tls_crypt_client);
    let server_log = s.path().join("server.log");
    let client_log = s.path().join("client.log");
    let port = free_udp_port().to_string();

    let mut server_args: Vec<String> = [
        "--dev",
        "null",
        "--proto",
        "udp4",
        "--local",
        "127.0.0.1",
        "--lport",
        &port,
        "--tls-server",
        "--ca",
        &ca,
        "--cert",
        &server_cert,
        "--key",
        &server_key,
        "--dh",
        "none",
        "--tls-version-min",
        "1.2",
        "--tls-crypt-v2",
        &tc_server,
        "--remote-cert-tls",
        "client",
        "--crl-verify",
        &crl,
        "--verb",
        "3",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if let Some(expected) = m.expect_metadata {
        // OpenVPN hands the script the metadata type and a file with the bytes after the type byte.
        let script = s.write(
            "verify-metadata.sh",
            &format!("#!/bin/sh\n[ \"$metadata_type\" = 0 ] && [ \"$(cat \"$metadata_file\")\" = '{expected}' ]\n"),
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        server_args
            .extend(["--script-security", "2", "--tls-crypt-v2-verify", script.to_str().unwrap()].map(String::from));
    }
    let client_args = [
        "--dev",
        "null",
        "--proto",
        "udp4",
        "--remote",
        "127.0.0.1",
        &port,
        "--nobind",
        "--tls-client",
        "--ca",
        &ca,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
        "--tls-crypt-v2",
        &tc_client,
        "--remote-cert-tls",
        "server",
        "--verify-x509-name",
        "vpn-server",
        "name",
        "--verb",
        "3",
    ];

    let spawn = |args: &[String], log: &std::path::Path| {
        let out = File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        Guard(
            Command::new(openvpn_program().expect("openvpn is installed"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn openvpn"),
        )
    };
    let _server = spawn(&server_args, &server_log);
    std::thread::sleep(Duration::from_millis(300));
    let client_args: Vec<String> = client_args.iter().map(|a| a.to_string()).collect();
    let _client = spawn(&client_args, &client_log);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let server_text = std::fs::read_to_string(&server_log).unwrap_or_default();
        let client_text = std::fs::read_to_string(&client_log).unwrap_or_default();
        let completed = server_text.contains(DONE) && client_text.contains(DONE);
        if completed || server_text.contains(stop_when) || Instant::now() > deadline {
            return Outcome { completed, server_log: server_text, client_log: client_text };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A complete, valid set of material under one CA; the client key is signed from a CSR.
fn material(kt: KeyType) -> (Ca, TlsCryptV2ServerKey, Material) {
    let ca = Ca::generate("fleet-ca", kt, Validity::days_from_now(30)).unwrap();
    let server = ca.issue_server("vpn-server", kt, Validity::days_from_now(10)).unwrap();
    let client = ca.issue_client("atm-001", kt, Validity::days_from_now(10)).unwrap();
    let tc = TlsCryptV2ServerKey::generate();
    let tc_client = tc.wrap_client_key(&ClientMetadata::User(b"cas-vpn:atm-001".to_vec())).unwrap();
    let now = time::OffsetDateTime::now_utc();
    // An unrelated revoked serial, so the CRL is not empty.
    let crl = ca
        .crl(
            &[Revoked {
                serial: crate::Serial::random(),
                revoked_at: now - time::Duration::hours(1),
                reason: RevocationReason::Superseded,
            }],
            1,
            now - time::Duration::minutes(5),
            now + time::Duration::days(1),
        )
        .unwrap();
    let m = Material {
        ca: ca.cert_pem().to_string(),
        server_cert: server.cert_pem,
        server_key: server.key.to_pem().to_string(),
        client_cert: client.cert_pem,
        client_key: client.key.to_pem().to_string(),
        crl,
        tls_crypt_server: tc.to_pem().to_string(),
        tls_crypt_client: tc_client.to_pem().to_string(),
        expect_metadata: Some("cas-vpn:atm-001"),
    };
    (ca, tc, m)
}

fn explain(o: &Outcome) -> String {
    format!("--- server ---\n{}\n--- client ---\n{}", o.server_log, o.client_log)
}

#[test]
#[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
fn openvpn_accepts_our_ec_material() {
    require_openvpn();
    let (_, _, m) = material(KeyType::EcP256);
    let o = handshake(&m, "TLS CRYPT V2 VERIFY SCRIPT ERROR");
    assert!(o.completed, "{}", explain(&o));
    assert!(o.server_log.contains("TLS CRYPT V2 VERIFY SCRIPT OK"), "{}", explain(&o));
    assert!(o.server_log.contains("VERIFY KU OK") && o.server_log.contains("VERIFY EKU OK"), "{}", explain(&o));
}

#[test]
#[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
fn openvpn_accepts_our_rsa_material_and_csr_signed_clients() {
    require_openvpn();
    let (ca, _, mut m) = material(KeyType::Rsa2048);
    // The terminal's own key, certified through a CSR.
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
    req.set_pubkey(&key).unwrap();
    req.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
    let csr = VerifiedCsr::from_pem(std::str::from_utf8(&req.build().to_pem().unwrap()).unwrap()).unwrap();
    let (cert, _) = ca.sign_csr(&csr, "atm-002", Validity::days_from_now(10)).unwrap();
    m.client_cert = cert;
    m.client_key = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let o = handshake(&m, "TLS CRYPT V2 VERIFY SCRIPT ERROR");
    assert!(o.completed, "{}", explain(&o));
}

#[test]
#[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
fn openvpn_rejects_a_key_wrapped_for_another_server() {
    require_openvpn();
    let (_, _, mut m) = material(KeyType::EcP256);
    let other = TlsCryptV2ServerKey::generate();
    m.tls_crypt_client =
        other.wrap_client_key(&ClientMetadata::User(b"cas-vpn:atm-001".to_vec())).unwrap().to_pem().to_string();
    let o = handshake(&m, "Can not unwrap tls-crypt-v2 client key");
    assert!(!o.completed, "{}", explain(&o));
    assert!(o.server_log.contains("Can not unwrap tls-crypt-v2 client key"), "{}", explain(&o));
}

#[test]
#[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
fn openvpn_sees_our_metadata() {
    require_openvpn();
    let (_, tc, mut m) = material(KeyType::EcP256);
    m.tls_crypt_client =
        tc.wrap_client_key(&ClientMetadata::User(b"cas-vpn:atm-999".to_vec())).unwrap().to_pem().to_string();
    let o = handshake(&m, "TLS CRYPT V2 VERIFY SCRIPT ERROR");
    assert!(!o.completed, "{}", explain(&o));
    assert!(o.server_log.contains("TLS CRYPT V2 VERIFY SCRIPT ERROR"), "{}", explain(&o));
}

#[test]
#[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
fn openvpn_rejects_a_revoked_client() {
    require_openvpn();
    let (ca, _, mut m) = material(KeyType::EcP256);
    let info = crate::cert_info(&m.client_cert).unwrap();
    let now = time::OffsetDateTime::now_utc();
    m.crl = ca
        .crl(
            &[Revoked {
                serial: info.serial,
                revoked_at: now - time::Duration::minutes(1),
                reason: RevocationReason::KeyCompromise,
            }],
            2,
            now - time::Duration::minutes(5),
            now + time::Duration::days(1),
        )
        .unwrap();
    let o = handshake(&m, "revoked");
    assert!(!o.completed, "{}", explain(&o));
    assert!(o.server_log.contains("revoked"), "{}", explain(&o));
}
