//! A passing store fault during CONNECT (issue "Stay up under attack", item 11): the store (PostgreSQL) really goes
//! away — new connections refused, live ones ended — while a terminal connects. openvpn must answer it with a
//! temporary denial the client retries by itself (never a plain AUTH_FAILED, which stops an OpenVPN 3 terminal
//! for good), and the terminal must be back on its own once the store is, without anyone touching it.

use std::time::Duration;

use crate::support::deploy::Deployment;
use crate::support::pg::PgDb;
use crate::support::{require_root, wait_initialized, wait_until};

const T: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs root, network namespaces, openvpn and PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
fn a_store_outage_during_connect_is_a_temporary_denial_and_the_terminal_comes_back_by_itself() {
    require_root();
    let db = PgDb::create();
    let mut d = Deployment::on_postgres(1, &[], &db.socket_url);
    let profile = d.terminal("atm-0");
    d.start();

    // Once connected before, so the front knows the terminal's home instance (it cannot ask the store later).
    let first = d.connect(0, &profile);
    wait_initialized(&first, T);
    drop(first);
    wait_until("the first session is gone", T, || d.sessions_of("atm-0") == 0);

    db.block();
    let client = d.connect(0, &profile);
    let denied = client.wait_for_line(|l| l.contains("AUTH_FAILED"), T);
    assert!(denied.contains("TEMP"), "a passing fault must be a temporary denial, got: {denied}");
    assert!(d.serve_log().contains("store"), "serve says why it denied");

    db.unblock();
    // Back by itself: the client retries after its backoff; nobody restarts it.
    wait_initialized(&client, Duration::from_secs(60));
    wait_until("its session is in the store again", T, || d.sessions_of("atm-0") == 1);
    assert!(client.is_running());
}
