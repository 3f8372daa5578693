//! `scripts/e2e-cleanup` and concurrent runs: it leaves alone what a live test process holds (the run's lock is
//! held) and removes what a dead one left behind (the run's lock is free).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::netns::{LOCK_DIR, make_id, run_cmd, run_lock_path};
use crate::support::{Netns, list_netns, require_root, temp_dir};

/// A run id nobody holds: its lock file is created here and never locked, as a run killed with -9 leaves it.
fn dead_run() -> (String, PathBuf) {
    loop {
        let id = make_id(RandomState::new().build_hasher().finish());
        let lock = Path::new(LOCK_DIR).join(format!("{id}.lock"));
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&lock).is_ok() {
            return (id, lock);
        }
    }
}

/// Run ids never start with a letter, so no test interface (`cv<id>-…`) matches the firewall's tunnel globs
/// `cva*` and `cvt*`; and they still match the cleanup script's `^cv[0-9a-f]{6}-`.
#[test]
fn run_ids_never_look_like_tunnel_devices() {
    for r in [0, 9, 10, 0xa0, 0xffff_ffff_ffff_ffff, 0x1234_5678_9abc_def0] {
        let id = make_id(r);
        assert_eq!(id.len(), 6, "{id}");
        assert!(id.starts_with(|c: char| c.is_ascii_digit()), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{id}");
    }
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn cleanup_leaves_a_live_runs_namespaces_alone_and_removes_a_dead_runs() {
    require_root();
    // This run's, made through the harness: the run's lock is held by this process.
    let live = Netns::new("live");
    let live_dir = temp_dir("live");
    // A dead run's leftovers (created by hand: the harness only ever names things after its own run). Should this
    // test fail before the script runs, the next cleanup removes them.
    let (dead, dead_lock) = dead_run();
    let dead_ns = format!("cv{dead}-srv-0");
    run_cmd(Command::new("ip").args(["netns", "add", &dead_ns])).unwrap();
    let dead_dir = std::env::temp_dir().join(format!("cv{dead}-pkiAbCdEf"));
    std::fs::create_dir(&dead_dir).unwrap();

    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/e2e-cleanup")).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/e2e-cleanup failed ({}): {log}", out.status);

    let names = list_netns();
    assert!(names.iter().any(|n| n == live.name()), "the live run's namespace {} was deleted: {log}", live.name());
    assert!(live_dir.path().is_dir(), "the live run's directory was removed: {log}");
    assert!(run_lock_path().is_file(), "the live run's lock file was removed: {log}");
    assert!(!names.contains(&dead_ns), "the dead run's namespace {dead_ns} is still there: {log}");
    assert!(!dead_dir.exists(), "the dead run's directory is still there: {log}");
    assert!(!dead_lock.exists(), "the dead run's lock file is still there: {log}");
    // And the live namespace still works.
    live.ip(&["link", "show", "lo"]).unwrap();
}
