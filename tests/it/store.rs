//! The store, on both backends. Every test below is written once as `async fn name(store: Store)` and run by
//! `both_backends!` as `store::name::sqlite` and `store::name::postgres`, each on a fresh database.
//!
//! PostgreSQL needs `CAS_VPN_TEST_PG_URL` (see `support/pg.rs`): `export CAS_VPN_TEST_PG_URL=$(scripts/pg-setup)`.
//! The PostgreSQL variants are `#[ignore]`d (`scripts/test` runs them with `--include-ignored`); the SQLite ones
//! always run.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cas_pki::RevocationReason::{CessationOfOperation, KeyCompromise, Superseded, Unspecified};
use cas_vpn::db::{
    AuditQuery, DbError, Download, HealthClock, NewCert, NewSession, NewTerminal, NewToken, Redeemed, Scope, Stage,
    Store, TerminalFilter, TerminalLayout, TerminalQuery, TokenRefusal, WebSession,
};
use cas_vpn::domain::{Actor, Kind, Name, PortRange};
use sha2::{Digest, Sha256};

use crate::support::pg::PgDb;
use crate::support::store_on_both_backends;

/// A fixed "now", so that every timestamp in these tests is exact.
const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;
const SMALL: TerminalLayout = TerminalLayout { instances: 3, hosts_per_instance: 4 };

store_on_both_backends!(
    story,
    terminals_spread_and_reuse_addresses,
    duplicate_names_insert_nothing,
    two_thousand_terminals_in_one_batch,
    admin_ports_lowest_free_and_exhaustion,
    revoke_errors_and_effects,
    bulk_revoke_is_all_or_nothing,
    serials_are_never_reused,
    tokens_redeem_once,
    concurrent_redeems_pair_once,
    crl_numbers_increase,
    sessions_crud_and_heartbeat,
    a_revocation_takes_its_sessions_and_none_is_recorded_after,
    bans_and_pairing_window,
    pairing_lookup_reads_the_window_the_token_and_its_terminal_at_once,
    grouped_gate_writes_count_exactly_and_give_back_with_the_pairing,
    audit_rows,
    web_tables,
    terminals_page_filters_and_search,
    audit_page_filters,
    audit_pages_oldest_first,
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
    for table in [
        "credentials",
        "certificates",
        "pairing_tokens",
        "audit",
        "sessions",
        "crl_state",
        "ip_bans",
        "web_users",
        "web_setup_links",
        "web_recovery_codes",
        "web_sessions",
        "api_tokens",
        "web_downloads",
    ] {
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
            node: "n1".into(),
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

    // A terminal is stolen: revoke it; its certificate goes on the CRL. Its session row goes with the revocation's
    // commit on SQLite (one node); on PostgreSQL each node removes its own once its kill has ended the session.
    // Removing the row again is harmless.
    let (revoked, serials, _) =
        store.revoke(&name("atm-lisbon-1"), KeyCompromise, &web("operator"), now + 3600).await.unwrap();
    assert_eq!(serials, [serial(1)]);
    assert_eq!(revoked.revoked_at, Some(now + 3600));
    assert_eq!(
        store.revoked_certificates(Kind::Terminal).await.unwrap(),
        [(serial(1), now + 3600, "key-compromise".into())]
    );
    assert!(store.revoked_certificates(Kind::Admin).await.unwrap().is_empty());
    assert_eq!(store.next_crl_number(Kind::Terminal, now + 3600, now + 3600 + 7 * DAY).await.unwrap(), 1);
    let left = if store.backend() == "sqlite" { 0 } else { 1 };
    assert_eq!(store.sessions_of(revoked.id).await.unwrap().len(), left);
    store.remove_session("n1", "terminal-0", 4).await.unwrap();
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
    // With its audit row in the same transaction: the row goes back with the batch.
    let audit = cas_vpn::db::NewAudit {
        actor: "cli:root".parse().unwrap(),
        source: None,
        action: "terminal.import".into(),
        subject: "3 terminals".into(),
        detail: "token".into(),
    };
    let err = store.create_terminals_audited(&batch(&["y", "z", "x"], 30), SMALL, T0, Some(&audit)).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { .. }), "{err:?}");
    assert_eq!(counts(&store).await, before, "no audit row without its terminals");
    store.create_terminals_audited(&batch(&["y2"], 40), SMALL, T0, Some(&audit)).await.unwrap();
    let after = counts(&store).await;
    assert_eq!((after["audit"], after["credentials"]), (before["audit"] + 1, before["credentials"] + 1));
    // A clash inside the batch names the second occurrence's name.
    let err = store.create_terminals(&batch(&["p", "q", "p"], 20), SMALL, T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "p"), "{err:?}");
    assert_eq!(counts(&store).await, after);

    // Terminals and admins share one namespace.
    let ports = PortRange::new(12000, 12050).unwrap();
    let err = store.create_admin(&name("x"), ports, &cert(&serial(30), "x"), T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NameTaken { name } if name.as_str() == "x"), "{err:?}");
    assert_eq!(counts(&store).await, after);
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

    let (old, serials, _) = store.revoke(&name("admin-07"), CessationOfOperation, &root(), T0 + 10).await.unwrap();
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

/// `revoke --file`'s store half: an unknown or already revoked name refuses the whole list (nothing changes,
/// every culprit named); a good list revokes every credential, its certificates and tokens, with one audit row
/// and one kill event each, in one transaction.
async fn bulk_revoke_is_all_or_nothing(store: Store) {
    let big = TerminalLayout { instances: 2, hosts_per_instance: 200 };
    let new: Vec<NewTerminal> = (0..120)
        .map(|i| NewTerminal {
            name: name(&format!("atm-{i:03}")),
            cert: Some(cert(&serial(1000 + i), &format!("atm-{i:03}"))),
            token: Some(token(&format!("tok-{i}"), T0 + DAY)),
        })
        .collect();
    store.create_terminals(&new, big, T0).await.unwrap();
    let gone = one_terminal(&store, "gone", Some(&serial(9)), None).await;
    store.revoke(&name("gone"), Superseded, &root(), T0 + 1).await.unwrap();
    let events_before = store.events_after(0, "n1").await.unwrap().len();

    // Refusals: all names checked first; nothing changes.
    let before = counts(&store).await;
    let mut names: Vec<Name> = new.iter().map(|t| t.name.clone()).collect();
    names.extend([name("nobody"), name("gone"), name("nobody-2")]);
    let err = store.revoke_many(&names, KeyCompromise, &root(), T0 + 10, false).await.unwrap_err();
    let DbError::BulkRefused(r) = &err else { panic!("{err:?}") };
    assert_eq!(r.unknown, [name("nobody"), name("nobody-2")]);
    assert_eq!(r.already_revoked, [name("gone")]);
    let text = err.to_string();
    assert!(text.contains("nothing revoked") && text.contains("nobody-2") && text.contains("gone"), "{text}");
    assert_eq!(counts(&store).await, before);
    assert_eq!(store.events_after(0, "n1").await.unwrap().len(), events_before);
    assert!(store.list_credentials(None, false).await.unwrap().iter().all(|c| !c.is_revoked()));
    // Allowing revoked names does not allow unknown ones.
    let err = store.revoke_many(&names, KeyCompromise, &root(), T0 + 10, true).await.unwrap_err();
    assert!(matches!(&err, DbError::BulkRefused(r) if r.already_revoked.is_empty() && r.unknown.len() == 2));
    assert_eq!(counts(&store).await, before);

    // The good list (and the revoked one, allowed): everything in one go.
    names.retain(|n| !n.as_str().starts_with("nobody"));
    let done = store.revoke_many(&names, KeyCompromise, &root(), T0 + 20, true).await.unwrap();
    assert_eq!(done.revoked.len(), 121);
    assert_eq!(
        done.revoked.iter().map(|r| r.credential.name.clone()).collect::<Vec<_>>(),
        names,
        "reported in the order asked"
    );
    for (i, r) in done.revoked.iter().take(120).enumerate() {
        assert!(!r.already);
        assert_eq!(r.serials, [serial(1000 + i as u64)]);
        assert_eq!(r.credential.revoked_at, Some(T0 + 20));
        let row = store.certificate_by_serial(&r.serials[0]).await.unwrap().unwrap();
        assert_eq!((row.revoked_at, row.revoke_reason.as_deref()), (Some(T0 + 20), Some("key-compromise")));
        assert!(store.token(&format!("tok-{i}")).await.unwrap().unwrap().locked_at.is_some());
    }
    let redo = &done.revoked[120];
    assert!(redo.already && redo.serials.is_empty() && redo.credential.id == gone);
    assert_eq!(redo.credential.revoked_at, Some(T0 + 1), "a redo keeps the first revocation");
    assert_eq!(store.certificate_by_serial(&serial(9)).await.unwrap().unwrap().revoked_at, Some(T0 + 1));
    assert!(store.list_credentials(None, false).await.unwrap().is_empty());
    let after = counts(&store).await;
    assert_eq!(after["audit"], before["audit"] + 120, "one audit row per credential revoked now");
    assert_eq!(after["credentials"], before["credentials"]);
    // One kill event per name, all in this transaction's id range, every node meant.
    let events = store.events_after(0, "n1").await.unwrap();
    let kills: Vec<_> = events[events_before..].iter().collect();
    assert_eq!(kills.len(), 121);
    assert!(kills.iter().all(|e| e.kind == cas_vpn::db::EventKind::Kill && e.node.is_none()));
    assert_eq!(
        kills.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
        names.iter().map(Name::as_str).collect::<Vec<_>>()
    );
    assert_eq!((kills[0].id, kills[120].id), (done.first_event, done.last_event));
    let serials: HashSet<String> =
        store.revoked_certificates(Kind::Terminal).await.unwrap().into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(serials.len(), 121);
    // The same list again, not allowed: all already revoked.
    let err = store.revoke_many(&names, Unspecified, &root(), T0 + 30, false).await.unwrap_err();
    assert!(matches!(&err, DbError::BulkRefused(r) if r.already_revoked.len() == 121 && r.unknown.is_empty()));
    assert!(err.to_string().contains("and 101 more"), "{err}");
}

async fn revoke_errors_and_effects(store: Store) {
    let err = store.revoke(&name("nobody"), Unspecified, &root(), T0).await.unwrap_err();
    assert!(matches!(&err, DbError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody"));

    let id = one_terminal(&store, "t", Some(&serial(1)), Some("tok")).await;
    store.add_certificate(id, Kind::Terminal, &cert(&serial(2), "t"), T0 + 5).await.unwrap();
    let audit_before = store.list_audit(100).await.unwrap().len();
    let (c, serials, _) = store.revoke(&name("t"), CessationOfOperation, &web("alice"), T0 + 10).await.unwrap();
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
        node: "n1".into(),
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

    let bytes = |instance: &str, client_id, bytes_in, bytes_out| cas_vpn::db::SessionChange::Bytes {
        instance: instance.into(),
        client_id,
        bytes_in,
        bytes_out,
    };
    // A session gone already is fine (counters race disconnects).
    store.apply_session_changes("n1", &[bytes("term-0", 1, 1000, 2000), bytes("term-9", 1, 1, 1)]).await.unwrap();
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

    store.remove_session("n1", "term-1", 7).await.unwrap();
    store.remove_session("n1", "term-1", 7).await.unwrap(); // twice: fine
    assert_eq!(store.list_sessions().await.unwrap().len(), 2);
    store.upsert_session(&session("term-1", 8, 0, "198.18.0.2")).await.unwrap();
    assert_eq!(store.clear_sessions("n1", Some("term-0")).await.unwrap(), 2);
    assert_eq!(store.clear_sessions("n1", Some("term-0")).await.unwrap(), 0);
    assert_eq!(store.clear_sessions("n1", None).await.unwrap(), 1);
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

/// The session writer never records a session of a revoked credential (one it had queued a moment before the
/// revocation), on both backends. On SQLite (one node) a revocation removes its credential's session rows in its own
/// transaction, single and bulk, so `revoke` returns with none left without waiting on the session writer; on
/// PostgreSQL each node removes its own rows once it has ended the sessions (a node cut off keeps its row: its
/// openvpn still holds the session).
async fn a_revocation_takes_its_sessions_and_none_is_recorded_after(store: Store) {
    let ids: Vec<i64> = store
        .create_terminals(&[terminal("r1"), terminal("r2"), terminal("r3")], SMALL, T0)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    let session = |node: &str, cid: i64, who: usize| NewSession {
        node: node.into(),
        instance: "term-0".into(),
        credential_id: ids[who],
        common_name: format!("r{}", who + 1),
        tunnel_ip: format!("198.18.0.{}", 10 + cid),
        real_addr: "203.0.113.9:5555".into(),
        since: T0,
        client_id: cid,
    };
    let names = |store_rows: Vec<cas_vpn::db::SessionRow>| {
        let mut v: Vec<String> = store_rows.into_iter().map(|s| s.common_name).collect();
        v.sort();
        v
    };
    for (node, cid, who) in [("n1", 1, 0), ("n2", 1, 0), ("n1", 2, 1), ("n1", 3, 2), ("n2", 3, 2)] {
        store.upsert_session(&session(node, cid, who)).await.unwrap();
    }
    let sqlite = store.backend() == "sqlite";
    store.revoke(&name("r1"), Unspecified, &root(), T0 + 1).await.unwrap();
    if sqlite {
        assert_eq!(names(store.list_sessions().await.unwrap()), ["r2", "r3", "r3"], "r1's rows went with the commit");
    } else {
        assert_eq!(names(store.list_sessions().await.unwrap()), ["r1", "r1", "r2", "r3", "r3"], "each node's own");
        for node in ["n1", "n2"] {
            store.remove_session(node, "term-0", 1).await.unwrap();
        }
    }
    // Recorded after the revocation (the writer had it queued): not written; counters for it change nothing.
    store.upsert_session(&session("n1", 4, 0)).await.unwrap();
    let late = cas_vpn::db::SessionChange::Bytes { instance: "term-0".into(), client_id: 1, bytes_in: 5, bytes_out: 5 };
    store.apply_session_changes("n1", &[late]).await.unwrap();
    assert_eq!(names(store.list_sessions().await.unwrap()), ["r2", "r3", "r3"]);

    store.revoke_many(&[name("r2"), name("r3")], Unspecified, &root(), T0 + 2, false).await.unwrap();
    if sqlite {
        assert!(store.list_sessions().await.unwrap().is_empty(), "a bulk revocation takes every listed one's rows");
    } else {
        assert_eq!(names(store.list_sessions().await.unwrap()), ["r2", "r3", "r3"], "each node's own");
        for (node, cid) in [("n1", 2), ("n1", 3), ("n2", 3)] {
            store.remove_session(node, "term-0", cid).await.unwrap();
        }
    }
    store.upsert_session(&session("n2", 5, 2)).await.unwrap();
    assert!(store.list_sessions().await.unwrap().is_empty(), "nor after a bulk revocation");

    // An active credential's session is recorded as before.
    let r4 = one_terminal(&store, "r4", None, None).await;
    store
        .upsert_session(&NewSession { credential_id: r4, common_name: "r4".into(), ..session("n1", 6, 0) })
        .await
        .unwrap();
    assert_eq!(names(store.list_sessions().await.unwrap()), ["r4"]);
}

/// The gate's grouped writes (`Store::gate_writes`): one transaction does what the writes would do one after
/// another (counts exact inside a group), a redemption that pairs gives its attempt's reservation back in its own
/// transaction while a refused one keeps it, and a write that fails is its own failure: the others of its group
/// still happen, and it leaves nothing.
async fn grouped_gate_writes_count_exactly_and_give_back_with_the_pairing(store: Store) {
    use cas_vpn::db::{BanKey, GateWrite, GateWritten, RedeemWrite, Reserved};
    const BAN: i64 = 900;
    // A /24 that allows two attempts at once, so that every count shows.
    let keys = |ip: &str| vec![BanKey { key: ip.to_owned(), max: 5 }, BanKey { key: "192.0.2.0/24".into(), max: 2 }];
    let reserve = |ip: &str| GateWrite::Reserve { keys: keys(ip), now: T0, window_secs: BAN };
    let redeem = |tok: &str, n: u64, cn: &str, ip: &str| {
        GateWrite::Redeem(RedeemWrite {
            token_id: tok.to_owned(),
            pubkey_sha256: sha256_hex(tok),
            cert: cert(&serial(n), cn),
            hw_serial: Some("HW-7".into()),
            give_back: keys(ip),
            now: T0 + 10,
        })
    };
    let outcomes = |r: Vec<Result<GateWritten, DbError>>| r.into_iter().map(Result::unwrap).collect::<Vec<_>>();
    let go = GateWritten::Reserved(Reserved::Go);
    let busy = GateWritten::Reserved(Reserved::Busy { key: "192.0.2.0/24".into() });
    let a = one_terminal(&store, "ga", None, Some("tga")).await;
    one_terminal(&store, "gb", None, Some("tgb")).await;

    // Three sources of one /24 in one group: the third finds the /24 full, exactly as one by one.
    let out = outcomes(store.gate_writes(&[reserve("192.0.2.1"), reserve("192.0.2.2"), reserve("192.0.2.3")]).await);
    assert_eq!(out, [go.clone(), go.clone(), busy.clone()]);

    // .1 pairs (its reservation goes with it); .2 presents an unknown token (its reservation stays: a failure).
    let out =
        outcomes(store.gate_writes(&[redeem("tga", 1, "ga", "192.0.2.1"), redeem("nope", 2, "gb", "192.0.2.2")]).await);
    assert_eq!(
        out,
        [
            GateWritten::Redeemed(Ok(Redeemed::Fresh { credential_id: a, cert_serial: serial(1) })),
            GateWritten::Redeemed(Err(TokenRefusal::Unknown)),
        ]
    );
    let c = store.credential_by_id(a).await.unwrap().unwrap();
    assert_eq!((c.paired_at, c.hw_serial.as_deref()), (Some(T0 + 10), Some("HW-7")), "paired with its serial");
    assert!(store.certificate_by_serial(&serial(1)).await.unwrap().is_some());
    // The /24 now holds .2's attempt only: one more fits, a second does not.
    let out = outcomes(store.gate_writes(&[reserve("192.0.2.4"), reserve("192.0.2.5")]).await);
    assert_eq!(out, [go.clone(), busy], "the pairing gave its reservation back, the refusal kept its own");

    // A write that fails (a serial already recorded) fails alone: the rest of its group is written, it leaves
    // nothing (the token stays unused, no certificate, no give-back).
    let elsewhere =
        GateWrite::Reserve { keys: vec![BanKey { key: "198.51.100.9".into(), max: 5 }], now: T0, window_secs: BAN };
    let out = store.gate_writes(&[elsewhere, redeem("tgb", 1, "gb", "192.0.2.4")]).await;
    assert!(matches!(&out[0], Ok(r) if *r == go), "{out:?}");
    assert!(matches!(&out[1], Err(DbError::SerialTaken { .. })), "{out:?}");
    assert_eq!(store.token("tgb").await.unwrap().unwrap().used_at, None);
    let out = outcomes(store.gate_writes(&[reserve("192.0.2.6")]).await);
    assert_eq!(
        out,
        [GateWritten::Reserved(Reserved::Busy { key: "192.0.2.0/24".into() })],
        "the failed redemption gave nothing back"
    );
}

async fn pairing_lookup_reads_the_window_the_token_and_its_terminal_at_once(store: Store) {
    let id = one_terminal(&store, "pl", None, Some("tokpl")).await;
    // Closed (never opened): no end, and a token is still found (the gate answers `window_closed` first).
    let l = store.pairing_lookup(None).await.unwrap();
    assert_eq!((l.window_until, l.token), (None, None));
    store.set_pairing_window(Some(T0 + 3600)).await.unwrap();
    let l = store.pairing_lookup(Some("tokpl")).await.unwrap();
    assert_eq!(l.window_until, Some(T0 + 3600));
    let (row, cred) = l.token.expect("the token is found");
    assert_eq!(row, store.token("tokpl").await.unwrap().unwrap(), "the same row as a lookup of its own");
    assert_eq!(cred, store.credential_by_id(id).await.unwrap(), "with its terminal");
    // An unknown id: the window, no token.
    let l = store.pairing_lookup(Some("nope")).await.unwrap();
    assert_eq!((l.window_until, l.token), (Some(T0 + 3600), None));
    // A revoked terminal still comes with its token (the gate refuses it by its credential).
    store.revoke(&name("pl"), Superseded, &root(), T0 + 5).await.unwrap();
    let (_, cred) = store.pairing_lookup(Some("tokpl")).await.unwrap().token.unwrap();
    assert!(cred.unwrap().is_revoked());
}

async fn bans_and_pairing_window(store: Store) {
    use cas_vpn::db::{BanKey, Reserved};
    const BAN: i64 = 900;
    let key = |k: &str, max: u32| BanKey { key: k.to_owned(), max };
    let ip = "203.0.113.50";
    let keys = [key(ip, 5), key("203.0.113.0/24", 20)];
    // Five attempts reserved at once (a burst in flight): the sixth is refused before any is evaluated.
    for i in 0..5 {
        assert_eq!(store.reserve_attempt(&keys, T0 + i, BAN).await.unwrap(), Reserved::Go, "attempt {}", i + 1);
    }
    assert_eq!(store.reserve_attempt(&keys, T0 + 5, BAN).await.unwrap(), Reserved::Busy { key: ip.to_owned() });
    // One succeeds (its attempt is given back), four fail: not banned yet, one attempt left.
    assert!(store.settle_attempt(&keys, false, T0 + 5, BAN).await.unwrap().is_empty());
    for _ in 0..4 {
        assert!(store.settle_attempt(&keys, true, T0 + 5, BAN).await.unwrap().is_empty());
    }
    assert!(!store.is_banned(ip, T0 + 5).await.unwrap());
    assert_eq!(store.reserve_attempt(&keys, T0 + 6, BAN).await.unwrap(), Reserved::Go);
    assert_eq!(
        store.settle_attempt(&keys, true, T0 + 6, BAN).await.unwrap(),
        [ip.to_owned()],
        "the fifth failure bans"
    );
    assert!(store.is_banned(ip, T0 + 7).await.unwrap());
    assert!(!store.is_banned("203.0.113.0/24", T0 + 7).await.unwrap(), "the /24 is below its own limit");
    assert_eq!(store.banned_ips(T0 + 7).await.unwrap(), [(ip.to_owned(), T0 + 6 + BAN)]);
    assert_eq!(
        store.reserve_attempt(&keys, T0 + 100, BAN).await.unwrap(),
        Reserved::Banned { key: ip.to_owned(), until: T0 + 6 + BAN },
        "refused during the ban, which it does not extend"
    );
    assert!(store.is_banned(ip, T0 + 6 + BAN - 1).await.unwrap());
    assert!(!store.is_banned(ip, T0 + 6 + BAN).await.unwrap());
    // After the ban the count starts afresh (the expired row counts for nothing).
    assert_eq!(store.reserve_attempt(&keys, T0 + 2000, BAN).await.unwrap(), Reserved::Go);
    assert!(store.settle_attempt(&keys, true, T0 + 2000, BAN).await.unwrap().is_empty());

    // The network: 20 failures from 20 addresses of one /24 ban the /24, and then every address in it.
    for i in 0..20 {
        let k = [key(&format!("198.51.100.{i}"), 5), key("198.51.100.0/24", 20)];
        assert_eq!(store.reserve_attempt(&k, T0 + 3000, BAN).await.unwrap(), Reserved::Go);
        let banned = store.settle_attempt(&k, true, T0 + 3000, BAN).await.unwrap();
        assert_eq!(banned.is_empty(), i < 19, "failure {}: {banned:?}", i + 1);
    }
    let fresh = [key("198.51.100.200", 5), key("198.51.100.0/24", 20)];
    assert!(matches!(
        store.reserve_attempt(&fresh, T0 + 3001, BAN).await.unwrap(),
        Reserved::Banned { key, .. } if key == "198.51.100.0/24"
    ));
    assert!(store.unban("198.51.100.0/24").await.unwrap());
    assert_eq!(store.reserve_attempt(&fresh, T0 + 3002, BAN).await.unwrap(), Reserved::Go);
    store.settle_attempt(&fresh, false, T0 + 3002, BAN).await.unwrap();

    // One allowed failure bans at once; unban forgets it.
    let one = [key("192.0.2.1", 1)];
    assert_eq!(store.reserve_attempt(&one, T0, BAN).await.unwrap(), Reserved::Go);
    assert_eq!(store.settle_attempt(&one, true, T0, BAN).await.unwrap().len(), 1);
    assert!(store.unban("192.0.2.1").await.unwrap());
    assert!(!store.is_banned("192.0.2.1", T0 + 1).await.unwrap());
    assert!(!store.unban("192.0.2.1").await.unwrap());
    // Rows that no longer count for anything (ban over, failures too old) are deleted when a failure is settled.
    let late = [key("192.0.2.9", 5)];
    assert_eq!(store.reserve_attempt(&late, T0 + 100_000, BAN).await.unwrap(), Reserved::Go);
    assert!(store.settle_attempt(&late, true, T0 + 100_000, BAN).await.unwrap().is_empty());
    for gone in [ip, "203.0.113.0/24", "198.51.100.0", "198.51.100.0/24"] {
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
// the admin web UI's rows

/// A web session of `user` as the UI makes it (only the hash of the cookie is stored).
fn web_session(id: &str, user_id: i64, stage: Stage, created_at: i64, last_seen: i64) -> WebSession {
    WebSession {
        id_hash: sha256_hex(id),
        user_id,
        stage,
        csrf: format!("csrf of {id}"),
        source: "192.0.2.7".into(),
        created_at,
        last_seen,
        pending_totp: None,
    }
}

async fn web_tables(store: Store) {
    let h = sha256_hex;
    // A user and their one-time setup link (24 h); the name is taken once, and a refused second one adds nothing.
    let alice = store.create_web_user(&name("alice"), &h("link-a"), T0 + DAY, T0).await.unwrap();
    assert_eq!((alice.password_hash.as_deref(), alice.totp_secret.as_deref()), (None, None));
    let before = counts(&store).await;
    let err = store.create_web_user(&name("alice"), &h("link-x"), T0 + DAY, T0).await.unwrap_err();
    assert!(matches!(err, DbError::NameTaken { .. }), "{err:?}");
    assert_eq!(counts(&store).await, before);
    let bob = store.create_web_user(&name("bob"), &h("link-b"), T0 + DAY, T0).await.unwrap();
    assert_eq!(store.count_active_web_users().await.unwrap(), 0, "no one has a password yet");

    // The link works until its end, once.
    assert_eq!(store.setup_link_user(&h("link-a"), T0 + DAY - 1).await.unwrap().map(|u| u.id), Some(alice.id));
    assert_eq!(store.setup_link_user(&h("link-a"), T0 + DAY).await.unwrap(), None, "expired at its end");
    assert_eq!(store.setup_link_user(&h("link-b"), T0).await.unwrap().map(|u| u.id), Some(bob.id));
    assert_eq!(store.setup_link_user(&h("unknown"), T0).await.unwrap(), None);
    let set = store.use_setup_link(&h("link-a"), "phc-1", T0 + 10).await.unwrap().unwrap();
    assert_eq!((set.id, set.password_hash.as_deref()), (alice.id, Some("phc-1")));
    assert_eq!(store.use_setup_link(&h("link-a"), "phc-2", T0 + 11).await.unwrap(), None, "a second use");
    assert_eq!(store.setup_link_user(&h("link-a"), T0 + 11).await.unwrap(), None);
    assert_eq!(store.web_user(alice.id).await.unwrap().unwrap().password_hash.as_deref(), Some("phc-1"));
    assert_eq!(store.use_setup_link(&h("link-b"), "phc-b", T0 + DAY).await.unwrap(), None, "an expired one");
    assert_eq!(store.web_user(bob.id).await.unwrap().unwrap().password_hash, None);
    // A new link for bob ends his earlier unused ones.
    store.new_setup_link(bob.id, &h("link-b2"), T0 + 2 * DAY, T0 + 20).await.unwrap();
    store.new_setup_link(bob.id, &h("link-b3"), T0 + 2 * DAY, T0 + 21).await.unwrap();
    assert_eq!(store.use_setup_link(&h("link-b2"), "phc-b", T0 + 22).await.unwrap(), None, "superseded");
    assert!(store.use_setup_link(&h("link-b3"), "phc-b", T0 + 22).await.unwrap().is_some());
    assert_eq!(store.count_active_web_users().await.unwrap(), 2);
    assert_eq!(store.web_user_by_name("bob").await.unwrap().map(|u| u.id), Some(bob.id));
    let listed: Vec<String> = store.list_web_users().await.unwrap().iter().map(|u| u.name.to_string()).collect();
    assert_eq!(listed, ["alice", "bob"]);

    // TOTP enrolment with recovery codes; each code works once, for its user only.
    store.set_totp(alice.id, "SEEDA", &[h("r1"), h("r2"), h("r3")]).await.unwrap();
    store.set_totp(bob.id, "SEEDB", &[h("rb")]).await.unwrap();
    assert_eq!(store.web_user(alice.id).await.unwrap().unwrap().totp_secret.as_deref(), Some("SEEDA"));
    assert_eq!(store.unused_recovery_codes(alice.id).await.unwrap(), 3);
    assert!(store.use_recovery_code(alice.id, &h("r1"), T0 + 30).await.unwrap());
    assert!(!store.use_recovery_code(alice.id, &h("r1"), T0 + 31).await.unwrap(), "used once");
    assert!(!store.use_recovery_code(alice.id, &h("rb"), T0 + 31).await.unwrap(), "bob's code");
    assert!(!store.use_recovery_code(alice.id, &h("nope"), T0 + 31).await.unwrap());
    assert_eq!(store.unused_recovery_codes(alice.id).await.unwrap(), 2);
    // Enrolling again replaces the codes.
    store.set_totp(alice.id, "SEEDA2", &[h("n1")]).await.unwrap();
    assert_eq!(store.unused_recovery_codes(alice.id).await.unwrap(), 1);
    assert!(!store.use_recovery_code(alice.id, &h("r2"), T0 + 32).await.unwrap(), "an old code");

    // Failed logins slow a user; a good one clears that.
    store.web_login_failed(alice.id, None).await.unwrap();
    store.web_login_failed(alice.id, Some(T0 + 41)).await.unwrap();
    let a = store.web_user(alice.id).await.unwrap().unwrap();
    assert_eq!((a.failed_logins, a.slow_until), (2, Some(T0 + 41)));
    store.web_login_succeeded(alice.id).await.unwrap();
    let a = store.web_user(alice.id).await.unwrap().unwrap();
    assert_eq!((a.failed_logins, a.slow_until), (0, None));

    // Sessions: created, read back, moved on a stage, touched, listed newest first, ended.
    let s1 = web_session("s1", alice.id, Stage::Password, T0, T0);
    store.create_web_session(&s1).await.unwrap();
    assert_eq!(store.web_session(&s1.id_hash).await.unwrap(), Some(s1.clone()));
    assert_eq!(store.web_session(&h("s-unknown")).await.unwrap(), None);
    store.set_web_session_stage(&s1.id_hash, Stage::Enroll, Some("PENDING")).await.unwrap();
    store.touch_web_session(&s1.id_hash, T0 + 100).await.unwrap();
    let got = store.web_session(&s1.id_hash).await.unwrap().unwrap();
    assert_eq!((got.stage, got.pending_totp.as_deref(), got.last_seen), (Stage::Enroll, Some("PENDING"), T0 + 100));
    store.set_web_session_stage(&s1.id_hash, Stage::Full, None).await.unwrap();
    assert_eq!(store.web_session(&s1.id_hash).await.unwrap().unwrap().pending_totp, None);
    let s2 = web_session("s2", alice.id, Stage::Full, T0 + 50, T0 + 200);
    let s3 = web_session("s3", bob.id, Stage::Full, T0 + 60, T0 + 60);
    store.create_web_session(&s2).await.unwrap();
    store.create_web_session(&s3).await.unwrap();
    let of_alice: Vec<String> = store.web_sessions_of(alice.id).await.unwrap().into_iter().map(|s| s.id_hash).collect();
    assert_eq!(of_alice, [s2.id_hash.clone(), s1.id_hash.clone()], "most recently active first");
    // Expiry: idle since before T0+150 (s1 at T0+100 and s3 at T0+60), or created before T0+45 (s1).
    assert_eq!(store.expire_web_sessions(T0 + 150, T0 + 45, T0 + 300).await.unwrap(), 2);
    assert_eq!(store.web_session(&s2.id_hash).await.unwrap().map(|s| s.id_hash), Some(s2.id_hash.clone()));
    assert_eq!(store.web_session(&s3.id_hash).await.unwrap(), None);
    // Created-before alone ends a session however active it is.
    assert_eq!(store.expire_web_sessions(T0, T0 + 51, T0 + 300).await.unwrap(), 1);
    assert_eq!(store.web_session(&s2.id_hash).await.unwrap(), None);
    for id in ["s4", "s5"] {
        store.create_web_session(&web_session(id, alice.id, Stage::Full, T0 + 300, T0 + 300)).await.unwrap();
    }
    store.create_web_session(&web_session("s6", bob.id, Stage::Full, T0 + 300, T0 + 300)).await.unwrap();
    store.delete_web_session(&h("s4")).await.unwrap();
    assert_eq!(store.web_session(&h("s4")).await.unwrap(), None);
    assert_eq!(store.delete_web_sessions_of(alice.id).await.unwrap(), 1, "log out everywhere");
    assert_eq!(store.web_sessions_of(bob.id).await.unwrap().len(), 1, "other users keep theirs");

    // API tokens: live until revoked or expired; revoked only by their owner; used marks last_used_at.
    let t = store.create_api_token(alice.id, "ci", &h("tok-a"), Scope::Write, T0 + DAY, T0).await.unwrap();
    assert_eq!(
        (t.user_id, t.label.as_str(), t.scope, t.revoked_at, t.last_used_at),
        (alice.id, "ci", Scope::Write, None, None)
    );
    let (used, by) = store.use_api_token(&h("tok-a"), T0 + 10).await.unwrap().unwrap();
    assert_eq!((used.id, by.id), (t.id, alice.id));
    assert_eq!(store.api_tokens_of(alice.id).await.unwrap()[0].last_used_at, Some(T0 + 10));
    assert_eq!(store.use_api_token(&h("tok-a"), T0 + DAY).await.unwrap(), None, "expired at its end");
    assert_eq!(store.use_api_token(&h("tok-unknown"), T0).await.unwrap(), None);
    assert!(!store.revoke_api_token(bob.id, t.id, T0 + 20).await.unwrap(), "not bob's");
    assert!(store.use_api_token(&h("tok-a"), T0 + 21).await.unwrap().is_some());
    assert!(store.revoke_api_token(alice.id, t.id, T0 + 22).await.unwrap());
    assert!(!store.revoke_api_token(alice.id, t.id, T0 + 23).await.unwrap(), "already revoked");
    assert_eq!(store.use_api_token(&h("tok-a"), T0 + 24).await.unwrap(), None);
    assert_eq!(store.api_tokens_of(alice.id).await.unwrap()[0].revoked_at, Some(T0 + 22));

    // Disabling bob ends his sessions and tokens; a second disable is no change; enabling revives no token.
    let tb = store.create_api_token(bob.id, "bob's", &h("tok-b"), Scope::Read, T0 + DAY, T0).await.unwrap();
    assert!(store.set_web_user_disabled(bob.id, Some(T0 + 30)).await.unwrap());
    assert!(!store.set_web_user_disabled(bob.id, Some(T0 + 31)).await.unwrap());
    assert!(store.web_sessions_of(bob.id).await.unwrap().is_empty());
    assert_eq!(store.api_tokens_of(bob.id).await.unwrap()[0].revoked_at, Some(T0 + 30));
    assert_eq!(store.count_active_web_users().await.unwrap(), 1);
    assert!(store.set_web_user_disabled(bob.id, None).await.unwrap());
    assert!(!store.set_web_user_disabled(bob.id, None).await.unwrap());
    assert_eq!(store.use_api_token(&h("tok-b"), T0 + 40).await.unwrap(), None);
    // A token whose user is disabled does not work even if it was never revoked.
    let tb2 = store.create_api_token(bob.id, "bob's 2", &h("tok-b2"), Scope::Read, T0 + DAY, T0 + 41).await.unwrap();
    assert_ne!(tb2.id, tb.id);
    // (Disabled behind the store's back, tokens left alone: use_api_token's own check is what is tested.)
    let sql = "UPDATE web_users SET disabled_at = 1 WHERE name = 'bob'";
    match &store {
        Store::Sqlite(p) => assert_eq!(sqlx::query(sql).execute(p).await.unwrap().rows_affected(), 1),
        Store::Postgres(p) => assert_eq!(sqlx::query(sql).execute(p).await.unwrap().rows_affected(), 1),
    }
    assert_eq!(store.use_api_token(&h("tok-b2"), T0 + 42).await.unwrap(), None);
    // Nor does a disabled user's setup link.
    store.new_setup_link(bob.id, &h("link-b4"), T0 + DAY, T0 + 43).await.unwrap();
    assert_eq!(store.setup_link_user(&h("link-b4"), T0 + 44).await.unwrap(), None);
    assert_eq!(store.use_setup_link(&h("link-b4"), "phc-x", T0 + 44).await.unwrap(), None);

    // One-time downloads: only from their session, once, before their end; expired ones are swept.
    store.create_download(&h("d1"), &h("s5"), &name("ops-laptop"), T0 + 600, T0).await.unwrap();
    store.create_download(&h("d2"), &h("s5"), &name("ops-desktop"), T0 + 600, T0).await.unwrap();
    assert_eq!(store.take_download(&h("d1"), &h("s-other"), T0 + 1).await.unwrap(), Download::Unknown);
    assert_eq!(store.take_download(&h("d-unknown"), &h("s5"), T0 + 1).await.unwrap(), Download::Unknown);
    assert_eq!(store.take_download(&h("d1"), &h("s5"), T0 + 2).await.unwrap(), Download::Take(name("ops-laptop")));
    assert_eq!(store.take_download(&h("d1"), &h("s5"), T0 + 3).await.unwrap(), Download::Used);
    assert_eq!(store.take_download(&h("d2"), &h("s5"), T0 + 600).await.unwrap(), Download::Expired);
    store.expire_web_sessions(0, 0, T0 + 601).await.unwrap();
    assert_eq!(store.take_download(&h("d2"), &h("s5"), T0 + 601).await.unwrap(), Download::Unknown, "swept");

    // Resetting TOTP takes the seed and codes and ends the sessions; an unknown user is no change.
    store.create_web_session(&web_session("s7", alice.id, Stage::Full, T0 + 700, T0 + 700)).await.unwrap();
    assert!(store.reset_totp(alice.id).await.unwrap());
    let a = store.web_user(alice.id).await.unwrap().unwrap();
    assert_eq!((a.totp_secret, a.password_hash.as_deref()), (None, Some("phc-1")), "the password stays");
    assert_eq!(store.unused_recovery_codes(alice.id).await.unwrap(), 0);
    assert!(store.web_sessions_of(alice.id).await.unwrap().is_empty());
    assert!(!store.reset_totp(987_654).await.unwrap());
    store.set_web_password(alice.id, "phc-new").await.unwrap();
    assert_eq!(store.web_user(alice.id).await.unwrap().unwrap().password_hash.as_deref(), Some("phc-new"));
}

/// A layout roomy enough for the page tests, with instance and host index never equal (a swapped pair of
/// parameters finds nothing).
const ROOMY: TerminalLayout = TerminalLayout { instances: 2, hosts_per_instance: 64 };

/// The names a page query lists, and how many match in all.
async fn page(store: &Store, q: TerminalQuery) -> (Vec<String>, u64) {
    let (rows, total) = store.terminals_page(&q).await.unwrap();
    (rows.into_iter().map(|r| r.name.to_string()).collect(), total)
}

/// Registers node `n` with its heartbeat at `now`, as `serve vpn` does at its start.
pub(crate) async fn register(store: &Store, n: &str, now: i64) {
    let node = name(n);
    let start = cas_vpn::db::NodeStart {
        name: &node,
        address: "203.0.113.1",
        version: "0.1.0",
        run_id: "h/r",
        now,
        alive_since: now - 15,
    };
    store.register_node(&start).await.unwrap().unwrap();
}

fn query(filter: TerminalFilter, search: Option<&str>) -> TerminalQuery {
    TerminalQuery {
        filter,
        search: search.map(str::to_owned),
        expiring_before: T0 + 30 * DAY,
        limit: 50,
        // Scenario A at T0: nodes alive within 15 s, agents silent after 180 s.
        health: HealthClock { now: T0, alive_since: T0 - 15, silent_after: 180, vpn: true },
        ..TerminalQuery::default()
    }
}

async fn terminals_page_filters_and_search(store: Store) {
    let soon = |days: i64, serial: &str, cn: &str| NewCert { not_after: T0 + days * DAY, ..cert(serial, cn) };
    let with_cert = |n: &str, c: NewCert| NewTerminal { name: name(n), cert: Some(c), token: None };
    let created = store
        .create_terminals(
            &[
                terminal("atm-1"),
                terminal("atm-2"),
                terminal("atm-3"),
                terminal("a_b"),
                terminal("axb"),
                terminal("on-1"),
                terminal("off-1"),
                terminal("rev-1"),
                with_cert("exp-1", soon(10, "abcdef0123456789abcdef0123456789", "exp-1")),
                with_cert("exp-2", soon(11, "abcdef99", "exp-2")),
                with_cert("long-1", cert("abcdee0000", "long-1")),
            ],
            ROOMY,
            T0,
        )
        .await
        .unwrap();
    let id = |n: &str| created.iter().find(|c| c.name.as_str() == n).unwrap().id;
    let at = |n: &str| address(created.iter().find(|c| c.name.as_str() == n).unwrap());
    // The session's node is alive (a session counts only then: `health`).
    register(&store, "n1", T0).await;
    store
        .upsert_session(&NewSession {
            node: "n1".into(),
            instance: "terminal-0".into(),
            credential_id: id("on-1"),
            common_name: "on-1".into(),
            tunnel_ip: "198.18.0.9".into(),
            real_addr: "203.0.113.9:1".into(),
            since: T0,
            client_id: 1,
        })
        .await
        .unwrap();
    store.mark_paired(id("off-1"), None, T0).await.unwrap();
    store.revoke(&name("rev-1"), Unspecified, &root(), T0).await.unwrap();
    store.touch_terminal(id("atm-2"), "20240115", T0).await.unwrap();
    store.touch_terminal(id("exp-2"), "20240115", T0).await.unwrap();
    store.touch_terminal(id("atm-3"), "20230101", T0).await.unwrap();
    // An admin credential is never a terminal.
    store
        .create_admin(&name("atm-admin"), PortRange::new(12000, 12001).unwrap(), &cert("ff01", "atm-admin"), T0)
        .await
        .unwrap();

    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    use TerminalFilter::*;
    // Filters.
    let all = ["a_b", "atm-1", "atm-2", "atm-3", "axb", "exp-1", "exp-2", "long-1", "off-1", "on-1"];
    assert_eq!(page(&store, query(Active, None)).await, (names(&all), 10));
    assert_eq!(page(&store, query(Online, None)).await.0, names(&["on-1"]));
    assert_eq!(page(&store, query(Offline, None)).await.0, names(&["off-1"]));
    assert_eq!(page(&store, query(Revoked, None)).await.0, names(&["rev-1"]));
    assert_eq!(page(&store, query(Expiring, None)).await.0, names(&["exp-1", "exp-2"]));
    let never: Vec<&str> = all.iter().copied().filter(|n| !["on-1", "off-1"].contains(n)).collect();
    assert_eq!(page(&store, query(NeverPaired, None)).await.0, names(&never));
    // A horizon before the certificates' end: nothing is expiring.
    let early = TerminalQuery { expiring_before: T0 + 10 * DAY, ..query(Expiring, None) };
    assert_eq!(page(&store, early).await.0, names(&[]));

    // Search: name substring (LIKE's `_` and `%` taken literally), serial prefix, tunnel address.
    assert_eq!(page(&store, query(Active, Some("atm"))).await.0, names(&["atm-1", "atm-2", "atm-3"]));
    assert_eq!(page(&store, query(Active, Some("a_b"))).await.0, names(&["a_b"]));
    assert_eq!(page(&store, query(Active, Some("%"))).await.0, names(&[]));
    assert_eq!(page(&store, query(Active, Some("abcdef"))).await.0, names(&["exp-1", "exp-2"]));
    assert_eq!(page(&store, query(Active, Some("ABCDEF0"))).await.0, names(&["exp-1"]), "serials in either case");
    assert_eq!(page(&store, query(Active, Some("bcdef"))).await.0, names(&[]), "a prefix, not a substring");
    assert_eq!(page(&store, query(Active, Some("abcde"))).await.0, names(&["exp-1", "exp-2", "long-1"]));
    let (i, h) = at("atm-2");
    assert_ne!(i, h);
    let by_address = TerminalQuery { address: Some((i, h)), ..query(Active, Some("198.18.x.y")) };
    assert_eq!(page(&store, by_address).await.0, names(&["atm-2"]));

    // Search and filter together: $1, $2, $3 and $5 (search) bound beside $4 (the horizon), which the filter's
    // text mentions first. Bound by position instead of number, these would find nothing or the wrong rows.
    assert_eq!(page(&store, query(Expiring, Some("exp"))).await.0, names(&["exp-1", "exp-2"]));
    assert_eq!(page(&store, query(Expiring, Some("exp-2"))).await.0, names(&["exp-2"]));
    assert_eq!(page(&store, query(Expiring, Some("abcdef0"))).await.0, names(&["exp-1"]));
    assert_eq!(page(&store, query(Expiring, Some("long"))).await.0, names(&[]));
    assert_eq!(page(&store, query(Expiring, Some("abcdee"))).await.0, names(&[]), "long-1 is not expiring");
    assert_eq!(page(&store, query(Expiring, Some("atm"))).await.0, names(&[]));
    let (i, h) = at("exp-2");
    let exp2_address = TerminalQuery { address: Some((i, h)), ..query(Expiring, Some("198.18.x.y")) };
    assert_eq!(page(&store, exp2_address).await.0, names(&["exp-2"]));
    // Version ($6) with search and filter.
    let v = |filter, search: Option<&str>, version: &str| TerminalQuery {
        version: Some(version.to_owned()),
        ..query(filter, search)
    };
    assert_eq!(page(&store, v(Active, None, "20240115")).await.0, names(&["atm-2", "exp-2"]));
    assert_eq!(page(&store, v(Expiring, None, "20240115")).await.0, names(&["exp-2"]));
    assert_eq!(page(&store, v(Active, Some("atm"), "20240115")).await.0, names(&["atm-2"]));
    assert_eq!(page(&store, v(Expiring, Some("exp"), "20230101")).await.0, names(&[]));
    assert_eq!(store.terminal_versions().await.unwrap(), ["20230101", "20240115"]);

    // Paging ($7 limit, $8 offset): the total counts every match.
    let paged = |offset| TerminalQuery { offset, limit: 3, ..query(Active, None) };
    assert_eq!(page(&store, paged(0)).await, (names(&["a_b", "atm-1", "atm-2"]), 10));
    assert_eq!(page(&store, paged(9)).await, (names(&["on-1"]), 10));
    assert_eq!(page(&store, paged(10)).await, (names(&[]), 10));
    let (rows, _) = store.terminals_page(&query(Online, None)).await.unwrap();
    assert_eq!((rows[0].sessions, rows[0].home_instance.is_some()), (1, true));
    let (rows, _) = store.terminals_page(&query(Expiring, Some("exp-1"))).await.unwrap();
    assert_eq!(rows[0].cert_not_after, Some(T0 + 10 * DAY));
    let soonest: Vec<String> =
        store.expiring_certificates(T0 + 30 * DAY, 10).await.unwrap().into_iter().map(|c| c.common_name).collect();
    assert_eq!(soonest, ["exp-1", "exp-2"]);
}

async fn audit_page_filters(store: Store) {
    let rows = [
        (web("alice"), "terminal.add", "atm-1"),
        (Actor::ApiUser(name("alice")), "terminal.add", "atm-2"),
        (web("alice"), "revoke", "atm-1"),
        (web("bob"), "web_user.add", "carol"),
        (web("bob"), "webxuser.add", "dave"),
        (root(), "terminal.import", "3 terminals"),
    ];
    for (i, (actor, action, subject)) in rows.iter().enumerate() {
        let source = Some("192.0.2.9").filter(|_| i % 2 == 0);
        store.audit_from(actor, source, action, subject, "", T0 + i as i64).await.unwrap();
    }
    let all = store.audit_page(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!((all[5].source.as_deref(), all[4].source.as_deref()), (Some("192.0.2.9"), None));
    let ids = |q: AuditQuery| {
        let store = store.clone();
        async move {
            let q = AuditQuery { limit: if q.limit == 0 { 100 } else { q.limit }, ..q };
            store.audit_page(&q).await.unwrap().into_iter().map(|r| r.subject).collect::<Vec<_>>()
        }
    };
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(ids(AuditQuery { actor: s("web:alice"), ..AuditQuery::default() }).await, ["atm-1", "atm-1"]);
    assert_eq!(ids(AuditQuery { actor: s("api:alice"), ..AuditQuery::default() }).await, ["atm-2"]);
    assert_eq!(
        ids(AuditQuery { action: s("terminal."), ..AuditQuery::default() }).await,
        ["3 terminals", "atm-2", "atm-1"]
    );
    assert_eq!(ids(AuditQuery { action: s("terminal.add"), ..AuditQuery::default() }).await, ["atm-2", "atm-1"]);
    assert_eq!(ids(AuditQuery { action: s("web_user"), ..AuditQuery::default() }).await, ["carol"], "`_` is literal");
    assert_eq!(ids(AuditQuery { action: s("%"), ..AuditQuery::default() }).await, Vec::<String>::new());
    assert_eq!(ids(AuditQuery { subject: s("atm-1"), ..AuditQuery::default() }).await, ["atm-1", "atm-1"]);
    assert_eq!(ids(AuditQuery { since: Some(T0 + 4), ..AuditQuery::default() }).await, ["3 terminals", "dave"]);
    // Paging back from an id; and filters that skip parameters ($1 and $5 without $2–$4).
    let before = all[1].id;
    assert_eq!(
        ids(AuditQuery { before_id: Some(before), limit: 2, ..AuditQuery::default() }).await,
        ["carol", "atm-1"]
    );
    let q = AuditQuery { actor: s("web:alice"), before_id: Some(all[3].id), ..AuditQuery::default() };
    assert_eq!(ids(q).await, ["atm-1"]);
    let q = AuditQuery {
        actor: s("web:bob"),
        action: s("web"),
        since: Some(T0 + 3),
        subject: s("dave"),
        ..AuditQuery::default()
    };
    assert_eq!(ids(q).await, ["dave"]);
    let q = AuditQuery {
        actor: s("web:alice"),
        action: s("terminal"),
        subject: s("atm-1"),
        since: Some(T0),
        before_id: Some(all[0].id),
        limit: 1,
    };
    assert_eq!(ids(q).await, ["atm-1"]);
}

// ---------------------------------------------------------------------------------------------------------------
// backend-specific

/// A revocation commits with `synchronous = FULL` (durable through a power cut) and hands its connection back to
/// the pool as the store's default (NORMAL), so no other write pays for it or silently keeps it.
#[tokio::test]
async fn durable_transactions_hand_their_connection_back_as_it_was() {
    let dir = tempfile::Builder::new().prefix("cv-store-").tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("cas-vpn.sqlite")).await.unwrap();
    for i in 0..3 {
        one_terminal(&store, &format!("atm-d{i}"), Some(&format!("0d{i}")), None).await;
    }
    for i in 0..3 {
        store.revoke(&name(&format!("atm-d{i}")), KeyCompromise, &Actor::Uid(0), T0 + i).await.unwrap();
    }
    let Store::Sqlite(pool) = &store else { unreachable!() };
    let mut conns = Vec::new();
    for _ in 0..pool.size() {
        conns.push(pool.acquire().await.unwrap());
    }
    for c in conns.iter_mut() {
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **c).await.unwrap();
        assert_eq!(sync, 1, "a pooled connection left at synchronous {sync}");
    }
}

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

async fn audit_pages_oldest_first(store: Store) {
    for i in 0..7i64 {
        let actor = if i % 2 == 0 { web("alice") } else { root() };
        store
            .audit(&actor, if i < 5 { "terminal.add" } else { "revoke" }, &format!("atm-{i}"), "", T0 + i)
            .await
            .unwrap();
    }
    let all = store.audit_page(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
    let first = all.last().unwrap().id;
    let page = |q: AuditQuery, after: i64| {
        let store = store.clone();
        async move { store.audit_page_after(&q, after).await.unwrap().into_iter().map(|r| r.subject).collect::<Vec<_>>() }
    };
    let q = |limit: u32| AuditQuery { limit, ..AuditQuery::default() };
    assert_eq!(page(q(3), first - 1).await, ["atm-0", "atm-1", "atm-2"]);
    assert_eq!(page(q(3), first + 2).await, ["atm-3", "atm-4", "atm-5"]);
    assert_eq!(page(q(3), first + 5).await, ["atm-6"]);
    assert_eq!(page(q(3), first + 6).await, Vec::<String>::new());
    // The filters hold, and `before_id` bounds the walk.
    let alice = AuditQuery { actor: Some("web:alice".into()), ..q(100) };
    assert_eq!(page(alice.clone(), i64::MIN).await, ["atm-0", "atm-2", "atm-4", "atm-6"]);
    assert_eq!(page(AuditQuery { before_id: Some(first + 6), ..alice }, first).await, ["atm-2", "atm-4"]);
    let q2 = AuditQuery { action: Some("terminal.".into()), since: Some(T0 + 3), ..q(100) };
    assert_eq!(page(q2, i64::MIN).await, ["atm-3", "atm-4"]);
}
