//! `cas-vpn backup` and `cas-vpn restore` (issue 12, item 4): round trips on SQLite, on PostgreSQL and from one
//! backend to the other, compared table by table and file by file; every refusal (non-empty root or store, wrong
//! passphrase, damaged file, a backup from a newer schema) changes nothing; every table of the schema is either
//! backed up or named transient.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cas_vpn::db::Store;
use cas_vpn::db::snapshot::{Dump, TRANSIENT};
use cas_vpn::ops::backup::PASSPHRASE_ENV;

use crate::support::pg::PgDb;
use crate::support::{Install, mode};

const PASS: &str = "correct horse battery staple";

/// Tables a backup carries, by name. A table in the schema on neither this list nor `db::snapshot::TRANSIENT`
/// fails `every_table_is_backed_up_or_transient`: whoever adds a table decides whether a restore brings it back.
const BACKED_UP: &[&str] = &[
    "api_tokens",
    "audit",
    "certificates",
    "credentials",
    "crl_state",
    "metric_counters",
    "metrics_tokens",
    "pairing_tokens",
    "pairing_window",
    "pending_pairings",
    "web_bootstrap",
    "web_recovery_codes",
    "web_setup_links",
    "web_users",
];

/// Rows of `table` in a backup or restore report.
pub fn rows_of(report: &serde_json::Value, table: &str) -> u64 {
    report["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).map_or(0, |t| t["rows"].as_u64().unwrap())
}

fn backup_cmd(i: &Install, file: &Path, pass: &str) -> std::process::Output {
    i.cmd().env(PASSPHRASE_ENV, pass).arg("backup").arg(file).arg("--json").output().unwrap()
}

/// `cas-vpn backup FILE --json` of `i`, which must succeed.
fn backup(i: &Install, file: &Path) -> serde_json::Value {
    let out = backup_cmd(i, file, PASS);
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `cas-vpn restore FILE --json` onto `root` (store: `db`, else SQLite under the root).
fn restore_cmd(root: &Path, db: Option<&str>, file: &Path, pass: &str) -> std::process::Output {
    let mut c = assert_cmd::Command::cargo_bin("cas-vpn").unwrap();
    c.env("CAS_VPN_ROOT", root).env(crate::support::USERS_ENV, "none").env(PASSPHRASE_ENV, pass);
    match db {
        Some(url) => c.env(crate::support::DATABASE_ENV, url),
        None => c.env_remove(crate::support::DATABASE_ENV),
    };
    c.arg("restore").arg(file).arg("--json").output().unwrap()
}

fn restore(root: &Path, db: Option<&str>, file: &Path) -> serde_json::Value {
    let out = restore_cmd(root, db, file, PASS);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An installation with something in most tables: token and server-made terminals, a revoked terminal and a
/// revoked admin, an admin credential, a web user, an open pairing window.
fn populate(i: &Install) {
    i.ok(&["terminal", "add", "atm-1"]);
    i.ok(&["terminal", "add", "atm-2", "--server-keygen"]);
    i.ok(&["terminal", "add", "atm-3"]);
    i.ok(&["revoke", "atm-3", "--reason", "key-compromise"]);
    let out = i.path("alice.ovpn");
    i.ok(&["admin-vpn", "issue", "alice", "--out", out.to_str().unwrap()]);
    let out = i.path("bob.ovpn");
    i.ok(&["admin-vpn", "issue", "bob", "--out", out.to_str().unwrap()]);
    i.ok(&["revoke", "bob"]);
    i.ok(&["web-user", "add", "carol"]);
    i.ok(&["pairing", "open", "--for", "10m"]);
}

async fn dump_of(url: &str) -> Dump {
    let store = Store::open(url).await.unwrap();
    let d = store.dump().await.unwrap();
    store.close().await;
    d
}

fn url_of(root: &Path, db: Option<&str>) -> String {
    cas_vpn::app::database_url(root, db)
}

/// Tables as sorted row sets (a backend orders text keys by its own collation).
fn tables(d: &Dump) -> BTreeMap<String, Vec<String>> {
    d.tables
        .iter()
        .map(|t| {
            let mut rows: Vec<String> = t.rows.iter().map(ToString::to_string).collect();
            rows.sort();
            (t.name.clone(), rows)
        })
        .collect()
}

/// The restored store holds what the backup held: every table equal, but the audit trail (one more row: the
/// restore) and the CRL state (the restore made fresh CRLs).
fn assert_same_store(before: &Dump, after: &Dump) {
    assert_eq!(before.migration, after.migration);
    let (b, a) = (tables(before), tables(after));
    assert_eq!(b.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>());
    for (name, rows) in &b {
        match name.as_str() {
            "audit" => {
                assert_eq!(a[name].len(), rows.len() + 1, "audit: one row more (the restore)");
                for r in rows {
                    assert!(a[name].contains(r), "audit row lost: {r}");
                }
            }
            "crl_state" => assert_eq!(a[name].len(), rows.len()),
            _ => assert_eq!(&a[name], rows, "table {name} differs after the round trip"),
        }
    }
}

/// Every file under `dir` of `root` (relative path → bytes).
fn files_of(root: &Path, dir: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.is_file() {
                out.insert(p.strip_prefix(root).unwrap().to_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(root, &root.join(dir), &mut m);
    m
}

/// config/ and pki/ came back byte for byte with their modes (CRLs are made afresh), and nothing else.
fn assert_same_files(src: &Path, dst: &Path) {
    for dir in ["config", "pki"] {
        let mut a = files_of(src, dir);
        let mut b = files_of(dst, dir);
        a.retain(|p, _| !p.starts_with("pki/imports"));
        for m in [&mut a, &mut b] {
            m.retain(|p, _| !p.to_string_lossy().contains("crl-"));
        }
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{dir}/ lists differ");
        for (p, data) in &a {
            assert!(&b[p] == data, "{} differs", p.display());
            assert_eq!(mode(&dst.join(p)), mode(&src.join(p)), "mode of {}", p.display());
        }
    }
    assert!(!dst.join("run").exists() && !dst.join("vpn").exists(), "no run state is restored");
}

/// The restored root answers like the original: same terminals, admins and users, revoked ones still revoked,
/// and the revoked serials on the fresh CRLs.
fn assert_same_answers(a: &Install, b: &Install) {
    for args in [
        &["terminal", "list", "--all", "--json"][..],
        &["admin-vpn", "list", "--all", "--json"],
        &["web-user", "list", "--json"],
        &["pairing", "status", "--json"],
    ] {
        let (x, y) = (a.ok(args), b.ok(args));
        let strip = |s: &str| {
            // The window's seconds left tick between the two calls.
            s.lines().filter(|l| !l.contains("\"remaining_secs\"")).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(strip(&x), strip(&y), "cas-vpn {args:?} differs after restore");
    }
    let revoked = b.json(&["terminal", "show", "atm-3"]);
    assert_eq!(revoked["state"], "revoked");
    let serial = revoked["certificates"][0]["serial"].as_str().map(str::to_owned);
    let crl = std::fs::read_to_string(b.path("pki/crl-terminal.pem")).unwrap();
    let (ok, text) =
        crate::support::openssl(&["crl", "-noout", "-text", "-in", b.path("pki/crl-terminal.pem").to_str().unwrap()]);
    assert!(ok && !crl.is_empty(), "{text}");
    if let Some(serial) = serial {
        assert!(
            text.to_lowercase().replace(':', "").contains(serial.trim_start_matches('0')),
            "{serial} not on the CRL"
        );
    }
}

/// The round trip from `src` onto a fresh root (an existing empty directory) on `dst_db` (None: SQLite); returns
/// the restored installation.
async fn round_trip(src: &Install, dst_db: Option<&str>) -> Install {
    populate(src);
    let before = dump_of(&url_of(src.root(), src.database_url.as_deref())).await;
    let file = src.path("backup.age");
    let r = backup(src, &file);
    assert_eq!(mode(&file), 0o600, "a backup is private");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "an ordinary age file");
    assert!(!bytes.windows(PASS.len()).any(|w| w == PASS.as_bytes()), "the passphrase is not in the file");
    assert!(rows_of(&r, "credentials") >= 5, "{r}");

    let dst = Install { database_url: dst_db.map(str::to_owned), ..Install::empty() };
    let out = restore(dst.root(), dst_db, &file);
    assert_eq!(out["crls_republished"], true, "{out}");
    assert_eq!(out["finished_earlier_restore"], false);
    assert_eq!(out["tables"], r["tables"]);
    let after = dump_of(&url_of(dst.root(), dst_db)).await;
    assert_same_store(&before, &after);
    assert_same_files(src.root(), dst.root());
    assert_same_answers(src, &dst);
    assert!(dst.ok(&["audit", "--action", "backup.restore"]).contains("backup.restore"));
    dst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_sqlite() {
    let src = Install::new();
    round_trip(&src, None).await;
    // Onto a root that does not exist yet: it is created (by one rename).
    let fresh = Install::empty();
    let root = fresh.path("new/batm");
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    restore(&root, None, &src.path("backup.age"));
    assert!(root.join("config/network").is_file() && root.join("db/cas-vpn.sqlite").is_file());
    let leftovers: Vec<_> =
        std::fs::read_dir(root.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no staging directory left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn round_trip_on_postgres() {
    let (a, b) = (PgDb::create().await, PgDb::create().await);
    let src = Install::on(Some(&a.url));
    let dst = round_trip(&src, Some(&b.url)).await;
    // The restored store is not empty any more: a second restore onto another empty root is refused, and
    // changes nothing.
    let before = dump_of(&b.url).await;
    let other = Install::empty();
    let out = restore_cmd(other.root(), Some(&b.url), &src.path("backup.age"), PASS);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    assert_eq!(std::fs::read_dir(other.root()).unwrap().count(), 0);
    assert_eq!(dump_of(&b.url).await, before);
    // A restore killed between its store commit and the rename of its staging directory (simulated: the restored
    // root moved back to a staging name) is finished by running it again: only the files are put in place.
    let id = dst.json(&["audit", "--action", "backup.restore"]);
    let id = id[0]["subject"].as_str().unwrap().to_owned();
    let name = dst.root().file_name().unwrap().to_string_lossy().into_owned();
    let stage = dst.root().with_file_name(format!(".{name}.restore-{id}-0badcafe"));
    std::fs::rename(dst.root(), &stage).unwrap();
    std::fs::create_dir(dst.root()).unwrap();
    let again = restore(dst.root(), Some(&b.url), &src.path("backup.age"));
    assert_eq!(again["finished_earlier_restore"], true, "{again}");
    assert!(!stage.exists(), "the old staging directory is swept");
    assert_eq!(dst.json(&["terminal", "show", "atm-1"])["state"], "pending");
    // New rows get new ids past the restored ones (identity counters moved).
    dst.ok(&["terminal", "add", "atm-9"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn sqlite_to_postgres_and_back() {
    let pg = PgDb::create().await;
    let src = Install::new();
    let on_pg = round_trip(&src, Some(&pg.url)).await;
    on_pg.ok(&["terminal", "add", "atm-pg"]);
    let file = on_pg.path("from-pg.age");
    backup(&on_pg, &file);
    let back = Install::empty();
    restore(back.root(), None, &file);
    let list = back.json(&["terminal", "list", "--all"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"atm-pg") && names.contains(&"atm-3"), "{names:?}");
    back.ok(&["terminal", "add", "atm-sq"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_is_backed_up_or_transient() {
    let i = Install::new();
    let store = Store::open(&url_of(i.root(), None)).await.unwrap();
    let names = store.table_names().await.unwrap();
    store.close().await;
    let stray: Vec<&String> =
        names.iter().filter(|t| !BACKED_UP.contains(&t.as_str()) && !TRANSIENT.contains(&t.as_str())).collect();
    assert!(
        stray.is_empty(),
        "tables neither backed up nor transient: {stray:?}; add each to BACKED_UP here (a restore brings it back) or \
         to db::snapshot::TRANSIENT (it starts empty after a restore)"
    );
    let r = backup(&i, &i.path("b.age"));
    let carried: Vec<&str> = r["tables"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap()).collect();
    let want: Vec<&str> = names.iter().map(String::as_str).filter(|t| !TRANSIENT.contains(t)).collect();
    assert_eq!(carried, want, "the backup carries every non-transient table, and no transient one");
}

/// Every file under a root, and the store's rows (a refused restore must change neither).
async fn state_of(i: &Install) -> (BTreeMap<PathBuf, Vec<u8>>, Dump) {
    (i.snapshot(), dump_of(&url_of(i.root(), i.database_url.as_deref())).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing() {
    let src = Install::new();
    src.ok(&["terminal", "add", "atm-1"]);
    let file = src.path("backup.age");
    backup(&src, &file);

    // Onto an initialised root: refused, and that installation is untouched.
    let busy = Install::new();
    let before = state_of(&busy).await;
    let out = restore_cmd(busy.root(), None, &file, PASS);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    assert!(state_of(&busy).await == before, "a refused restore changed the root");

    // Onto an empty root: a wrong passphrase, an empty one, a damaged file, a file that is no backup, a backup of
    // a newer schema. Each is refused with one line and leaves the root empty (and no staging directory beside).
    let dst = Install::empty();
    let mut damaged = std::fs::read(&file).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    let damaged_file = src.path("damaged.age");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let truncated_file = src.path("truncated.age");
    std::fs::write(&truncated_file, &damaged[..damaged.len() - 100]).unwrap();
    let plain = src.path("plain.txt");
    std::fs::write(&plain, "not a backup\n").unwrap();
    let newer = src.path("newer.age");
    rewrite_migration(&file, &newer, 9999);
    for (f, pass, why) in [
        (&file, "wrong passphrase", "wrong passphrase"),
        (&file, "", "empty"),
        (&damaged_file, PASS, "damaged"),
        (&truncated_file, PASS, "damaged"),
        (&plain, PASS, "not an age-encrypted"),
        (&newer, PASS, "newer than this cas-vpn"),
    ] {
        let out = restore_cmd(dst.root(), None, f, pass);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", f.display());
        assert!(err.contains(why), "{}: expected {why:?} in {err}", f.display());
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(!err.contains(PASS), "the passphrase is never echoed");
        assert_eq!(std::fs::read_dir(dst.root()).unwrap().count(), 0, "{why}: the root is still empty");
        let parent = dst.root().parent().unwrap();
        let stage = format!(".{}.restore-", dst.root().file_name().unwrap().to_string_lossy());
        assert!(
            !std::fs::read_dir(parent).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&stage)),
            "{why}: a staging directory was left"
        );
    }

    // A backup with an empty passphrase is refused before anything is written, and so is one over an existing
    // backup with a failing store (here: none), which keeps the old file.
    let out = backup_cmd(&src, &src.path("empty-pass.age"), "");
    assert_eq!(out.status.code(), Some(1));
    assert!(!src.path("empty-pass.age").exists());
}

/// A copy of backup `src` claiming store migration `version` (re-encrypted with the same passphrase).
fn rewrite_migration(src: &Path, dst: &Path, version: i64) {
    use age::secrecy::SecretString;
    let identity = age::scrypt::Identity::new(SecretString::from(PASS.to_owned()));
    let dec = age::Decryptor::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut plain = Vec::new();
    dec.decrypt(std::iter::once(&identity as &dyn age::Identity)).unwrap().read_to_end(&mut plain).unwrap();
    let mut archive = tar::Archive::new(&plain[..]);
    let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((name, mode, data));
    }
    let store_at = entries.iter().position(|e| e.0 == "store.jsonl").unwrap();
    let text = String::from_utf8(entries[store_at].2.clone()).unwrap();
    let (_, rest) = text.split_once('\n').unwrap();
    let store = format!("{{\"migration\":{version}}}\n{rest}");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(store.as_bytes()))
    };
    entries[store_at].2 = store.into_bytes();
    let manifest_at = entries.iter().position(|e| e.0 == "manifest.json").unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&entries[manifest_at].2).unwrap();
    m["migration"] = version.into();
    m["store_sha256"] = sha.into();
    entries[manifest_at].2 = serde_json::to_vec(&m).unwrap();

    let out = std::fs::File::create(dst).unwrap();
    let enc = age::Encryptor::with_user_passphrase(SecretString::from(PASS.to_owned()));
    let mut w = enc.wrap_output(out).unwrap();
    {
        let mut tar = tar::Builder::new(&mut w);
        for (name, mode, data) in &entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            tar.append_data(&mut h, name, &data[..]).unwrap();
        }
        tar.finish().unwrap();
    }
    w.flush().unwrap();
    w.finish().unwrap();
}

/// `backup --json` and `restore --json` against their golden files (`UPDATE_GOLDEN=1 cargo test --test it golden`
/// rewrites them): the table list is redacted to one placeholder (tables come and go with migrations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_backup_restore_json_shapes() {
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-1"]);
    let mut g = crate::golden_json::Golden::new(i.root());
    let extra = [
        ("id", "id"),
        ("backup_id", "id"),
        ("backup_created_at", "time"),
        ("bytes", "bytes"),
        ("files", "count"),
        ("migration", "migration"),
        ("cas_vpn_version", "version"),
        ("tables", "tables..."),
    ];
    let file = i.path("backup.age");
    let out = backup_cmd(&i, &file, PASS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    g.check("backup", &String::from_utf8(out.stdout).unwrap(), &extra);
    let out = restore_cmd(&i.path("restored"), None, &file, PASS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    g.check("restore", &String::from_utf8(out.stdout).unwrap(), &extra);
    g.finish();
}

/// A backup killed while it writes leaves nothing beside its target: the file has no name until it is complete.
#[test]
fn a_killed_backup_leaves_no_file() {
    let i = Install::new();
    populate(&i);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("cas-vpn.backup");
    let mut child = i
        .std_cmd()
        .env(PASSPHRASE_ENV, PASS)
        .arg("backup")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The moment the backup holds a file in the target's directory (the passphrase's key derivation, which comes
    // after, takes a good part of a second), it is killed.
    let dir = out.path().to_string_lossy().into_owned();
    let fds = format!("/proc/{}/fd", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let writing = loop {
        let held = std::fs::read_dir(&fds).into_iter().flatten().flatten().find_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            target.to_string_lossy().starts_with(&dir).then(|| target.to_string_lossy().into_owned())
        });
        if let Some(t) = held {
            break t;
        }
        assert!(child.try_wait().unwrap().is_none(), "the backup ended before its file was seen");
        assert!(std::time::Instant::now() < deadline, "the backup never opened its file");
        std::thread::yield_now();
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a killed backup (writing {writing}) left {left:?}");
}
