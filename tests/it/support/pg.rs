//! A throwaway PostgreSQL database per test, so that tests run in parallel and leave nothing behind.
//!
//! The server comes from env `CAS_VPN_TEST_PG_URL` (`export CAS_VPN_TEST_PG_URL=$(scripts/pg-setup)`); its role
//! needs CREATEDB. Each [`PgDb`] creates `cvtest_<random hex>` and drops it when dropped, also when the test
//! panics. Every test that needs PostgreSQL is `#[ignore]`d, so a plain `cargo test` lists it as ignored instead
//! of passing it untested; `scripts/test` starts a local server (`scripts/pg-setup`) and runs them with
//! `--include-ignored`. Run without the variable, such a test fails and says how to set it (in CI or not).

use sqlx::{Connection, PgConnection};

pub const URL_ENV: &str = "CAS_VPN_TEST_PG_URL";

/// A fresh, empty database; dropped (connections and all) with this guard.
pub struct PgDb {
    /// URL of the fresh database.
    pub url: String,
    /// Its name, `cvtest_<hex>`.
    pub name: String,
    admin_url: String,
}

impl PgDb {
    /// Creates the database. Panics when no server is configured (the test cannot run, and must not pass), or
    /// when the configured one is unusable.
    pub async fn create() -> PgDb {
        let admin_url = match std::env::var(URL_ENV) {
            Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ => panic!(
                "this test needs PostgreSQL but {URL_ENV} is not set; run `export {URL_ENV}=$(scripts/pg-setup)` (as \
                 root) first, or scripts/test, which does"
            ),
        };
        let name = format!("cvtest_{}", hex::encode(rand::random::<[u8; 8]>()));
        // Never print the URL itself: it carries the password.
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the server in {URL_ENV}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name} (does the role have CREATEDB?): {e}"));
        let _ = conn.close().await;
        PgDb { url: with_database(&admin_url, &name), name, admin_url }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: do the async work on a thread of its
        // own. FORCE ends connections the test may have left open (a panic skips its cleanup).
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                conn.close().await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: could not drop test database {}: the dropping thread panicked", self.name),
        }
    }
}

/// `url` with its database (path) replaced by `db`, query parameters kept.
fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[test]
fn replaces_the_database_of_a_url() {
    assert_eq!(with_database("postgres://u:p@h:5432/casvpn", "x"), "postgres://u:p@h:5432/x");
    assert_eq!(with_database("postgres://u:p@h:5432", "x"), "postgres://u:p@h:5432/x");
    assert_eq!(with_database("postgresql://h/db?sslmode=disable", "x"), "postgresql://h/x?sslmode=disable");
}
