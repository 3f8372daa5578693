//! `/metrics` on the admin UI's router (`cas_vpn::web::router`, no socket), on SQLite and PostgreSQL:
//!
//! - without the metrics token (none, a wrong one, a replaced one, an API token) the answer is 401 and an empty
//!   body;
//! - with it, the body parses with a Prometheus text-format parser (`prometheus-parse`), every family has HELP and
//!   TYPE lines and a `casvpn_` name;
//! - the counters follow real pairings through the gate's router (ok, failed, banned, bans), revocations and
//!   sessions, and come from the store;
//! - every expiry gauge equals what `openssl x509 -enddate` / `openssl crl -nextupdate` reads from the real files,
//!   minus the fixture clock's now;
//! - what the vpn service reports on its control socket (here a stand-in answering `Status`) becomes instance
//!   readiness, restarts, crash loops and the answer-latency histogram;
//! - `packaging/prometheus/cas-vpn-alerts.yml` is YAML whose expressions name only exported metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use cas_vpn::db::NewSession;
use cas_vpn::domain::Kind;
use cas_vpn::pkifiles::ServerRole;
use cas_vpn::web::{WebState, router};
use rcgen::KeyPair;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

use crate::gate::{Fixture, csr, req};
use crate::support::openssl;

/// One scrape: status, content type, body.
async fn scrape(f: &Fixture, token: Option<&str>) -> (StatusCode, String, String) {
    let mut r = Request::builder().uri("/metrics");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut r = r.body(Body::empty()).unwrap();
    r.extensions_mut().insert(ConnectInfo("192.0.2.50:40000".parse::<SocketAddr>().unwrap()));
    let resp = router(WebState::new(f.ctx.clone())).oneshot(r).await.unwrap();
    let status = resp.status();
    let ctype = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

/// A parsed scrape: samples by `name{sorted labels}`, and the families' HELP and TYPE.
struct Parsed {
    values: BTreeMap<String, f64>,
    families: BTreeSet<String>,
}

impl Parsed {
    fn of(body: &str) -> Parsed {
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape =
            prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("not the text format ({e}):\n{body}"));
        let mut values = BTreeMap::new();
        for s in &scrape.samples {
            let mut labels: Vec<(String, String)> =
                s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let value = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    for b in h {
                        let mut l = labels.clone();
                        l.push(format!("le={}", b.less_than));
                        values.insert(format!("{}_bucket{{{}}}", s.metric, l.join(",")), b.count);
                    }
                    continue;
                }
                prometheus_parse::Value::Summary(_) => panic!("no summaries are exported"),
            };
            values.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
        }
        // HELP and TYPE for every family, each once, and nothing but casvpn_ names.
        let mut families = BTreeSet::new();
        let mut helped = BTreeSet::new();
        for l in body.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(name.starts_with("casvpn_"), "{name}");
                assert!(families.insert(name.clone()), "two TYPE lines for {name}");
            } else if let Some(rest) = l.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.trim().is_empty(), "{name} has an empty HELP");
                helped.insert(name.to_owned());
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
                    .unwrap_or(name);
                assert!(families.contains(family), "{name}: sample before its TYPE line");
            }
        }
        assert_eq!(families, helped, "every family has HELP and TYPE");
        assert_eq!(scrape.docs.len(), families.len(), "the parser read every HELP");
        Parsed { values, families }
    }

    #[track_caller]
    fn get(&self, key: &str) -> f64 {
        *self.values.get(key).unwrap_or_else(|| panic!("no {key} in {:#?}", self.values))
    }
}

/// Unix seconds of an `openssl … -enddate|-nextupdate -noout` line (`notAfter=Dec  3 09:45:27 2028 GMT`).
fn openssl_time(out: &str) -> i64 {
    let v = out.trim().split_once('=').unwrap_or_else(|| panic!("{out}")).1;
    let parts: Vec<&str> = v.split_whitespace().collect();
    assert_eq!(parts.len(), 5, "{v}");
    assert_eq!(parts[4], "GMT", "{v}");
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == parts[0]).unwrap() as u8 + 1;
    let date = time::Date::from_calendar_date(
        parts[3].parse().unwrap(),
        time::Month::try_from(month).unwrap(),
        parts[1].parse().unwrap(),
    )
    .unwrap();
    let hms: Vec<u8> = parts[2].split(':').map(|x| x.parse().unwrap()).collect();
    date.with_hms(hms[0], hms[1], hms[2]).unwrap().assume_utc().unix_timestamp()
}

fn cert_end(path: &Path) -> i64 {
    let (ok, out) = openssl(&["x509", "-enddate", "-noout", "-in", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    openssl_time(&out)
}

fn crl_next(path: &Path) -> i64 {
    let (ok, out) = openssl(&["crl", "-nextupdate", "-noout", "-in", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    openssl_time(&out)
}

fn wrong_secret(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let first = parts[2].remove(0);
    parts[2].insert(0, if first == 'A' { 'B' } else { 'A' });
    parts.join(".")
}

async fn scrape_follows_the_store_and_the_files(f: Fixture) {
    // No token made yet: nobody gets in, whatever they present.
    for t in [None, Some("cvmet_nothing"), Some("")] {
        let (s, _, body) = scrape(&f, t).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{t:?}");
        assert!(body.is_empty(), "{body}");
    }
    let token = cas_vpn::ops::metrics::new_token(&f.ctx).await.unwrap().token;
    assert!(token.starts_with("cvmet_") && token.len() >= 40, "{token}");
    let stored = f.ctx.store.metrics_token_hashes().await.unwrap();
    assert_eq!(stored, vec![cas_vpn::app::secret::hash_secret(&token)], "only the SHA-256 is kept");
    for wrong in [format!("{token}x"), token[..token.len() - 1].to_owned(), token.to_uppercase()] {
        let (s, _, body) = scrape(&f, Some(&wrong)).await;
        assert_eq!((s, body.as_str()), (StatusCode::UNAUTHORIZED, ""), "{wrong}");
    }

    let (s, ctype, body) = scrape(&f, Some(&token)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let p = Parsed::of(&body);
    assert_eq!(p.get("casvpn_source_up{source=store}"), 1.0);
    assert_eq!(p.get("casvpn_source_up{source=vpn}"), 0.0, "no vpn service runs here");
    assert!(!p.values.keys().any(|k| k.starts_with("casvpn_instance_")), "no instance is made up: {body}");
    for r in ["ok", "failed", "banned"] {
        assert_eq!(p.get(&format!("casvpn_pairings_total{{result={r}}}")), 0.0);
    }
    assert_eq!(p.get("casvpn_upgrade_slots_limit{}"), 20.0);

    // Real traffic: one pairing, five wrong tokens from one address (its ban), one more from it (banned), a
    // revocation and a live session.
    let token1 = f.add_terminal("atm-1", &[]);
    let token2 = f.add_terminal("atm-2", &[]);
    f.open_window().await;
    let key = KeyPair::generate().unwrap();
    let (s, paired) = f.pair("192.0.2.10", &req(Some(&token1), Some(&csr(&key)))).await;
    assert_eq!(s, StatusCode::OK, "{paired}");
    let wrong = wrong_secret(&token2);
    for i in 0..5 {
        let (s, v) = f.pair("198.51.100.7", &req(Some(&wrong), Some(&csr(&key)))).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("invalid_token")), "attempt {i}: {v}");
    }
    let (s, v) = f.pair("198.51.100.7", &req(Some(&token2), Some(&csr(&key)))).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("banned")), "{v}");
    f.install.ok(&["revoke", "atm-2"]);
    let atm1 = f.ctx.store.credential_by_name(&"atm-1".parse().unwrap()).await.unwrap().unwrap();
    let now = f.ctx.clock.now();
    // n1 is alive (registered now); n0 registered a minute ago and died: its stale row is not a live session.
    for (node, at) in [("n0", now - 60), ("n1", now)] {
        let name: cas_vpn::domain::Name = node.parse().unwrap();
        let start = cas_vpn::db::NodeStart {
            name: &name,
            address: "198.51.100.1",
            version: "test",
            run_id: node,
            now: at,
            alive_since: at - 15,
        };
        f.ctx.store.register_node(&start).await.unwrap().unwrap();
    }
    f.ctx
        .store
        .upsert_session(&NewSession {
            node: "n0".into(),
            instance: "terminal-1".into(),
            credential_id: atm1.id,
            common_name: "atm-1".into(),
            tunnel_ip: "10.8.0.2".into(),
            real_addr: "192.0.2.10:50000".into(),
            since: now - 120,
            client_id: 3,
        })
        .await
        .unwrap();
    f.ctx
        .store
        .upsert_session(&NewSession {
            node: "n1".into(),
            instance: "terminal-0".into(),
            credential_id: atm1.id,
            common_name: "atm-1".into(),
            tunnel_ip: "10.8.0.2".into(),
            real_addr: "192.0.2.10:51000".into(),
            since: now,
            client_id: 7,
        })
        .await
        .unwrap();

    let (_, _, body) = scrape(&f, Some(&token)).await;
    let p = Parsed::of(&body);
    assert_eq!(p.get("casvpn_pairings_total{result=ok}"), 1.0, "{body}");
    assert_eq!(p.get("casvpn_pairings_total{result=failed}"), 5.0, "{body}");
    assert_eq!(p.get("casvpn_pairings_total{result=banned}"), 1.0, "{body}");
    assert_eq!(p.get("casvpn_bans_total{}"), 1.0, "the address; its /24 has room");
    assert_eq!(p.get("casvpn_bans_active{}"), 1.0);
    assert_eq!(p.get("casvpn_revocations_total{kind=terminal}"), 1.0);
    assert_eq!(p.get("casvpn_revocations_total{kind=admin}"), 0.0);
    assert_eq!(p.get("casvpn_sessions{instance=terminal-0,kind=terminal,node=n1}"), 1.0);
    assert!(!p.values.keys().any(|k| k.contains("node=n0")), "a dead node's stale session is not live: {body}");
    assert_eq!(p.get("casvpn_client_certs_expiring_30d{kind=terminal}"), 0.0);
    assert_eq!(p.get("casvpn_terminal_renewals_overdue{}"), 0.0);
    assert_eq!(p.get("casvpn_terminal_renewal_failures{}"), 0.0);

    // Every expiry gauge against openssl's reading of the real file, from the same now.
    let now = f.ctx.clock.now();
    let pki = &f.ctx.pki;
    for kind in [Kind::Terminal, Kind::Admin] {
        let ca = kind.to_string();
        assert_eq!(
            p.get(&format!("casvpn_ca_expiry_seconds{{ca={ca}}}")),
            (cert_end(&pki.ca_cert_path(kind)) - now) as f64
        );
        assert_eq!(
            p.get(&format!("casvpn_crl_next_update_seconds{{ca={ca}}}")),
            (crl_next(&pki.crl_path(kind)) - now) as f64
        );
    }
    for role in [ServerRole::TerminalVpn, ServerRole::AdminVpn, ServerRole::Gate, ServerRole::Master] {
        let key = format!("casvpn_server_cert_expiry_seconds{{cert={}}}", role.common_name());
        assert_eq!(p.get(&key), (cert_end(&pki.server_cert_path(role)) - now) as f64, "{key}");
    }
    assert_eq!(p.get("casvpn_server_cert_expiry_seconds{cert=web-ui}"), (cert_end(&pki.web_cert_path()) - now) as f64);
    // The soonest terminal certificate: atm-1's, the only one of an active credential.
    let cert = f.install.path("atm-1.crt");
    std::fs::write(&cert, paired["cert"].as_str().unwrap()).unwrap();
    assert_eq!(p.get("casvpn_client_cert_expiry_seconds{kind=terminal}"), (cert_end(&cert) - now) as f64);
    assert!(!p.values.contains_key("casvpn_client_cert_expiry_seconds{kind=admin}"), "no admin credential");

    // Time moves: the gauges follow the clock; 30 days before the end the certificate counts as expiring.
    let left = cert_end(&cert) - now;
    f.advance(left - 29 * 86400);
    let p = Parsed::of(&scrape(&f, Some(&token)).await.2);
    assert_eq!(p.get("casvpn_client_cert_expiry_seconds{kind=terminal}"), (29 * 86400) as f64);
    assert_eq!(p.get("casvpn_client_certs_expiring_30d{kind=terminal}"), 1.0);
    // 29 days left is past the latest renewal point (half of the 60-day window), and nothing renewed it.
    assert_eq!(p.get("casvpn_terminal_renewals_overdue{}"), 1.0);
    assert_eq!(p.get("casvpn_terminal_renewal_failures{}"), 0.0);
    // A failed renewal counts (until one succeeds: tests/it/renewal.rs).
    let code = "signer_unavailable".parse().unwrap();
    let detail = "the signer did not sign".parse().unwrap();
    let at = f.ctx.clock.now();
    use cas_vpn::domain::renewal::FailureSource;
    f.ctx.store.record_renewal_failure(atm1.id, FailureSource::Master, &code, &detail, at).await.unwrap();
    let p = Parsed::of(&scrape(&f, Some(&token)).await.2);
    assert_eq!(p.get("casvpn_terminal_renewal_failures{}"), 1.0);

    // A new token replaces the old one.
    let token_b = cas_vpn::ops::metrics::new_token(&f.ctx).await.unwrap();
    assert_eq!(token_b.replaced, 1);
    assert_eq!(scrape(&f, Some(&token)).await.0, StatusCode::UNAUTHORIZED, "the replaced token");
    assert_eq!(scrape(&f, Some(&token_b.token)).await.0, StatusCode::OK);
    // `metrics revoke` (the CLI): nothing gets in.
    let out = f.install.ok(&["metrics", "revoke"]);
    assert!(out.contains("revoked: 1"), "{out}");
    let (s, _, body) = scrape(&f, Some(&token_b.token)).await;
    assert_eq!((s, body.as_str()), (StatusCode::UNAUTHORIZED, ""));
    // The CLI prints a token once, and it works.
    let printed = f.install.ok(&["metrics", "token"]).trim().to_owned();
    assert_eq!(scrape(&f, Some(&printed)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn scrape_follows_the_store_and_the_files_on_sqlite() {
    scrape_follows_the_store_and_the_files(Fixture::new().await).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn scrape_follows_the_store_and_the_files_on_postgres() {
    scrape_follows_the_store_and_the_files(Fixture::on_postgres().await).await;
}

/// A stand-in for `serve vpn`'s control socket: answers every request with `answer` (one JSON line).
fn fake_vpn(root: &Path, answer: serde_json::Value) -> tokio::task::JoinHandle<()> {
    let path = cas_vpn::control::socket_path(root);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut line = String::new();
            let (r, mut w) = s.split();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            assert!(line.contains("\"status\""), "{line}");
            w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
        }
    })
}

/// Every metric name an expression mentions (`casvpn_…`).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("casvpn_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn instances_come_from_the_vpn_service_and_the_alert_rules_name_only_exported_metrics() {
    let f = Fixture::new().await;
    let token = cas_vpn::ops::metrics::new_token(&f.ctx).await.unwrap().token;
    let bounds = cas_vpn::control::ANSWER_BOUNDS.to_vec();
    let answer = serde_json::json!({"response": "status", "instances": [
        {"name": "terminal-0", "kind": "terminal", "port": 13000, "state": "running", "pid": 4242, "ready": true,
         "restarts": 3, "crash_loop": false, "sessions": 1,
         "answers": {"bounds": bounds, "buckets": [0, 1, 2, 2, 2, 2, 2, 2, 2, 2], "count": 3, "sum_seconds": 7.015}},
        // A vpn service from before the histogram: no `answers`, so no histogram series for it.
        {"name": "admin-12000", "kind": "admin", "port": 12000, "state": "backoff", "ready": false,
         "restarts": 9, "crash_loop": true, "sessions": 0}
    ]});
    let vpn = fake_vpn(f.install.root(), answer);
    let (s, _, body) = scrape(&f, Some(&token)).await;
    vpn.abort();
    assert_eq!(s, StatusCode::OK);
    let p = Parsed::of(&body);
    assert_eq!(p.get("casvpn_source_up{source=vpn}"), 1.0, "{body}");
    assert_eq!(p.get("casvpn_instance_ready{instance=terminal-0,kind=terminal}"), 1.0);
    assert_eq!(p.get("casvpn_instance_ready{instance=admin-12000,kind=admin}"), 0.0);
    assert_eq!(p.get("casvpn_instance_restarts_total{instance=terminal-0,kind=terminal}"), 3.0);
    assert_eq!(p.get("casvpn_instance_restarts_total{instance=admin-12000,kind=admin}"), 9.0);
    assert_eq!(p.get("casvpn_instance_crash_loop{instance=admin-12000,kind=admin}"), 1.0);
    assert_eq!(p.get("casvpn_instance_crash_loop{instance=terminal-0,kind=terminal}"), 0.0);
    assert_eq!(p.get("casvpn_mgmt_answer_seconds_bucket{instance=terminal-0,kind=terminal,le=0.01}"), 1.0);
    assert_eq!(p.get("casvpn_mgmt_answer_seconds_bucket{instance=terminal-0,kind=terminal,le=5}"), 2.0);
    assert_eq!(p.get("casvpn_mgmt_answer_seconds_bucket{instance=terminal-0,kind=terminal,le=inf}"), 3.0);
    assert!(body.contains("casvpn_mgmt_answer_seconds_sum{instance=\"terminal-0\",kind=\"terminal\"} 7.015"), "{body}");
    assert!(body.contains("casvpn_mgmt_answer_seconds_count{instance=\"terminal-0\",kind=\"terminal\"} 3"), "{body}");
    assert!(!body.contains("casvpn_mgmt_answer_seconds_count{instance=\"admin-12000\""), "{body}");

    // The shipped alert rules: YAML, the four alerts the issue asks for, and only metrics exported here.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus/cas-vpn-alerts.yml");
    let rules: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap();
            assert!(rule["labels"]["severity"].as_str().is_some(), "{alert}: no severity");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert}: no summary");
            let names = names_in(expr);
            assert!(!names.is_empty(), "{alert}: {expr}");
            for n in names {
                let family = n.strip_suffix("_bucket").filter(|f| p.families.contains(*f)).unwrap_or(&n);
                assert!(p.families.contains(family), "{alert} names {n}, which is not exported: {:?}", p.families);
            }
            alerts.insert(alert);
        }
    }
    for wanted in [
        "CasVpnCrlExpiresSoon",
        "CasVpnCaExpiresSoon",
        "CasVpnServerCertExpiresSoon",
        "CasVpnInstanceCrashLooping",
        "CasVpnNoTerminalOnline",
        "CasVpnTerminalRenewalsFailing",
        "CasVpnTerminalRenewalsOverdue",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
}

/// The upgrade slots in use live in the gate's memory; the gate publishes them to the store at every change, so
/// the admin service's `/metrics` (another process) follows a download's start and end, under the gate's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_slots_in_use_follow_the_gates_downloads() {
    use http_body_util::BodyExt;
    use std::time::{Duration, Instant};

    let (f, pkg, _) = crate::gate::upgrade_fixture(2, Vec::new()).await;
    let token = cas_vpn::ops::metrics::new_token(&f.ctx).await.unwrap().token;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(cas_vpn::gate::publish_gauges(f.state.clone(), "gw-1".parse().unwrap(), stop_rx));
    let in_use = async || {
        let (_, _, body) = scrape(&f, Some(&token)).await;
        Parsed::of(&body).values.get("casvpn_upgrade_slots_in_use{node=gw-1}").copied()
    };
    let deadline = || Instant::now() + Duration::from_secs(10);
    crate::support::wait::wait_until_async("the gate's gauge at 0", deadline(), async || in_use().await == Some(0.0))
        .await;

    // A download holds its slot until its body is read to the end (or dropped): the router's answer, unread.
    let mut r = Request::builder().uri("/v1/upgrade/batm.pkg").body(Body::empty()).unwrap();
    r.extensions_mut().insert(ConnectInfo("192.0.2.60:40000".parse::<SocketAddr>().unwrap()));
    let resp = cas_vpn::gate::router(f.state.clone()).oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    crate::support::wait::wait_until_async("one slot in use", deadline(), async || in_use().await == Some(1.0)).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), pkg.len());
    crate::support::wait::wait_until_async("the slot given back", deadline(), async || in_use().await == Some(0.0))
        .await;

    // A gate that stopped publishing is absent once its row is older than GAUGES_FRESH (its node is gone).
    stop_tx.send(true).unwrap();
    publisher.await.unwrap();
    let later = f.ctx.clock.now() - cas_vpn::gate::GAUGES_FRESH.as_secs() as i64 - 1;
    f.ctx.store.set_gate_gauges("gw-1", 0, later).await.unwrap();
    assert_eq!(in_use().await, None);
}
