//! Shared test helpers: a throwaway installation root and a CLI runner bound to it.

pub mod pg;
pub mod wait;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// Every command here runs its services under one uid: these tests are about behaviour, not users, and must not
/// create the machine's service accounts (`tests/e2e/privsep.rs` tests real users).
pub const USERS_ENV: &str = "CAS_VPN_SERVICE_USERS";
/// Where the CLI finds its store when it is not SQLite under the root.
pub const DATABASE_ENV: &str = "CAS_VPN_DATABASE_URL";

/// Runs the test `async fn NAME(f: gate::Fixture)` twice, as `NAME::sqlite` on SQLite and as `NAME::postgres` on
/// a fresh PostgreSQL database (ignored without `CAS_VPN_TEST_PG_URL`, failing when run without it), each with
/// the given test attribute.
macro_rules! both_backends {
    (#[$test:meta] $name:ident) => {
        mod $name {
            #[$test]
            async fn sqlite() {
                super::$name($crate::gate::Fixture::new().await).await
            }

            #[$test]
            #[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
            async fn postgres() {
                super::$name($crate::gate::Fixture::on_postgres().await).await
            }
        }
    };
}
pub(crate) use both_backends;

/// Runs each listed `async fn(Store)` of the calling module on a fresh SQLite file and on a fresh PostgreSQL
/// database, as `NAME::sqlite` and `NAME::postgres` (the latter ignored without `CAS_VPN_TEST_PG_URL`, failing
/// when run without it). The caller imports `Store` and `PgDb`.
macro_rules! store_on_both_backends {
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
pub(crate) use store_on_both_backends;

/// The signer service running in this test process on the installation's socket (the gate and master sign
/// through it, as in production). It has a thread and a runtime of its own, so a test that blocks on a CLI
/// subprocess (which may ask the signer too) cannot starve it. Stopped (and its socket gone) by `stop`.
pub struct InProcessSigner {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessSigner {
    /// A signer on `ctx`'s installation, store and clock (it opens its own context on its own runtime).
    pub async fn start(ctx: &cas_vpn::app::Ctx) -> InProcessSigner {
        use cas_vpn::control::signer::{SignerRequest, SignerResponse, call};
        let root = ctx.cfg.root.clone();
        let url = ctx.database_url.clone();
        let clock = ctx.clock.clone();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let dir = root.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut ctx = cas_vpn::app::Ctx::open(&dir, url.as_deref()).await.unwrap();
                ctx.clock = clock;
                cas_vpn::signer::run_signer(std::sync::Arc::new(ctx), rx).await.unwrap();
            });
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        wait::wait_until_async("the signer answers", deadline, async || {
            matches!(call(&root, &SignerRequest::Ping).await, Ok(SignerResponse::Pong))
        })
        .await;
        InProcessSigner { stop, thread: Some(thread) }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join()).await.unwrap().expect("the signer thread panicked");
    }
}

impl Drop for InProcessSigner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A fresh root (and SQLite store, or a PostgreSQL database given to every command) per test; removed on drop.
pub struct Install {
    pub dir: tempfile::TempDir,
    /// The store every command of this installation uses (`CAS_VPN_DATABASE_URL`); `None`: SQLite under the root.
    pub database_url: Option<String>,
}

/// Public address used in profiles: from the documentation range, never contacted.
pub const PUBLIC_IP: &str = "198.51.100.1";

impl Install {
    /// An empty root (not initialised).
    pub fn empty() -> Install {
        Install { dir: tempfile::Builder::new().prefix("cv-it-").tempdir().unwrap(), database_url: None }
    }

    /// An initialised root with a small admin port range where a test needs it.
    pub fn new() -> Install {
        Install::on(None)
    }

    /// An initialised root whose store is the database at `database_url` (`None`: SQLite under the root).
    pub fn on(database_url: Option<&str>) -> Install {
        let i = Install { database_url: database_url.map(str::to_owned), ..Install::empty() };
        i.ok(&["init", "--public-ip", PUBLIC_IP]);
        // These tests run in the host's network namespace, whose firewall is never touched: a `serve net` started
        // here (by `serve all`) must leave it alone. The firewall is tested in namespaces (tests/e2e/firewall.rs).
        let fw = i.path("config/firewall");
        let text = std::fs::read_to_string(&fw).unwrap().replace("\nmanage=yes\n", "\nmanage=no\n");
        assert!(text.contains("\nmanage=no\n"), "config/firewall has no manage key");
        std::fs::write(&fw, text).unwrap();
        i
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("cas-vpn").unwrap();
        c.env("CAS_VPN_ROOT", self.root()).env(USERS_ENV, "none").env_remove("RUST_LOG");
        match &self.database_url {
            Some(url) => c.env(DATABASE_ENV, url),
            None => c.env_remove(DATABASE_ENV),
        };
        c
    }

    /// The CLI as a plain `std::process::Command` (for tests that read its output while it runs).
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin!("cas-vpn"));
        c.env("CAS_VPN_ROOT", self.root()).env(USERS_ENV, "none");
        match &self.database_url {
            Some(url) => c.env(DATABASE_ENV, url),
            None => c.env_remove(DATABASE_ENV),
        };
        c
    }

    /// Starts a command without waiting for it (for tests that kill it).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut c = self.std_cmd();
        c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and requires exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cas-vpn {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires exit `code`; returns stderr, which must be one line.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "cas-vpn {args:?}: stderr {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "errors are one line: {stderr:?}");
        stderr
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Every regular file (sockets are not content) under the root with its content (the SQLite files by their row dump would be nicer, but bytes
    /// catch any write). Used to prove that refused input changed nothing.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.is_file() && !p.to_string_lossy().contains("cas-vpn.sqlite") {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        let mut m = BTreeMap::new();
        walk(self.root(), &mut m);
        m
    }

    /// What the store holds (every credential, revoked ones too, and the counts), to prove it did not change.
    /// Not `status` as a whole: its `seconds_left` ticks between two calls.
    pub fn db_counts(&self) -> String {
        let counts = self.json(&["status"])["counts"].clone();
        format!(
            "{counts}\n{}\n{}",
            self.ok(&["terminal", "list", "--all", "--json"]),
            self.ok(&["admin-vpn", "list", "--all", "--json"])
        )
    }
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs the `openssl` CLI; returns (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl CLI");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Pulls the text between `<tag>` and `</tag>` out of a profile.
pub fn inline_block(profile: &str, tag: &str) -> String {
    let start = profile.find(&format!("<{tag}>\n")).unwrap_or_else(|| panic!("no <{tag}>")) + tag.len() + 3;
    let end = profile.find(&format!("</{tag}>")).unwrap();
    profile[start..end].to_owned()
}

/// A child process a test started, killed (and reaped) when the guard is dropped unless the test took it back:
/// a test that fails half-way leaves no process behind.
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    pub fn new(child: std::process::Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// The child, for a test that ends it itself.
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("not taken")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("not taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
