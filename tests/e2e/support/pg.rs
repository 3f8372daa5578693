//! A throwaway PostgreSQL database for e2e tests, reached by `serve` inside the server namespace through the
//! cluster's unix socket (a namespace has its own loopback, but the socket is a file). Made and dropped with the
//! `psql` client from `CAS_VPN_TEST_PG_URL` (`scripts/pg-setup`, which also lets the role log in with its
//! password over the socket). [`PgDb::block`] and [`PgDb::unblock`] make the store really unreachable and back:
//! new connections are refused and live ones are ended, for this database only.

use std::hash::BuildHasher;
use std::process::Command;

pub const URL_ENV: &str = "CAS_VPN_TEST_PG_URL";
/// Where Debian's PostgreSQL puts its socket.
pub const SOCKET_DIR: &str = "/var/run/postgresql";

pub struct PgDb {
    pub name: String,
    /// The database over the unix socket (for `CAS_VPN_DATABASE_URL`).
    pub socket_url: String,
    admin_url: String,
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("psql (package postgresql-client) is needed: {e}"));
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PgDb {
    /// A fresh database; panics (the test cannot run and must not pass) without `CAS_VPN_TEST_PG_URL`.
    pub fn create() -> PgDb {
        let admin_url = match std::env::var(URL_ENV) {
            Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => panic!(
                "this test needs PostgreSQL: run `export {URL_ENV}=$(scripts/pg-setup)` first (scripts/test does)"
            ),
        };
        // postgres://USER:PASSWORD@HOST:PORT/DB → the same role and port over the socket.
        let rest = admin_url.strip_prefix("postgres://").expect("a postgres:// URL");
        let (userinfo, hostpart) = rest.split_once('@').expect("USER:PASSWORD@HOST:PORT/DB");
        let port = hostpart.split('/').next().and_then(|h| h.rsplit_once(':')).map_or("5432", |(_, p)| p);
        let name =
            format!("cvtest_{:016x}", std::collections::hash_map::RandomState::new().hash_one(std::process::id()));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let socket_url = format!("postgres://{userinfo}@localhost:{port}/{name}?host={SOCKET_DIR}");
        PgDb { name, socket_url, admin_url }
    }

    /// The store goes away: no new connection is accepted and every live one is ended.
    pub fn block(&self) {
        psql(&self.admin_url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", self.name));
        psql(
            &self.admin_url,
            &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'", self.name),
        );
    }

    /// The store comes back.
    pub fn unblock(&self) {
        psql(&self.admin_url, &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", self.name));
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-d",
                &self.admin_url,
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}
