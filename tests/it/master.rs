//! master: only live sessions of paired, non-revoked terminals get answers (invariant 2); it binds only a
//! tunnel-side address (invariant 1); heartbeats and certificate renewal.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use cas_vpn::db::NewSession;
use cas_vpn::master::{MasterState, bind_master, router};
use rcgen::{DnType, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::gate::{Fixture, count, csr, csr_with, req};
use crate::support::{both_backends, openssl};

/// A fixture with terminal `name` paired through the gate (its key returned) and a live session at `tunnel_ip`.
async fn paired(f: &Fixture, name: &str, tunnel_ip: &str, cid: i64) -> (KeyPair, i64) {
    let token = f.add_terminal(name, &[]);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();
    let (s, v) = f.pair("192.0.2.1", &req(Some(&token), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = f.ctx.store.credential_by_name(&name.parse().unwrap()).await.unwrap().unwrap().id;
    session(f, id, name, tunnel_ip, cid).await;
    (key, id)
}

async fn session(f: &Fixture, credential_id: i64, name: &str, tunnel_ip: &str, cid: i64) {
    f.ctx
        .store
        .upsert_session(&NewSession {
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

async fn call(state: &MasterState, ip: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let peer: SocketAddr = format!("{ip}:50000").parse().unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let resp = router(state.clone()).layer(MockConnectInfo(peer)).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn hb() -> Value {
    json!({"version": "20240115", "status": {"cash": "ok"}})
}

#[tokio::test]
async fn heartbeats_are_answered_only_for_live_sessions_of_paired_unrevoked_terminals() {
    let f = Fixture::new().await;
    let (_, id) = paired(&f, "atm-1", "10.8.0.2", 1).await;
    let m = MasterState::new(f.ctx.clone()).unwrap();

    let (s, v) = call(&m, "10.8.0.2", "/v1/heartbeat", hb()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["terminal"], "atm-1");
    assert!(v["renew_after"].as_i64().unwrap() < v["cert_not_after"].as_i64().unwrap());
    let shown = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(shown["version"], "20240115");
    assert!(shown["last_seen"].is_string());

    // Anyone else: 403 on every path, before anything is read.
    for (ip, path) in [
        ("10.8.0.3", "/v1/heartbeat"),
        ("127.0.0.1", "/v1/heartbeat"),
        ("10.8.0.3", "/nope"),
        ("10.8.0.3", "/v1/renew"),
    ] {
        let (s, v) = call(&m, ip, path, hb()).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{ip} {path}");
    }
    // A known caller gets JSON errors for unknown paths and bad bodies.
    assert_eq!(call(&m, "10.8.0.2", "/nope", hb()).await.0, StatusCode::NOT_FOUND);
    let (s, v) = call(&m, "10.8.0.2", "/v1/heartbeat", json!({"version": "x"})).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

    // A terminal that never paired, and an admin credential, get nothing even with a live session.
    f.add_terminal("atm-unpaired", &[]);
    let unpaired = f.ctx.store.credential_by_name(&"atm-unpaired".parse().unwrap()).await.unwrap().unwrap().id;
    session(&f, unpaired, "atm-unpaired", "10.8.0.4", 2).await;
    assert_eq!(call(&m, "10.8.0.4", "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    f.install.ok(&["admin-vpn", "issue", "alice", "--out", f.install.path("alice.ovpn").to_str().unwrap()]);
    let admin = f.ctx.store.credential_by_name(&"alice".parse().unwrap()).await.unwrap().unwrap().id;
    session(&f, admin, "alice", "10.9.0.2", 3).await;
    assert_eq!(call(&m, "10.9.0.2", "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);

    // Session gone, or terminal revoked: nothing.
    f.ctx.store.remove_session("terminal-0", 1).await.unwrap();
    assert_eq!(call(&m, "10.8.0.2", "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
    session(&f, id, "atm-1", "10.8.0.2", 1).await;
    assert_eq!(call(&m, "10.8.0.2", "/v1/heartbeat", hb()).await.0, StatusCode::OK);
    f.install.ok(&["revoke", "atm-1"]);
    assert_eq!(call(&m, "10.8.0.2", "/v1/heartbeat", hb()).await.0, StatusCode::FORBIDDEN);
}

both_backends!(
    #[tokio::test]
    renewal_only_within_the_window_retry_safe_and_for_this_terminal_only
);

async fn renewal_only_within_the_window_retry_safe_and_for_this_terminal_only(f: Fixture) {
    // The terminal pairs 720 days ago (the gate, the signer and master go by the fixture's clock).
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * 86_400).unwrap();
    let (old_key, id) = paired(&f, "atm-1", "10.8.0.2", 1).await;
    let m = MasterState::new(f.ctx.clone()).unwrap();
    let certs =
        || async { count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await };
    assert_eq!(certs().await, 1);

    let new_key = KeyPair::generate().unwrap();
    let (s, v) = call(&m, "10.8.0.2", "/v1/renew", json!({"csr": csr(&new_key)})).await;
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
        let (s, v) = call(&m, "10.8.0.2", "/v1/renew", json!({"csr": pem})).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{what}: {v}");
    }
    assert_eq!(certs().await, 1);

    let (s, v) = call(&m, "10.8.0.2", "/v1/renew", json!({"csr": csr(&new_key)})).await;
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
    let (s, v) = call(&m, "10.8.0.2", "/v1/renew", json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["cert"].as_str()), (StatusCode::OK, Some(cert.as_str())));
    let (s, _) = call(&m, "10.8.0.2", "/v1/renew", json!({"csr": csr(&old_key)})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(certs().await, 2);
    let detail = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(detail["certificates"].as_array().unwrap().len(), 2);
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
async fn master_over_a_real_socket_identifies_by_the_tcp_peer() {
    let f = Fixture::new().await;
    paired(&f, "atm-1", "127.0.0.1", 1).await;
    let listener = bind_master("127.0.0.1".parse().unwrap(), 0).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let state = MasterState::new(f.ctx.clone()).unwrap();
    let server = tokio::spawn(cas_vpn::master::run_master_on(state, listener, stop));
    let target = cas_vpn::http::client::Target { host: "127.0.0.1".into(), port, tls: None, source: None };
    let send = |body: Value, headers: Vec<(&'static str, &'static str)>| {
        let target = target.clone();
        async move {
            let mut h = axum::http::HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            for (k, v) in headers {
                h.insert(k, v.parse().unwrap());
            }
            let (resp, _) = cas_vpn::http::client::open(
                &target,
                Method::POST,
                "/v1/heartbeat",
                h,
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap();
            resp.status()
        }
    };
    assert_eq!(send(hb(), vec![]).await, StatusCode::OK);
    // Headers cannot claim another address.
    f.ctx.store.clear_sessions(None).await.unwrap();
    session(
        &f,
        f.ctx.store.credential_by_name(&"atm-1".parse().unwrap()).await.unwrap().unwrap().id,
        "atm-1",
        "10.8.0.2",
        1,
    )
    .await;
    assert_eq!(
        send(hb(), vec![("x-forwarded-for", "10.8.0.2"), ("x-real-ip", "10.8.0.2")]).await,
        StatusCode::FORBIDDEN
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(15), server).await.unwrap().unwrap().unwrap();
    let _ = Arc::clone(&f.ctx);
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
