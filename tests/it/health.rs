//! Terminal health from both sides: the read model on both backends (the SQL filter agrees with
//! `domain::health::derive`, stale sessions of a dead node count for nothing, transitions keep their time), and
//! the agent's status endpoint (answers master alone: its address and its certificate) with master's prober.

use std::net::IpAddr;
use std::time::Duration;

use cas_pki::{KeyType, Validity};
use cas_vpn::db::{HealthClock, NewSession, Store, TerminalFilter, TerminalQuery};
use cas_vpn::domain::{Health, Kind};
use cas_vpn::http::client::{self as http, Target, Trust};
use cas_vpn::http::mtls::ClientTls;
use hyper::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::RunningGate;
use crate::gate::Fixture;
use crate::support::pg::PgDb;
use crate::support::{both_backends, store_on_both_backends};

const T0: i64 = 1_800_000_000;
const SILENT: i64 = 180;

store_on_both_backends!(health_read_model);

fn clock(now: i64) -> HealthClock {
    HealthClock { now, alive_since: now - cas_vpn::cluster::ALIVE_FOR_SECS, silent_after: SILENT, vpn: true }
}

fn session(node: &str, id: i64, cn: &str, ip: &str, cid: i64) -> NewSession {
    NewSession {
        node: node.into(),
        instance: "terminal-0".into(),
        credential_id: id,
        common_name: cn.into(),
        tunnel_ip: ip.into(),
        real_addr: "203.0.113.9:1".into(),
        since: T0,
        client_id: cid,
    }
}

/// name → health, as the paged read model (SQL) shows every terminal.
async fn page_health(store: &Store, c: HealthClock, filter: TerminalFilter) -> Vec<(String, Health)> {
    let q = TerminalQuery { filter, limit: 100, health: c, ..TerminalQuery::default() };
    let (rows, _) = store.terminals_page(&q).await.unwrap();
    rows.into_iter().map(|r| (r.name.to_string(), r.health)).collect()
}

async fn health_read_model(store: Store) {
    let names = ["beat", "probed", "silent", "stale", "gone", "never", "keygen", "revoked"];
    let new: Vec<_> =
        names.iter().map(|n| cas_vpn::db::NewTerminal { name: n.parse().unwrap(), cert: None, token: None }).collect();
    let created = store
        .create_terminals(&new, cas_vpn::db::TerminalLayout { instances: 1, hosts_per_instance: 64 }, T0)
        .await
        .unwrap();
    let id = |n: &str| created.iter().find(|c| c.name.as_str() == n).unwrap().id;
    // (SQLite serves one live node: the dead one registered first, long ago.)
    crate::store::register(&store, "dead", T0 - 100).await;
    crate::store::register(&store, "alive", T0).await;
    for n in ["beat", "probed", "silent", "stale", "gone"] {
        store.mark_paired(id(n), None, T0 - 1000).await.unwrap();
    }
    store.upsert_session(&session("alive", id("beat"), "beat", "198.18.0.2", 1)).await.unwrap();
    store.upsert_session(&session("alive", id("probed"), "probed", "198.18.0.3", 2)).await.unwrap();
    store.upsert_session(&session("alive", id("silent"), "silent", "198.18.0.4", 3)).await.unwrap();
    // A crashed node's row, never cleared: it must not make "stale" look online.
    store.upsert_session(&session("dead", id("stale"), "stale", "198.18.0.5", 4)).await.unwrap();
    // A server-made profile: connected without a pairing timestamp.
    store.upsert_session(&session("alive", id("keygen"), "keygen", "198.18.0.6", 5)).await.unwrap();
    store.touch_terminal(id("beat"), "20240115", T0 - 10).await.unwrap();
    store.touch_terminal(id("probed"), "20240115", T0 - 1000).await.unwrap();
    store.record_probe_ok(id("probed"), T0 - 5).await.unwrap();
    store.touch_terminal(id("silent"), "20240115", T0 - SILENT).await.unwrap();
    store.touch_terminal(id("stale"), "20240115", T0 - 5).await.unwrap();
    store.touch_terminal(id("gone"), "20240115", T0 - 5000).await.unwrap();
    store
        .revoke(
            &"revoked".parse().unwrap(),
            cas_pki::RevocationReason::Unspecified,
            &cas_vpn::domain::Actor::Master,
            T0,
        )
        .await
        .unwrap();

    let want = [
        ("beat", Health::Healthy),
        ("gone", Health::Offline),
        ("keygen", Health::AgentSilent),
        ("never", Health::NeverPaired),
        ("probed", Health::Healthy),
        ("revoked", Health::Revoked),
        ("silent", Health::AgentSilent),
        ("stale", Health::Offline),
    ];
    let c = clock(T0);
    // Rust's derivation over the facts…
    let facts = store.health_facts(&c, None).await.unwrap();
    let derived: Vec<(String, Health)> = facts.iter().map(|f| (f.name.clone(), f.health(&c))).collect();
    let want: Vec<(String, Health)> = want.iter().map(|(n, h)| ((*n).to_owned(), *h)).collect();
    assert_eq!(derived, want);
    // …and the page's SQL agree, row by row and filter by filter.
    let mut all = page_health(&store, c, TerminalFilter::Active).await;
    all.extend(page_health(&store, c, TerminalFilter::Revoked).await);
    all.sort();
    assert_eq!(all, want);
    for (filter, h) in [
        (TerminalFilter::Healthy, Health::Healthy),
        (TerminalFilter::AgentSilent, Health::AgentSilent),
        (TerminalFilter::Offline, Health::Offline),
        (TerminalFilter::NeverPaired, Health::NeverPaired),
    ] {
        let expected: Vec<_> = want.iter().filter(|(_, w)| *w == h).cloned().collect();
        assert_eq!(page_health(&store, c, filter).await, expected, "{filter:?}");
    }
    // Online: a session on a live node; the dead node's row is not one.
    let online: Vec<String> =
        page_health(&store, c, TerminalFilter::Online).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(online, ["beat", "keygen", "probed", "silent"]);
    let stale = facts.iter().find(|f| f.name == "stale").unwrap();
    assert_eq!(stale.tunnel_ip, None);
    assert_eq!(facts.iter().find(|f| f.name == "beat").unwrap().tunnel_ip.as_deref(), Some("198.18.0.2"));

    // Scenario B: no tunnel is known; heartbeats alone decide.
    let b = HealthClock { vpn: false, ..c };
    let b_health: Vec<(String, Health)> =
        store.health_facts(&b, None).await.unwrap().iter().map(|f| (f.name.clone(), f.health(&b))).collect();
    let mut b_page = page_health(&store, b, TerminalFilter::Active).await;
    b_page.extend(page_health(&store, b, TerminalFilter::Revoked).await);
    b_page.sort();
    assert_eq!(b_health, b_page);
    assert!(
        b_health.contains(&("stale".into(), Health::Healthy)) && b_health.contains(&("silent".into(), Health::Offline))
    );

    // Transitions: the time is written when the state changes, and only then.
    assert!(store.record_health(id("beat"), Health::Healthy, T0 - 10).await.unwrap());
    assert!(!store.record_health(id("beat"), Health::Healthy, T0).await.unwrap(), "no change, no write");
    let since = |facts: Vec<cas_vpn::db::HealthFacts>, c: &HealthClock| facts[0].since(c);
    assert_eq!(since(store.health_facts(&c, Some(id("beat"))).await.unwrap(), &c), Some(T0 - 10));
    let rows = store
        .terminals_page(&TerminalQuery { search: Some("beat".into()), limit: 5, health: c, ..TerminalQuery::default() })
        .await
        .unwrap()
        .0;
    assert_eq!((rows[0].health, rows[0].health_since), (Health::Healthy, Some(T0 - 10)));
    // 200 s later with no heartbeat: the derived state moved on; the recorded time no longer applies until master
    // records the change.
    let later = clock(T0 + 200);
    crate::store::register(&store, "alive", T0 + 200).await;
    let f = store.health_facts(&later, Some(id("beat"))).await.unwrap();
    assert_eq!((f[0].health(&later), f[0].since(&later)), (Health::AgentSilent, None));
    assert!(store.record_health(id("beat"), Health::AgentSilent, T0 + 200).await.unwrap());
    assert_eq!(since(store.health_facts(&later, Some(id("beat"))).await.unwrap(), &later), Some(T0 + 200));
    // A successful probe keeps the recorded state (the caller records the change) but counts as heard from.
    store.record_probe_ok(id("beat"), T0 + 201).await.unwrap();
    let f = store.health_facts(&later, Some(id("beat"))).await.unwrap();
    assert_eq!((f[0].health(&later), f[0].recorded), (Health::Healthy, Some((Health::AgentSilent, T0 + 200))));
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    agent_status_answers_only_master_and_the_prober_makes_a_silent_terminal_healthy
);

/// Runs the CLI without blocking the runtime that serves the gate.
async fn cli(f: &Fixture, args: &[&str]) -> std::process::Output {
    let mut cmd = f.install.cmd();
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

/// A running status endpoint of the agent in `dir`, allowing `master` only.
struct Endpoint {
    port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn endpoint(dir: &std::path::Path, master: cas_vpn::agent::status::Master) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shared = cas_vpn::agent::status::Shared::new("atm-1".into(), "20261101".into(), dir.to_owned());
    shared.set_openvpn_running(true);
    let (stop, rx) = watch::channel(false);
    let dir = dir.to_owned();
    let task = tokio::spawn(async move {
        cas_vpn::agent::status::serve_on(listener, &dir, shared, master, rx).await.unwrap();
    });
    Endpoint { port, stop, task }
}

impl Endpoint {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// `GET /v1/status` on 127.0.0.1:`port` with `tls`.
async fn ask(port: u16, tls: ClientTls) -> Result<http::Reply, http::HttpError> {
    let target = Target { host: "127.0.0.1".into(), port, tls: Some(Trust::Mutual(tls)), source: None };
    http::send_json(&target, Method::GET, "/v1/status", None::<&()>, Duration::from_secs(5), 16 * 1024).await
}

/// Polls `GET /v1/status` until it gets an HTTP answer (the endpoint takes one connection at a time and a few a
/// second: a connection beyond that is closed at once, which reads as an unexpected EOF).
async fn ask_answered(port: u16, tls: &ClientTls) -> http::Reply {
    ask_settled(port, tls).await.unwrap_or_else(|e| panic!("the status endpoint never answered: {e}"))
}

/// Polls `GET /v1/status` until the outcome is something else than a connection closed at once (the budget's
/// refusal, while the previous connection is still being let go), or 15 s passed.
async fn ask_settled(port: u16, tls: &ClientTls) -> Result<http::Reply, http::HttpError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = ask(port, tls.clone()).await;
        let closed_at_once = r.as_ref().is_err_and(|e| e.to_string().contains("unexpected EOF"));
        if !closed_at_once || std::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn agent_status_answers_only_master_and_the_prober_makes_a_silent_terminal_healthy(f: Fixture) {
    use cas_vpn::master::MasterState;
    use cas_vpn::master::probe::Prober;

    let token = f.add_terminal("atm-1", &[]);
    f.open_window().await;
    let gate = RunningGate::start(&f).await;
    let dir = f.install.path("agent");
    let d = dir.to_str().unwrap().to_owned();
    let out = cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", &d]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    gate.stop().await;
    let master_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("master.json")).unwrap()).unwrap();
    let master_name = master_json["host"].as_str().unwrap().to_owned();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let master = cas_vpn::agent::status::Master { ip: loopback, name: master_name.clone() };
    let ep = endpoint(&dir, master.clone()).await;

    let (m_cert, m_key, ca) = f.ctx.pki.read_master_tls().unwrap();
    let term_cert = std::fs::read_to_string(dir.join("client.crt")).unwrap();
    let term_key = std::fs::read_to_string(dir.join("client.key")).unwrap();

    // master, from master's address, with master's certificate: the status.
    let as_master = ClientTls::for_probe(&ca, &m_cert, &m_key, "atm-1").unwrap();
    let reply = ask_answered(ep.port, &as_master).await;
    assert_eq!(reply.status, StatusCode::OK);
    let st: cas_vpn::wire::AgentStatus = reply.json().unwrap();
    assert_eq!((st.terminal.as_str(), st.openvpn.as_str(), st.version.as_str()), ("atm-1", "running", "20261101"));
    assert_eq!(st.status["openvpn"], "running");
    assert!(st.status["cert_not_after"].is_i64());
    // The agent's own certificate is checked by name: asking for another terminal's name fails the handshake
    // (the endpoint answered master just before, so it is not its budget refusing).
    assert_eq!(ask_answered(ep.port, &as_master).await.status, StatusCode::OK);
    let e = ask_settled(ep.port, &ClientTls::for_probe(&ca, &m_cert, &m_key, "atm-2").unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("verify"), "{e}");

    // A terminal certificate of the same CA (not naming master): refused.
    let reply = ask_answered(ep.port, &ClientTls::for_probe(&ca, &term_cert, &term_key, "atm-1").unwrap()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!String::from_utf8_lossy(&reply.body).contains("atm-1"), "nothing about the terminal");
    // A certificate of another CA: no TLS session at all.
    let admin_ca = f.ctx.pki.load_ca(Kind::Admin).unwrap();
    let stranger = admin_ca.issue_client("mallory", KeyType::EcP256, Validity::days_from_now(1)).unwrap();
    let with_stranger = ClientTls::for_probe(&ca, &stranger.cert_pem, &stranger.key.to_pem(), "atm-1").unwrap();
    let e = ask_settled(ep.port, &with_stranger).await;
    assert!(e.is_err(), "{:?}", e.map(|r| r.status));
    ep.stop().await;

    // From another address than master's (master is 127.0.0.2 here; the caller 127.0.0.1): closed before TLS, even
    // with master's certificate.
    let elsewhere =
        endpoint(&dir, cas_vpn::agent::status::Master { ip: "127.0.0.2".parse().unwrap(), ..master.clone() }).await;
    let e = ask(elsewhere.port, ClientTls::for_probe(&ca, &m_cert, &m_key, "atm-1").unwrap()).await;
    assert!(e.is_err(), "{:?}", e.map(|r| r.status));
    elsewhere.stop().await;

    // The prober: atm-1 has its tunnel up (a session on a live node, its tunnel address 127.0.0.1) and never sent
    // a heartbeat: agent silent. One tick records that, probes it (from 127.0.0.1: master's address here), and the
    // answer makes it healthy.
    let ep = endpoint(&dir, master.clone()).await;
    let id = f.ctx.store.credential_by_name(&"atm-1".parse().unwrap()).await.unwrap().unwrap().id;
    crate::store::register(&f.ctx.store, "n1", f.ctx.clock.now()).await;
    let mut s = session("n1", id, "atm-1", "127.0.0.1", 1);
    s.since = f.ctx.clock.now();
    f.ctx.store.upsert_session(&s).await.unwrap();
    let state = MasterState::with_scenario(f.ctx.clone(), true).unwrap();
    let health = || async {
        let c = f.ctx.health_clock_in(true);
        let facts = f.ctx.store.health_facts(&c, Some(id)).await.unwrap();
        (facts[0].health(&c), facts[0].recorded)
    };
    assert_eq!(health().await.0, Health::AgentSilent);
    let mut prober = Prober::with(&state, loopback, ep.port).unwrap();
    prober.tick(&state).await.unwrap();
    let now = f.ctx.clock.now();
    assert_eq!(health().await, (Health::Healthy, Some((Health::Healthy, now))));
    let shown = f.install.json(&["terminal", "show", "atm-1"]);
    assert_eq!(shown["health"], "healthy", "{shown}");

    // The agent goes quiet too (endpoint down): past the threshold the terminal is agent silent, recorded with its
    // time; the failed probe is retried only after its backoff.
    ep.stop().await;
    let silent_after = f.ctx.health_clock_in(true).silent_after;
    f.advance(silent_after);
    crate::store::register(&f.ctx.store, "n1", f.ctx.clock.now()).await;
    prober.tick(&state).await.unwrap();
    let then = f.ctx.clock.now();
    assert_eq!(health().await, (Health::AgentSilent, Some((Health::AgentSilent, then))));
    let ep = endpoint(&dir, master.clone()).await;
    let mut retry = Prober::with(&state, loopback, ep.port).unwrap();
    prober.tick(&state).await.unwrap();
    assert_eq!(health().await.0, Health::AgentSilent, "the old prober backs off (and probes a closed port)");
    retry.tick(&state).await.unwrap();
    assert_eq!(health().await.0, Health::Healthy, "a fresh one probes at once");
    ep.stop().await;

    // The node stops heartbeating (serve vpn killed): its session row lingers, the terminal is offline.
    f.advance(cas_vpn::cluster::ALIVE_FOR_SECS + 1);
    prober.tick(&state).await.unwrap();
    let (h, recorded) = health().await;
    assert_eq!((h, recorded.map(|r| r.0)), (Health::Offline, Some(Health::Offline)));
}
