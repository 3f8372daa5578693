//! Bulk operations through the CLI: `revoke --file` (every name checked first, all or nothing, one CRL listing
//! every serial; on SQLite and PostgreSQL) and `terminal import` of 20,000 names. The store half of `revoke
//! --file` is `store::bulk_revoke_is_all_or_nothing` (both backends); live sessions: `tests/e2e/vpn.rs`.

use std::collections::HashSet;
use std::io::Write as _;

use crate::support::Install;
use crate::support::pg::PgDb;

/// The serials `openssl crl -text` lists in `crl`, lower-case hex without leading zeros.
fn crl_serials(crl: &std::path::Path) -> HashSet<String> {
    let out = std::process::Command::new("openssl").args(["crl", "-noout", "-text", "-in"]).arg(crl).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().trim_start_matches('0').to_lowercase())
        .collect()
}

fn active_terminals(i: &Install) -> usize {
    i.json(&["terminal", "list"]).as_array().unwrap().len()
}

fn write(i: &Install, rel: &str, text: &str) -> String {
    let p = i.path(rel);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn revoke_file_story(i: &Install) {
    let names: Vec<String> = (1..=30).map(|n| format!("atm-{n:02}")).collect();
    let csv = write(i, "names.csv", &(names.join("\n") + "\n"));
    i.ok(&["terminal", "import", &csv, "--server-keygen", "--out", i.path("out").to_str().unwrap()]);
    assert_eq!(active_terminals(i), 30);

    // An unknown name anywhere refuses the whole list, names it, and changes nothing (files and store).
    let list = format!("# stolen batch\n\n{}\nnobody\natm-05\n", names[..20].join("\n"));
    let bad = write(i, "bad.txt", &list.replace("\natm-05\n", "\n"));
    let dup = write(i, "dup.txt", &list);
    let invalid = write(i, "inv.txt", "atm-01\nno spaces allowed\n");
    let empty = write(i, "empty.txt", "# nothing\n\n");
    let before = i.snapshot();
    let unchanged = |what: &str| {
        let after = i.snapshot();
        let changed: Vec<_> = after.iter().filter(|(p, b)| before.get(*p) != Some(*b)).map(|(p, _)| p).collect();
        assert!(changed.is_empty() && after.len() == before.len(), "{what} changed {changed:?}");
    };
    let err = i.fails(&["revoke", "--file", &bad], 1);
    assert!(err.contains("nothing revoked") && err.contains("1 unknown: nobody"), "{err}");
    unchanged("a list with an unknown name");
    assert_eq!(active_terminals(i), 30);
    // A name twice, an invalid name, an empty list: refused before the store is asked.
    let err = i.fails(&["revoke", "--file", &dup], 1);
    assert!(err.contains("atm-05 already appears on line"), "{err}");
    let err = i.fails(&["revoke", "--file", &invalid], 1);
    assert!(err.contains("inv.txt:2"), "{err}");
    let err = i.fails(&["revoke", "--file", &empty], 1);
    assert!(err.contains("no names"), "{err}");
    unchanged("a refused list");
    // A name and a file at once: refused by the command line.
    let out = i.run(&["revoke", "atm-01", "--file", &bad]);
    assert_eq!(out.status.code(), Some(2));

    // The good list: twenty revoked at once, one CRL listing every serial.
    let good = write(i, "good.txt", &format!("# stolen batch\n\n{}\n", names[..20].join("\n")));
    let r = i.json(&["revoke", "--file", &good, "--reason", "key-compromise"]);
    assert_eq!((r["revoked"].as_u64(), r["redone"].as_u64()), (Some(20), Some(0)), "{r}");
    let items = r["credentials"].as_array().unwrap();
    let serials: HashSet<String> = items
        .iter()
        .map(|c| {
            let s = c["serials"].as_array().unwrap();
            assert_eq!(s.len(), 1, "{c}");
            s[0].as_str().unwrap().trim_start_matches('0').to_lowercase()
        })
        .collect();
    assert_eq!(serials.len(), 20);
    let crls = r["crls"].as_array().unwrap();
    assert_eq!(crls.len(), 1, "{r}");
    assert_eq!((crls[0]["ca"].as_str(), crls[0]["revoked"].as_u64()), (Some("terminal"), Some(20)));
    let listed = crl_serials(&i.path("pki/crl-terminal.pem"));
    assert!(serials.is_subset(&listed), "missing from the CRL: {:?}", serials.difference(&listed).collect::<Vec<_>>());
    assert_eq!(listed.len(), 20);
    assert_eq!(active_terminals(i), 10);
    let audit = i.ok(&["audit", "--action", "revoke.bulk"]);
    assert!(audit.contains("20 revoked, 0 redone"), "{audit}");

    // From stdin: an already revoked name refuses unless --allow-revoked, which ends its sessions again.
    let mut cmd = i.cmd();
    let out = cmd.args(["revoke", "--file", "-"]).write_stdin("atm-01\natm-21\n").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("1 already revoked") && err.contains("atm-01"), "{err}");
    assert_eq!(active_terminals(i), 10);
    let mut cmd = i.cmd();
    let out = cmd
        .args(["revoke", "--file", "-", "--allow-revoked", "--json"])
        .write_stdin("atm-01\natm-21\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["revoked"].as_u64(), r["redone"].as_u64()), (Some(1), Some(1)), "{r}");
    assert_eq!(r["credentials"][0]["already_revoked"], true);
    assert_eq!(crl_serials(&i.path("pki/crl-terminal.pem")).len(), 21);
    assert_eq!(active_terminals(i), 9);
}

#[test]
fn revoke_file_checks_every_name_first_then_revokes_all_on_sqlite() {
    revoke_file_story(&Install::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CAS_VPN_TEST_PG_URL): scripts/test runs it with --include-ignored"]
async fn revoke_file_checks_every_name_first_then_revokes_all_on_postgres() {
    let db = PgDb::create().await;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || revoke_file_story(&Install::on(Some(&url)))).await.unwrap();
}

/// 20,000 names in one `terminal import` (tokens only; the store takes them in multi-row statements in one
/// transaction), then all 20,000 revoked by one `revoke --file`.
#[test]
fn twenty_thousand_names_imported_and_revoked_at_once() {
    let i = Install::new();
    let mut f = std::fs::File::create(i.path("names.csv")).unwrap();
    for n in 0..20_000 {
        writeln!(f, "atm-{n:05}").unwrap();
    }
    drop(f);
    let csv = i.path("names.csv").display().to_string();
    let out = i.path("out").display().to_string();
    let r = i.json(&["terminal", "import", &csv, "--out", &out]);
    assert_eq!(r["created"].as_u64(), Some(20_000), "{}", &r.to_string()[..200]);
    assert_eq!(active_terminals(&i), 20_000);
    let tokens = std::fs::read_to_string(i.path("out/tokens.csv")).unwrap();
    assert!(tokens.lines().filter(|l| l.starts_with("atm-")).count() == 20_000);
    let r = i.json(&["revoke", "--file", &csv]);
    assert_eq!(r["revoked"].as_u64(), Some(20_000));
    assert_eq!(active_terminals(&i), 0);
}
