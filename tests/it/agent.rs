//! `cas-vpn agent` against a real gate on 127.0.0.1 (TLS over loopback): token pairing with the pin as the only
//! trust, retries with the same key, the approval flow, slow clients; `agent run` with master on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cas_vpn::gate::run_gate_on;
use cas_vpn::http::ServeLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::gate::{Fixture, count};
use crate::support::{both_backends, inline_block, mode};

pub struct RunningGate {
    pub port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), cas_vpn::app::AppError>>,
}

impl RunningGate {
    /// With short handshake and header timeouts (1 s).
    pub async fn start(f: &Fixture) -> RunningGate {
        let limits = ServeLimits {
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        };
        RunningGate::start_with(f, limits).await
    }

    pub async fn start_with(f: &Fixture, limits: ServeLimits) -> RunningGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run_gate_on(f.state.clone(), listener, rx, limits));
        RunningGate { port, stop, task }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task).await.unwrap().unwrap().unwrap();
    }
}

/// Runs the CLI without blocking the runtime that serves the gate.
pub(crate) async fn cli(f: &Fixture, args: &[&str]) -> std::process::Output {
    let mut cmd = f.install.cmd();
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn spki_of_cert(pem: &str) -> Vec<u8> {
    openssl::x509::X509::from_pem(pem.as_bytes()).unwrap().public_key().unwrap().public_key_to_der().unwrap()
}

fn spki_of_key(path: &Path) -> Vec<u8> {
    let k = openssl::pkey::PKey::private_key_from_pem(&std::fs::read(path).unwrap()).unwrap();
    k.public_key_to_der().unwrap()
}

/// A busy gate is waited out, not given up on: with every attempt of the agent's address in flight elsewhere
/// (five reserved and not yet settled), the gate answers `429 too_many_attempts` with Retry-After; the agent says
/// so, waits and tries again, and pairs once the attempts are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_waits_out_a_busy_gate_and_pairs() {
    use tokio::io::AsyncBufReadExt;
    let f = Fixture::new().await;
    f.open_window().await;
    let token = f.add_terminal("atm-busy", &[]);
    let gate = RunningGate::start(&f).await;
    let keys = cas_vpn::gate::ban_keys("127.0.0.1");
    for _ in 0..cas_vpn::gate::MAX_FAILURES {
        let r = f.ctx.store.reserve_attempt(&keys, f.ctx.clock.now(), cas_vpn::gate::BAN_SECS).await.unwrap();
        assert_eq!(r, cas_vpn::db::Reserved::Go);
    }
    let dir = f.install.path("agent");
    let mut cmd = tokio::process::Command::from(f.install.std_cmd());
    cmd.args(["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let busy = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("gate is busy") {
                return l;
            }
        }
        panic!("the agent ended without saying the gate was busy")
    })
    .await
    .expect("the agent reports the busy gate");
    assert!(busy.contains("429") && busy.contains("2 s"), "{busy}");
    for _ in 0..cas_vpn::gate::MAX_FAILURES {
        f.ctx.store.settle_attempt(&keys, false, f.ctx.clock.now(), cas_vpn::gate::BAN_SECS).await.unwrap();
    }
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "the agent paired after waiting");
    assert!(text(&out.stdout).contains("paired as atm-busy"), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pairs_with_a_token_over_tls_and_a_retry_reuses_its_key() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    let gate = RunningGate::start(&f).await;
    let dir = f.install.path("agent");
    let d = dir.to_str().unwrap();

    // Window closed: refused, but the key was made (0600) before anything was sent.
    let out = cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", d]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("window_closed"), "{}", text(&out.stderr));
    let key = dir.join("client.key");
    assert_eq!((mode(&dir), mode(&key)), (0o700, 0o600));
    let key_before = std::fs::read(&key).unwrap();
    assert!(!dir.join("client.ovpn").exists() && !dir.join("master.json").exists());

    f.open_window().await;
    let out =
        cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", d, "--serial", "SN-9"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("paired as atm-1"), "{}", text(&out.stdout));
    assert!(!text(&out.stderr).contains(token.split('.').nth(2).unwrap()), "no secret in the output");
    assert_eq!(std::fs::read(&key).unwrap(), key_before, "the same key");
    let ovpn_path = dir.join("client.ovpn");
    assert_eq!(mode(&ovpn_path), 0o600);
    let ovpn = std::fs::read_to_string(&ovpn_path).unwrap();
    assert!(ovpn.ends_with(&format!("key {}\n", key.display())), "{ovpn}");
    assert_eq!(spki_of_cert(&inline_block(&ovpn, "cert")), spki_of_key(&key));
    let master: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("master.json")).unwrap()).unwrap();
    assert_eq!(master, serde_json::json!({"terminal": "atm-1", "host": "10.3.2.1", "port": 7741}));
    assert_eq!(f.install.json(&["terminal", "show", "atm-1"])["hw_serial"], "SN-9");

    // Paired already: nothing is sent.
    let out = cli(&f, &["agent", "pair", "--gate", "127.0.0.1:1", "--token", &token, "--dir", d]).await;
    assert!(out.status.success() && text(&out.stdout).contains("already paired"), "{}", text(&out.stderr));

    // The answer was lost (files gone, key kept): the retry gets the very same profile.
    std::fs::remove_file(&ovpn_path).unwrap();
    std::fs::remove_file(dir.join("master.json")).unwrap();
    let out = cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", d, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["terminal"], "atm-1");
    assert_eq!(std::fs::read_to_string(&ovpn_path).unwrap(), ovpn);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_gate_whose_key_is_not_the_pinned_one_before_sending_anything() {
    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let gate = RunningGate::start(&f).await;
    let parts: Vec<&str> = token.split('.').collect();
    let other_pin = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
    };
    let wrong = format!("{}.{}.{}.{other_pin}", parts[0], parts[1], parts[2]);
    let dir = f.install.path("agent");
    let out =
        cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &wrong, "--dir", dir.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not the pinned"), "{err}");
    assert!(!err.contains(parts[2]), "the secret is not shown: {err}");
    // The gate never saw the token: unused, and no failure counted against loopback.
    let t = f.ctx.store.token(parts[1]).await.unwrap().unwrap();
    assert!(t.used_at.is_none() && t.locked_at.is_none());
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM ip_bans").await, 0);
    // A mismatched --gate-pin is a usage error.
    let out = cli(
        &f,
        &[
            "agent",
            "pair",
            "--gate",
            &gate.addr(),
            "--token",
            &token,
            "--gate-pin",
            &format!("sha256:{}", "00".repeat(32)),
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("differs from the pin inside the token"), "{}", text(&out.stderr));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let f = Fixture::new().await;
    let gate = RunningGate::start(&f).await;
    // Connects and never starts TLS.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(started.elapsed() < Duration::from_secs(4));

    // Finishes TLS, then sends half a request.
    let tcp = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let ssl = b.build().configure().unwrap().verify_hostname(false).into_ssl("localhost").unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut tls).connect().await.unwrap();
    tls.write_all(b"POST /v1/pair HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    // The connection ends (whatever it says first) well before the client would have finished.
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await.expect("the gate hung up");
    assert!(started.elapsed() < Duration::from_secs(4));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_flow_end_to_end_with_the_agent() {
    let f = Fixture::new().await;
    f.open_window().await;
    let gate = RunningGate::start(&f).await;
    let dir = f.install.path("agent");
    let agent = Command::new(assert_cmd::cargo::cargo_bin("cas-vpn"))
        .env(crate::support::USERS_ENV, "none")
        .args(["agent", "pair", "--gate", &gate.addr(), "--wait-approval", "--poll", "1s", "--serial", "SN-77"])
        .args(["--dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = crate::support::KillOnDrop::new(agent);
    let stdout = agent.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let id = lines.next()?.ok()?.strip_prefix("pairing id: ")?.to_owned();
        let code = lines.next()?.ok()?.strip_prefix("code: ")?.to_owned();
        // Keep reading what it prints afterwards (a closed pipe would kill it).
        std::thread::spawn(move || lines.for_each(drop));
        Some((id, code))
    })
    .await
    .unwrap();
    let Some((id, code)) = first else {
        let out = agent.take().wait_with_output().unwrap();
        panic!("the agent printed no pairing: {}", text(&out.stderr));
    };
    assert_eq!(id.len(), 32);
    assert_eq!(code.len(), 9);
    // The code is the one derived from the agent's own key.
    assert_eq!(code, cas_vpn::wire::pairing_code_for_spki(&spki_of_key(&dir.join("client.key"))));
    assert!(dir.join("gate.pin").exists(), "trust on first use is recorded");

    let status = f.install.json(&["pairing", "status"]);
    assert_eq!(status["pending"][0]["pairing_id"], id.as_str());
    assert_eq!(status["pending"][0]["code"], code.as_str());
    assert_eq!(status["pending"][0]["hw_serial"], "SN-77");
    assert_eq!(std::fs::read_to_string(dir.join("gate.pin")).unwrap().trim(), status["gate_pin"].as_str().unwrap());

    // A wrong code changes nothing.
    let rows = f.rows().await;
    let out = cli(&f, &["pairing", "approve", &id, "--code", "AAAA-AAAA"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("code does not match"), "{}", text(&out.stderr));
    assert_eq!(f.rows().await, rows);

    let out = cli(&f, &["pairing", "approve", &id, "--code", &code.to_lowercase(), "--name", "atm-a", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["terminal"].as_str(), r["already_approved"].as_bool()), (Some("atm-a"), Some(false)));
    let agent = agent.take();
    let agent_out = tokio::task::spawn_blocking(move || agent.wait_with_output().unwrap()).await.unwrap();
    assert!(agent_out.status.success(), "{}", text(&agent_out.stderr));
    assert!(text(&agent_out.stderr).contains("WARNING: no --gate-pin"), "TOFU is loud");
    let ovpn = std::fs::read_to_string(dir.join("client.ovpn")).unwrap();
    assert_eq!(spki_of_cert(&inline_block(&ovpn, "cert")), spki_of_key(&dir.join("client.key")));
    let shown = f.install.json(&["terminal", "show", "atm-a"]);
    assert_eq!((shown["state"].as_str(), shown["hw_serial"].as_str()), (Some("paired"), Some("SN-77")));

    // Approving again is harmless; polling again gets the same answer.
    let out = cli(&f, &["pairing", "approve", &id, "--code", &code]).await;
    assert!(out.status.success() && text(&out.stdout).contains("already approved"), "{}", text(&out.stdout));
    let (s, _, again) = f.call("192.0.2.5", axum::http::Method::GET, &format!("/v1/pair/{id}"), vec![]).await;
    assert_eq!(s, axum::http::StatusCode::OK);
    assert_eq!(again["ovpn"].as_str().unwrap(), {
        // the agent added its key line; the rest is what the gate sent
        let mut o = ovpn.clone();
        o.truncate(o.rfind("key ").unwrap());
        o
    });
    gate.stop().await;
}

both_backends!(
    #[tokio::test]
    approval_flow_pending_rejected_expired_and_duplicate_keys
);

async fn approval_flow_pending_rejected_expired_and_duplicate_keys(f: Fixture) {
    f.open_window().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let body = crate::gate::req(None, Some(&crate::gate::csr(&key)));
    let (s, v) = f.pair("192.0.2.40", &body).await;
    assert_eq!(s, axum::http::StatusCode::ACCEPTED, "{v}");
    let id = v["pairing_id"].as_str().unwrap().to_owned();
    // Same key again (a fresh CSR): the same pairing.
    let (s, again) = f.pair("192.0.2.40", &crate::gate::req(None, Some(&crate::gate::csr(&key)))).await;
    assert_eq!((s, &again), (axum::http::StatusCode::ACCEPTED, &v));
    let (s, _, poll) = f.call("192.0.2.40", axum::http::Method::GET, &format!("/v1/pair/{id}"), vec![]).await;
    assert_eq!((s, poll), (axum::http::StatusCode::ACCEPTED, v.clone()));
    // Unknown or malformed ids are 404s (and count as failures).
    let (s, _, e) =
        f.call("192.0.2.41", axum::http::Method::GET, &format!("/v1/pair/{}", "0".repeat(32)), vec![]).await;
    assert_eq!((s, e["error"].as_str()), (axum::http::StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _, _) = f.call("192.0.2.41", axum::http::Method::GET, "/v1/pair/..%2F..%2Fetc", vec![]).await;
    assert_eq!(s, axum::http::StatusCode::NOT_FOUND);

    // Approval needs a name when the terminal gave none.
    let nameless = rcgen::KeyPair::generate().unwrap();
    let body =
        serde_json::json!({"token": null, "csr": crate::gate::csr(&nameless), "terminal": {"version": "20240115"}});
    let (_, v2) = f.pair("192.0.2.42", &body).await;
    let (id2, code2) = (v2["pairing_id"].as_str().unwrap(), v2["code"].as_str().unwrap());
    let err = f.install.fails(&["pairing", "approve", id2, "--code", code2], 1);
    assert!(err.contains("--name"), "{err}");

    let out = f.install.ok(&["pairing", "reject", &id]);
    assert!(out.contains("rejected"), "{out}");
    let (s, _, e) = f.call("192.0.2.40", axum::http::Method::GET, &format!("/v1/pair/{id}"), vec![]).await;
    assert_eq!((s, e["error"].as_str()), (axum::http::StatusCode::FORBIDDEN, Some("rejected")));
    let err = f.install.fails(&["pairing", "approve", &id, "--code", v["code"].as_str().unwrap()], 1);
    assert!(err.contains("rejected"), "{err}");

    // An hour later the pending pairing has expired (and the window closed: open another). The approval is made
    // in-process, so that it goes by the same clock as the gate (the CLI's is the system clock).
    f.advance(cas_vpn::gate::pair::PENDING_TTL_SECS + 1);
    f.open_window().await;
    let (s, _, e) = f.call("192.0.2.42", axum::http::Method::GET, &format!("/v1/pair/{id2}"), vec![]).await;
    assert_eq!((s, e["error"].as_str()), (axum::http::StatusCode::GONE, Some("expired")));
    let err = cas_vpn::ops::pairing::approve(&f.ctx, id2, code2, Some("atm-x".parse().unwrap())).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(f.ctx.store.credential_by_name(&"atm-x".parse().unwrap()).await.unwrap().is_none());
    // The same key may start over once its pairing expired.
    let (s, v3) = f.pair("192.0.2.42", &body).await;
    assert_eq!(s, axum::http::StatusCode::ACCEPTED);
    assert_ne!(v3["pairing_id"].as_str().unwrap(), id2);

    // The approval flow also needs an open window, and refuses CA requests.
    let ca = crate::gate::csr_with(&rcgen::KeyPair::generate().unwrap(), |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    });
    let (s, e) = f.pair("192.0.2.43", &crate::gate::req(None, Some(&ca))).await;
    assert_eq!((s, e["error"].as_str()), (axum::http::StatusCode::BAD_REQUEST, Some("csr_ca_requested")));
    f.install.ok(&["pairing", "close"]);
    let (s, e) = f
        .pair("192.0.2.44", &crate::gate::req(None, Some(&crate::gate::csr(&rcgen::KeyPair::generate().unwrap()))))
        .await;
    assert_eq!((s, e["error"].as_str()), (axum::http::StatusCode::FORBIDDEN, Some("window_closed")));
}

/// master on loopback for terminal `name`'s agent: the terminal gets a live session whose "tunnel address" is
/// 127.0.0.1, so Scenario A's check of the source address passes. `port` 0 picks a free one.
pub struct LoopbackMaster {
    pub port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), cas_vpn::app::AppError>>,
}

impl LoopbackMaster {
    pub async fn start(f: &Fixture, name: &str, port: u16) -> LoopbackMaster {
        use cas_vpn::master::{MasterState, bind_master, run_master_on};
        let id = f.ctx.store.credential_by_name(&name.parse().unwrap()).await.unwrap().unwrap().id;
        f.ctx
            .store
            .upsert_session(&cas_vpn::db::NewSession {
                node: "n1".into(),
                instance: "terminal-0".into(),
                credential_id: id,
                common_name: name.into(),
                tunnel_ip: "127.0.0.1".into(),
                real_addr: "198.51.100.7:1".into(),
                since: cas_vpn::ops::now(),
                client_id: 1,
            })
            .await
            .unwrap();
        let listener = bind_master("127.0.0.1".parse().unwrap(), port).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run_master_on(MasterState::new(f.ctx.clone()).unwrap(), listener, rx));
        LoopbackMaster { port, stop, task }
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    agent_run_heartbeats_renews_restarts_openvpn_and_survives_a_master_restart
);

async fn agent_run_heartbeats_renews_restarts_openvpn_and_survives_a_master_restart(f: Fixture) {
    use std::os::unix::fs::PermissionsExt;

    let token = f.add_terminal("atm-1", &[]);
    // The terminal paired 720 days ago (the gate and signer go by the fixture's clock), so its certificate has ten
    // days left today: inside the renewal window, for master (back at the present) and for the agent (whose
    // clock is the system's).
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * 86_400).unwrap();
    f.open_window().await;
    let gate = RunningGate::start(&f).await;
    let dir = f.install.path("agent");
    let d = dir.to_str().unwrap().to_owned();
    let out = cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", &d]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    gate.stop().await;
    f.ctx.clock.set(present).unwrap();
    let first_ovpn = std::fs::read_to_string(dir.join("client.ovpn")).unwrap();

    let id = f.ctx.store.credential_by_name(&"atm-1".parse().unwrap()).await.unwrap().unwrap().id;
    let master = LoopbackMaster::start(&f, "atm-1", 0).await;
    let port = master.port;

    // A stand-in for openvpn that records its starts and pids.
    let fake = f.install.path("fake-openvpn");
    let log = f.install.path("openvpn-starts");
    std::fs::write(&fake, format!("#!/bin/sh\necho \"$$ $*\" >> {}\nexec sleep 600\n", log.display())).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Its stderr (one line per event: "heartbeat ok", "heartbeat failed: …") goes to a file the test reads.
    let agent_log = f.install.path("agent.log");
    let agent = Command::new(assert_cmd::cargo::cargo_bin("cas-vpn"))
        .env(crate::support::USERS_ENV, "none")
        .args(["agent", "run", "--dir", &d, "--heartbeat", "1s", "--master", &format!("127.0.0.1:{port}")])
        .args(["--openvpn", fake.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let agent = crate::support::KillOnDrop::new(agent);
    let within_30s = || Instant::now() + Duration::from_secs(30);
    let starts = || std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>();
    crate::support::wait::wait_until_async("openvpn starts", within_30s(), async || !starts().is_empty()).await;
    assert!(starts()[0].ends_with(&format!("--cd {d} --config client.ovpn")), "{:?}", starts());

    // Renewal: a new key and certificate in the profile, the old key gone, openvpn restarted. The agent swaps the
    // profile first and clears the old key and its renewal record right after: the renewal is over when both hold.
    crate::support::wait::wait_until_async("the renewal", within_30s(), async || {
        std::fs::read_to_string(dir.join("client.ovpn")).is_ok_and(|p| p.contains("client-"))
            && !dir.join("renew.json").exists()
            && !dir.join("client.key").exists()
    })
    .await;
    let ovpn = std::fs::read_to_string(dir.join("client.ovpn")).unwrap();
    let key_path = std::path::PathBuf::from(ovpn.lines().last().unwrap().strip_prefix("key ").unwrap());
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(spki_of_cert(&inline_block(&ovpn, "cert")), spki_of_key(&key_path));
    assert_ne!(inline_block(&ovpn, "cert"), inline_block(&first_ovpn, "cert"));
    assert!(!dir.join("client.key").exists() && !dir.join("renew.json").exists());
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await, 2);
    crate::support::wait::wait_until_async("openvpn restarts with the new certificate", within_30s(), async || {
        starts().len() >= 2
    })
    .await;
    assert!(f.install.json(&["terminal", "show", "atm-1"])["last_seen"].is_string());

    // master restarts: heartbeats fail for a while, then resume on their own.
    master.stop().await;
    // Heartbeats from now on are recorded a minute later by master's clock: that is how the test sees them resume.
    f.advance(60);
    let resumed_from = f.ctx.clock.now();
    let failures = || std::fs::read_to_string(&agent_log).unwrap_or_default().matches("heartbeat failed").count();
    let failed_before = failures();
    crate::support::wait::wait_until_async("a heartbeat fails while master is down", within_30s(), async || {
        failures() > failed_before
    })
    .await;
    let master = LoopbackMaster::start(&f, "atm-1", port).await;
    let store = f.ctx.store.clone();
    crate::support::wait::wait_until_async("heartbeats resume", within_30s(), async || {
        store.credential_by_id(id).await.unwrap().unwrap().last_seen.is_some_and(|t| t >= resumed_from)
    })
    .await;

    // SIGTERM: the agent stops and takes openvpn with it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut agent = agent.take();
    let status = tokio::task::spawn_blocking(move || agent.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let survivors = || {
        starts()
            .iter()
            .map(|line| line.split_whitespace().next().unwrap().parse::<i32>().unwrap())
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")))
            .collect::<Vec<_>>()
    };
    // The same bound as ever: gone within 300 ms of the agent's exit (it reaps openvpn first, so normally at once).
    let deadline = Instant::now() + Duration::from_millis(300);
    crate::support::wait::poll_until_async(deadline, async || survivors().is_empty()).await;
    let left = survivors();
    assert!(left.is_empty(), "openvpn {left:?} outlived the agent");
    master.stop().await;
}

#[tokio::test]
async fn approval_requests_from_one_address_are_capped() {
    let f = Fixture::new().await;
    f.open_window().await;
    for i in 0..cas_vpn::gate::pair::MAX_PENDING_PER_SOURCE {
        let body = crate::gate::req(None, Some(&crate::gate::csr(&rcgen::KeyPair::generate().unwrap())));
        let (s, v) = f.pair("192.0.2.200", &body).await;
        assert_eq!(s, axum::http::StatusCode::ACCEPTED, "{i}: {v}");
    }
    let body = crate::gate::req(None, Some(&crate::gate::csr(&rcgen::KeyPair::generate().unwrap())));
    let (s, v) = f.pair("192.0.2.200", &body).await;
    assert_eq!((s, v["error"].as_str()), (axum::http::StatusCode::SERVICE_UNAVAILABLE, Some("too_many_pending")));
    let (s, _) = f.pair("192.0.2.201", &body).await;
    assert_eq!(s, axum::http::StatusCode::ACCEPTED, "another address is not affected");
}

both_backends!(
    #[tokio::test]
    the_approval_queue_ends_with_its_window_with_a_ban_and_with_reject_all
);

/// A queue of pairings waiting for approval filled by strangers must not block real terminals: it ends when the
/// window closes, a banned address's entries go with the ban, and `pairing reject --all` empties it.
async fn the_approval_queue_ends_with_its_window_with_a_ban_and_with_reject_all(f: Fixture) {
    use axum::http::{Method, StatusCode};
    let queue = |ip: &'static str| {
        let f = &f;
        async move {
            let key = rcgen::KeyPair::generate().unwrap();
            let (s, v) = f.pair(ip, &crate::gate::req(None, Some(&crate::gate::csr(&key)))).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{v}");
            v["pairing_id"].as_str().unwrap().to_owned()
        }
    };
    let poll = |ip: &'static str, id: String| {
        let f = &f;
        async move { f.call(ip, Method::GET, &format!("/v1/pair/{id}"), vec![]).await.0 }
    };
    let pending = || async { f.install.json(&["pairing", "status"])["pending"].as_array().unwrap().len() };

    // Closing the window ends what was queued in it.
    f.open_window().await;
    let a = queue("192.0.2.60").await;
    let b = queue("192.0.2.61").await;
    assert_eq!(pending().await, 2);
    // Each ends with the window at the latest (the window here is shorter than the pending TTL).
    let st = f.install.json(&["pairing", "status"]);
    let until = st["window"]["open_until"].as_str().unwrap().to_owned();
    for p in st["pending"].as_array().unwrap() {
        assert!(p["expires_at"].as_str().unwrap() <= until.as_str(), "{p} outlives the window ending {until}");
    }
    // (Through the operation itself, so that the gate's clock and the closing agree.)
    cas_vpn::ops::pairing::close_window(&f.ctx).await.unwrap();
    assert_eq!(pending().await, 0);
    f.open_window().await;
    assert_eq!(poll("192.0.2.60", a).await, StatusCode::GONE, "expired with its window");
    assert_eq!(poll("192.0.2.61", b).await, StatusCode::GONE);

    // A source that gets itself banned loses what it queued; another source keeps its entry.
    let mine = queue("192.0.2.62").await;
    let theirs = queue("192.0.2.63").await;
    for _ in 0..cas_vpn::gate::MAX_FAILURES {
        let (s, _, _) = f.call("192.0.2.62", Method::GET, &format!("/v1/pair/{}", "0".repeat(32)), vec![]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _) = f.pair("192.0.2.62", &crate::gate::req(None, None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "banned now");
    assert_eq!(pending().await, 1, "only the other source's pairing waits");
    assert_eq!(poll("192.0.2.63", theirs).await, StatusCode::ACCEPTED);
    let _ = mine;

    // `pairing reject --all` empties the queue; those terminals learn it on their next poll.
    let c = queue("192.0.2.64").await;
    let r = f.install.json(&["pairing", "reject", "--all"]);
    assert_eq!(r["rejected"], 2, "{r}");
    assert_eq!(pending().await, 0);
    assert_eq!(poll("192.0.2.64", c).await, StatusCode::FORBIDDEN, "rejected");
    let usage = f.install.fails(&["pairing", "reject"], 2);
    assert!(usage.contains("--all") || usage.contains("<ID>"), "{usage}");
}
