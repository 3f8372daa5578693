//! Crash-safe `terminal import --out DIR` (invariant 9): real `cas-vpn` processes killed with SIGKILL at moments
//! spread over the whole run, the commit/publish window reached deterministically through the debug-build
//! failpoints (`CAS_VPN_FAILPOINT`, `ops::import`).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{DATABASE_ENV, Install, KillOnDrop, USERS_ENV};

/// Names per import: enough for the run to last a while (keys made in a debug build), few enough for 31 runs.
const N: usize = 200;

/// Moments the failpoints stop an import at (ops::import::FAILPOINT_ENV).
const FAILPOINTS: [&str; 6] = [
    "import.before_commit",
    "import.after_commit",
    "import.after_audit",
    "import.mid_publish",
    "import.before_tokens",
    "import.before_cleanup",
];

/// A `terminal import` process; with a failpoint, also the lines of its stderr (the failpoint says when it is
/// reached there).
fn spawn(i: &Install, args: &[&str], failpoint: Option<&str>) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin!("cas-vpn"));
    c.env("CAS_VPN_ROOT", i.root()).env(USERS_ENV, "none").env("RUST_LOG", "warn").env_remove(DATABASE_ENV);
    c.env_remove("CAS_VPN_FAILPOINT");
    if let Some(f) = failpoint {
        c.env("CAS_VPN_FAILPOINT", f);
    }
    c.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (KillOnDrop::new(child), rx)
}

/// Every file under `dir` (recursively) except those under `skip`.
fn files(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(&p, skip, out);
        } else if t.is_file() {
            out.push(p);
        }
    }
}

/// Unfinished staging directories under `pki/imports/` (a `.trash-` one is only being deleted).
fn staging_dirs(i: &Install) -> Vec<String> {
    fs::read_dir(i.path("pki/imports"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".trash-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The active terminals whose names start with `prefix`, as the CLI lists them.
fn terminals(i: &Install, prefix: &str) -> BTreeSet<String> {
    let list = i.json(&["terminal", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The subjects of the import audit rows (`terminal.import`), read from the store once there are `want` of them
/// (or at the deadline).
fn import_audits(i: &Install, want: usize) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = || {
        rt.block_on(async {
            let store = cas_vpn::db::Store::open_sqlite(&i.path("db/cas-vpn.sqlite")).await.unwrap();
            let rows = store.list_audit(100_000).await.unwrap();
            store.close().await;
            rows.into_iter().filter(|a| a.action == "terminal.import").map(|a| a.subject).collect::<Vec<_>>()
        })
    };
    let mut rows = read();
    crate::support::wait::poll_until(Instant::now() + Duration::from_secs(5), || {
        rows = read();
        rows.len() >= want
    });
    rows
}

fn imports_check(i: &Install) -> serde_json::Value {
    let out = i.run(&["doctor", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["checks"].as_array().unwrap().iter().find(|c| c["check"] == "imports").cloned().expect("an imports check")
}

/// Invariant 9 for `terminal import --out DIR --server-keygen`: killed with SIGKILL at 30 moments over the whole
/// run (timed kills from the first millisecond to the end, and each failpoint of the commit/publish window), it
/// never leaves a private key outside the root's private `pki/` but in a complete profile of a stored terminal
/// (or, between the kill and the resume, in one recognisable temp file of such a profile); `doctor` tells the truth
/// before and after; `--resume` (or a re-run of the same CSV) finishes the job: every profile, `tokens.csv`, and
/// exactly one audit row per import.
#[test]
fn a_killed_import_with_out_is_rolled_back_or_finished() {
    let i = Install::new();
    let pki = i.path("pki");
    let mut completed = 0usize;

    // Round 0 runs to its end: how long an import takes, so that the timed kills spread over all of it.
    let mut run_time = Duration::ZERO;
    let rounds = 1 + 24 + FAILPOINTS.len();
    for round in 0..rounds {
        let prefix = format!("r{round:02}-");
        let csv = i.path(&format!("names{round}.csv"));
        let names: BTreeSet<String> = (0..N).map(|n| format!("{prefix}{n:04}")).collect();
        fs::write(&csv, names.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
        let out = i.path(&format!("out{round}"));
        let args = ["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()];
        let failpoint = round.checked_sub(25).map(|k| FAILPOINTS[k]);
        let what = match failpoint {
            Some(f) => format!("round {round} (failpoint {f})"),
            None => format!("round {round}"),
        };

        // The operator's own files in DIR, a temp-looking one included, are none of the import's business.
        fs::create_dir_all(&out).unwrap();
        let foreign = [".notes.txt.tmp-1-00000000", "notes.txt"];
        for f in foreign {
            fs::write(out.join(f), "mine").unwrap();
        }

        let started = Instant::now();
        let (mut child, lines) = spawn(&i, &args, failpoint);
        match (round, failpoint) {
            (0, _) => {
                assert!(child.wait().unwrap().success(), "{what}: the import failed");
                run_time = started.elapsed();
            }
            (_, None) => {
                // Kill moments from 0 to 1.15 × the run time: some land after a natural end.
                let at = started + run_time.mul_f64((round - 1) as f64 * 1.15 / 24.0);
                crate::support::wait::poll_until(at, || child.try_wait().unwrap().is_some());
            }
            (_, Some(f)) => {
                let deadline = started + Duration::from_secs(60);
                let reached = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match lines.recv_timeout(left) {
                        Ok(line) if line.contains(&format!("failpoint {f} reached")) => break true,
                        Ok(_) => {}
                        Err(_) => break false,
                    }
                };
                assert!(reached, "{what}: the failpoint was not reached");
                // While it runs, another import waits its turn and doctor says one is running.
                let other = i.path("other.csv");
                fs::write(&other, "other-1\n").unwrap();
                let err = i.fails(&["terminal", "import", other.to_str().unwrap()], 1);
                assert!(err.contains("another terminal import is running"), "{what}: {err}");
                let check = imports_check(&i);
                assert_eq!(
                    (check["level"].as_str(), check["detail"].as_str()),
                    (Some("warn"), Some("an import is running"))
                );
            }
        }
        let _ = child.kill();
        child.wait().unwrap();

        // Right after the kill: every private key outside pki/ is a complete profile of a stored terminal in DIR,
        // or one temp file of such a profile there (which the resume sweeps).
        let stored = terminals(&i, &prefix);
        assert!(stored.is_empty() || stored == names, "{what}: {} of {N} terminals in the store", stored.len());
        let every_stored = terminals(&i, "r");
        let mut all = Vec::new();
        files(i.root(), &pki, &mut all);
        let mut temps = 0;
        for f in all {
            let data = fs::read(&f).unwrap();
            if !data.windows(11).any(|w| w == b"PRIVATE KEY") {
                continue;
            }
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let dir = f.parent().unwrap();
            let an_out =
                dir.parent() == Some(i.root()) && dir.file_name().unwrap().to_string_lossy().starts_with("out");
            assert!(an_out, "{what}: a private key in {}", f.display());
            let target = match name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) {
                Some((target, _)) => {
                    temps += 1;
                    target.to_owned()
                }
                None => {
                    assert!(String::from_utf8_lossy(&data).contains("</tls-crypt-v2>"), "{what}: {name} is partial");
                    name.clone()
                }
            };
            let terminal = target.strip_suffix(".ovpn").unwrap_or_else(|| panic!("{what}: key in {name}"));
            assert!(every_stored.contains(terminal), "{what}: {name} holds a key of a terminal not in the store");
        }
        assert!(temps <= 1, "{what}: {temps} temp files with keys in DIR");

        // doctor tells the truth before the resume.
        let check = imports_check(&i);
        let tokens = out.join("tokens.csv");
        let staging = staging_dirs(&i);
        let want = match (stored.is_empty(), staging.is_empty(), tokens.exists()) {
            (_, true, true) | (true, true, false) => "ok",
            (false, _, _) => "fail",
            (true, false, _) => "warn",
        };
        assert_eq!(check["level"], want, "{what}: {check}; staging {staging:?}, {} stored", stored.len());
        if want != "ok" {
            assert!(check["detail"].as_str().unwrap().contains("--resume"), "{what}: {check}");
        }
        if round > 0 && !stored.is_empty() && !staging.is_empty() {
            // Another import meanwhile is refused, naming what exists, and changes nothing.
            let other = i.path("other.csv");
            fs::write(&other, "other-1\n").unwrap();
            let err = i.fails(&["terminal", "import", other.to_str().unwrap()], 1);
            assert!(err.contains("committed but not published") && err.contains("--resume"), "{what}: {err}");
            assert!(terminals(&i, "other-").is_empty(), "{what}: the refused import created a terminal");
        }

        // The resume (odd rounds) or a re-run of the same CSV (even rounds) finishes the job; a run that ended
        // before its kill needs neither (and a re-run would find its names taken).
        let done = stored == names && staging.is_empty() && tokens.exists();
        if round % 2 == 1 {
            let r = i.json(&["terminal", "import", "--resume"]);
            let (finished, rolled_back) = (r["finished"].as_array().unwrap(), r["rolled_back"].as_array().unwrap());
            if stored.is_empty() {
                assert!(finished.is_empty() && rolled_back.len() == staging.len(), "{what}: {r}");
            } else if !done {
                assert_eq!(finished.len(), 1, "{what}: {r}");
                let f = &finished[0];
                assert_eq!(f["import_id"].as_str(), staging.first().map(String::as_str), "{what}: {f}");
                assert_eq!((f["created"].as_u64(), f["out_dir"].as_str()), (Some(N as u64), out.to_str()), "{what}");
                let first = &f["terminals"][0];
                assert_eq!(first["name"], format!("{prefix}0000"), "{what}: {first}");
                assert!(first["token"].as_str().unwrap().starts_with("cv1."), "{what}: {first}");
                assert!(first["tunnel_ip"].as_str().unwrap().starts_with("10.8."), "{what}: {first}");
                let profile = out.join(format!("{prefix}0000.ovpn"));
                assert_eq!(first["profile"].as_str(), profile.to_str(), "{what}: {first}");
            }
            assert!(staging_dirs(&i).is_empty(), "{what}: --resume left {:?}", staging_dirs(&i));
            if terminals(&i, &prefix).is_empty() {
                assert!(!tokens.exists(), "{what}: tokens.csv of a rolled-back import");
                i.ok(&args);
            }
        } else if !done {
            i.ok(&args);
        }
        completed += 1;

        // Store and DIR agree; tokens.csv is there; one audit row per import; doctor is content again.
        assert_eq!(terminals(&i, &prefix), names, "{what}: every terminal after the resume");
        let mut published: Vec<String> =
            fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        published.sort();
        let mut want_files: Vec<String> = names.iter().map(|n| format!("{n}.ovpn")).collect();
        want_files.push("tokens.csv".into());
        want_files.extend(foreign.map(String::from));
        want_files.sort();
        assert_eq!(published, want_files, "{what}: DIR holds every profile, tokens.csv and the operator's own files");
        let csv_names: BTreeSet<String> = fs::read_to_string(&tokens)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_owned())
            .collect();
        assert_eq!(csv_names, names, "{what}: tokens.csv names every terminal");
        let audits = import_audits(&i, completed);
        assert_eq!(audits.len(), completed, "{what}: one audit row per import: {audits:?}");
        assert_eq!(audits.iter().collect::<BTreeSet<_>>().len(), completed, "{what}: {audits:?}");
        assert!(staging_dirs(&i).is_empty(), "{what}: staging left {:?}", staging_dirs(&i));
        assert_eq!(imports_check(&i)["level"], "ok", "{what}");
    }
}

/// An import of `n` names `prefix0000…` with `--server-keygen --out DIR`, stopped at `failpoint` and killed there;
/// returns its arguments (to run it again), DIR and its staging directory.
fn killed_at(i: &Install, prefix: &str, n: usize, failpoint: &str) -> (Vec<String>, PathBuf, PathBuf) {
    let csv = i.path(&format!("{prefix}names.csv"));
    fs::write(&csv, (0..n).map(|k| format!("{prefix}{k:04}\n")).collect::<String>()).unwrap();
    let out = i.path(&format!("{prefix}out"));
    let args: Vec<String> =
        ["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]
            .map(String::from)
            .to_vec();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, lines) = spawn(i, &argv, Some(failpoint));
    let deadline = Instant::now() + Duration::from_secs(60);
    let reached = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(&format!("failpoint {failpoint} reached")) => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    assert!(reached, "the failpoint {failpoint} was not reached");
    let _ = child.kill();
    child.wait().unwrap();
    let staging = staging_dirs(i);
    assert_eq!(staging.len(), 1, "{staging:?}");
    (args, out, i.path("pki/imports").join(&staging[0]))
}

/// The files of `dir`, name → content.
fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect()
}

/// What DIR must hold once an import is published from `bundle`: every profile and `tokens.csv`, byte for byte.
fn want_published(bundle: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let b = cas_vpn::ops::import::Bundle::read(bundle).unwrap();
    let staged = b.staged().unwrap();
    let mut want: std::collections::BTreeMap<String, Vec<u8>> =
        staged.profiles.iter().map(|(n, p)| (format!("{n}.ovpn"), p.to_vec())).collect();
    want.insert("tokens.csv".into(), staged.tokens.as_bytes().to_vec());
    want
}

/// A committed import whose staged bundle is truncated or damaged is refused, by `--resume` and by a re-run
/// alike, with what happened and what to do, and nothing changes (DIR, the staging directory, the store); with
/// the bundle intact again, the resume publishes profiles byte-identical to the staged ones.
#[test]
fn a_damaged_bundle_is_refused_and_a_good_one_resumes_byte_identical() {
    let i = Install::new();
    let (args, out, staging) = killed_at(&i, "b-", 20, "import.after_commit");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let bundle = staging.join("staged.bundle");
    let good = fs::read(&bundle).unwrap();
    let want = want_published(&bundle);
    assert_eq!(want.len(), 21);
    let before = contents(&staging);
    let names = terminals(&i, "b-");
    assert_eq!(names.len(), 20);

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x20;
    let damaged: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() - 1000].to_vec()),
        ("cut in its header", good[..10].to_vec()),
        ("empty", Vec::new()),
        ("one byte changed", flipped),
    ];
    for (what, bytes) in damaged {
        fs::write(&bundle, &bytes).unwrap();
        for cmd in [&["terminal", "import", "--resume"][..], &argv[..]] {
            let err = i.fails(cmd, 1);
            assert!(err.contains("damaged import bundle") && err.contains("nothing was changed"), "{what}: {err}");
            assert!(err.contains("revoke") && err.contains(staging.to_str().unwrap()), "{what}: {err}");
            assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none(), "{what}: DIR was written");
            let mut now = contents(&staging);
            assert_eq!(now.remove("staged.bundle"), Some(bytes.clone()), "{what}: the bundle changed");
            let mut then = before.clone();
            then.remove("staged.bundle");
            assert_eq!(now, then, "{what}: the staging directory changed");
            assert_eq!(terminals(&i, "b-"), names, "{what}");
        }
        assert_eq!(imports_check(&i)["level"], "fail", "{what}");
    }

    fs::write(&bundle, &good).unwrap();
    let r = i.json(&["terminal", "import", "--resume"]);
    assert_eq!(r["finished"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(contents(&out), want, "the resumed profiles are the staged ones, byte for byte");
    assert!(staging_dirs(&i).is_empty());
    assert_eq!(import_audits(&i, 1).len(), 1);
    assert_eq!(imports_check(&i)["level"], "ok");
}

/// A staging directory left by a version before the bundle (one `NAME.ovpn` per profile beside `tokens.csv`, a
/// journal without `staging`) is still resumed from those files, and one killed before its commit rolled back.
#[test]
fn an_old_format_staging_directory_is_resumed() {
    let i = Install::new();
    // Rewrites a staging directory the way older versions laid it out.
    let to_old_format = |staging: &Path| {
        let bundle = staging.join("staged.bundle");
        let files = want_published(&bundle);
        for (name, data) in &files {
            fs::write(staging.join(name), data).unwrap();
        }
        fs::remove_file(&bundle).unwrap();
        let journal = staging.join("journal.json");
        let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&journal).unwrap()).unwrap();
        assert_eq!(j.as_object_mut().unwrap().remove("staging"), Some("bundle".into()));
        fs::write(&journal, serde_json::to_vec_pretty(&j).unwrap()).unwrap();
        files
    };

    // Committed: finished from the old files, byte for byte.
    let (_, out, staging) = killed_at(&i, "o-", 20, "import.mid_publish");
    let want = to_old_format(&staging);
    let r = i.json(&["terminal", "import", "--resume"]);
    let finished = r["finished"].as_array().unwrap();
    assert_eq!(finished.len(), 1, "{r}");
    assert_eq!(finished[0]["created"], 20, "{r}");
    assert_eq!(contents(&out), want, "profiles and tokens.csv published from the old staging files");
    assert!(staging_dirs(&i).is_empty());
    assert_eq!(imports_check(&i)["level"], "ok");

    // Uncommitted: rolled back.
    let (args, out, staging) = killed_at(&i, "u-", 5, "import.before_commit");
    to_old_format(&staging);
    let r = i.json(&["terminal", "import", "--resume"]);
    assert_eq!(r["rolled_back"].as_array().unwrap().len(), 1, "{r}");
    assert!(staging_dirs(&i).is_empty() && terminals(&i, "u-").is_empty());
    assert!(!out.join("tokens.csv").exists());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    i.ok(&argv);
    assert_eq!(terminals(&i, "u-").len(), 5);
}
