//! The store, on both backends. Every test below is written once as `async fn name(store: Store)` and run by
//! `both_backends!` as `store::name::sqlite` and `store::name::postgres`, each on a fresh database.
//!
//! PostgreSQL needs `CAS_VPN_TEST_PG_URL` (see `support/pg.rs`): `export CAS_VPN_TEST_PG_URL=$(scripts/pg-setup)`.
//! The PostgreSQL variants are `#[ignore]`d (`scripts/test` runs them with `--include-ignored`); the SQLite ones
//! always run.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cas_pki::RevocationReason::{CessationOfOperation, KeyCompromise, Superseded, Unspecified};
use cas_vpn::db::{DbError, NewCert, NewSession, NewTerminal, NewToken, Redeemed, Store, TerminalLayout, TokenRefusal};
use cas_vpn::domain::{Actor, Kind, Name, PortRange};
use sha2::{Digest, Sha256};

use crate::support::pg::PgDb;

/// A fixed "now", so that every timestamp in these tests is exact.
const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
const SMALL: TerminalLayout = TerminalLayout { instances: 3, hosts_per_instance: 4 };

/// Runs each listed `async fn(Store)` on a fresh SQLite file and on a fresh PostgreSQL database.
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::Builder::new().prefix("cv-store-").tempdir().unwrap();
                let store = super::Store::open_sqlite(&dir.path().join("cas-vpn.sqlite")).await.unwrap();
                super::$test(store.clone()).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
            async fn postgres() {
                let db = super::PgDb::create().await;
                let store = super::Store::open(&db.url).await.unwrap();
                super::$test(store.clone()).await;
                store.close().await;
            }
        }
    )*};
}

both_backends!(
    story,
    terminals_spread_and_reuse_addresses,
    duplicate_names_insert_nothing,
    two_thousand_terminals_in_one_batch,
    admin_ports_lowest_free_and_exhaustion,
    revoke_errors_and_effects,
    serials_are_never_reused,
    tokens_redeem_once,
    concurrent_redeems_pair_once,
    crl_numbers_increase,
    sessions_crud_and_heartbeat,
    bans_and_pairing_window,
    audit_rows,
);

// ---------------------------------------------------------------------------------------------------------------
// helpers

/// A web UI user (the audit rows these tests write could come from any actor).
fn web(s: &str) -> Actor {
    Actor::WebUser(name(s))
}

fn root() -> Actor {
    Actor::cli(0, Some("root"))
}

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn serial(n: u64) -> String {
    format!("{n:032x}")
}

fn cert(serial: &str, cn: &str) -> NewCert {
    NewCert {
        serial: serial.to_owned(),
        common_name: cn.to_owned(),
        not_before: T0 - 300,
        not_after: T0 + 365 * DAY,
        cert_pem: format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", "A".repeat(1000)),
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn token(id: &str, expires_at: i64) -> NewToken {
    NewToken { id: id.to_owned(), secret_hash: sha256_hex(&format!("secret of {id}")), expires_at }
}

fn terminal(n: &str) -> NewTerminal {
    NewTerminal { name: name(n), cert: None, token: None }
}

async fn one_terminal(store: &Store, n: &str, cert_serial: Option<&str>, token_id: Option<&str>) -> i64 {
    let new = NewTerminal {
        name: name(n),
        cert: cert_serial.map(|s| cert(s, n)),
        token: token_id.map(|id| token(id, T0 + DAY)),
    };
    store.create_terminals(&[new], SMALL, T0).await.unwrap()[0].id
}

fn address(c: &cas_vpn::db::Credential) -> (u32, u32) {
    (c.home_instance.unwrap(), c.host_index.unwrap())
}

/// Row counts of every table, to prove that a refused change left nothing behind.
async fn counts(store: &Store) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in ["credentials", "certificates", "pairing_tokens", "audit", "sessions", "crl_state", "ip_bans"] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let n: i64 = match store {
            Store::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
            Store::Postgres(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap(),
        };
        out.insert(table, n);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// the story: a day in the life of an installation

async fn story(store: Store) {
    let now = T0;
    // The operator opens a pairing window and adds three terminals, each with a token.
    store.set_pairing_window(Some(now + 900)).await.unwrap();
    assert_eq!(store.pairing_window().await.unwrap(), Some(now + 900));
    let new: Vec<NewTerminal> = ["atm-lisbon-1", "atm-lisbon-2", "atm-porto-1"]
        .iter()
        .enumerate()
        .map(|(i, n)| NewTerminal { name: name(n), cert: None, token: Some(token(&format!("tok{i}"), now + DAY)) })
        .collect();
    let created = store.create_terminals(&new, SMALL, now).await.unwrap();
    assert_eq!(created.iter().map(address).collect::<Vec<_>>(), [(0, 2), (1, 2), (2, 2)]);
    assert!(created.iter().all(|c| c.kind == Kind::Terminal && c.paired_at.is_none()));

    // The first terminal pairs with its token.
    let t = store.token("tok0").await.unwrap().unwrap();
    assert_eq!(t.secret_hash, sha256_hex("secret of tok0"));
    assert!(!format!("{t:?}").contains(&t.secret_hash), "the hash stays out of Debug output");
    let pk = sha256_hex("public key of lisbon-1");
    let redeemed = store.redeem_token("tok0", &pk, &cert(&serial(1), "atm-lisbon-1"), now + 60).await.unwrap();
    assert_eq!(redeemed, Redeemed::Fresh { credential_id: created[0].id, cert_serial: serial(1) });
    let lisbon1 = store.credential_by_id(created[0].id).await.unwrap().unwrap();
    assert_eq!(lisbon1.paired_at, Some(now + 60));

    // It connects and sends heartbeats.
    store
        .upsert_session(&NewSession {
            instance: "terminal-0".into(),
            credential_id: lisbon1.id,
            common_name: "atm-lisbon-1".into(),
            tunnel_ip: "198.18.0.2".into(),
            real_addr: "203.0.113.7:40001".into(),
            since: now + 70,
            client_id: 4,
        })
        .await
        .unwrap();
    store.touch_terminal(lisbon1.id, "20240115", now + 80).await.unwrap();
    let s = store.session_by_tunnel_ip("198.18.0.2").await.unwrap().unwrap();
    assert_eq!((s.credential_id, s.client_id), (lisbon1.id, 4));
    let lisbon1 = store.credential_by_name(&name("atm-lisbon-1")).await.unwrap().unwrap();
    assert_eq!((lisbon1.version.as_deref(), lisbon1.last_seen), (Some("20240115"), Some(now + 80)));

    // An admin gets a VPN credential; the server certificates are on record.
    store.record_server_cert(Kind::Terminal, &cert(&serial(100), "server-terminal"), now).await.unwrap();
    store.record_server_cert(Kind::Admin, &cert(&serial(101), "server-admin"), now).await.unwrap();
    let ports = PortRange::new(12000, 12050).unwrap();
    let alice = store.create_admin(&name("alice"), ports, &cert(&serial(2), "alice"), now).await.unwrap();
    assert_eq!((alice.kind, alice.admin_port), (Kind::Admin, Some(12000)));
    let all = store.list_credentials(None, false).await.unwrap();
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alice", "atm-lisbon-1", "atm-lisbon-2", "atm-porto-1"]);
    assert_eq!(store.list_credentials(Some(Kind::Admin), false).await.unwrap(), std::slice::from_ref(&alice));

    // A terminal is stolen: revoke it; its certificate goes on the CRL, its session is still listed until the
    // supervisor kills it.
    let (revoked, serials) =
        store.revoke(&name("atm-lisbon-1"), KeyCompromise, &web("operator"), now + 3600).await.unwrap();
    assert_eq!(serials, [serial(1)]);
    assert_eq!(revoked.revoked_at, Some(now + 3600));
    assert_eq!(
        store.revoked_certificates(Kind::Terminal).await.unwrap(),
        [(serial(1), now + 3600, "key-compromise".into())]
    );
    assert!(store.revoked_certificates(Kind::Admin).await.unwrap().is_empty());
    assert_eq!(store.next_crl_number(Kind::Terminal, now + 3600, now + 3600 + 7 * DAY).await.unwrap(), 1);
    assert_eq!(store.sessions_of(revoked.id).await.unwrap().len(), 1);
    store.remove_session("terminal-0", 4).await.unwrap();
    assert!(store.list_sessions().await.unwrap().is_empty());
    let audit = store.list_audit(10).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].subject.as_str(), &audit[0].actor),
        ("revoke", "atm-lisbon-1", &web("operator"))
    );

    // Its replacement takes the same name and, being the least loaded choice, the freed address.
    let again = store.create_terminals(&[terminal("atm-lisbon-1")], SMALL, now + 7200).await.unwrap();
    assert_ne!(again[0].id, revoked.id);
    assert_eq!(address(&again[0]), (0, 2));
    assert_eq!(store.credential_by_name(&name("atm-lisbon-1")).await.unwrap().unwrap().id, again[0].id);
    let history = store.list_credentials(Some(Kind::Terminal), true).await.unwrap();
    assert_eq!(history.iter().filter(|c| c.name.as_str() == "atm-lisbon-1").count(), 2);

    // The window closes.
    store.set_pairing_window(None).await.unwrap();
    assert_eq!(store.pairing_window().await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------------------------
// credentials

async fn terminals_spread_and_reuse_addresses(store: Store) {
    let first =
        store.create_terminals(&[terminal("a"), terminal("b"), terminal("c"), terminal("d")], SMALL, T0).await.unwrap();
    assert_eq!(first.iter().map(address).collect::<Vec<_>>(), [(0, 2), (1, 2), (2, 2), (0, 3)]);
    let e = store.create_terminals(&[terminal("e")], SMALL, T0).await.unwrap();
    assert_eq!(address(&e[0]), (1, 3));

    // Revoking b frees (1, 2); instances 1 and 2 now tie at one terminal each: the lower index wins, and its
    // lowest free host index is b's.
    store.revoke(&name("b"), Superseded, &Actor::Uid(1000), T0 + 1).await.unwrap();
    let f = store.create_terminals(&[terminal("f")], SMALL, T0 + 2).await.unwrap();
    assert_eq!(address(&f[0]), (1, 2));
    let b2 = store.create_terminals(&[terminal("b")], SMALL, T0 + 3).await.unwrap();
    assert_eq!(address(&b2[0]), (2, 3));
    assert_ne!(b2[0].id, first[1].id);
    let by_name = store.credential_by_name(&name("b")).await.unwrap().unwrap();
    assert_eq!((by_name.id, by_name.revoked_at), (b2[0].id, None));

    // Fill the remaining 6 of 12 addresses, then one more is refused and changes nothing.
    let rest: Vec<NewTerminal> = (0..6).map(|i| terminal(&format!("fill-{i}"))).collect();
    let filled = store.create_terminals(&rest, SMALL, T0 + 4).await.unwrap();
    let mut all: Vec<(u32, u32)> =
        store.list_credentials(Some(Kind::Terminal), false).await.unwrap().iter().map(address).collect();
    all.sort();
    let expected: Vec<(u32, u32)> = (0..3).flat_map(|i| (2..6).map(move |h| (i, h))).collect();
    assert_eq!(all, expected, "every address used exactly once");
    assert_eq!(filled.len(), 6);
    let before = counts(&store).await;
    let err = store.create_terminals(&[terminal("one-too-many")], SMALL, T0 + 5).await.unwrap_err();
    assert!(matches!(err, DbError::AddressesExhausted), "{err:?}");
    assert_eq!(counts(&store).await, before);

    // A bigger layout (more instances) makes room at once.
    let wider = TerminalLayout { instances: 4, hosts_per_instance: 4 };
    let g = store.create_terminals(&[terminal("g")], wider, T0 + 6).await.unwrap();
    assert_eq!(address(&g[0]), (3, 2));
}

async fn duplicate_names_insert_nothing(store: Store) {
    one_terminal(&store, "x", Some(&serial(1)), Some("tx")).await;
    let before = counts(&store).await;

    let batch = |names: &[&str], first_serial: u64| -> Vec<NewTerminal> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| NewTerminal {
                name: name(n),
                cert: Some(cert(&serial(first_serial + i as u64), n)),
                token: Some(token(&format!("tok-{n}-{first_serial}"), T0 + DAY)),
            })
            .collect()
    };
    // A clash with an active credential, after two fine names: nothing of the batch is inserted.
    let err = store.create_terminals(&batch(&["y", "z", "x"], 10), SMALL, T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "x"), "{err:?}");
    assert_eq!(counts(&store).await, before);
    assert!(store.credential_by_name(&name("y")).await.unwrap().is_none());
    // A clash inside the batch names the second occurrence's name.
    let err = store.create_terminals(&batch(&["p", "q", "p"], 20), SMALL, T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "p"), "{err:?}");
    assert_eq!(counts(&store).await, before);

    // Terminals and admins share one namespace.
    let ports = PortRange::new(12000, 12050).unwrap();
    let err = store.create_admin(&name("x"), ports, &cert(&serial(30), "x"), T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "x"), "{err:?}");
    assert_eq!(counts(&store).await, before);
    store.create_admin(&name("adm"), ports, &cert(&serial(31), "adm"), T0).await.unwrap();
    let err = store.create_terminals(&[terminal("adm")], SMALL, T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "adm"), "{err:?}");
    assert!(err.to_string().contains("adm"));
}

async fn two_thousand_terminals_in_one_batch(store: Store) {
    let layout = TerminalLayout { instances: 11, hosts_per_instance: 200 };
    let new: Vec<NewTerminal> = (0..2000)
        .map(|i| {
            let n = format!("atm-{i:04}");
            NewTerminal {
                cert: Some(cert(&serial(1_000_000 + i), &n)),
                token: Some(token(&format!("t{i:04}"), T0 + DAY)),
                name: name(&n),
            }
        })
        .collect();
    let started = Instant::now();
    let created = store.create_terminals(&new, layout, T0).await.unwrap();
    let took = started.elapsed();
    eprintln!("[{}] 2000 terminals (with certificates and tokens) in one batch: {took:?}", store.backend());

    assert_eq!(created.len(), 2000);
    for (c, n) in created.iter().zip(&new) {
        assert_eq!(c.name, n.name, "returned in input order");
    }
    let stored = store.credential_by_name(&name("atm-1234")).await.unwrap().unwrap();
    assert_eq!(stored, created[1234]);
    let addresses: HashSet<(u32, u32)> = created.iter().map(address).collect();
    assert_eq!(addresses.len(), 2000, "no address handed out twice");
    let mut per_instance = [0usize; 11];
    for (i, _) in &addresses {
        per_instance[*i as usize] += 1;
    }
    assert!(per_instance.iter().all(|&n| n == 181 || n == 182), "spread evenly: {per_instance:?}");
    let c = counts(&store).await;
    assert_eq!((c["credentials"], c["certificates"], c["pairing_tokens"]), (2000, 2000, 2000));
    assert_eq!(store.certificates_of(stored.id).await.unwrap()[0].serial, serial(1_000_000 + 1234));
    assert!(took < Duration::from_secs(5), "2000 terminals took {took:?}");
}

async fn admin_ports_lowest_free_and_exhaustion(store: Store) {
    let ports = PortRange::new(12000, 12050).unwrap();
    for i in 0..51u16 {
        let n = format!("admin-{i:02}");
        let c = store.create_admin(&name(&n), ports, &cert(&serial(u64::from(i) + 1), &n), T0).await.unwrap();
        assert_eq!(c.admin_port, Some(12000 + i));
        assert_eq!((c.home_instance, c.host_index), (None, None));
    }
    let before = counts(&store).await;
    let err = store.create_admin(&name("admin-51"), ports, &cert(&serial(99), "admin-51"), T0).await.unwrap_err();
    assert!(matches!(&err, DbError::PortsExhausted { range } if range == "12000-12050"), "{err:?}");
    assert!(err.to_string().contains("12000-12050"));
    assert_eq!(counts(&store).await, before);

    let (old, serials) = store.revoke(&name("admin-07"), CessationOfOperation, &root(), T0 + 10).await.unwrap();
    assert_eq!(serials, [serial(8)]);
    let again = store.create_admin(&name("admin-07"), ports, &cert(&serial(200), "admin-07"), T0 + 11).await.unwrap();
    assert_eq!(again.admin_port, Some(12007), "the revoked credential's port is free again");
    assert_ne!(again.id, old.id);
    let certs = store.certificates_of(again.id).await.unwrap();
    assert_eq!((certs.len(), certs[0].ca, certs[0].credential_id), (1, Kind::Admin, Some(again.id)));
    let admins = store.list_credentials(Some(Kind::Admin), true).await.unwrap();
    assert_eq!(admins.len(), 52);
    let ids: Vec<i64> = admins.iter().filter(|c| c.name.as_str() == "admin-07").map(|c| c.id).collect();
    assert_eq!(ids, [old.id, again.id], "ordered by name, then id");
    assert_eq!(store.list_credentials(Some(Kind::Terminal), true).await.unwrap(), []);
}

async fn revoke_errors_and_effects(store: Store) {
    let err = store.revoke(&name("nobody"), Unspecified, &root(), T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody"));

    let id = one_terminal(&store, "t", Some(&serial(1)), Some("tok")).await;
    store.add_certificate(id, Kind::Terminal, &cert(&serial(2), "t"), T0 + 5).await.unwrap();
    let audit_before = store.list_audit(100).await.unwrap().len();
    let (c, serials) = store.revoke(&name("t"), CessationOfOperation, &web("alice"), T0 + 10).await.unwrap();
    assert_eq!(serials, [serial(1), serial(2)]);
    assert_eq!((c.id, c.revoked_at, c.revoke_reason.as_deref()), (id, Some(T0 + 10), Some("cessation-of-operation")));
    assert_eq!(store.credential_by_id(id).await.unwrap().unwrap(), c);
    for s in [serial(1), serial(2)] {
        let row = store.certificate_by_serial(&s).await.unwrap().unwrap();
        assert_eq!((row.revoked_at, row.revoke_reason.as_deref()), (Some(T0 + 10), Some("cessation-of-operation")));
    }
    assert_eq!(store.list_audit(100).await.unwrap().len(), audit_before + 1);

    let before = counts(&store).await;
    let err = store.revoke(&name("t"), Superseded, &web("alice"), T0 + 20).await.unwrap_err();
    assert!(matches!(&err, DbError::AlreadyRevoked { name } if name.as_str() == "t"), "{err:?}");
    assert_eq!(counts(&store).await, before);
    // Revoked: not listed as active, still found by name, no new certificate, no pairing, no token.
    assert!(store.list_credentials(None, false).await.unwrap().is_empty());
    assert_eq!(store.credential_by_name(&name("t")).await.unwrap().unwrap().id, id);
    let err = store.add_certificate(id, Kind::Terminal, &cert(&serial(3), "t"), T0 + 30).await.unwrap_err();
    assert!(matches!(err, DbError::AlreadyRevoked { .. }), "{err:?}");
    assert!(store.token("tok").await.unwrap().unwrap().locked_at.is_some(), "revocation locks unused tokens");
    let err = store.redeem_token("tok", "pk", &cert(&serial(4), "t"), T0 + 40).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::Locked }), "{err:?}");
    let err = store.new_token(id, &token("tok2", T0 + DAY)).await.unwrap_err();
    assert!(matches!(err, DbError::AlreadyRevoked { .. }), "{err:?}");
    assert_eq!(counts(&store).await, before);

    // When several revoked credentials share the name, the newest is reported.
    let id2 = one_terminal(&store, "t", None, None).await;
    store.revoke(&name("t"), Superseded, &web("alice"), T0 + 50).await.unwrap();
    assert_eq!(store.credential_by_name(&name("t")).await.unwrap().unwrap().id, id2);
    assert!(store.credential_by_id(999_999).await.unwrap().is_none());
}

async fn serials_are_never_reused(store: Store) {
    let ports = PortRange::new(12000, 12001).unwrap();
    store.record_server_cert(Kind::Terminal, &cert(&serial(1), "server"), T0).await.unwrap();
    let taken = |e: &DbError, s: u64| matches!(e, DbError::SerialTaken { serial: x } if *x == serial(s));

    // … by another server certificate, even of the other CA
    let err = store.record_server_cert(Kind::Admin, &cert(&serial(1), "server"), T0).await.unwrap_err();
    assert!(taken(&err, 1), "{err:?}");
    let before = counts(&store).await;
    // … by a terminal batch (with an existing serial, or the same one twice): nothing of it stays
    let mut batch = vec![NewTerminal { name: name("a"), cert: Some(cert(&serial(2), "a")), token: None }];
    batch.push(NewTerminal { name: name("b"), cert: Some(cert(&serial(1), "b")), token: Some(token("tb", T0 + DAY)) });
    let err = store.create_terminals(&batch, SMALL, T0).await.unwrap_err();
    assert!(taken(&err, 1), "{err:?}");
    batch[1].cert = Some(cert(&serial(2), "b"));
    let err = store.create_terminals(&batch, SMALL, T0).await.unwrap_err();
    assert!(taken(&err, 2), "{err:?}");
    // … by an admin credential: no credential, no port used
    let err = store.create_admin(&name("adm"), ports, &cert(&serial(1), "adm"), T0).await.unwrap_err();
    assert!(taken(&err, 1), "{err:?}");
    assert_eq!(counts(&store).await, before);
    let adm = store.create_admin(&name("adm"), ports, &cert(&serial(3), "adm"), T0).await.unwrap();
    assert_eq!(adm.admin_port, Some(12000));

    // … by a renewal, or a pairing (which then leaves the token unused)
    let id = one_terminal(&store, "t", Some(&serial(4)), Some("tok")).await;
    let before = counts(&store).await;
    let err = store.add_certificate(id, Kind::Terminal, &cert(&serial(3), "t"), T0).await.unwrap_err();
    assert!(taken(&err, 3), "{err:?}");
    let err = store.redeem_token("tok", "pk", &cert(&serial(4), "t"), T0 + 1).await.unwrap_err();
    assert!(taken(&err, 4), "{err:?}");
    let tok = store.token("tok").await.unwrap().unwrap();
    assert_eq!((tok.used_at, tok.cert_serial), (None, None));
    assert_eq!(store.credential_by_id(id).await.unwrap().unwrap().paired_at, None);
    assert_eq!(counts(&store).await, before);

    // … after revocation
    store.revoke(&name("t"), KeyCompromise, &root(), T0 + 2).await.unwrap();
    let err = store.record_server_cert(Kind::Terminal, &cert(&serial(4), "server"), T0 + 3).await.unwrap_err();
    assert!(taken(&err, 4), "{err:?}");

    // Serials are lowercase hex text: another spelling is refused, not stored as a second serial.
    let err = store.record_server_cert(Kind::Terminal, &cert("00ABCD", "server"), T0).await.unwrap_err();
    assert!(matches!(err, DbError::Sqlx(_)), "{err:?}");
    // A certificate of the wrong CA for its credential is refused.
    let err = store.add_certificate(adm.id, Kind::Terminal, &cert(&serial(5), "adm"), T0).await.unwrap_err();
    assert!(matches!(err, DbError::WrongKind { actual: Kind::Admin, expected: Kind::Terminal, .. }), "{err:?}");
    let err = store.add_certificate(424_242, Kind::Terminal, &cert(&serial(5), "adm"), T0).await.unwrap_err();
    assert!(matches!(err, DbError::NotFound { .. }), "{err:?}");
    store.add_certificate(adm.id, Kind::Admin, &cert(&serial(5), "adm"), T0).await.unwrap();
    assert_eq!(store.certificates_of(adm.id).await.unwrap().len(), 2);
    assert_eq!(store.certificate_by_serial(&serial(1)).await.unwrap().unwrap().credential_id, None);
    assert!(store.certificate_by_serial(&serial(77)).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------------------------
// tokens

async fn tokens_redeem_once(store: Store) {
    let id = one_terminal(&store, "t", None, Some("tok1")).await;
    let t = store.token("tok1").await.unwrap().unwrap();
    assert_eq!((t.credential_id, t.created_at, t.expires_at, t.used_at, t.locked_at), (id, T0, T0 + DAY, None, None));
    assert!(store.token("nope").await.unwrap().is_none());
    let (pk_a, pk_b) = (sha256_hex("key A"), sha256_hex("key B"));

    let r = store.redeem_token("tok1", &pk_a, &cert(&serial(1), "t"), T0 + 10).await.unwrap();
    assert_eq!(r, Redeemed::Fresh { credential_id: id, cert_serial: serial(1) });
    let t = store.token("tok1").await.unwrap().unwrap();
    assert_eq!(
        (t.used_at, t.pubkey_sha256.as_deref(), t.cert_serial.clone()),
        (Some(T0 + 10), Some(pk_a.as_str()), Some(serial(1)))
    );
    assert_eq!(store.credential_by_id(id).await.unwrap().unwrap().paired_at, Some(T0 + 10));

    // A lost response: the same key again gets the first result, and nothing new is stored.
    let before = counts(&store).await;
    let r = store.redeem_token("tok1", &pk_a, &cert(&serial(2), "t"), T0 + 20).await.unwrap();
    assert_eq!(r, Redeemed::AlreadySameKey { credential_id: id, cert_serial: serial(1) });
    assert_eq!(counts(&store).await, before);
    assert!(store.certificate_by_serial(&serial(2)).await.unwrap().is_none());

    // Another key: refused, and the token is locked for good (even for the first key).
    let err = store.redeem_token("tok1", &pk_b, &cert(&serial(3), "t"), T0 + 30).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::KeyMismatch }), "{err:?}");
    assert_eq!(store.token("tok1").await.unwrap().unwrap().locked_at, Some(T0 + 30));
    let err = store.redeem_token("tok1", &pk_a, &cert(&serial(3), "t"), T0 + 40).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::Locked }), "{err:?}");

    // Expiry: expires_at itself is already too late.
    store.new_token(id, &token("tok2", T0 + 50)).await.unwrap();
    let err = store.redeem_token("tok2", &pk_a, &cert(&serial(4), "t"), T0 + 50).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::Expired }), "{err:?}");
    assert!(err.to_string().contains("expired"));
    store.new_token(id, &token("tok3", T0 + 50)).await.unwrap();
    let r = store.redeem_token("tok3", &pk_b, &cert(&serial(5), "t"), T0 + 49).await.unwrap();
    assert!(matches!(r, Redeemed::Fresh { .. }));

    let err = store.redeem_token("nope", &pk_a, &cert(&serial(6), "t"), T0).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::Unknown }), "{err:?}");

    // An explicit lock.
    store.new_token(id, &token("tok4", T0 + DAY)).await.unwrap();
    assert!(store.lock_token("tok4", T0 + 60).await.unwrap());
    assert!(!store.lock_token("tok4", T0 + 61).await.unwrap());
    assert!(!store.lock_token("nope", T0 + 61).await.unwrap());
    let err = store.redeem_token("tok4", &pk_a, &cert(&serial(7), "t"), T0 + 70).await.unwrap_err();
    assert!(matches!(err, DbError::TokenUnusable { reason: TokenRefusal::Locked }), "{err:?}");

    // Tokens belong to active terminals only; token ids are unique.
    let adm = store
        .create_admin(&name("adm"), PortRange::new(12000, 12000).unwrap(), &cert(&serial(8), "adm"), T0)
        .await
        .unwrap();
    let err = store.new_token(adm.id, &token("tok5", T0 + DAY)).await.unwrap_err();
    assert!(matches!(err, DbError::WrongKind { .. }), "{err:?}");
    let err = store.new_token(123_456, &token("tok5", T0 + DAY)).await.unwrap_err();
    assert!(matches!(err, DbError::NotFound { .. }), "{err:?}");
    assert!(store.new_token(id, &token("tok4", T0 + DAY)).await.is_err());
    assert!(!format!("{:?}", token("tok9", 1)).contains(&sha256_hex("secret of tok9")));
}

async fn concurrent_redeems_pair_once(store: Store) {
    let id = one_terminal(&store, "t", None, Some("same")).await;
    store.new_token(id, &token("diff", T0 + DAY)).await.unwrap();
    let pk = sha256_hex("the key");

    // Eight attempts with the same key: one pairs, the others see its result.
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let (store, pk) = (store.clone(), pk.clone());
            tokio::spawn(async move { store.redeem_token("same", &pk, &cert(&serial(10 + i), "t"), T0 + 1).await })
        })
        .collect();
    let mut fresh = Vec::new();
    let mut same = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Redeemed::Fresh { cert_serial, .. } => fresh.push(cert_serial),
            Redeemed::AlreadySameKey { cert_serial, .. } => same.push(cert_serial),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one Fresh: {fresh:?}");
    assert!(same.iter().all(|s| *s == fresh[0]), "retries see the winner's certificate");
    assert_eq!(store.certificates_of(id).await.unwrap().len(), 1);

    // Eight attempts with eight keys: one pairs, the others are refused.
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.redeem_token("diff", &sha256_hex(&format!("key {i}")), &cert(&serial(20 + i), "t"), T0 + 2).await
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Redeemed::Fresh { .. }) => fresh += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(DbError::TokenUnusable { reason }) => {
                assert!([TokenRefusal::KeyMismatch, TokenRefusal::Locked].contains(&reason), "{reason}")
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(store.certificates_of(id).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------------------------
// CRL, sessions, bans, audit

async fn crl_numbers_increase(store: Store) {
    assert_eq!(store.crl_state(Kind::Terminal).await.unwrap(), None);
    for n in 1..=3u64 {
        let this = T0 + n as i64;
        assert_eq!(store.next_crl_number(Kind::Terminal, this, this + 7 * DAY).await.unwrap(), n);
    }
    assert_eq!(store.crl_state(Kind::Terminal).await.unwrap(), Some((3, T0 + 3, T0 + 3 + 7 * DAY)));
    assert_eq!(store.next_crl_number(Kind::Admin, T0, T0 + DAY).await.unwrap(), 1, "each CA counts on its own");

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.next_crl_number(Kind::Admin, T0, T0 + DAY).await.unwrap() })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (2..=11).collect::<Vec<u64>>(), "concurrent writers never share a number");
}

async fn sessions_crud_and_heartbeat(store: Store) {
    let ids: Vec<i64> = store
        .create_terminals(&[terminal("t1"), terminal("t2")], SMALL, T0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    let session = |instance: &str, cid: i64, who: usize, ip: &str| NewSession {
        instance: instance.into(),
        credential_id: ids[who],
        common_name: format!("t{}", who + 1),
        tunnel_ip: ip.into(),
        real_addr: "203.0.113.9:5555".into(),
        since: T0 + cid,
        client_id: cid,
    };
    store.upsert_session(&session("term-1", 7, 1, "198.18.1.2")).await.unwrap();
    store.upsert_session(&session("term-0", 2, 1, "198.18.0.3")).await.unwrap();
    store.upsert_session(&session("term-0", 1, 0, "198.18.0.2")).await.unwrap();
    let all = store.list_sessions().await.unwrap();
    let keys: Vec<(&str, i64)> = all.iter().map(|s| (s.instance.as_str(), s.client_id)).collect();
    assert_eq!(keys, [("term-0", 1), ("term-0", 2), ("term-1", 7)]);
    assert_eq!((all[0].bytes_in, all[0].bytes_out), (0, 0));

    store.update_session_bytes("term-0", 1, 1000, 2000).await.unwrap();
    store.update_session_bytes("term-9", 1, 1, 1).await.unwrap(); // gone already: fine
    let s = store.session_by_tunnel_ip("198.18.0.2").await.unwrap().unwrap();
    assert_eq!((s.credential_id, s.bytes_in, s.bytes_out, s.common_name.as_str()), (ids[0], 1000, 2000, "t1"));
    assert!(store.session_by_tunnel_ip("198.18.9.9").await.unwrap().is_none());
    let of_t2: Vec<i64> = store.sessions_of(ids[1]).await.unwrap().iter().map(|s| s.client_id).collect();
    assert_eq!(of_t2, [2, 7], "oldest first");

    // The same CID on the same instance (an instance restart): replaced, counters reset.
    store.upsert_session(&session("term-0", 1, 1, "198.18.0.3")).await.unwrap();
    let s = store.list_sessions().await.unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!((s[0].credential_id, s[0].tunnel_ip.as_str(), s[0].bytes_in), (ids[1], "198.18.0.3", 0));

    store.remove_session("term-1", 7).await.unwrap();
    store.remove_session("term-1", 7).await.unwrap(); // twice: fine
    assert_eq!(store.list_sessions().await.unwrap().len(), 2);
    store.upsert_session(&session("term-1", 8, 0, "198.18.0.2")).await.unwrap();
    assert_eq!(store.clear_sessions(Some("term-0")).await.unwrap(), 2);
    assert_eq!(store.clear_sessions(Some("term-0")).await.unwrap(), 0);
    assert_eq!(store.clear_sessions(None).await.unwrap(), 1);
    assert!(store.list_sessions().await.unwrap().is_empty());

    // Heartbeats and pairing marks land on terminals only.
    store.touch_terminal(ids[0], "20240115", T0 + 100).await.unwrap();
    let t1 = store.credential_by_id(ids[0]).await.unwrap().unwrap();
    assert_eq!((t1.version.as_deref(), t1.last_seen), (Some("20240115"), Some(T0 + 100)));
    let err = store.touch_terminal(987_654, "1", T0).await.unwrap_err();
    assert!(matches!(err, DbError::NotFound { .. }), "{err:?}");
    store.mark_paired(ids[1], Some("BT300-0042"), T0 + 200).await.unwrap();
    store.mark_paired(ids[1], None, T0 + 300).await.unwrap();
    let t2 = store.credential_by_id(ids[1]).await.unwrap().unwrap();
    assert_eq!((t2.paired_at, t2.hw_serial.as_deref()), (Some(T0 + 300), Some("BT300-0042")));
    let adm = store
        .create_admin(&name("adm"), PortRange::new(12000, 12000).unwrap(), &cert(&serial(1), "adm"), T0)
        .await
        .unwrap();
    assert!(matches!(store.touch_terminal(adm.id, "1", T0).await, Err(DbError::NotFound { .. })));
}

async fn bans_and_pairing_window(store: Store) {
    const BAN: i64 = 900;
    let ip = "203.0.113.50";
    for i in 0..4 {
        assert!(!store.record_failure(ip, T0 + i, 5, BAN).await.unwrap(), "failure {} does not ban", i + 1);
    }
    assert!(!store.is_banned(ip, T0 + 4).await.unwrap());
    assert!(store.record_failure(ip, T0 + 4, 5, BAN).await.unwrap(), "the fifth failure bans");
    assert!(store.is_banned(ip, T0 + 5).await.unwrap());
    assert_eq!(store.banned_ips(T0 + 5).await.unwrap(), [(ip.to_owned(), T0 + 4 + BAN)]);
    // Failures during the ban neither fail to report it nor extend it.
    assert!(store.record_failure(ip, T0 + 100, 5, BAN).await.unwrap());
    assert!(store.is_banned(ip, T0 + 4 + BAN - 1).await.unwrap());
    assert!(!store.is_banned(ip, T0 + 4 + BAN).await.unwrap());
    // After the ban the count starts afresh.
    assert!(!store.record_failure(ip, T0 + 2000, 5, BAN).await.unwrap());
    assert!(!store.is_banned(ip, T0 + 2001).await.unwrap());
    // Failures further apart than the window never add up.
    let slow = "198.51.100.60";
    for i in 0..10 {
        assert!(!store.record_failure(slow, T0 + i * (BAN + 1), 5, BAN).await.unwrap());
    }
    // Other addresses are unaffected; one allowed failure bans at once.
    assert!(!store.is_banned("192.0.2.1", T0).await.unwrap());
    assert!(store.record_failure("192.0.2.1", T0, 1, BAN).await.unwrap());

    assert!(store.unban("192.0.2.1").await.unwrap());
    assert!(!store.is_banned("192.0.2.1", T0 + 1).await.unwrap());
    assert!(!store.unban("192.0.2.1").await.unwrap());
    assert!(!store.record_failure("192.0.2.1", T0 + 2, 5, BAN).await.unwrap(), "unban forgets the failures");
    // Rows that no longer count for anything (ban over, failures too old) are deleted with the next failure.
    assert!(!store.record_failure("192.0.2.9", T0 + 100_000, 5, BAN).await.unwrap());
    for gone in [ip, slow, "192.0.2.1"] {
        assert!(!store.unban(gone).await.unwrap(), "{gone}'s stale row is still there");
    }
    assert!(store.unban("192.0.2.9").await.unwrap(), "the live one stays");

    assert_eq!(store.pairing_window().await.unwrap(), None, "closed on a new install");
    store.set_pairing_window(Some(T0 + 900)).await.unwrap();
    assert_eq!(store.pairing_window().await.unwrap(), Some(T0 + 900));
    store.set_pairing_window(None).await.unwrap();
    assert_eq!(store.pairing_window().await.unwrap(), None);
}

async fn audit_rows(store: Store) {
    assert!(store.list_audit(10).await.unwrap().is_empty());
    for i in 0..3 {
        store.audit(&web("alice"), "terminal.add", &format!("atm-{i}"), "token expires in 24h", T0 + i).await.unwrap();
    }
    let rows = store.list_audit(2).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].subject.as_str(), rows[0].at), ("atm-2", T0 + 2), "newest first");
    assert_eq!(
        (&rows[1].actor, rows[1].action.as_str(), rows[1].detail.as_str()),
        (&web("alice"), "terminal.add", "token expires in 24h")
    );
    assert_eq!(store.list_audit(100).await.unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------------------------
// backend-specific

#[tokio::test]
async fn sqlite_urls_pragmas_and_reopen() {
    let dir = tempfile::Builder::new().prefix("cv-store-").tempdir().unwrap();
    let path = dir.path().join("cas-vpn.sqlite");
    for url in [format!("sqlite://{}", path.display()), format!("sqlite:{}", path.display())] {
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        let Store::Sqlite(pool) = &store else { unreachable!() };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(pool).await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await.unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(pool).await.unwrap();
        assert_eq!((mode.as_str(), fk, sync, busy), ("wal", 1, 1, 5000));
        if store.credential_by_name(&name("kept")).await.unwrap().is_none() {
            one_terminal(&store, "kept", None, None).await;
        }
        store.close().await;
    }
    // Reopening runs the migrations again (a no-op) and finds the data.
    let store = Store::open_sqlite(&path).await.unwrap();
    assert_eq!(store.list_credentials(None, true).await.unwrap().len(), 1);
    assert!(format!("{store:?}").contains("sqlite"));
    store.close().await;

    let err = Store::open("mysql://root:hunter2@db/x").await.unwrap_err();
    assert!(matches!(err, DbError::UnsupportedUrl));
    assert!(!err.to_string().contains("hunter2"), "never echo a URL: it may carry a password");
    // The directory is the caller's job: a missing one is an error, not created behind its back.
    assert!(Store::open_sqlite(&dir.path().join("missing/cas-vpn.sqlite")).await.is_err());
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn postgres_url_forms() {
    let db = PgDb::create().await;
    let alt = db.url.replacen("postgres://", "postgresql://", 1);
    let store = Store::open(&alt).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    assert!(!format!("{store:?}").contains(':'), "Debug shows no URL");
    store.close().await;
    // Reopening runs the migrations again (a no-op).
    let store = Store::open(&db.url).await.unwrap();
    assert_eq!(store.pairing_window().await.unwrap(), None);
    store.close().await;
}
