//! `cas-vpn audit`: the audit trail read from the command line (SQLite; the store's query itself runs on both
//! backends in store.rs): actors, filters, paging through a long trail, hostile stored text, usage errors.

use cas_vpn::db::Store;
use cas_vpn::domain::Actor;

use crate::support::{Install, USERS_ENV};

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An audit row to write: `(actor, source, action, subject, detail, at)`.
type Row<'a> = (Actor, Option<&'a str>, &'a str, &'a str, &'a str, i64);

/// Writes audit rows straight into the installation's store.
fn write_rows(i: &Install, rows: &[Row]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_sqlite(&i.path("db/cas-vpn.sqlite")).await.unwrap();
        for (actor, source, action, subject, detail, at) in rows {
            store.audit_from(actor, *source, action, subject, detail, *at).await.unwrap();
        }
        store.close().await;
    });
}

fn entries(v: &serde_json::Value) -> Vec<(String, String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("actor"), s("action"), s("subject"))
        })
        .collect()
}

#[test]
fn audit_lists_what_was_done_by_whom_oldest_first_and_filters() {
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-1"]);
    i.ok(&["revoke", "atm-1"]);
    i.ok(&["web-user", "add", "alice"]);
    let me = cas_vpn::app::cli_actor().to_string();
    // And what the web UI would have written, from its client's address, three days ago.
    let old = now() - 3 * 86_400;
    let web = Actor::WebUser("alice".parse().unwrap());
    write_rows(&i, &[(web, Some("10.3.2.6"), "terminal.add", "atm-9", "token", old)]);

    let all = i.json(&["audit"]);
    let rows = entries(&all);
    let mine: Vec<(&str, &str)> = rows
        .iter()
        .filter(|(a, _, _)| *a == me)
        .map(|(_, action, subject)| (action.as_str(), subject.as_str()))
        .collect();
    for want in [("terminal.add", "atm-1"), ("revoke", "atm-1"), ("web_user.add", "alice")] {
        assert!(mine.contains(&want), "{want:?} by {me} in {rows:?}");
    }
    let pos = |action: &str, subject: &str| rows.iter().position(|r| r.1 == action && r.2 == subject).unwrap();
    assert!(pos("terminal.add", "atm-1") < pos("revoke", "atm-1"), "oldest first: {rows:?}");
    assert!(pos("revoke", "atm-1") < pos("web_user.add", "alice"), "oldest first: {rows:?}");
    let ids: Vec<i64> = all.as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let web_row = all.as_array().unwrap().iter().find(|e| e["actor"] == "web:alice").unwrap();
    assert_eq!(web_row["source"], "10.3.2.6");
    assert!(web_row["at"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC: {web_row}");
    let cli_row = all.as_array().unwrap().iter().find(|e| e["actor"] == me.as_str()).unwrap();
    assert!(cli_row["source"].is_null(), "{cli_row}");

    // The table: a header and one line per row, with the actor and the source.
    let text = i.ok(&["audit"]);
    assert_eq!(text.lines().count(), rows.len() + 1, "{text}");
    assert!(text.lines().next().unwrap().starts_with("TIME"), "{text}");
    let line = text.lines().find(|l| l.contains("atm-9")).unwrap();
    assert!(line.contains("web:alice") && line.contains("10.3.2.6") && line.contains("terminal.add"), "{line}");

    // --actor
    let by_web = entries(&i.json(&["audit", "--actor", "web:alice"]));
    assert_eq!(by_web, [("web:alice".into(), "terminal.add".into(), "atm-9".into())]);
    let by_me = entries(&i.json(&["audit", "--actor", &me]));
    assert!(by_me.len() >= 3 && by_me.iter().all(|r| r.0 == me), "{by_me:?}");
    assert_eq!(i.json(&["audit", "--actor", "gate"]), serde_json::json!([]));
    // --since: a duration back, or a time.
    let recent = entries(&i.json(&["audit", "--since", "1d"]));
    assert!(!recent.iter().any(|r| r.2 == "atm-9") && recent.len() == rows.len() - 1, "{recent:?}");
    assert_eq!(entries(&i.json(&["audit", "--since", "4d"])).len(), rows.len());
    assert_eq!(entries(&i.json(&["audit", "--since", "2000-01-01T00:00:00Z"])).len(), rows.len());
    assert_eq!(i.json(&["audit", "--since", "2999-01-01T00:00:00+02:00"]), serde_json::json!([]));
    // --action (a prefix) and --limit (the newest N, still oldest first).
    let added = entries(&i.json(&["audit", "--action", "terminal."]));
    assert!(added.iter().all(|r| r.1.starts_with("terminal.")) && added.len() == 2, "{added:?}");
    let last2 = entries(&i.json(&["audit", "--limit", "2"]));
    assert_eq!(last2, rows[rows.len() - 2..], "the newest two, oldest first");
    let combined = entries(&i.json(&["audit", "--actor", &me, "--action", "revoke", "--limit", "1", "--since", "1h"]));
    assert_eq!(combined.len(), 1, "{combined:?}");
    assert!(combined[0].1.starts_with("revoke"), "{combined:?}");
}

#[test]
fn bad_filters_are_usage_errors_that_print_nothing() {
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-1"]);
    for (args, flag) in [
        (&["audit", "--since", "yesterday"][..], "--since"),
        (&["audit", "--since", "2026-01-31"], "--since"),
        (&["audit", "--since", "1h\u{1b}[2J"], "--since"),
        (&["audit", "--actor", "root"], "--actor"),
        (&["audit", "--actor", "web:a b\nforged"], "--actor"),
        (&["audit", "--action", "Terminal%"], "--action"),
        (&["audit", "--limit", "0"], "--limit"),
        (&["audit", "--limit", "many", "--json"], "--limit"),
    ] {
        let out = i.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {:?}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains('\u{1b}'), "{args:?}: {stderr:?}");
    }
}

#[test]
fn hostile_stored_text_is_shown_escaped() {
    let i = Install::new();
    let subject = "atm-1\n2026-01-01T00:00:00Z  cli:root  forged\u{1b}[2J\u{9b}31m\u{202e}";
    let detail = "a\rb\\n\u{7}";
    write_rows(&i, &[(Actor::Gate, Some("192.0.2.1\u{1b}]0;x\u{7}"), "terminal.add", subject, detail, now())]);

    let text = i.ok(&["audit", "--actor", "gate"]);
    assert_eq!(text.lines().count(), 2, "one line per row: {text:?}");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n' || c == '\u{202e}'), "{text:?}");
    assert!(text.contains("atm-1\\n2026-01-01T00:00:00Z  cli:root  forged\\u{1b}[2J\\u{9b}31m\\u{202e}"), "{text}");
    assert!(text.contains("a\\rb\\\\n\\u{7}"), "{text}");
    assert!(text.contains("192.0.2.1\\u{1b}]0;x\\u{7}"), "{text}");

    let raw = i.ok(&["audit", "--actor", "gate", "--json"]);
    assert!(!raw.chars().any(|c| c.is_control() && c != '\n' || c == '\u{202e}'), "{raw:?}");
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v[0]["subject"], subject, "the JSON value itself is unchanged");
    assert_eq!(v[0]["detail"], detail);
}

/// A trail longer than a page is read a page at a time, and `audit | head` ends quietly.
#[test]
fn a_long_trail_is_paged_and_a_closed_stdout_ends_it_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let i = Install::new();
    let n = 2 * cas_vpn::ops::audit::PAGE as i64 + 7;
    let t0 = now() - 86_400;
    let subjects: Vec<String> = (0..n).map(|k| format!("atm-{k}")).collect();
    let rows: Vec<_> = subjects.iter().map(|s| (Actor::Vpn, None, "admin.suspended", s.as_str(), "", t0)).collect();
    write_rows(&i, &rows);

    let all = entries(&i.json(&["audit", "--actor", "vpn"]));
    assert_eq!(all.len() as i64, n);
    assert!(all.iter().zip(&subjects).all(|(r, s)| r.2 == *s), "in the order written");
    let tail = entries(&i.json(&["audit", "--actor", "vpn", "--limit", "600"]));
    assert_eq!(tail, all[all.len() - 600..]);

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("cas-vpn"))
        .env("CAS_VPN_ROOT", i.root())
        .env(USERS_ENV, "none")
        .args(["audit"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 100];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout); // `| head`: the reader is gone after the first lines
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(out.status.signal() == Some(13) || out.status.success(), "{:?}: {stderr}", out.status);
}
