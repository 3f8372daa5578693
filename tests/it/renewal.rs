//! An expiry-proof fleet: master announces each certificate's own renewal point (spread over the first half of
//! the renewal window, stable across heartbeats and master restarts) and accepts a renewal from that point on,
//! never before; why a renewal failed is kept per terminal (master's refusal, or the terminal's own report in a
//! heartbeat) until one succeeds; the fleet's progress (expiring, overdue, failed) as `status` reads it from the
//! store, on both backends.

use std::collections::HashSet;

use axum::http::StatusCode;
use cas_vpn::app::renewal::{LISTED_FAILURES, fleet};
use cas_vpn::db::{NewCert, NewTerminal, Store, TerminalLayout};
use cas_vpn::domain::renewal::{FailureSource, RenewalPolicy};
use cas_vpn::domain::{Actor, Name};
use cas_vpn::master::MasterState;
use rcgen::KeyPair;
use serde_json::{Value, json};

use crate::gate::{Fixture, count, csr};
use crate::master::{call, der, hb, paired};
use crate::support::pg::PgDb;
use crate::support::{both_backends, store_on_both_backends};

const DAY: i64 = 86_400;

async fn certs(f: &Fixture) -> i64 {
    count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await
}

both_backends!(
    #[tokio::test]
    a_batch_gets_spread_points_and_renewal_keeps_to_them
);

async fn a_batch_gets_spread_points_and_renewal_keeps_to_them(f: Fixture) {
    // Six terminals pair in the same second, 720 days ago: their certificates end together, ten days from now.
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * DAY).unwrap();
    let mut batch = Vec::new();
    for i in 0..6 {
        batch.push(paired(&f, &format!("atm-{i}"), Some(&format!("10.8.0.{}", i + 2)), i + 1).await);
    }
    f.ctx.clock.set(present).unwrap();
    let m = MasterState::new(f.ctx.clone()).unwrap();
    let policy = RenewalPolicy::from_days(60);
    let ip = |i: usize| format!("10.8.0.{}", i + 2);

    let mut points = Vec::new();
    for (i, t) in batch.iter().enumerate() {
        let (s, v) = call(&m, &ip(i), Some(&t.der()), "/v1/heartbeat", hb()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (point, not_after) = (v["renew_after"].as_i64().unwrap(), v["cert_not_after"].as_i64().unwrap());
        let row = &f.ctx.store.certificates_of(t.id).await.unwrap()[0];
        assert_eq!(not_after, row.not_after);
        // Inside the first half of the window, and the pure policy's point for that serial.
        assert!(point >= not_after - 60 * DAY && point <= not_after - 30 * DAY, "{point} vs {not_after}");
        assert_eq!(point, policy.point(&row.serial, row.not_after));
        // Stable across heartbeats.
        let (_, again) = call(&m, &ip(i), Some(&t.der()), "/v1/heartbeat", hb()).await;
        assert_eq!(again["renew_after"].as_i64(), Some(point));
        points.push(point);
    }
    assert_eq!(points.iter().collect::<HashSet<_>>().len(), 6, "one batch, six different points: {points:?}");
    // And across a master restart (nothing is kept but the serial).
    let restarted = MasterState::new(f.ctx.clone()).unwrap();
    let (_, v) = call(&restarted, &ip(0), Some(&batch[0].der()), "/v1/heartbeat", hb()).await;
    assert_eq!(v["renew_after"].as_i64(), Some(points[0]));

    // One second before its point, atm-0 is refused (and told from when), and the refusal is recorded.
    let (t, point) = (&batch[0], points[0]);
    let mine = t.der();
    let renew = |body: Value| call(&m, "10.8.0.2", Some(&mine), "/v1/renew", body);
    let new_key = KeyPair::generate().unwrap();
    f.ctx.clock.set(point - 1).unwrap();
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::CONFLICT, Some("not_in_renewal_window")), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&cas_vpn::app::rfc3339(point)), "{v}");
    assert_eq!(certs(&f).await, 6);
    let failed = f.ctx.store.renewal_failure_of(t.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.source, failed.code.as_str(), failed.at),
        (FailureSource::Master, "not_in_renewal_window", point - 1)
    );

    // At its point: with the signer down, master fails it, says so, and records why.
    f.ctx.clock.set(point).unwrap();
    let signer = f.signer;
    signer.stop().await;
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["error"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("internal")), "{v}");
    let failed = f.ctx.store.renewal_failure_of(t.id).await.unwrap().unwrap();
    assert_eq!((failed.source, failed.code.as_str(), failed.at), (FailureSource::Master, "signer_unavailable", point));
    assert!(failed.detail.as_str().starts_with("the signer did not sign"), "{failed:?}");

    // `status` names it; the batch has 30 to 60 days left, and is overdue by each one's own point.
    let st = cas_vpn::ops::status::status(&f.ctx).await.unwrap();
    assert_eq!((st.renewal.failed, st.renewal.failures.len()), (1, 1));
    let shown = &st.renewal.failures[0];
    assert_eq!(
        (shown.terminal.as_str(), shown.source, shown.error.as_str()),
        ("atm-0", "master", "signer_unavailable")
    );
    let overdue = points.iter().filter(|p| **p + 3600 <= point).count() as u64;
    assert_eq!(st.renewal.overdue, overdue);
    assert_eq!((st.renewal.expiring_7d, st.renewal.expiring_30d, st.renewal.expiring_60d), (0, 0, 6));
    assert!(st.warnings.iter().any(|w| w.contains("failed to renew") && w.contains("atm-0")), "{:?}", st.warnings);

    // The signer is back: accepted at its point, the failure is gone.
    let _signer = crate::support::InProcessSigner::start(&f.ctx).await;
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let renewed = v["cert"].as_str().unwrap().to_owned();
    assert_eq!(count(&f.ctx.store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await, 7);
    assert_eq!(f.ctx.store.renewal_failure_of(t.id).await.unwrap(), None);

    // The answer was lost: the terminal still presents its old certificate, so it is told its old point (passed)
    // rather than the new certificate's, and its next heartbeat reports the failure it saw.
    let report = json!({"version": "20240115", "status": {"renew_failed":
        {"at": point + 5, "error": "unreachable", "message": "connection reset by peer"}}});
    let (s, v) = call(&m, "10.8.0.2", Some(&mine), "/v1/heartbeat", report).await;
    assert_eq!((s, v["renew_after"].as_i64()), (StatusCode::OK, Some(point)), "{v}");
    let failed = f.ctx.store.renewal_failure_of(t.id).await.unwrap().unwrap();
    // Dated no later than master's clock.
    assert_eq!((failed.source, failed.code.as_str(), failed.at), (FailureSource::Terminal, "unreachable", point));
    let (_, v) = call(&m, "10.8.0.2", Some(&der(&renewed)), "/v1/heartbeat", hb()).await;
    assert!(v["renew_after"].as_i64().unwrap() > point + 600 * DAY, "the new certificate's point: {v}");
    // Its retry with the same key gets the same certificate, and clears the failure.
    let (s, v) = renew(json!({"csr": csr(&new_key)})).await;
    assert_eq!((s, v["cert"].as_str()), (StatusCode::OK, Some(renewed.as_str())));
    assert_eq!(f.ctx.store.renewal_failure_of(t.id).await.unwrap(), None);

    // A malformed report is refused whole: nothing recorded, the heartbeat not even counted.
    let seen = f.ctx.store.credential_by_id(t.id).await.unwrap().unwrap().last_seen;
    f.ctx.clock.advance(10).unwrap();
    for bad in [json!("yes"), json!({"at": 1, "error": "Bad Code"}), json!({"at": 1, "error": "x", "message": "a\nb"})]
    {
        let body = json!({"version": "20240115", "status": {"renew_failed": bad}});
        let (s, v) = call(&m, "10.8.0.2", Some(&der(&renewed)), "/v1/heartbeat", body).await;
        assert_eq!((s, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{v}");
    }
    assert_eq!(f.ctx.store.credential_by_id(t.id).await.unwrap().unwrap().last_seen, seen);
    assert_eq!(f.ctx.store.renewal_failure_of(t.id).await.unwrap(), None);
}

store_on_both_backends!(fleet_progress_and_failures);

const T0: i64 = 1_800_000_000;

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn cert(serial: &str, cn: &str, not_after: i64) -> NewCert {
    NewCert {
        serial: serial.to_owned(),
        common_name: cn.to_owned(),
        not_before: T0 - 700 * DAY,
        not_after,
        cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
    }
}

async fn fleet_progress_and_failures(store: Store) {
    let policy = RenewalPolicy::from_days(60);
    // A serial whose point is after T0 although its window is open (so it is not overdue).
    let calm = (0u64..).map(|n| format!("{n:032x}")).find(|s| policy.point(s, T0 + 50 * DAY) > T0).unwrap();
    let terminals = [
        ("t-expired", "e1", T0 - DAY),
        ("t-5d", "a1", T0 + 5 * DAY),
        ("t-20d", "b1", T0 + 20 * DAY),
        ("t-50d", calm.as_str(), T0 + 50 * DAY),
        ("t-far", "c1", T0 + 365 * DAY),
        ("t-revoked", "d1", T0 + 3 * DAY),
        ("t-renewed", "f1", T0 + 2 * DAY),
    ];
    let new: Vec<NewTerminal> = terminals
        .iter()
        .map(|(n, serial, end)| NewTerminal { name: name(n), cert: Some(cert(serial, n, *end)), token: None })
        .collect();
    let layout = TerminalLayout { instances: 2, hosts_per_instance: 8 };
    let created = store.create_terminals(&new, layout, T0 - 700 * DAY).await.unwrap();
    let id = |n: &str| created.iter().find(|c| c.name.as_str() == n).unwrap().id;
    store.revoke(&name("t-revoked"), cas_pki::RevocationReason::Unspecified, &Actor::Master, T0).await.unwrap();
    let (code, detail) = ("signer_unavailable".parse().unwrap(), "the signer did not sign".parse().unwrap());
    // t-renewed failed once, then renewed: the renewal clears its failure in the same transaction.
    store.record_renewal_failure(id("t-renewed"), FailureSource::Master, &code, &detail, T0 - 50).await.unwrap();
    store.add_renewed_certificate(id("t-renewed"), &cert("f2", "t-renewed", T0 + 700 * DAY), T0).await.unwrap();
    assert_eq!(store.renewal_failure_of(id("t-renewed")).await.unwrap(), None);

    let f = fleet(&store, policy, T0, LISTED_FAILURES).await.unwrap();
    // By the newest certificate of unrevoked terminals: expired and 5 days within 7; + 20 days within 30;
    // + 50 days within 60. Overdue: expired, 5 d and 20 d (past the latest point, 30 d before the end).
    assert_eq!(f.expiring, [2, 3, 4]);
    assert_eq!((f.expired, f.overdue, f.failed), (1, 3, 0));
    assert!(f.failures.is_empty());

    // Failures: master's for t-5d; the terminal's own (older) report does not replace it, a newer one does.
    store.record_renewal_failure(id("t-5d"), FailureSource::Master, &code, &detail, T0 - 100).await.unwrap();
    let unreachable = "unreachable".parse().unwrap();
    let reset = "connection reset".parse().unwrap();
    store.record_renewal_failure(id("t-5d"), FailureSource::Terminal, &unreachable, &reset, T0 - 200).await.unwrap();
    let got = store.renewal_failure_of(id("t-5d")).await.unwrap().unwrap();
    assert_eq!((got.source, got.code.as_str(), got.at), (FailureSource::Master, "signer_unavailable", T0 - 100));
    store.record_renewal_failure(id("t-5d"), FailureSource::Terminal, &unreachable, &reset, T0 - 10).await.unwrap();
    let got = store.renewal_failure_of(id("t-5d")).await.unwrap().unwrap();
    assert_eq!(
        (got.source, got.code.as_str(), got.at, got.name.as_str()),
        (FailureSource::Terminal, "unreachable", T0 - 10, "t-5d")
    );
    // Repeating the same report changes nothing; master's later account replaces it.
    store.record_renewal_failure(id("t-20d"), FailureSource::Terminal, &unreachable, &reset, T0 - 50).await.unwrap();
    store.record_renewal_failure(id("t-20d"), FailureSource::Terminal, &unreachable, &reset, T0 - 50).await.unwrap();
    store.record_renewal_failure(id("t-20d"), FailureSource::Master, &code, &detail, T0 - 60).await.unwrap();
    assert_eq!(store.renewal_failure_of(id("t-20d")).await.unwrap().unwrap().source, FailureSource::Master);
    // A revoked terminal's failure is not listed.
    store.record_renewal_failure(id("t-revoked"), FailureSource::Master, &code, &detail, T0).await.unwrap();

    let (listed, total) = store.renewal_failures(1).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(listed.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["t-5d"], "the latest first");
    let f = fleet(&store, policy, T0, LISTED_FAILURES).await.unwrap();
    assert_eq!(f.failed, 2);
    assert_eq!(f.failures.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["t-5d", "t-20d"]);
    store.clear_renewal_failure(id("t-20d")).await.unwrap();
    assert_eq!(store.renewal_failures(10).await.unwrap().1, 1);

    // Time moves: at the 50-day certificate's latest point it is overdue too (an hour later).
    let later = T0 + 20 * DAY + 3600;
    let f = fleet(&store, policy, later, LISTED_FAILURES).await.unwrap();
    assert_eq!((f.expired, f.overdue), (3, 4), "expired: t-expired, t-5d, t-20d (ends exactly 1 h before)");
}

/// The reference agent reports a renewal failure master never saw (here its own directory is broken: its renewal
/// record is a directory), master keeps it as the terminal's, and the renewal that follows the repair clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_a_failure_master_never_saw_and_a_renewal_clears_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let f = Fixture::new().await;
    let token = f.add_terminal("atm-1", &[]);
    // Paired 720 days ago: ten days left today, long past its renewal point.
    let present = f.ctx.clock.now();
    f.ctx.clock.set(present - 720 * DAY).unwrap();
    f.open_window().await;
    let gate = crate::agent::RunningGate::start(&f).await;
    let dir = f.install.path("agent");
    let d = dir.to_str().unwrap().to_owned();
    let out = crate::agent::cli(&f, &["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", &d]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    gate.stop().await;
    f.ctx.clock.set(present).unwrap();
    let id = f.ctx.store.credential_by_name(&name("atm-1")).await.unwrap().unwrap().id;
    let master = crate::agent::LoopbackMaster::start(&f, "atm-1", 0).await;
    let port = master.port;

    // The agent cannot keep its renewal record: the renewal fails before any request leaves.
    std::fs::create_dir(dir.join("renew.json")).unwrap();
    let fake = f.install.path("fake-openvpn");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Command::new(assert_cmd::cargo::cargo_bin("cas-vpn"))
        .env(crate::support::USERS_ENV, "none")
        .args(["agent", "run", "--dir", &d, "--heartbeat", "1s", "--master", &format!("127.0.0.1:{port}")])
        .args(["--openvpn", fake.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = crate::support::KillOnDrop::new(agent);
    let within_30s = || Instant::now() + Duration::from_secs(30);
    let store = f.ctx.store.clone();
    crate::support::wait::wait_until_async("the agent's report of its failure", within_30s(), async || {
        store.renewal_failure_of(id).await.unwrap().is_some_and(|x| x.source == FailureSource::Terminal)
    })
    .await;
    let failed = store.renewal_failure_of(id).await.unwrap().unwrap();
    assert_eq!(failed.code.as_str(), "local", "{failed:?}");
    assert!(failed.detail.as_str().contains("renew.json"), "{failed:?}");
    assert!(failed.at <= f.ctx.clock.now());
    let st = cas_vpn::ops::status::status(&f.ctx).await.unwrap();
    assert_eq!((st.renewal.failed, st.renewal.failures[0].source), (1, "terminal"));
    assert_eq!(certs(&f).await, 1);

    // Repaired: the next renewal succeeds and the failure is gone with it.
    std::fs::remove_dir(dir.join("renew.json")).unwrap();
    crate::support::wait::wait_until_async("the renewal", within_30s(), async || {
        count(&store, "SELECT COUNT(*) FROM certificates WHERE credential_id IS NOT NULL").await == 2
            && store.renewal_failure_of(id).await.unwrap().is_none()
    })
    .await;
    master.stop().await;
}
