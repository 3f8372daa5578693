//! master: a terminal is identified by its client certificate (mutual TLS, verified against the terminal CA, then
//! looked up in the store: an unrevoked certificate of a paired, non-revoked terminal) and, under Scenario A, also
//! by its live tunnel address, which must be that same terminal's (invariant 2); it binds only a tunnel-side
//! address (invariant 1); heartbeats and certificate renewal, over real mutual TLS in both scenarios.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use cas_vpn::db::NewSession;
use cas_vpn::http::client::{Target, Trust};
use cas_vpn::http::mtls::{ClientTls, PeerCertificate};
use cas_vpn::master::{MasterState, bind_master, router};
use rcgen::{DnType, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::gate::{Fixture, count, csr, csr_with, req};
use crate::support::{both_backends, inline_block, openssl};

/// A terminal paired through the gate: its key, id and certificate (PEM).
pub(crate) struct Paired {
    pub(crate) key: KeyPair,
    pub(crate) id: i64,
    pub(crate) cert: String,
}

impl Paired {
    pub(crate) fn der(&self) -> Vec<u8> {
        der(&self.cert)
    }
}

pub(crate) fn der(pem: &str) -> Vec<u8> {
    openssl::x509::X509::from_pem(pem.as_bytes()).unwrap().to_der().unwrap()
}

/// Terminal `name` paired through the gate, and (when `tunnel_ip` is given) a live session at that address.
pub(crate) async fn paired(f: &Fixture, name: &str, tunnel_ip: Option<&str>, cid: i64) -> Paired {
    let token = f.add_terminal(name, &[]);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();
    let (s, v) = f.pair("192.0.2.1", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = f.ctx.store.credential_by_name(&name.parse().unwrap()).await.unwrap().unwrap().id;
    if let Some(ip) = tunnel_ip {
        session(f, id, name, ip, cid).await;
    }
    Paired { key, id, cert: v["cert"].as_str().unwrap().to_owned() }
}

async fn session(f: &Fixture, credential_id: i64, name: &str, tunnel_ip: &str, cid: i64) {
    f.ctx
        .store
        .upsert_session(&NewSession {
            node: "n1".into(),
            instance: "terminal-0".into(),
            credential_id,
            common_name: name.into(),
            tunnel_ip: tunnel_ip.into(),
            real_addr: "198.51.100.7:50000".into(),
            since: cas_vpn::ops::now(),
            client_id: cid,
        })
        .await
        .unwrap();
}

/// One request through master's router, as from `ip` with the verified client certificate `cert` (DER; what the
/// accept loop puts into requests after the handshake).
pub(crate) async fn call(
    state: &MasterState,
    ip: &str,
    cert: Option<&[u8]>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let peer: SocketAddr = format!("{ip}:50000").parse().unwrap();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    if let Some(c) = cert {
        req.extensions_mut().insert(PeerCertificate(Arc::new(c.to_vec())));
    }
    let resp = router(state.clone()).layer(MockConnectInfo(peer)).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub(crate) fn hb() -> Value {
    json!({"version": "20240115", "status": {"cash": "ok"}})
}

/// Switches the fixture to Scenario B (`batm.vpn-skip=true`).
async fn scenario_b(f: Fixture) -> Fixture {
    let props = f.install.path("config/gate.properties");
    let text = std::fs::read_to_string(&props).unwrap().replace("batm.vpn-skip=false", "batm.vpn-skip=true");
    std::fs::write(&props, text).unwrap();
    f.reload().await
}

/// master on a loopback socket with mutual TLS, and a way to send it heartbeats and renewals as a given identity.
struct RealMaster {
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), cas_vpn::app::AppError>>,
    ca: String,
}

impl RealMaster {
    async fn start(f: &Fixture, state: MasterState) -> RealMaster {
        let listener = bind_master("127.0.0.1".parse().unwrap(), 0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(cas_vpn::master::run_master_on(state, listener, rx));
        let ca = std::fs::read_to_string(f.install.path("pki/terminal-ca.crt")).unwrap();
        RealMaster { port, stop, task, ca }
    }

    /// POSTs `body` to `path` presenting `cert`/`key` (PEM), verifying master as `10.3.2.1` (its
    /// `master_bind_ip`); `Err` when there was no HTTP answer (the handshake was refused).
    async fn send(
        &self,
        identity: Option<(&str, &str)>,
        path: &str,
        body: &Value,
        headers: &[(&'static str, &'static str)],
    ) -> Result<(StatusCode, Value), String> {
        let tls = match identity {
            Some((cert, key)) => Trust::Mutual(ClientTls::new(&self.ca, cert, key, "10.3.2.1").unwrap()),
            // No client certificate at all: a plain TLS client that trusts master's key.
            None => Trust::FirstUse,
        };
        let target = Target { host: "127.0.0.1".into(), port: self.port, tls: Some(tls), source: None };
        let mut h = axum::http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        let (resp, _) =
            cas_vpn::http::client::open(&target, Method::POST, path, h, serde_json::to_vec(body).unwrap().into())
                .await
                .map_err(|e| e.to_string())?;
        let status = resp.status();
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(15), self.task).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn heartbeats_are_answered_only_for_live_sessions_of_paired_unrevoked_terminals() {
    let f = Fixture::new().await;
    let t = paired(&f, "atm-1", Some("10.8.0.2"), 1).await;
    let (id, mine) = (t.id, t.der());
    let m = MasterState::new(f.ctx.clone()).unwrap();

    let (s, v) = call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", hb()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["terminal"], "atm-1");
    assert!(v["renew_after"].as_i64().unwrap() < v["cert_not_after"].as_i64().unwrap());
    let shown = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(shown["version"], "20240115");
    assert!(shown["last_seen"].is_string());

    // Anyone else: 403 on every path, before anything is read. Scenario A: the right certificate from another
    // address, or no certificate from the right address, gets nothing.
    for (ip, cert, path) in [
        ("10.8.0.3", Some(&mine), "/v1/heartbeat"),
        ("127.0.0.1", Some(&mine), "/v1/heartbeat"),
        ("10.8.0.3", Some(&mine), "/nope"),
        ("10.8.0.3", Some(&mine), "/v1/renew"),
        ("10.8.0.2", None, "/v1/heartbeat"),
        ("10.8.0.2", None, "/v1/renew"),
    ] {
        let (s, v) = call(&m, ip, cert.map(Vec::as_slice), path, hb()).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{ip} {path}");
    }
    // A known caller gets JSON errors for unknown paths and bad bodies.
    assert_eq!(call(&m, "10.8.0.2", Some(&mine), "/nope", hb()).await.0, StatusCode::NOT_FOUND);
    let (s, v) = call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", json!({"version": "x"})).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

    // Another terminal's certificate from my tunnel, and mine from its tunnel: nothing.
    let other = paired(&f, "atm-2", Some("10.8.0.5"), 4).await;
    assert_eq!(call(&m, "10.8.0.5", Some(&other.der()), "/v1/heartbeat", hb()).await.0, StatusCode::OK);
    assert_eq!(call(&m, "10.8.0.2", Some(&other.der()), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&m, "10.8.0.5", Some(&mine), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);

    // A terminal that never paired, and an admin credential, get nothing even with a live session.
    f.add_terminal("atm-unpaired", &[]);
    let unpaired = f.ctx.store.credential_by_name(&"atm-unpaired".parse().unwrap()).await.unwrap().unwrap().id;
    session(&f, unpaired, "atm-unpaired", "10.8.0.4", 2).await;
    assert_eq!(call(&m, "10.8.0.4", None, "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    let alice = f.install.path("alice.ovpn");
    f.install.ok(&["admin-vpn", "issue", "alice", "--out", alice.to_str().unwrap()]);
    let admin = f.ctx.store.credential_by_name(&"alice".parse().unwrap()).await.unwrap().unwrap().id;
    session(&f, admin, "alice", "10.9.0.2", 3).await;
    let admin_cert = der(&inline_block(&std::fs::read_to_string(&alice).unwrap(), "cert"));
    assert_eq!(call(&m, "10.9.0.2", Some(&admin_cert), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);

    // Session gone, or terminal revoked: nothing.
    f.ctx.store.remove_session("n1", "terminal-0", 1).await.unwrap();
    assert_eq!(call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    session(&f, id, "atm-1", "10.8.0.2", 1).await;
    assert_eq!(call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", hb()).await.0, StatusCode::OK);
    f.install.ok(&["revoke", "atm-1"]);
    assert_eq!(call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn scenario_b_identifies_by_the_certificate_alone() {
    let f = scenario_b(Fixture::new().await).await;
    let t = paired(&f, "atm-1", None, 1).await;
    let other = paired(&f, "atm-2", None, 2).await;
    let m = MasterState::new(f.ctx.clone()).unwrap();

    // No tunnel, any address: the certificate says who it is.
    for ip in ["192.0.2.9", "10.8.0.2", "127.0.0.1"] {
        let (s, v) = call(&m, ip, Some(&t.der()), "/v1/heartbeat", hb()).await;
        assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-1")), "{ip}: {v}");
    }
    let (s, v) = call(&m, "192.0.2.9", Some(&other.der()), "/v1/heartbeat", hb()).await;
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-2")));
    assert_eq!(call(&m, "192.0.2.9", None, "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);

    // A certificate of the terminal CA the store does not know (here: master's own), a revoked one: nothing.
    let master_cert = der(&std::fs::read_to_string(f.install.path("pki/master.crt")).unwrap());
    assert_eq!(call(&m, "192.0.2.9", Some(&master_cert), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    f.install.ok(&["revoke", "atm-2"]);
    assert_eq!(call(&m, "192.0.2.9", Some(&other.der()), "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&m, "192.0.2.9", Some(&t.der()), "/v1/heartbeat", hb()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn master_follows_a_live_switch_between_the_scenarios() {
    let f = Fixture::new().await;
    let t = paired(&f, "atm-1", Some("10.8.0.2"), 1).await;
    let m = MasterState::new(f.ctx.clone()).unwrap();
    let props = f.install.path("config/gate.properties");
    let original = std::fs::read_to_string(&props).unwrap();
    let mine = t.der();
    let from_outside = || call(&m, "192.0.2.9", Some(&mine), "/v1/heartbeat", hb());
    assert_eq!(from_outside().await.0, StatusCode::FORBIDDEN);
    assert!(!m.recheck_scenario(), "nothing changed");

    // batm.vpn-skip=true while master runs: the certificate alone identifies the terminal.
    std::fs::write(&props, original.replace("batm.vpn-skip=false", "batm.vpn-skip=true")).unwrap();
    assert!(m.recheck_scenario());
    assert_eq!(from_outside().await.0, StatusCode::OK);
    // A configuration that does not load changes nothing.
    std::fs::write(&props, "batm.vpn-skip=maybe\n").unwrap();
    assert!(!m.recheck_scenario());
    assert_eq!(from_outside().await.0, StatusCode::OK);
    // Back to Scenario A: the tunnel is required again.
    std::fs::write(&props, &original).unwrap();
    assert!(m.recheck_scenario());
    assert_eq!(from_outside().await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", hb()).await.0, StatusCode::OK);
}

both_backends!(
    #[tokio::test]
    renewal_only_within_the_window_retry_safe_and_for_this_terminal_only
);

async fn renewal_only_within_the_window_retry_safe_and_for_this_terminal_only(f: Fixture) {
    // The terminal pairs 720 days ago (the gate, the signer and master go by the fixture's clock).
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * 86_400).unwrap();
    let t = paired(&f, "atm-1", Some("10.8.0.2"), 1).await;
    let (old_key, id, mine) = (&t.key, t.id, t.der());
    let m = MasterState::new(f.ctx.clone()).unwrap();
    let certs =
        || async { count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await };
    assert_eq!(certs().await, 1);
    let renew = |body: Value| call(&m, "10.8.0.2", Some(&mine), "/v1/renew", body);

    let new_key = KeyPair::generate().unwrap();
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::CONFLICT, Some("not_in_renewal_window")), "{v}");
    assert_eq!(certs().await, 1);

    // Today its certificate has ten days left: inside the default 60-day window.
    f.ctx.clock.set(present).unwrap();
    let not_after = f.ctx.store.certificates_of(id).await.unwrap()[0].not_after;
    assert!((not_after - present - 10 * 86_400).abs() <= 1, "{not_after}");
    for (what, pem, code) in [
        (
            "another name",
            csr_with(&new_key, |p| p.distinguished_name.push(DnType::CommonName, "atm-2")),
            "csr_name_mismatch",
        ),
        (
            "CA rights",
            csr_with(&new_key, |p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            "csr_ca_requested",
        ),
        ("garbage", "nope".to_owned(), "invalid_csr"),
    ] {
        let (s, v) = renew(json!({"csr": pem})).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{what}: {v}");
    }
    assert_eq!(certs().await, 1);

    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cert = v["cert"].as_str().unwrap().to_owned();
    assert_eq!(certs().await, 2);
    let p = f.install.path("renewed.pem");
    std::fs::write(&p, &cert).unwrap();
    let ca = f.install.path("pki/terminal-ca.crt");
    let (ok, text) =
        openssl(&["verify", "-purpose", "sslclient", "-CAfile", ca.to_str().unwrap(), p.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (_, text) = openssl(&["x509", "-in", p.to_str().unwrap(), "-noout", "-subject", "-pubkey"]);
    assert!(text.contains("atm-1"), "{text}");
    assert!(text.contains(new_key.public_key_pem().lines().nth(1).unwrap()), "{text}");

    // The answer was lost: the same key gets the same certificate; another key is refused (not in the window now).
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["cert"].as_str()), (StatusCode::OK, Some(cert.as_str())));
    let (s, _) = renew(json!({"csr": csr(old_key)})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(certs().await, 2);
    let detail = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(detail["certificates"].as_array().unwrap().len(), 2);

    // The renewed certificate identifies the terminal on the next connection.
    let (s, v) = call(&m, "10.8.0.2", Some(&der(&cert)), "/v1/heartbeat", hb()).await;
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-1")), "{v}");
}

#[tokio::test]
async fn master_binds_only_a_local_non_public_address() {
    for bad in ["0.0.0.0", "8.8.8.8", "1.1.1.1"] {
        let e = bind_master(bad.parse().unwrap(), 0).await.unwrap_err().to_string();
        assert!(e.contains("refuses to start"), "{bad}: {e}");
    }
    // A documentation address is non-public, but not assigned here.
    let e = bind_master("203.0.113.77".parse().unwrap(), 0).await.unwrap_err().to_string();
    assert!(e.contains("not an address of this host"), "{e}");
    let l = bind_master("127.0.0.1".parse().unwrap(), 0).await.unwrap();
    assert_eq!(l.local_addr().unwrap().ip().to_string(), "127.0.0.1");

    // `serve master` with a public master_bind_ip refuses before binding anything.
    let f = Fixture::new().await;
    let net = f.install.path("config/network");
    let text = std::fs::read_to_string(&net).unwrap().replace("master_bind_ip=10.3.2.1", "master_bind_ip=8.8.4.4");
    std::fs::write(&net, text).unwrap();
    let out = f.install.run(&["serve", "master"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("8.8.4.4 is a public address"), "{err}");
}

#[tokio::test]
async fn master_over_a_real_socket_requires_the_terminal_certificate_and_its_tunnel() {
    let f = Fixture::new().await;
    let t = paired(&f, "atm-1", Some("127.0.0.1"), 1).await;
    let other = paired(&f, "atm-2", Some("10.8.0.9"), 2).await;
    let real = RealMaster::start(&f, MasterState::new(f.ctx.clone()).unwrap()).await;
    let (key, other_key) = (t.key.serialize_pem(), other.key.serialize_pem());
    let me = Some((t.cert.as_str(), key.as_str()));

    let (s, v) = real.send(me, "/v1/heartbeat", &hb(), &[]).await.unwrap();
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-1")), "{v}");
    // Another terminal's certificate from atm-1's tunnel address: 403.
    let (s, _) = real.send(Some((&other.cert, &other_key)), "/v1/heartbeat", &hb(), &[]).await.unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
    // No client certificate, or one of the admin CA: no TLS session, hence no answer at all.
    let refused = real.send(None, "/v1/heartbeat", &hb(), &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    let alice = f.install.path("alice.ovpn");
    f.install.ok(&["admin-vpn", "issue", "alice", "--out", alice.to_str().unwrap()]);
    let profile = std::fs::read_to_string(&alice).unwrap();
    let (admin_cert, admin_key) = (inline_block(&profile, "cert"), inline_block(&profile, "key"));
    let refused = real.send(Some((&admin_cert, &admin_key)), "/v1/heartbeat", &hb(), &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    // A certificate the terminal CA never issued (self-signed, same name): refused in the handshake too.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "atm-1");
    let forged = params.self_signed(&t.key).unwrap().pem();
    let refused = real.send(Some((&forged, &key)), "/v1/heartbeat", &hb(), &[]).await;
    assert!(refused.is_err(), "{refused:?}");

    // Headers cannot claim another address.
    f.ctx.store.clear_sessions("n1", None).await.unwrap();
    session(&f, t.id, "atm-1", "10.8.0.2", 1).await;
    let spoof = [("x-forwarded-for", "10.8.0.2"), ("x-real-ip", "10.8.0.2")];
    let (s, _) = real.send(me, "/v1/heartbeat", &hb(), &spoof).await.unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
    real.stop().await;
}

#[tokio::test]
async fn scenario_b_pair_heartbeat_and_renew_over_mutual_tls_with_no_vpn() {
    let f = scenario_b(Fixture::new().await).await;
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * 86_400).unwrap();
    let t = paired(&f, "atm-1", None, 1).await;
    let other = paired(&f, "atm-2", None, 2).await;
    f.ctx.clock.set(present).unwrap();
    let real = RealMaster::start(&f, MasterState::new(f.ctx.clone()).unwrap()).await;
    let key = t.key.serialize_pem();

    // No session exists at all: the certificate is enough.
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM sessions").await, 0);
    let (s, v) = real.send(Some((&t.cert, &key)), "/v1/heartbeat", &hb(), &[]).await.unwrap();
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-1")), "{v}");
    assert!(f.install.json(&["terminal", "show", "atm-1"])["last_seen"].is_string());

    // Renewal over the same channel; the new certificate (with its new key) works on the next connection.
    let new_key = KeyPair::generate().unwrap();
    let (s, v) = real.send(Some((&t.cert, &key)), "/v1/renew", &json!({"csr": csr(&new_key)}), &[]).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let renewed = v["cert"].as_str().unwrap().to_owned();
    let new_key_pem = new_key.serialize_pem();
    let (s, v) = real.send(Some((&renewed, &new_key_pem)), "/v1/heartbeat", &hb(), &[]).await.unwrap();
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-1")), "{v}");

    // A revoked terminal's certificates get nothing; the other terminal is not affected.
    f.install.ok(&["revoke", "atm-1"]);
    for (cert, key) in [(&renewed, &new_key_pem), (&t.cert, &key)] {
        let (s, _) = real.send(Some((cert, key)), "/v1/heartbeat", &hb(), &[]).await.unwrap();
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let other_key = other.key.serialize_pem();
    let (s, v) = real.send(Some((&other.cert, &other_key)), "/v1/heartbeat", &hb(), &[]).await.unwrap();
    assert_eq!((s, v["terminal"].as_str()), (StatusCode::OK, Some("atm-2")), "{v}");
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_all_runs_gate_and_master_together_and_stops_them_together() {
    use std::time::{Duration, Instant};
    let f = Fixture::new().await;
    // Scenario B (no VPN, no root needed); gate and master on loopback addresses of their own.
    let props = f.install.path("config/gate.properties");
    let text = std::fs::read_to_string(&props).unwrap().replace("batm.vpn-skip=false", "batm.vpn-skip=true");
    std::fs::write(&props, text).unwrap();
    let net = f.install.path("config/network");
    let original = std::fs::read_to_string(&net).unwrap();
    let set = |master: &str| {
        let t = original
            .replace("master_bind_ip=10.3.2.1", &format!("master_bind_ip={master}"))
            .replace("gate_bind_ip=10.3.1.1", "gate_bind_ip=127.0.0.3");
        std::fs::write(&net, t).unwrap();
    };

    // One service cannot start: the whole process stops, with that service's error.
    set("8.8.4.4");
    let mut cmd = f.install.cmd();
    cmd.args(["serve", "all"]).timeout(Duration::from_secs(30));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("master refuses to start"), "{out:?}");

    set("127.0.0.2");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cas-vpn"))
        .env(crate::support::USERS_ENV, "none")
        .env("CAS_VPN_ROOT", f.install.root())
        .args(["serve", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in ["127.0.0.3:7741", "127.0.0.2:7741"] {
        crate::support::wait::wait_until_async(&format!("{addr} listens"), deadline, async || {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert!(tokio::net::TcpStream::connect("127.0.0.2:7741").await.is_err());
}
