//! Golden files for every template (`tests/fixtures/golden/`; `UPDATE_GOLDEN=1` rewrites them) and the
//! escaper's refusals.

use std::path::PathBuf;

use askama::filters::Escaper;

use super::*;

fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 makes it)", path.display()));
    assert_eq!(text, want, "rendered text differs from {}", path.display());
}

fn p(s: &str) -> ConfPath {
    ConfPath::new(s).unwrap()
}

fn n(s: &str) -> Name {
    s.parse().unwrap()
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n";
const TLS: &str =
    "-----BEGIN OpenVPN tls-crypt-v2 client key-----\nVExT\n-----END OpenVPN tls-crypt-v2 client key-----\n";

#[test]
fn terminal_server_golden() {
    let text = render(&TerminalServer {
        instance: &n("terminal-0"),
        index: 0,
        proto: Proto::Tcp,
        listen_ip: "127.0.0.1".parse().unwrap(),
        port: 13000,
        dev: &n("cvt0"),
        network: "10.8.0.0".parse().unwrap(),
        netmask: "255.255.240.0".parse().unwrap(),
        master_ip: "10.3.2.1".parse().unwrap(),
        max_clients: 4093,
        ca: &p("/batm/pki/terminal-ca.crt"),
        cert: &p("/batm/pki/terminal-server.crt"),
        key: &p("/batm/pki/terminal-server.key"),
        crl: &p("/batm/pki/crl-terminal.pem"),
        tls_crypt_v2: &p("/batm/pki/tls-crypt-v2-terminal.key"),
        management: &p("/batm/vpn/terminal-0/management.sock"),
    })
    .unwrap();
    golden("terminal-server.conf", &text);
}

#[test]
fn admin_server_golden() {
    let text = render(&AdminServer {
        instance: &n("admin-12000"),
        credential: &n("alice"),
        proto: Proto::Tcp,
        port: 12000,
        dev: &n("cva0"),
        network: "10.9.0.0".parse().unwrap(),
        netmask: "255.255.255.248".parse().unwrap(),
        admin_ip: "10.3.2.2".parse().unwrap(),
        ca: &p("/batm/pki/admin-ca.crt"),
        cert: &p("/batm/pki/admin-server.crt"),
        key: &p("/batm/pki/admin-server.key"),
        crl: &p("/batm/pki/crl-admin.pem"),
        tls_crypt_v2: &p("/batm/pki/tls-crypt-v2-admin.key"),
        management: &p("/batm/vpn/admin-12000/management.sock"),
    })
    .unwrap();
    golden("admin-server.conf", &text);
}

fn profile(kind: Kind, key: Option<&Pem>, key_file: Option<&ConfPath>) -> String {
    profile_on(kind, key, key_file, &["vpn.example.com"])
}

fn profile_on(kind: Kind, key: Option<&Pem>, key_file: Option<&ConfPath>, nodes: &[&str]) -> String {
    let (ca, cert, tls) = (Pem::new(CERT).unwrap(), Pem::new(CERT).unwrap(), Pem::new(TLS).unwrap());
    let hosts: Vec<crate::domain::Host> = nodes.iter().map(|h| h.parse().unwrap()).collect();
    render(&ClientProfile {
        kind,
        name: &n("atm-001"),
        proto: Proto::Tcp,
        hosts: &hosts,
        remote_random: kind == Kind::Terminal && hosts.len() > 1,
        port: 7742,
        server_name: &n("cas-vpn-terminal-server"),
        retry_auth: kind == Kind::Terminal,
        retry_secs: 4,
        ca: &ca,
        cert: &cert,
        key,
        key_file,
        tls_crypt_v2: &tls,
    })
    .unwrap()
}

#[test]
fn client_profiles_golden() {
    let key = Pem::new(KEY).unwrap();
    golden("terminal-server-keygen.ovpn", &profile(Kind::Terminal, Some(&key), None));
    golden("terminal-csr.ovpn", &profile(Kind::Terminal, None, Some(&p("/var/lib/cas-vpn-agent/client.key"))));
    golden("admin.ovpn", &profile(Kind::Admin, Some(&key), None));
    // Several nodes on one store: one `remote` each; terminals spread over them at random.
    let nodes = ["vpn-1.example.com", "198.51.100.11", "vpn-3.example.com"];
    golden("terminal-three-nodes.ovpn", &profile_on(Kind::Terminal, None, Some(&p("/var/lib/a/client.key")), &nodes));
    golden("admin-three-nodes.ovpn", &profile_on(Kind::Admin, Some(&key), None, &nodes));
}

#[test]
fn escaper_refuses_anything_but_one_safe_token() {
    let mut out = String::new();
    for bad in ["", "a b", "a\nup /bin/sh", "\"x\"", "'x'", "x#y", "x;y", "a\tb", "a\\b", "</ca>", "a\rb", "a\u{0}b"] {
        assert!(ConfToken.write_escaped_str(&mut out, bad).is_err(), "{bad:?}");
    }
    assert!(out.is_empty(), "nothing of a refused value may be written");
    ConfToken.write_escaped_str(&mut out, "10.3.2.1").unwrap();
    assert_eq!(out, "10.3.2.1");
}
