//! Invariant 7 (ARCHITECTURE.md) at every entry point: hostile names and values are refused with a clear one-line error
//! before anything is written (no file, no row).

use std::fs;

use crate::support::Install;

const HOSTILE: &[&str] = &[
    "atm\nup /bin/sh",
    "atm\"quoted",
    "atm 1",
    "up /bin/sh",
    "../etc/passwd",
    "atm/1",
    "ünïcode",
    "tab\there",
    "-leading-dash",
    "a;b",
];

fn long_name() -> String {
    "a".repeat(300)
}

#[test]
fn hostile_names_are_refused_by_every_command() {
    let i = Install::new();
    let out = i.path("x.ovpn");
    let out = out.to_str().unwrap();
    let before = i.snapshot();
    let status_before = i.db_counts();
    let long = long_name();
    for name in HOSTILE.iter().copied().chain([long.as_str()]) {
        // `--` so that a name starting with '-' reaches our validation rather than clap's option parser.
        for args in [
            vec!["terminal", "add", "--", name],
            vec!["terminal", "add", "--server-keygen", "--", name],
            vec!["terminal", "show", "--", name],
            vec!["admin-vpn", "issue", "--out", out, "--", name],
            vec!["revoke", "--", name],
        ] {
            let err = i.fails(&args, 2);
            assert!(err.contains("invalid name"), "{args:?}: {err}");
            assert!(!err.contains("/bin/sh\n"), "{err}");
        }
    }
    assert_eq!(before, i.snapshot(), "no file changed");
    assert_eq!(status_before, i.db_counts(), "no row changed");
    assert!(!std::path::Path::new(out).exists());
}

#[test]
fn hostile_csv_lines_are_refused_with_their_line_number() {
    let i = Install::new();
    let csv = i.path("names.csv");
    let before = i.snapshot();
    for (body, line) in [
        ("name\natm-1\natm 2\n", 3),
        ("atm-1\n\"atm\nup /bin/sh\"\n", 2),
        ("atm-1\n../x\n", 2),
        ("atm-1\natm-2\natm-1\n", 3),
        (&format!("atm-1\n{}\n", long_name()) as &str, 2),
    ] {
        fs::write(&csv, body).unwrap();
        let err = i.fails(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen"], 1);
        assert!(err.contains(&format!("names.csv:{line}:")), "{body:?}: {err}");
    }
    fs::remove_file(&csv).unwrap();
    assert_eq!(before, i.snapshot());
    assert_eq!(i.json(&["terminal", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn hostile_config_values_are_refused_naming_file_line_and_key() {
    let i = Install::new();
    let vpn = i.path("config/vpn");
    let original = fs::read_to_string(&vpn).unwrap();
    for (line, key) in [
        ("public_hostname=evil host", "public_hostname"),
        ("public_hostname=\"evil\"", "public_hostname"),
        ("interface=../x", "interface"),
        ("terminal_subnet=10.8.0.0/16 up", "terminal_subnet"),
        ("up /bin/sh", "up"),
    ] {
        fs::write(&vpn, format!("{original}{line}\n")).unwrap();
        let n = original.lines().count() + 1;
        let before = i.snapshot();
        let err = i.fails(&["terminal", "add", "atm-1", "--server-keygen"], 1);
        assert!(err.contains(&format!("config/vpn:{n}")), "{line}: {err}");
        assert!(err.contains(key), "{line}: {err}");
        assert_eq!(before, i.snapshot(), "{line}: nothing written");
    }
    fs::write(&vpn, &original).unwrap();

    let gate = i.path("config/gate.properties");
    let original = fs::read_to_string(&gate).unwrap();
    fs::write(&gate, format!("{original}batm.master.hostname=evil\"host\n")).unwrap();
    let err = i.fails(&["terminal", "add", "atm-1"], 1);
    assert!(err.contains("gate.properties") && err.contains("batm.master.hostname"), "{err}");
    fs::write(&gate, &original).unwrap();

    let network = i.path("config/network");
    let original = fs::read_to_string(&network).unwrap();
    fs::write(&network, format!("{original}up=/bin/sh\n")).unwrap();
    let err = i.fails(&["status"], 1);
    assert!(err.contains("config/network") && err.contains("up"), "{err}");
    fs::write(&network, &original).unwrap();
    assert_eq!(i.json(&["terminal", "list"]).as_array().unwrap().len(), 0);
}
