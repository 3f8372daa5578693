//! The plan's rules and one golden file per backend and situation (`tests/fixtures/golden/firewall/`;
//! `UPDATE_GOLDEN=1` rewrites them).

use std::path::PathBuf;

use super::engine::{Drift, Script, State, compare};
use super::*;
use crate::config::Backend;

fn golden(name: &str, text: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/firewall");
    let path = dir.join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 makes it)", path.display()));
    assert_eq!(text, want, "rendered text differs from {}", path.display());
}

fn base() -> Inputs {
    Inputs::example()
}

/// The busy case: two admin ports, a window from two networks, SSH from one, 443 open.
fn busy() -> Inputs {
    let mut i = base();
    i.admin_ports = vec![12000, 12003];
    i.window = Window::Open { until: 1_700_000_000, from: parse_cidrs("192.0.2.0/24,198.51.100.10").unwrap() };
    i.fw.ssh_from = parse_cidrs("203.0.113.0/24").unwrap();
    i.fw.open_443 = true;
    i
}

#[test]
fn goldens() {
    for (name, inputs) in [("closed", base()), ("busy", busy())] {
        let p = plan(&inputs);
        golden(&format!("{name}.nft"), &nft::render(&p));
        golden(&format!("{name}.iptables-v4"), &iptables::render_v4(&p));
        golden(&format!("{name}.iptables-v6"), &iptables::render_v6(&p));
        golden(&format!("{name}.ufw"), &ufw::render_text(&p));
    }
}

#[test]
fn the_pairing_door_exists_only_while_the_window_is_open() {
    let closed = plan(&base());
    assert!(closed.doors.iter().all(|d| d.name != "pairing"));
    assert!(!nft::render(&closed).contains("dnat"));
    let open = plan(&busy());
    let door = open.doors.iter().find(|d| d.name == "pairing").unwrap();
    assert_eq!(door.dnat_to, Some("203.0.113.3".parse().unwrap()));
    assert_eq!(door.per_source_cap, Some(10));
    let text = nft::render(&open);
    assert!(text.contains(
        "iifname \"eth0\" ip daddr 198.51.100.1 tcp dport 7741 ip saddr { 192.0.2.0/24, 198.51.100.10/32 } dnat ip to 203.0.113.3:7741"
    ));
    assert!(text.contains("ct status dnat ip daddr 203.0.113.3 tcp dport 7741 accept"));
    assert_eq!(open.changes_at(), Some(1_700_000_000));
}

#[test]
fn only_the_listed_doors_and_never_the_terminal_instances_or_7777() {
    let p = plan(&busy());
    let ports: Vec<u16> = p.doors.iter().flat_map(|d| d.ports.clone()).collect();
    assert_eq!(ports, [22, 7742, 12000, 12003, 443, 7741]);
    for never in [13000, 13010, 7777, 7743, 12001] {
        assert!(!ports.contains(&never), "{never}");
    }
    // The tunnels: a terminal reaches master:7741 only (and answers master's health probes, in the reply direction
    // of connections master opened), an admin the UI only, nothing is forwarded.
    let text = nft::render(&p);
    assert!(text.contains(
        "chain from_terminal {\n\t\tip daddr 203.0.113.1 tcp dport 7741 accept\n\t\tip daddr 203.0.113.1 tcp sport \
         7744 ct direction reply ct state established accept\n\t\tdrop\n\t}"
    ));
    assert!(text.contains("chain from_admin {\n\t\tip daddr 203.0.113.2 tcp dport 7777 accept\n\t\tdrop\n\t}"));
    assert!(text.contains("iifname { \"cvt*\", \"cva*\" } drop"));
    // Everything else from the Internet gets nothing (drop, not reject: no TCP answer at all).
    assert!(text.contains("\t\tdrop\n\t}\n\tchain forward"));
    // Tables we do not own are never named; the old isolation table goes.
    assert!(text.contains("delete table inet cas_vpn_tunnels"));
    assert_eq!(text.matches("delete table").count(), 2);
}

#[test]
fn no_public_interface_still_isolates_the_tunnels() {
    let mut i = base();
    i.public_interface = None;
    let p = plan(&i);
    assert!(p.doors.is_empty());
    assert_eq!(p.warnings.len(), 1);
    let text = nft::render(&p);
    assert!(!text.contains("from_internet"));
    assert!(text.contains("jump from_terminal"));
}

#[test]
fn the_admin_ui_bootstrap_door_opens_only_in_bootstrap_mode() {
    assert!(plan(&busy()).doors.iter().all(|d| d.name != "admin-ui-bootstrap"));
    let mut i = base();
    i.admin_ui_bootstrap = true;
    let door = plan(&i).doors.into_iter().find(|d| d.name == "admin-ui-bootstrap").unwrap();
    assert_eq!((door.ports, door.dnat_to), (vec![7777], Some("203.0.113.2".parse().unwrap())));
}

#[test]
fn admits_follows_the_ssh_sources() {
    let p = plan(&busy());
    assert!(p.admits("203.0.113.9".parse().unwrap(), 22));
    assert!(!p.admits("192.0.2.9".parse().unwrap(), 22));
    assert!(!p.admits("203.0.113.9".parse().unwrap(), 2222));
    // DNAT doors are not local ports.
    assert!(!p.admits("192.0.2.9".parse().unwrap(), 7741));
}

#[test]
fn iptables_splits_many_admin_ports_into_multiport_chunks() {
    let mut i = base();
    i.admin_ports = (12000..=12050).collect();
    let v4 = iptables::render_v4(&plan(&i));
    assert_eq!(v4.matches("--dports").count(), 4, "{v4}");
}

#[test]
fn drift_compares_listings_and_scripts() {
    let planned = Script::render(&plan(&base()), Backend::Nft);
    let other = Script::render(&plan(&busy()), Backend::Nft);
    let state = |script: &Script| State { script: script.clone(), listing: "a\nb\n".into(), applied_at: 0 };
    assert_eq!(compare(None, None, &planned), Drift::NotInstalled);
    assert_eq!(compare(None, Some("a\n"), &planned), Drift::Unrecorded);
    assert_eq!(compare(Some(&state(&planned)), Some("a\nb\n"), &planned), Drift::InForce);
    assert_eq!(compare(Some(&state(&planned)), Some("a\n"), &planned), Drift::Edited { diff: vec!["-b".into()] });
    assert!(matches!(compare(Some(&state(&other)), Some("a\nb\n"), &planned), Drift::OtherPlan { .. }));
}

#[test]
fn line_diff_shows_only_changes() {
    assert_eq!(line_diff("a\nb\nc\n", "a\nc\nd\n"), ["-b", "+d"]);
    assert!(line_diff("x\n", "x\n").is_empty());
}
