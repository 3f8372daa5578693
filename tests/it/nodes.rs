//! Several VPN nodes on one store (`cluster`), on both backends: registration and its refusals (a name held by a
//! live process; a second node on SQLite), sessions per node, events written with the change that needs them
//! and acknowledged per node, the follower that applies them (through NOTIFY on PostgreSQL, through its catch-up
//! read everywhere), CRLs shared through the store. The real thing, with openvpn on several nodes, is
//! `tests/e2e/nodes.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cas_pki::RevocationReason::Unspecified;
use cas_vpn::cluster::{ALIVE_FOR_SECS, DEAD_AFTER_SECS, follow};
use cas_vpn::db::{
    Event, EventKind, NewCert, NewSession, NewTerminal, NodeRefusal, NodeStart, SessionChange, Store, TerminalLayout,
};
use cas_vpn::domain::{Actor, Name, PortRange};
use tokio::sync::watch;

use crate::support::pg::PgDb;
use crate::support::store_on_both_backends;

const T0: i64 = 1_800_000_000;
const SMALL: TerminalLayout = TerminalLayout { instances: 2, hosts_per_instance: 4 };

store_on_both_backends!(
    registration_refuses_a_held_name_and_a_second_node_on_sqlite,
    sessions_belong_to_their_node_and_a_dead_nodes_go,
    session_changes_apply_in_order_in_one_transaction,
    changes_that_reach_live_sessions_write_their_event_in_the_same_transaction,
    the_follower_applies_every_event_and_acknowledges_it,
    crls_are_kept_for_the_other_nodes,
);

fn name(s: &str) -> Name {
    s.parse().unwrap()
}

fn start<'a>(node: &'a Name, run_id: &'a str, now: i64) -> NodeStart<'a> {
    NodeStart { name: node, address: "198.51.100.10", version: "test", run_id, now, alive_since: now - ALIVE_FOR_SECS }
}

fn terminal(n: &str) -> NewTerminal {
    NewTerminal { name: name(n), token: None, cert: None }
}

async fn registration_refuses_a_held_name_and_a_second_node_on_sqlite(store: Store) {
    let (n1, n2) = (name("n1"), name("n2"));
    let row = store.register_node(&start(&n1, "run-a", T0)).await.unwrap().unwrap();
    assert_eq!((row.name.as_str(), row.address.as_str(), row.draining_since), ("n1", "198.51.100.10", None));
    // The same process again (a restart keeps its run id only in tests): fine.
    store.register_node(&start(&n1, "run-a", T0 + 1)).await.unwrap().unwrap();
    // Another process claiming n1 while its heartbeat is fresh: refused, nothing changed.
    let refused = store.register_node(&start(&n1, "run-b", T0 + 5)).await.unwrap().unwrap_err();
    assert_eq!(refused, NodeRefusal::NameInUse { last_seen: T0 + 1 });
    assert!(!store.node_heartbeat(&n1, "run-b", T0 + 5).await.unwrap(), "only the holder beats");
    assert!(store.node_heartbeat(&n1, "run-a", T0 + 5).await.unwrap());
    // The same holder (machine and root) restarting after a kill -9, its heartbeat still fresh: it may (its
    // single-instance lock proves the predecessor gone), and the predecessor's run no longer beats.
    store.register_node(&start(&n1, "run-a/2", T0 + 5)).await.unwrap().unwrap();
    assert!(!store.node_heartbeat(&n1, "run-a", T0 + 5).await.unwrap(), "the killed run lost the name");
    assert!(store.node_heartbeat(&n1, "run-a/2", T0 + 5).await.unwrap());
    let refused = store.register_node(&start(&n1, "run-b/1", T0 + 5)).await.unwrap().unwrap_err();
    assert_eq!(refused, NodeRefusal::NameInUse { last_seen: T0 + 5 }, "another holder may not");

    // A second node: PostgreSQL takes it, SQLite (one machine's file) refuses while n1 lives.
    let second = store.register_node(&start(&n2, "run-c", T0 + 6)).await.unwrap();
    match store {
        Store::Sqlite(_) => {
            assert_eq!(second.unwrap_err(), NodeRefusal::SingleNode { other: "n1".into(), last_seen: T0 + 5 });
            assert_eq!(store.list_nodes().await.unwrap().len(), 1);
            // Once n1 is dead, n2 may take over (a renamed host, a replaced machine).
            let later = T0 + 5 + ALIVE_FOR_SECS + 1;
            store.register_node(&start(&n2, "run-c", later)).await.unwrap().unwrap();
        }
        Store::Postgres(_) => {
            second.unwrap();
            let names: Vec<String> = store.list_nodes().await.unwrap().into_iter().map(|n| n.name).collect();
            assert_eq!(names, ["n1", "n2"]);
        }
    }
    // A process whose heartbeat stopped long ago no longer holds its name.
    let later = T0 + 5 + ALIVE_FOR_SECS + 1;
    if matches!(store, Store::Postgres(_)) {
        store.register_node(&start(&n1, "run-d", later)).await.unwrap().unwrap();
        assert!(!store.node_heartbeat(&n1, "run-a", later).await.unwrap(), "the old process lost the name");
    }

    // A drain is kept across restarts (the operator's intent lives in the store).
    store.set_node_draining(&n2, Some(later), later).await.unwrap();
    let again = store.register_node(&start(&n2, "run-c", later + 1)).await.unwrap().unwrap();
    assert_eq!(again.draining_since, Some(later));
    assert!(store.set_node_draining(&name("nobody"), None, later).await.is_err(), "an unknown node is an error");
}

fn session(node: &str, cid: i64, credential_id: i64, ip: &str) -> NewSession {
    NewSession {
        node: node.into(),
        instance: "terminal-0".into(),
        credential_id,
        common_name: "t".into(),
        tunnel_ip: ip.into(),
        real_addr: "198.51.100.20:40000".into(),
        since: T0,
        client_id: cid,
    }
}

async fn sessions_belong_to_their_node_and_a_dead_nodes_go(store: Store) {
    let ids = store.create_terminals(&[terminal("t1"), terminal("t2")], SMALL, T0).await.unwrap();
    // The same CID on the same instance of two nodes: two sessions (each openvpn counts its own).
    store.upsert_session(&session("n1", 1, ids[0].id, "198.18.0.2")).await.unwrap();
    store.upsert_session(&session("n2", 1, ids[1].id, "198.18.0.3")).await.unwrap();
    assert_eq!(store.list_sessions().await.unwrap().len(), 2);
    // A node clears only its own.
    assert_eq!(store.clear_sessions("n1", None).await.unwrap(), 1);
    let left = store.list_sessions().await.unwrap();
    assert_eq!((left.len(), left[0].node.as_str()), (1, "n2"));
    store.remove_session("n1", "terminal-0", 1).await.unwrap();
    assert_eq!(store.list_sessions().await.unwrap().len(), 1, "n1 cannot remove n2's session");

    // n2 stops beating: the others delete its sessions once it is dead, not before.
    let n2 = name("n2");
    store.register_node(&start(&n2, "r", T0)).await.unwrap().unwrap();
    assert_eq!(store.clear_dead_nodes_sessions(T0 - DEAD_AFTER_SECS).await.unwrap(), 0, "alive");
    assert_eq!(store.clear_dead_nodes_sessions(T0 + 1).await.unwrap(), 1, "dead: never shown online again");
    assert!(store.list_sessions().await.unwrap().is_empty());
}

async fn session_changes_apply_in_order_in_one_transaction(store: Store) {
    let ids = store.create_terminals(&[terminal("t1"), terminal("t2"), terminal("t3")], SMALL, T0).await.unwrap();
    store.upsert_session(&session("n2", 7, ids[2].id, "198.18.0.9")).await.unwrap();
    let record =
        |cid: i64, i: usize| SessionChange::Record { row: session("n1", cid, ids[i].id, "198.18.0.2"), terminal: true };
    // In order: a session up, gone, up again under the same CID; another up; a removal of a CID never seen.
    let changes = [
        record(1, 0),
        SessionChange::Remove { instance: "terminal-0".into(), client_id: 1 },
        record(1, 0),
        record(2, 1),
        SessionChange::Remove { instance: "terminal-0".into(), client_id: 99 },
    ];
    let paired = store.apply_session_changes("n1", &changes).await.unwrap();
    assert_eq!(paired, ["t", "t"], "each terminal's first session marks it paired, once");
    let rows = store.list_sessions().await.unwrap();
    let mine: Vec<i64> = rows.iter().filter(|r| r.node == "n1").map(|r| r.client_id).collect();
    assert_eq!(mine, [1, 2]);
    for id in [ids[0].id, ids[1].id] {
        assert_eq!(store.credential_by_id(id).await.unwrap().unwrap().paired_at, Some(T0));
    }
    // Byte counters: of a session of this node's instance only (n2's CID 7 on the same instance name is not ours).
    let bytes =
        |client_id| SessionChange::Bytes { instance: "terminal-0".into(), client_id, bytes_in: 10, bytes_out: 20 };
    store.apply_session_changes("n1", &[bytes(2), bytes(7), bytes(99)]).await.unwrap();
    let rows = store.list_sessions().await.unwrap();
    let counters: Vec<(&str, i64, i64, i64)> =
        rows.iter().map(|r| (r.node.as_str(), r.client_id, r.bytes_in, r.bytes_out)).collect();
    assert_eq!(counters, [("n1", 1, 0, 0), ("n1", 2, 10, 20), ("n2", 7, 0, 0)]);
    // Again: nobody is marked twice.
    assert!(store.apply_session_changes("n1", &[record(3, 0)]).await.unwrap().is_empty());

    // A change that fails (a credential that does not exist) leaves the whole batch unwritten.
    let bad = SessionChange::Record { row: session("n1", 4, i64::MAX, "198.18.0.4"), terminal: true };
    let batch = [SessionChange::Clear { instance: "terminal-0".into() }, bad];
    assert!(store.apply_session_changes("n1", &batch).await.is_err());
    assert_eq!(store.list_sessions().await.unwrap().len(), 4, "rolled back: the clear did not happen either");
    // Clear ends this node's instance's rows only.
    store.apply_session_changes("n1", &[SessionChange::Clear { instance: "terminal-0".into() }]).await.unwrap();
    let left = store.list_sessions().await.unwrap();
    assert_eq!((left.len(), left[0].node.as_str()), (1, "n2"));
}

async fn changes_that_reach_live_sessions_write_their_event_in_the_same_transaction(store: Store) {
    store.create_terminals(&[terminal("atm-1")], SMALL, T0).await.unwrap();
    let before = store.last_event_id().await.unwrap();
    let (_, _, id) = store.revoke(&name("atm-1"), Unspecified, &Actor::Vpn, T0 + 1).await.unwrap();
    assert!(id > before);
    let seen = store.events_after(before, "n1").await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].id, seen[0].kind, seen[0].subject.as_str(), seen[0].node.clone()),
        (id, EventKind::Kill, "atm-1", None)
    );
    // A failed change writes no event (already revoked: the transaction rolls back).
    assert!(store.revoke(&name("atm-1"), Unspecified, &Actor::Vpn, T0 + 2).await.is_err());
    assert_eq!(store.last_event_id().await.unwrap(), id);

    // A suspension ends the admin's sessions everywhere; a resumption ends nothing.
    let cert = NewCert {
        serial: "0a".repeat(16),
        common_name: "alice".into(),
        not_before: T0 - 300,
        not_after: T0 + 86_400,
        cert_pem: format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", "A".repeat(100)),
    };
    let admin = store.create_admin(&name("alice"), PortRange::new(12000, 12003).unwrap(), &cert, T0).await.unwrap();
    assert!(store.set_admin_suspended(admin.id, Some(T0 + 3)).await.unwrap());
    let ev = store.events_after(id, "n1").await.unwrap();
    assert_eq!((ev.len(), ev[0].subject.as_str()), (1, "alice"));
    assert!(store.set_admin_suspended(admin.id, None).await.unwrap());
    assert_eq!(store.last_event_id().await.unwrap(), ev[0].id, "resuming writes no kill");

    // Drains are addressed to their node only.
    for n in ["n1", "n2"] {
        store.register_node(&start(&name(n), n, T0)).await.unwrap().ok();
    }
    if matches!(store, Store::Postgres(_)) {
        let drain = store.set_node_draining(&name("n2"), Some(T0 + 4), T0 + 4).await.unwrap();
        assert!(store.events_after(ev[0].id, "n1").await.unwrap().is_empty(), "not n1's business");
        let for_n2 = store.events_after(ev[0].id, "n2").await.unwrap();
        assert_eq!((for_n2[0].id, for_n2[0].kind), (drain, EventKind::Drain));
    }

    // Acknowledgements: one per node, the first one kept.
    store.ack_event(id, "n1", 1, T0 + 5).await.unwrap();
    store.ack_event(id, "n1", 0, T0 + 6).await.unwrap();
    store.ack_event(id, "n2", 0, T0 + 6).await.unwrap();
    let acks = store.event_acks(id).await.unwrap();
    assert_eq!(acks.iter().map(|a| (a.node.as_str(), a.killed)).collect::<Vec<_>>(), [("n1", 1), ("n2", 0)]);
    // Old events go, with their acknowledgements.
    assert!(store.prune_events(T0 + 100).await.unwrap() >= 2);
    assert!(store.event_acks(id).await.unwrap().is_empty());
}

/// Records what the follower applies.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(i64, EventKind, String)>>>);

impl follow::Applier for Recorder {
    async fn apply(&mut self, e: &Event) -> usize {
        self.0.lock().unwrap().push((e.id, e.kind, e.subject.clone()));
        1
    }
}

async fn the_follower_applies_every_event_and_acknowledges_it(store: Store) {
    let now = cas_vpn::app::now();
    let node = follow::register(&store, name("n1"), "holder-1", "198.51.100.10", now).await.unwrap();
    // Events from before the registration concern sessions that no longer exist: not applied.
    let old = store.publish_event(EventKind::Kill, "old", None, now).await.unwrap();
    assert!(old > node.after_event);
    let rec = Recorder::default();
    let (stop_tx, stop) = watch::channel(false);
    // Starting after `old` (as if the node had registered just after it).
    let task = tokio::spawn(follow::follow(store.clone(), node.local, old, rec.clone(), stop));
    let mut ids = Vec::new();
    for (subject, node) in [("atm-1", None), ("atm-2", None), ("n2", Some("n2"))] {
        let kind = if node.is_some() { EventKind::Drain } else { EventKind::Kill };
        ids.push(store.publish_event(kind, subject, node, now).await.unwrap());
    }
    // PostgreSQL: the notification wakes it at once; SQLite: its periodic catch-up (5 s).
    let deadline = match store {
        Store::Postgres(_) => Duration::from_secs(2),
        Store::Sqlite(_) => Duration::from_secs(8),
    };
    let t = Instant::now();
    loop {
        let acked = store.event_acks(ids[0]).await.unwrap().len() + store.event_acks(ids[1]).await.unwrap().len();
        if acked >= 2 || t.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = rec.0.lock().unwrap().clone();
    let subjects: Vec<&str> = applied.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(subjects, ["atm-1", "atm-2"], "in order, once each, not the old one nor n2's drain");
    for id in &ids[..2] {
        let acks = store.event_acks(*id).await.unwrap();
        assert_eq!(acks.iter().map(|a| (a.node.as_str(), a.killed)).collect::<Vec<_>>(), [("n1", 1)]);
    }
    assert!(store.event_acks(ids[2]).await.unwrap().is_empty(), "another node's event is not acknowledged here");
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the follower stops").unwrap();
}

async fn crls_are_kept_for_the_other_nodes(store: Store) {
    use cas_vpn::domain::Kind;
    assert_eq!(store.crl_newer_than(Kind::Terminal, 0).await.unwrap(), None);
    let n1 = store.next_crl_number(Kind::Terminal, T0, T0 + 86_400).await.unwrap();
    assert_eq!(store.crl_newer_than(Kind::Terminal, 0).await.unwrap(), None, "no text yet");
    store.record_crl(Kind::Terminal, n1, "CRL 1").await.unwrap();
    assert_eq!(store.crl_newer_than(Kind::Terminal, 0).await.unwrap(), Some((n1, "CRL 1".into())));
    assert_eq!(store.crl_newer_than(Kind::Terminal, n1).await.unwrap(), None, "nothing newer than what a node has");
    // Two nodes make CRLs at once: the one whose number is no longer the newest is not kept.
    let n2 = store.next_crl_number(Kind::Terminal, T0, T0 + 86_400).await.unwrap();
    assert_eq!(store.crl_newer_than(Kind::Terminal, 0).await.unwrap(), None, "CRL 1's text is not CRL 2");
    let n3 = store.next_crl_number(Kind::Terminal, T0, T0 + 86_400).await.unwrap();
    store.record_crl(Kind::Terminal, n3, "CRL 3").await.unwrap();
    store.record_crl(Kind::Terminal, n2, "CRL 2").await.unwrap();
    assert_eq!(store.crl_newer_than(Kind::Terminal, n1).await.unwrap(), Some((n3, "CRL 3".into())));
}

/// A CRL from the store is checked before it is written: one changed byte and it is refused, the file on disk
/// stays as it was; what is written is the one CRL checked, nothing else the stored text holds. On SQLite (one
/// node) a new CRL is not copied into the store: the node's file is the one copy.
#[tokio::test]
async fn a_crl_from_the_store_is_checked_before_it_is_written() {
    use cas_vpn::domain::Kind;
    let install = crate::support::Install::new();
    let ctx = cas_vpn::ops::Ctx::open(install.root(), None).await.unwrap();
    let made = cas_vpn::ops::crl::refresh(&ctx, Kind::Terminal).await.unwrap();
    assert_eq!(ctx.store.crl_newer_than(Kind::Terminal, 0).await.unwrap(), None, "SQLite keeps no copy");
    let path = install.path("pki/crl-terminal.pem");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), made.pem);
    assert_eq!(ctx.pki.crl_number(Kind::Terminal).unwrap(), made.crl_number);

    // Another node's CRL as the store hands it over, made by the same CA.
    let now = time::OffsetDateTime::now_utc();
    let (this, next) = (now - time::Duration::minutes(5), now + time::Duration::days(1));
    let n = ctx.store.next_crl_number(Kind::Terminal, this.unix_timestamp(), next.unix_timestamp()).await.unwrap();
    let revoked = [cas_pki::Revoked { serial: cas_pki::Serial::random(), revoked_at: this, reason: Unspecified }];
    let good = ctx.pki.load_ca(Kind::Terminal).unwrap().crl(&revoked, n, this, next).unwrap();
    let der = cas_pki::crl_pem_to_der(&good).unwrap();
    for at in [4, der.len() / 2, der.len() - 1] {
        let mut bad = der.clone();
        bad[at] ^= 1;
        ctx.store.record_crl(Kind::Terminal, n, &cas_pki::crl_der_to_pem(&bad)).await.unwrap();
        let err = cas_vpn::ops::crl::adopt(&ctx, Kind::Terminal).await.unwrap_err();
        assert!(err.to_string().contains("pre-flight"), "byte {at}: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), made.pem, "byte {at}: the file is untouched");
    }
    // A good CRL followed by another block: only the CRL checked reaches the file (OpenVPN reads every block).
    let other = ctx.pki.load_ca(Kind::Terminal).unwrap().crl(&[], n + 7, this, next).unwrap();
    ctx.store.record_crl(Kind::Terminal, n, &format!("{good}{other}")).await.unwrap();
    assert_eq!(cas_vpn::ops::crl::adopt(&ctx, Kind::Terminal).await.unwrap(), Some(n));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    assert_eq!(ctx.pki.crl_number(Kind::Terminal).unwrap(), n);
    assert_eq!(cas_vpn::ops::crl::adopt(&ctx, Kind::Terminal).await.unwrap(), None, "nothing newer now");
}

/// SQLite serves one node: a second `serve vpn` on the same store refuses at once, saying why and what to do,
/// and leaves the first node's row and sessions alone; `node drain` refuses too (the terminals would have
/// nowhere to go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_sqlite_is_refused_with_what_to_do() {
    let i = crate::support::Install::new();
    let store = Store::open_sqlite(&i.path("db/cas-vpn.sqlite")).await.unwrap();
    let now = cas_vpn::app::now();
    let n1 = name("n1");
    store.register_node(&start(&n1, "first", now)).await.unwrap().unwrap();
    let err = i.fails(&["serve", "vpn", "--node", "n2"], 1);
    assert!(err.contains("SQLite, which serves one node") && err.contains("node n1 is running"), "{err}");
    assert!(err.contains("PostgreSQL"), "says what several nodes need: {err}");
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!((nodes.len(), nodes[0].run_id.as_str()), (1, "first"), "the running node is untouched");
    // The same name held by a live process is refused too (two machines cloned with one config).
    let err = i.fails(&["serve", "vpn", "--node", "n1"], 1);
    assert!(err.contains("node n1 is already running"), "{err}");
    let err = i.fails(&["node", "drain", "n1"], 1);
    assert!(err.contains("SQLite, which serves one node"), "{err}");
    store.close().await;
}
