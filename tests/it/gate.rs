//! The gate's HTTP router, driven without a socket (`tower::ServiceExt::oneshot`, the peer address injected with
//! `MockConnectInfo`): both pairing flows, every refusal with its stable code, bans, and the proof that a refused
//! request writes no row and no file.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cas_vpn::app::Clock;
use cas_vpn::db::Store;
use cas_vpn::gate::{GateState, router};
use cas_vpn::ops::Ctx;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::pg::PgDb;
use crate::support::{Install, both_backends, inline_block, openssl};

/// An initialised installation with the gate's state loaded in-process. Everything in-process (gate, signer, and
/// master or ops built from `ctx`) goes by `ctx.clock`, a test clock that starts at the present and moves only
/// when a test moves it; CLI commands (subprocesses) go by the system clock.
pub struct Fixture {
    pub install: Install,
    pub ctx: Arc<Ctx>,
    pub state: GateState,
    pub signer: crate::support::InProcessSigner,
    /// The PostgreSQL database of a fixture on that backend: dropped (last) with the fixture.
    pub pg: Option<PgDb>,
}

impl Fixture {
    /// On SQLite under the root.
    pub async fn new() -> Fixture {
        Fixture::on(Install::new(), None).await
    }

    /// On a fresh PostgreSQL database (`CAS_VPN_TEST_PG_URL`; fails without it).
    pub async fn on_postgres() -> Fixture {
        let db = PgDb::create().await;
        let install = Install::on(Some(&db.url));
        Fixture::on(install, Some(db)).await
    }

    pub async fn on(install: Install, pg: Option<PgDb>) -> Fixture {
        let mut ctx = Ctx::open(install.root(), install.database_url.as_deref()).await.unwrap();
        ctx.clock = Clock::test(cas_vpn::ops::now());
        let ctx = Arc::new(ctx);
        let state = GateState::new(ctx.clone()).unwrap();
        let signer = crate::support::InProcessSigner::start(&ctx).await;
        Fixture { install, ctx, state, signer, pg }
    }

    /// Reloads config and state (after a config file changed). The clock starts again at the present.
    pub async fn reload(self) -> Fixture {
        let Fixture { install, ctx, signer, pg, .. } = self;
        signer.stop().await;
        ctx.store.close().await;
        drop(ctx);
        Fixture::on(install, pg).await
    }

    /// Opens the pairing window for 15 minutes from the fixture's clock.
    pub async fn open_window(&self) {
        self.ctx.store.set_pairing_window(Some(self.ctx.clock.now() + 900)).await.unwrap();
    }

    /// Moves the in-process clock forward (the CLI's clock does not move).
    pub fn advance(&self, secs: i64) {
        self.ctx.clock.advance(secs).unwrap();
    }

    /// `terminal add NAME [extra…]`: returns the token.
    pub fn add_terminal(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["terminal", "add", name];
        args.extend_from_slice(extra);
        self.install.json(&args)["token"].as_str().unwrap().to_owned()
    }

    pub async fn call(&self, ip: &str, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, HeaderMap, Value) {
        let peer: SocketAddr = format!("{ip}:40000").parse().unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = router(self.state.clone()).layer(MockConnectInfo(peer)).oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        (status, headers, v)
    }

    pub async fn pair(&self, ip: &str, req: &Value) -> (StatusCode, Value) {
        let (s, _, v) = self.call(ip, Method::POST, "/v1/pair", serde_json::to_vec(req).unwrap()).await;
        (s, v)
    }

    /// Row counts of every table a pairing could write (not `ip_bans`: counting failures is the point).
    pub async fn rows(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for sql in [
            "SELECT COUNT(*) FROM credentials",
            "SELECT COUNT(*) FROM certificates",
            "SELECT COUNT(*) FROM pairing_tokens WHERE used_at IS NOT NULL OR locked_at IS NOT NULL",
            "SELECT COUNT(*) FROM credentials WHERE paired_at IS NOT NULL",
            "SELECT COUNT(*) FROM pending_pairings",
            "SELECT COUNT(*) FROM audit",
        ] {
            out.push(count(&self.ctx.store, sql).await);
        }
        out
    }
}

pub async fn count(store: &Store, sql: &'static str) -> i64 {
    match store {
        Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}

/// A CSR for `key` with no subject (what the agent sends), or shaped by `f`.
pub fn csr_with(key: &KeyPair, f: impl FnOnce(&mut CertificateParams)) -> String {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    f(&mut p);
    p.serialize_request(key).unwrap().pem().unwrap()
}

pub fn csr(key: &KeyPair) -> String {
    csr_with(key, |_| {})
}

pub fn req(token: Option<&str>, csr: Option<&str>) -> Value {
    json!({"token": token, "csr": csr, "terminal": {"serial": "SN-1", "version": "20240115"}})
}

fn code(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("no error code in {v}"))
}

#[tokio::test]
async fn token_flow_pairs_once_and_a_retry_with_the_same_key_gets_the_same_answer() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();

    let (s, first) = f.pair("192.0.2.10", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["terminal"], "atm-1");
    assert_eq!(first["master"], json!({"host": "10.3.2.1", "port": 7741}));
    let ovpn = first["ovpn"].as_str().unwrap();
    assert!(!ovpn.contains("PRIVATE KEY"), "no private key in the CSR flow");
    assert!(ovpn.contains("<tls-crypt-v2>"));
    let cert = inline_block(ovpn, "cert");
    let cert_path = f.install.path("c.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    let ca = f.install.path("pki/terminal-ca.crt");
    let (ok, text) =
        openssl(&["verify", "-purpose", "sslclient", "-CAfile", ca.to_str().unwrap(), cert_path.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (_, subject) = openssl(&["x509", "-in", cert_path.to_str().unwrap(), "-noout", "-subject", "-pubkey"]);
    assert!(subject.contains("CN = atm-1") || subject.contains("CN=atm-1"), "{subject}");
    assert!(subject.contains(&key.public_key_pem().lines().nth(1).unwrap().to_string()), "the CSR's key is certified");
    let shown = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(shown["state"], "paired");
    assert_eq!(shown["hw_serial"], "SN-1");

    // A lost answer: the same key (in a fresh CSR) gets byte-for-byte the same answer, and nothing new is written.
    let rows = f.rows().await;
    let (s, again) = f.pair("192.0.2.10", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(f.rows().await, rows);

    // Another key: 409 and the token is locked, even for the first key from then on.
    let (s, v) = f.pair("192.0.2.11", &req(Some(&token), Some(&csr(&KeyPair::generate().unwrap())))).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "key_mismatch"));
    let (s, v) = f.pair("192.0.2.10", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "token_used"));
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await, 1);
}

#[tokio::test]
async fn a_closed_window_refuses_and_is_not_held_against_the_terminal() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    let key = KeyPair::generate().unwrap();
    let body = req(Some(&token), Some(&csr(&key)));
    let before = (f.rows().await, f.install.snapshot());
    for _ in 0..7 {
        let (s, v) = f.pair("192.0.2.20", &body).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "window_closed"));
    }
    // Expired windows are closed too.
    f.ctx.store.set_pairing_window(Some(cas_vpn::ops::now() - 1)).await.unwrap();
    let (_, v) = f.pair("192.0.2.20", &body).await;
    assert_eq!(code(&v), "window_closed");
    assert_eq!((f.rows().await, f.install.snapshot()), before);
    assert!(!f.ctx.store.is_banned("192.0.2.20", cas_vpn::ops::now()).await.unwrap());

    f.install.ok(&["pairing", "open", "--for", "5m"]);
    let (s, _) = f.pair("192.0.2.20", &body).await;
    assert_eq!(s, StatusCode::OK);
    let status = f.install.json(&["pairing", "status"]);
    assert_eq!(status["window"]["open"], true);
    f.install.ok(&["pairing", "close"]);
    assert_eq!(f.install.json(&["pairing", "status"])["window"]["open"], false);
    let (_, v) = f.pair("192.0.2.20", &body).await;
    assert_eq!(code(&v), "window_closed");
}

/// A terminal whose OpenVPN cannot use the issued profile (no tls-crypt-v2) is told so with its own code, before
/// anything is written or counted; once upgraded, the same token pairs.
#[tokio::test]
async fn a_client_too_old_for_the_profile_is_refused_with_its_own_code() {
    let f = Fixture::new().await;
    f.open_window().await;
    let token = f.add_terminal("atm-old", &[]);
    let key = KeyPair::generate().unwrap();
    let with = |openvpn: &str| {
        let mut body = req(Some(&token), Some(&csr(&key)));
        body["terminal"]["openvpn"] = json!(openvpn);
        body
    };
    let before = (f.rows().await, f.install.snapshot());
    for old in ["2.4.12", "3.3.6"] {
        let (s, v) = f.pair("192.0.2.30", &with(old)).await;
        assert_eq!((s, code(&v)), (StatusCode::UPGRADE_REQUIRED, "openvpn_too_old"), "{old}: {v}");
        assert!(v["message"].as_str().unwrap().contains("2.5.0"), "{v}");
    }
    assert_eq!((f.rows().await, f.install.snapshot()), before, "nothing written");
    // Not counted as failures: the reservations were given back, so the address has no row to lift.
    assert!(!f.ctx.store.unban("192.0.2.30").await.unwrap(), "a too-old client is not counted as a failure");
    // A version that is not one is a malformed request.
    let (s, v) = f.pair("192.0.2.30", &with("two.four")).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{v}");
    assert!(v["message"].as_str().unwrap().contains("terminal.openvpn"), "{v}");
    let (s, v) = f.pair("192.0.2.30", &with("2.6.14")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

both_backends!(
    #[tokio::test]
    expired_unknown_wrong_secret_and_wrong_pin_tokens_are_refused_and_change_nothing
);

async fn expired_unknown_wrong_secret_and_wrong_pin_tokens_are_refused_and_change_nothing(f: Fixture) {
    let token = f.add_terminal("atm-1", &[]);
    let expired = f.add_terminal("atm-2", &["--expires", "1h"]);
    // An hour and a second later, atm-2's token has expired; atm-1's (24 h) has not.
    f.advance(3601);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();
    let csr = csr(&key);
    let before = (f.rows().await, f.install.snapshot());

    let parts: Vec<&str> = token.split('.').collect();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let unknown_id = format!("cv1.0123456789abcdef.{}.{}", parts[2], parts[3]);
    let wrong_secret = format!("cv1.{}.{}.{}", parts[1], b64(&[1u8; 20]), parts[3]);
    let wrong_pin = format!("cv1.{}.{}.{}", parts[1], parts[2], b64(&[9u8; 32]));
    for (i, (t, want, status)) in [
        (expired.as_str(), "token_expired", StatusCode::FORBIDDEN),
        (unknown_id.as_str(), "invalid_token", StatusCode::FORBIDDEN),
        (wrong_secret.as_str(), "invalid_token", StatusCode::FORBIDDEN),
        (wrong_pin.as_str(), "invalid_token", StatusCode::FORBIDDEN),
        ("cv1.nonsense", "invalid_token", StatusCode::FORBIDDEN),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, v) = f.pair(&format!("192.0.2.{}", 30 + i), &req(Some(t), Some(&csr))).await;
        assert_eq!((s, code(&v)), (status, want), "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(!msg.contains(parts[2]), "the secret is never echoed: {msg}");
    }
    assert_eq!((f.rows().await, f.install.snapshot()), before);
    // The real token still works afterwards.
    let (s, _) = f.pair("192.0.2.99", &req(Some(&token), Some(&csr))).await;
    assert_eq!(s, StatusCode::OK);
}

both_backends!(
    #[tokio::test]
    five_failures_ban_an_address_for_fifteen_minutes_until_unbanned
);

async fn five_failures_ban_an_address_for_fifteen_minutes_until_unbanned(f: Fixture) {
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let good = req(Some(&token), Some(&csr(&KeyPair::generate().unwrap())));
    let bad =
        req(Some("cv1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), None);
    for _ in 0..5 {
        let (s, v) = f.pair("192.0.2.50", &bad).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "invalid_token"));
    }
    let (s, v) = f.pair("192.0.2.50", &good).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "banned"));
    // Polls and downloads are refused too; other addresses are not affected.
    let (s, _, v) = f.call("192.0.2.50", Method::GET, &format!("/v1/pair/{}", "a".repeat(32)), vec![]).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "banned"));
    let status = f.install.json(&["pairing", "status"]);
    assert_eq!(status["banned"][0]["ip"], "192.0.2.50");

    let out = f.install.ok(&["unban-ip", "192.0.2.50"]);
    assert!(out.contains("ban lifted"), "{out}");
    let (s, v) = f.pair("192.0.2.50", &good).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(f.install.ok(&["unban-ip", "192.0.2.50"]).contains("was not banned"));
    f.install.fails(&["unban-ip", "not-an-ip"], 2);

    // Unless lifted, a ban ends fifteen minutes after it began, by the gate's clock (the window, as long, is
    // opened again).
    for _ in 0..5 {
        f.pair("192.0.2.51", &bad).await;
    }
    f.advance(cas_vpn::gate::BAN_SECS - 1);
    f.open_window().await;
    assert_eq!(code(&f.pair("192.0.2.51", &bad).await.1), "banned");
    f.advance(1);
    assert_eq!(code(&f.pair("192.0.2.51", &bad).await.1), "invalid_token");
}

#[tokio::test]
async fn hostile_requests_get_their_own_codes_and_write_nothing() {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::x509::X509ReqBuilder;

    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let before = (f.rows().await, f.install.snapshot());

    let openssl_csr = |subject: &PKey<openssl::pkey::Private>, signer: &PKey<openssl::pkey::Private>| {
        let mut b = X509ReqBuilder::new().unwrap();
        b.set_pubkey(subject).unwrap();
        b.sign(signer, MessageDigest::sha256()).unwrap();
        String::from_utf8(b.build().to_pem().unwrap()).unwrap()
    };
    let ec = || {
        PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let bad_signature = openssl_csr(&ec(), &ec());
    let rsa1024 = PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
    let weak = openssl_csr(&rsa1024, &rsa1024);
    let key = KeyPair::generate().unwrap();
    let ca_rights = csr_with(&key, |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    let other_name = csr_with(&key, |p| p.distinguished_name.push(DnType::CommonName, "atm-2"));
    let san =
        csr_with(&key, |p| p.subject_alt_names = vec![rcgen::SanType::DnsName("evil.example".try_into().unwrap())]);

    let body = |csr: &str| serde_json::to_vec(&req(Some(&token), Some(csr))).unwrap();
    let big = serde_json::to_vec(&req(Some(&token), Some(&"A".repeat(70 * 1024)))).unwrap();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed JSON", b"{\"token\": ".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("not an object", b"[1,2]".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "unknown field",
            br#"{"tokn": "x", "terminal": {"version": "20240115"}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "missing version",
            br#"{"token": null, "csr": null, "terminal": {}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "bad version",
            serde_json::to_vec(&json!({"token": token, "csr": null, "terminal": {"version": "v1\n"}})).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "bad serial",
            serde_json::to_vec(
                &json!({"token": token, "csr": null, "terminal": {"version": "20240115", "serial": "a b"}}),
            )
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("oversized", big, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        (
            "garbage CSR",
            body("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
        ),
        ("bad signature", body(&bad_signature), StatusCode::BAD_REQUEST, "invalid_csr"),
        ("RSA-1024", body(&weak), StatusCode::BAD_REQUEST, "weak_key"),
        ("CA rights", body(&ca_rights), StatusCode::BAD_REQUEST, "csr_ca_requested"),
        ("another name", body(&other_name), StatusCode::BAD_REQUEST, "csr_name_mismatch"),
        ("a SAN", body(&san), StatusCode::BAD_REQUEST, "csr_name_mismatch"),
        ("no CSR", serde_json::to_vec(&req(Some(&token), None)).unwrap(), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (i, (what, bytes, status, want)) in cases.into_iter().enumerate() {
        let (s, h, v) = f.call(&format!("198.51.100.{}", 10 + i), Method::POST, "/v1/pair", bytes).await;
        assert_eq!((s, code(&v)), (status, want), "{what}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty() && !m.contains(&token)), "{what}: {v}");
        assert_eq!(h["content-type"], "application/json", "{what}");
    }
    assert_eq!((f.rows().await, f.install.snapshot()), before, "nothing written");
    let t = f.ctx.store.token(token.split('.').nth(1).unwrap()).await.unwrap().unwrap();
    assert!(t.used_at.is_none() && t.locked_at.is_none());

    // Unknown routes and methods answer in the same JSON shape.
    let (s, _, v) = f.call("198.51.100.90", Method::GET, "/nope", vec![]).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, v) = f.call("198.51.100.91", Method::GET, "/v1/pair", vec![]).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[tokio::test]
async fn old_terminals_are_told_to_upgrade_before_their_token_is_touched() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let body = json!({"token": token, "csr": csr(&KeyPair::generate().unwrap()), "terminal": {"version": "20230731"}});
    let before = f.rows().await;
    let (s, v) = f.pair("192.0.2.60", &body).await;
    assert_eq!((s, code(&v)), (StatusCode::UPGRADE_REQUIRED, "upgrade_required"));
    assert_eq!(v["upgrade"], Value::Null, "no package configured");
    assert_eq!(f.rows().await, before);

    let sha = "ab".repeat(32);
    std::fs::write(f.install.path("config/upgrade"), format!("file=batm-20240115.pkg\nsha256={sha}\nsize=1234\n"))
        .unwrap();
    let f = f.reload().await;
    let (s, v) = f.pair("192.0.2.60", &body).await;
    assert_eq!(s, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(v["upgrade"], json!({"url": "/v1/upgrade/batm-20240115.pkg", "sha256": sha, "size": 1234}));
    let mut ok = body.clone();
    ok["terminal"]["version"] = json!("20230801");
    assert_eq!(f.pair("192.0.2.60", &ok).await.0, StatusCode::OK);
}

#[tokio::test]
async fn scenario_b_hands_out_no_vpn_config_and_names_master_by_hostname() {
    let f = Fixture::new().await;
    let props = f.install.path("config/gate.properties");
    let text = std::fs::read_to_string(&props).unwrap();
    let text = text
        .replace("batm.vpn-skip=false", "batm.vpn-skip=true")
        .replace("batm.master.hostname=", "batm.master.hostname=master.example");
    std::fs::write(&props, text).unwrap();
    let f = f.reload().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();
    let (s, v) = f.pair("192.0.2.70", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // No profile, but the certificate and the CA master's mutual TLS needs.
    let ca = std::fs::read_to_string(f.install.path("pki/terminal-ca.crt")).unwrap();
    let cert = v["cert"].as_str().unwrap().to_owned();
    assert_eq!(
        v,
        json!({"terminal": "atm-1", "ovpn": null, "master": {"host": "master.example", "port": 7741},
               "cert": cert, "ca": ca})
    );
    let x = openssl::x509::X509::from_pem(cert.as_bytes()).unwrap();
    let ours = openssl::pkey::PKey::public_key_from_pem(key.public_key_pem().as_bytes()).unwrap();
    assert!(x.public_key().unwrap().public_eq(&ours));
}

#[tokio::test]
async fn server_keygen_profiles_are_delivered_once_then_deleted() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-k", &["--server-keygen"]);
    let pending = f.install.path("pki/pending/atm-k.ovpn");
    let made = std::fs::read_to_string(&pending).unwrap();
    f.open_window().await;

    // A retry identity: the requester's key when it sends a CSR (ignored otherwise).
    let key = KeyPair::generate().unwrap();
    let (s, v) = f.pair("192.0.2.80", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ovpn"].as_str().unwrap(), made);
    assert!(made.contains("PRIVATE KEY"));
    assert!(!pending.exists(), "the server-made key is gone once delivered");
    assert_eq!(f.install.json(&["terminal", "show", "atm-k"])["state"], "paired");

    let (s, v) = f.pair("192.0.2.80", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!((s, code(&v)), (StatusCode::GONE, "already_delivered"));
    let (s, v) = f.pair("192.0.2.81", &req(Some(&token), Some(&csr(&KeyPair::generate().unwrap())))).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "key_mismatch"));

    // Without a CSR; and a crash between the store commit and the delete: the retry gets the same profile.
    let token2 = f.add_terminal("atm-k2", &["--server-keygen"]);
    let pending2 = f.install.path("pki/pending/atm-k2.ovpn");
    let made2 = std::fs::read_to_string(&pending2).unwrap();
    let (s, v) = f.pair("192.0.2.82", &req(Some(&token2), None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ovpn"].as_str().unwrap(), made2);
    std::fs::write(&pending2, &made2).unwrap();
    let (s, again) = f.pair("192.0.2.82", &req(Some(&token2), None)).await;
    assert_eq!((s, again), (StatusCode::OK, v));
    assert!(!pending2.exists());
    // A leftover of a delivered profile is swept when the gate starts.
    std::fs::write(&pending2, &made2).unwrap();
    assert_eq!(cas_vpn::gate::pair::sweep_delivered(&f.state).await.unwrap(), 1);
    assert!(!pending2.exists());
}

#[tokio::test]
async fn revoked_terminals_cannot_pair_and_concurrent_attempts_pair_exactly_once() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-r", &[]);
    f.install.ok(&["revoke", "atm-r"]);
    f.open_window().await;
    let (s, v) = f.pair("192.0.2.90", &req(Some(&token), Some(&csr(&KeyPair::generate().unwrap())))).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "invalid_token"), "{v}");

    let token = f.add_terminal("atm-c", &[]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let f_state = f.state.clone();
        let body = serde_json::to_vec(&req(Some(&token), Some(&csr(&KeyPair::generate().unwrap())))).unwrap();
        tasks.push(tokio::spawn(async move {
            let peer: SocketAddr = format!("192.0.2.{}:1", 100 + i).parse().unwrap();
            let r = Request::post("/v1/pair").body(Body::from(body)).unwrap();
            router(f_state).layer(MockConnectInfo(peer)).oneshot(r).await.unwrap().status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{s}");
        ok += usize::from(s == StatusCode::OK);
    }
    assert_eq!(ok, 1, "exactly one key pairs");
}

/// A package, an upstream that serves it (counting requests), and a gate configured to fetch it from there.
pub(crate) async fn upgrade_fixture(
    slots: u32,
    upstream_body: Vec<u8>,
) -> (Fixture, Vec<u8>, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = Fixture::new().await;
    let pkg: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let hits = Arc::new(AtomicUsize::new(0));
    let served = if upstream_body.is_empty() { pkg.clone() } else { upstream_body };
    let app = {
        let hits = hits.clone();
        axum::Router::new().route(
            "/files/batm.pkg",
            axum::routing::get(move || {
                let (hits, served) = (hits.clone(), served.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    served
                }
            }),
        )
    };
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(upstream, app).await });

    let dl = f.install.path("dl");
    let props = f.install.path("config/gate.properties");
    let text = std::fs::read_to_string(&props).unwrap();
    let mut out = String::new();
    for l in text.lines() {
        if l.starts_with("batm.processing-slots=") {
            out.push_str(&format!("batm.processing-slots={slots}\n"));
        } else if l.starts_with("batm.download=") {
            out.push_str(&format!("batm.download={}/\n", dl.display()));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    std::fs::write(&props, out).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&pkg))
    };
    std::fs::write(
        f.install.path("config/upgrade"),
        format!(
            "file=batm.pkg\nsha256={sha}\nsize={}\nupstream=http://127.0.0.1:{up_port}/files/batm.pkg\n",
            pkg.len()
        ),
    )
    .unwrap();
    (f.reload().await, pkg, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_downloads_share_the_slots_fetch_once_and_resume_with_range() {
    use cas_vpn::http::client::{Target, Trust, open};
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering;

    const SLOTS: u32 = 8;
    let (f, pkg, hits) = upgrade_fixture(SLOTS, Vec::new()).await;
    assert!(!f.install.path("dl/batm.pkg").exists());
    // All 200 downloaders come from 127.0.0.1: the per-source budgets (tested in tests/e2e/flood.rs and
    // domain::budget) would refuse most of them at the door, and the slots are what this test is about.
    let mut limits = cas_vpn::http::ServeLimits::gate();
    limits.budget.per_source_pending = 1000;
    limits.budget.per_source_burst = 1000;
    let gate = crate::agent::RunningGate::start_with(&f, limits).await;
    let target =
        Target { host: "127.0.0.1".into(), port: gate.port, tls: Some(Trust::Pin(f.state.pin())), source: None };
    let pkg = Arc::new(pkg);

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let (target, pkg) = (target.clone(), pkg.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = 0u32;
            loop {
                let (resp, _) =
                    open(&target, Method::GET, "/v1/upgrade/batm.pkg", HeaderMap::new(), Default::default())
                        .await
                        .unwrap();
                if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!(retry >= 1);
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["error"], "slots_full");
                    refused += 1;
                    // A real terminal waits Retry-After seconds; the test waits a few milliseconds (a scenario
                    // sleep: the client's back-off with jitter, not a wait for a condition).
                    tokio::time::sleep(std::time::Duration::from_millis(50 + (i * 37 + u64::from(refused) * 53) % 200))
                        .await;
                    continue;
                }
                assert_eq!(resp.status(), StatusCode::OK);
                let mut body = resp.into_body();
                let mut got = Vec::with_capacity(pkg.len());
                let mut frames = 0u32;
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame.unwrap().into_data() {
                        got.extend_from_slice(&d);
                        frames += 1;
                        // A slowish reader keeps its slot busy for a while (a scenario sleep, not a wait).
                        if frames.is_multiple_of(16) {
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                }
                assert!(got == *pkg, "bytes differ");
                return refused;
            }
        }));
    }
    let mut refusals = 0;
    for t in tasks {
        refusals += tokio::time::timeout(std::time::Duration::from_secs(240), t).await.unwrap().unwrap();
    }
    let stats = f.state.upgrade_stats();
    assert!(stats.max_in_flight <= SLOTS as usize, "{stats:?}");
    assert_eq!(stats.max_in_flight, SLOTS as usize, "the slots were all used: {stats:?}");
    assert_eq!(stats.started, 200);
    assert!(refusals > 0 && stats.refused_busy == u64::from(refusals), "{stats:?} {refusals}");
    assert_eq!(stats.in_flight, 0);
    assert_eq!((hits.load(Ordering::SeqCst), stats.fetches), (1, 1), "fetched from upstream exactly once");
    assert_eq!(std::fs::read(f.install.path("dl/batm.pkg")).unwrap(), *pkg);

    // A broken download resumes with Range.
    let mut h = HeaderMap::new();
    h.insert("range", "bytes=600000-".parse().unwrap());
    let (resp, _) = open(&target, Method::GET, "/v1/upgrade/batm.pkg", h, Default::default()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], format!("bytes 600000-{}/{}", pkg.len() - 1, pkg.len()).as_str());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body[..] == pkg[600_000..]);
    let mut h = HeaderMap::new();
    h.insert("range", "bytes=0-99".parse().unwrap());
    let (resp, _) = open(&target, Method::GET, "/v1/upgrade/batm.pkg", h, Default::default()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert!(resp.into_body().collect().await.unwrap().to_bytes()[..] == pkg[..100]);
    // Unknown files are 404 (JSON).
    let (resp, _) =
        open(&target, Method::GET, "/v1/upgrade/other.pkg", HeaderMap::new(), Default::default()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    gate.stop().await;
}

#[tokio::test]
async fn a_package_that_fails_its_checksum_is_never_served_nor_kept() {
    let (f, _, hits) = upgrade_fixture(2, b"not the package".to_vec()).await;
    let (s, h, v) = f.call("192.0.2.120", Method::GET, "/v1/upgrade/batm.pkg", vec![]).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("upgrade_unavailable")));
    assert!(h.contains_key("retry-after"));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let left: Vec<_> = std::fs::read_dir(f.install.path("dl")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "no file, not even a temp file: {left:?}");
    // Right after a failure, requests do not hammer the upstream.
    let (s, _, _) = f.call("192.0.2.120", Method::GET, "/v1/upgrade/batm.pkg", vec![]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(f.state.upgrade_stats().in_flight, 0, "a refused download frees its slot");
}

/// Collects every log line of the current thread (the current-thread runtime of `#[tokio::test]` polls everything
/// the router does on it).
#[derive(Clone, Default)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_secret_key_or_request_body_reaches_the_logs_or_a_response() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let key = KeyPair::generate().unwrap();
    let pem = csr(&key);
    let (s, ok) = f.pair("192.0.2.130", &req(Some(&token), Some(&pem))).await;
    assert_eq!(s, StatusCode::OK);
    let wrong_secret = {
        let p: Vec<&str> = token.split('.').collect();
        format!("cv1.{}.{}.{}", p[1], "A".repeat(27), p[3])
    };
    let (_, bad) = f.pair("192.0.2.131", &req(Some(&wrong_secret), Some(&pem))).await;
    assert_eq!(code(&bad), "invalid_token");
    let (_, _, junk) =
        f.call("192.0.2.132", Method::POST, "/v1/pair", b"{\"token\": \"cv1.SECRETSECRET\", \"x\": 1}".to_vec()).await;
    assert_eq!(code(&junk), "invalid_request");
    drop(_guard);

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let token_id = token.split('.').nth(1).unwrap();
    assert!(logs.contains(token_id), "the token's public id is logged:\n{logs}");
    let secret = token.split('.').nth(2).unwrap();
    let ca_key = std::fs::read_to_string(f.install.path("pki/terminal-ca.key")).unwrap();
    let ca_key_line = ca_key.lines().nth(1).unwrap();
    let tls_key = inline_block(ok["ovpn"].as_str().unwrap(), "tls-crypt-v2");
    let csr_line = pem.lines().nth(1).unwrap();
    for (what, needle) in [
        ("token secret", secret),
        ("wrong secret", wrong_secret.split('.').nth(2).unwrap()),
        ("junk body", "SECRETSECRET"),
        ("CA key", ca_key_line),
        ("tls-crypt-v2 key", tls_key.lines().nth(1).unwrap()),
        ("CSR body", csr_line),
    ] {
        assert!(!logs.contains(needle), "{what} leaked into the logs");
    }
    let responses = format!("{ok}{bad}{junk}");
    assert!(!responses.contains(ca_key_line) && !responses.contains("PRIVATE KEY"), "no key in any response");
}

/// The pairing additions to the store, the same story on SQLite and on PostgreSQL.
async fn pairing_store_story(store: &Store) {
    use cas_vpn::db::{
        DbError, NewCert, NewTerminal, NewToken, PendingPairing, Redeemed, Submitted, TerminalLayout, TokenRefusal,
    };
    use cas_vpn::domain::PairingState;
    let now = 1_900_000_000;
    let layout = TerminalLayout { instances: 1, hosts_per_instance: 100 };
    let cert = |serial: &str| NewCert {
        serial: serial.into(),
        common_name: "atm-k".into(),
        not_before: now - 60,
        not_after: now + 86_400,
        cert_pem: "PEM".into(),
    };
    let new = NewTerminal {
        name: "atm-k".parse().unwrap(),
        cert: Some(cert("0a")),
        token: Some(NewToken { id: "00112233aabbccdd".into(), secret_hash: "h".into(), expires_at: now + 3600 }),
    };
    let created = store.create_terminals(&[new], layout, now).await.unwrap();
    let id = created[0].id;
    let fresh = store.redeem_token_keygen("00112233aabbccdd", "keygen:a", "0a", Some("SN"), now).await.unwrap();
    assert_eq!(fresh, Redeemed::Fresh { credential_id: id, cert_serial: "0a".into() });
    let again = store.redeem_token_keygen("00112233aabbccdd", "keygen:a", "0a", None, now + 1).await.unwrap();
    assert_eq!(again, Redeemed::AlreadySameKey { credential_id: id, cert_serial: "0a".into() });
    let c = store.credential_by_id(id).await.unwrap().unwrap();
    assert_eq!((c.paired_at, c.hw_serial.as_deref()), (Some(now), Some("SN")));
    let other = store.redeem_token_keygen("00112233aabbccdd", "keygen:b", "0a", None, now + 2).await;
    assert!(matches!(other, Err(DbError::TokenUnusable { reason: TokenRefusal::KeyMismatch })), "{other:?}");
    let locked = store.redeem_token_keygen("00112233aabbccdd", "keygen:a", "0a", None, now + 3).await;
    assert!(matches!(locked, Err(DbError::TokenUnusable { reason: TokenRefusal::Locked })), "{locked:?}");

    let pending = |id: &str, key: &str, ip: &str| PendingPairing {
        id: id.into(),
        pubkey_sha256: key.into(),
        csr_pem: "CSR".into(),
        code: "ABCD-EFGH".into(),
        common_name: None,
        hw_serial: Some("SN-2".into()),
        version: Some("20240115".into()),
        source_ip: ip.into(),
        created_at: now,
        expires_at: now + 3600,
        state: PairingState::Pending,
        decided_at: None,
        credential_id: None,
        cert_serial: None,
    };
    let p1 = pending("p1", "k1", "192.0.2.1");
    assert_eq!(store.submit_pending_pairing(&p1, 2, 2, now).await.unwrap(), Submitted::Created(p1.clone()));
    let dup = pending("p1-dup", "k1", "192.0.2.1");
    assert_eq!(store.submit_pending_pairing(&dup, 2, 2, now).await.unwrap(), Submitted::Existing(p1.clone()));
    let p2 = pending("p2", "k2", "192.0.2.2");
    assert!(matches!(store.submit_pending_pairing(&p2, 2, 1, now).await.unwrap(), Submitted::Created(_)));
    assert_eq!(
        store.submit_pending_pairing(&pending("p3", "k3", "192.0.2.3"), 2, 2, now).await.unwrap(),
        Submitted::TooMany
    );
    assert_eq!(
        store.submit_pending_pairing(&pending("p3", "k3", "192.0.2.2"), 9, 1, now).await.unwrap(),
        Submitted::TooMany
    );
    assert_eq!(store.list_pending_pairings(false, now).await.unwrap().len(), 2);

    let t2 = store
        .create_terminals(
            &[NewTerminal { name: "atm-p".parse().unwrap(), cert: Some(cert("0b")), token: None }],
            layout,
            now,
        )
        .await
        .unwrap();
    assert!(store.approve_pending_pairing("p1", t2[0].id, "0b", now + 5).await.unwrap());
    assert!(!store.approve_pending_pairing("p1", t2[0].id, "0b", now + 6).await.unwrap(), "only once");
    let c = store.credential_by_id(t2[0].id).await.unwrap().unwrap();
    assert_eq!((c.paired_at, c.hw_serial.as_deref()), (Some(now + 5), Some("SN-2")));
    assert!(store.reject_pending_pairing("p2", now).await.unwrap());
    assert!(!store.reject_pending_pairing("p1", now).await.unwrap(), "decided already");
    assert_eq!(store.pending_pairing("p2").await.unwrap().unwrap().state, PairingState::Rejected);
    assert!(store.list_pending_pairings(false, now).await.unwrap().is_empty());
    assert_eq!(store.list_pending_pairings(true, now).await.unwrap().len(), 2);
    // Expired and undecided: replaced when the same key asks again; an approved one never expires away.
    let p4 = pending("p4", "k4", "192.0.2.4");
    store.submit_pending_pairing(&p4, 9, 9, now).await.unwrap();
    let later = now + 7200;
    let p4b = PendingPairing { id: "p4b".into(), created_at: later, expires_at: later + 3600, ..p4.clone() };
    assert!(
        matches!(store.submit_pending_pairing(&p4b, 9, 9, later).await.unwrap(), Submitted::Created(p) if p.id == "p4b")
    );
    assert!(store.pending_pairing("p4").await.unwrap().is_none());
    assert_eq!(store.pending_pairing("p1").await.unwrap().unwrap().state, PairingState::Approved);
}

#[tokio::test]
async fn pairing_store_additions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("s.sqlite")).await.unwrap();
    pairing_store_story(&sqlite).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn pairing_store_additions_on_postgres() {
    let pg = crate::support::pg::PgDb::create().await;
    let store = Store::open(&pg.url).await.unwrap();
    pairing_store_story(&store).await;
    store.close().await;
}

/// `token` with a wrong secret that is still well-formed: its first character changed (it carries six whole bits;
/// the last one carries two bits and four zero bits, so changing it can make the token malformed, refused by the
/// agent before it reaches the gate).
fn wrong_secret(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let first = parts[2].remove(0);
    parts[2].insert(0, if first == 'A' { 'B' } else { 'A' });
    parts.join(".")
}

/// POSTs `body` to /v1/pair 200 times at once from `peer`, spread over `gates` in turn; the error codes answered.
async fn burst(gates: &[GateState], peer: &str, body: &[u8]) -> Vec<String> {
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (state, peer, body) = (gates[i % gates.len()].clone(), peer.to_owned(), body.to_vec());
        burst.spawn(async move {
            let (status, v) = call_raw(state, &peer, body).await;
            assert!(v.is_object(), "{status}: the answer is not JSON");
            v["error"].as_str().unwrap_or_default().to_owned()
        });
    }
    burst.join_all().await
}

/// The same burst spread over four gates (four nodes) sharing one store: each gate orders only its own requests, so
/// only the store's reservation (counted before evaluation) holds the line. Exactly five are evaluated; the rest are
/// banned or told to retry (`too_many_attempts`) while the five are in flight.
async fn a_burst_over_four_gates_gets_five_evaluated(f: Fixture) {
    f.open_window().await;
    let token = f.add_terminal("atm-burst2", &[]);
    let wrong = wrong_secret(&token);
    let key = KeyPair::generate().unwrap();
    let body = serde_json::to_vec(&req(Some(&wrong), Some(&csr(&key)))).unwrap();
    let mut gates = vec![f.state.clone()];
    for _ in 0..3 {
        let mut other = Ctx::open(f.install.root(), f.install.database_url.as_deref()).await.unwrap();
        other.clock = f.ctx.clock.clone();
        gates.push(GateState::new(Arc::new(other)).unwrap());
    }

    let codes = burst(&gates, "192.0.2.98:40000", &body).await;
    let count = |c: &str| codes.iter().filter(|x| *x == c).count();
    assert_eq!(count("invalid_token"), 5, "{codes:?}");
    assert_eq!(count("invalid_token") + count("banned") + count("too_many_attempts"), 200, "{codes:?}");
    assert!(f.ctx.store.is_banned("192.0.2.98", f.ctx.clock.now()).await.unwrap());
    let (s, v) = f.pair("192.0.2.100", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "another address still pairs: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_four_gates_gets_five_evaluated_on_sqlite() {
    a_burst_over_four_gates_gets_five_evaluated(Fixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn a_burst_over_four_gates_gets_five_evaluated_on_postgres() {
    a_burst_over_four_gates_gets_five_evaluated(Fixture::on_postgres().await).await;
}

/// A burst of 200 wrong tokens sent at once from one address: the attempts are evaluated one after another, so
/// the ban the first five failures earn stops the other 195 before they are evaluated. Another address is not
/// slowed down or refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_tokens_gets_at_most_five_evaluated() {
    let f = Fixture::new().await;
    f.open_window().await;
    let token = f.add_terminal("atm-burst", &[]);
    let wrong = wrong_secret(&token);
    let key = KeyPair::generate().unwrap();
    let body = serde_json::to_vec(&req(Some(&wrong), Some(&csr(&key)))).unwrap();

    let codes = burst(std::slice::from_ref(&f.state), "192.0.2.99:40000", &body).await;
    let evaluated = codes.iter().filter(|c| *c == "invalid_token").count();
    let banned = codes.iter().filter(|c| *c == "banned").count();
    assert_eq!((evaluated, banned), (5, 195), "{codes:?}");
    assert!(f.state.per_source_is_empty(), "no per-source entry is left behind");

    // The token itself was never guessed, and its owner (another address) still pairs.
    let (s, v) = f.pair("192.0.2.100", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_pairings_give_their_reservations_back_and_failures_count_exactly
);

/// Many pairings at once, each from its own address, with a source's wrong tokens in among them: the gate writes
/// them in shared transactions (group commit). Every terminal pairs; each success's reservation went with its
/// pairing (no row is left for any of them); the failures are counted exactly (four, so the fifth bans).
async fn concurrent_pairings_give_their_reservations_back_and_failures_count_exactly(f: Fixture) {
    const N: usize = 12;
    f.open_window().await;
    let tokens: Vec<String> = (0..N).map(|i| f.add_terminal(&format!("atm-many-{i}"), &[])).collect();
    let wrong = wrong_secret(&tokens[0]);
    let mut all = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let body = serde_json::to_vec(&req(Some(token), Some(&csr(&KeyPair::generate().unwrap())))).unwrap();
        let state = f.state.clone();
        all.spawn(async move { (true, call_raw(state, &format!("198.18.{i}.1:40000"), body).await) });
    }
    for _ in 0..4 {
        let body = serde_json::to_vec(&req(Some(&wrong), Some(&csr(&KeyPair::generate().unwrap())))).unwrap();
        let state = f.state.clone();
        all.spawn(async move { (false, call_raw(state, "203.0.113.7:40000", body).await) });
    }
    for (good, (status, v)) in all.join_all().await {
        if good {
            assert_eq!(status, StatusCode::OK, "{v}");
        } else {
            assert_eq!(code(&v), "invalid_token", "{v}");
        }
    }
    let paired = count(&f.ctx.store, "SELECT COUNT(*) FROM credentials WHERE paired_at IS NOT NULL").await;
    assert_eq!(paired, N as i64);
    // Only the failing source and its /24 hold rows: every success gave its attempt back.
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM ip_bans").await, 2);
    assert!(!f.ctx.store.is_banned("203.0.113.7", f.ctx.clock.now()).await.unwrap());
    let body = serde_json::to_vec(&req(Some(&wrong), Some(&csr(&KeyPair::generate().unwrap())))).unwrap();
    let (_, v) = call_raw(f.state.clone(), "203.0.113.7:40000", body.clone()).await;
    assert_eq!(code(&v), "invalid_token", "the fifth failure is evaluated…");
    let (_, v) = call_raw(f.state.clone(), "203.0.113.7:40000", body).await;
    assert_eq!(code(&v), "banned", "…and bans: four were counted before it, no more, no fewer");
    assert!(f.state.per_source_is_empty());
}

async fn call_raw(state: GateState, peer: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let peer: SocketAddr = peer.parse().unwrap();
    let r = Request::builder()
        .method(Method::POST)
        .uri("/v1/pair")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router(state).layer(MockConnectInfo(peer)).oneshot(r).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
}
