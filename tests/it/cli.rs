//! The CLI contract end to end on SQLite: init, terminals, admin credentials, revocation,
//! CRLs, status; certificates checked with the real `openssl` CLI.

use std::fs;

use crate::support::{Install, PUBLIC_IP, inline_block, mode, openssl};

#[test]
fn init_creates_everything_with_tight_modes_and_is_idempotent() {
    let i = Install::empty();
    let out = i.ok(&["init", "--public-ip", PUBLIC_IP]);
    assert!(out.contains("created"), "{out}");
    for f in ["config/network", "config/gate.properties", "config/vpn", "db/cas-vpn.sqlite"] {
        assert!(i.path(f).is_file(), "{f}");
    }
    assert_eq!(mode(&i.path("pki")), 0o700);
    for key in [
        "terminal-ca.key",
        "admin-ca.key",
        "terminal-server.key",
        "admin-server.key",
        "gate.key",
        "master.key",
        "tls-crypt-v2-terminal.key",
        "tls-crypt-v2-admin.key",
    ] {
        assert_eq!(mode(&i.path(&format!("pki/{key}"))), 0o600, "{key}");
    }
    let before = i.snapshot();
    let again = i.ok(&["init"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(before, i.snapshot(), "a second init changes no file");
    let json = i.json(&["init"]);
    assert_eq!(json["changed"], false);
}

#[test]
fn init_updates_public_ip_only_when_asked() {
    let i = Install::new();
    let out = i.ok(&["init", "--public-ip", "198.51.100.7"]);
    assert!(out.contains("updated"), "{out}");
    assert!(fs::read_to_string(i.path("config/network")).unwrap().contains("198.51.100.7"));
}

#[test]
fn init_makes_masters_certificate_for_its_names_and_remakes_it_when_they_change() {
    let i = Install::new();
    let cert = || i.path("pki/master.crt");
    let ca = i.path("pki/terminal-ca.crt");
    let verify = |ip: &str| {
        openssl(&[
            "verify",
            "-purpose",
            "sslserver",
            "-verify_ip",
            ip,
            "-CAfile",
            ca.to_str().unwrap(),
            cert().to_str().unwrap(),
        ])
        .0
    };
    assert!(verify("10.3.2.1"), "master_bind_ip");
    assert!(!verify("10.3.2.2"));
    let first = fs::read_to_string(cert()).unwrap();

    // batm.master.hostname set: the next init remakes it for both names; the run after that keeps it.
    let props = i.path("config/gate.properties");
    let text =
        fs::read_to_string(&props).unwrap().replace("batm.master.hostname=", "batm.master.hostname=master.example");
    fs::write(&props, text).unwrap();
    let out = i.json(&["init"]);
    assert!(
        out["steps"].as_array().unwrap().iter().any(|s| s["what"] == "pki/cas-vpn-master" && s["action"] == "updated"),
        "{out}"
    );
    let second = fs::read_to_string(cert()).unwrap();
    assert_ne!(first, second);
    let (ok, text) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "master.example",
        "-CAfile",
        ca.to_str().unwrap(),
        cert().to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(verify("10.3.2.1"));
    assert_eq!(i.json(&["init"])["changed"], false);
    assert_eq!(fs::read_to_string(cert()).unwrap(), second);
}

#[test]
fn ca_keys_never_reach_the_store() {
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-1", "--server-keygen"]);
    i.ok(&["admin-vpn", "issue", "alice", "--out", i.path("alice.ovpn").to_str().unwrap()]);
    let db = fs::read(i.path("db/cas-vpn.sqlite")).unwrap();
    let wal = fs::read(i.path("db/cas-vpn.sqlite-wal")).unwrap_or_default();
    for key in ["terminal-ca.key", "admin-ca.key"] {
        let pem = fs::read_to_string(i.path(&format!("pki/{key}"))).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let needle = &body.as_bytes()[..40];
        for blob in [&db, &wal] {
            assert!(!blob.windows(needle.len()).any(|w| w == needle), "{key} material found in the store");
        }
    }
}

#[test]
fn terminal_add_prints_a_token_and_refuses_a_taken_name() {
    let i = Install::new();
    let token = i.ok(&["terminal", "add", "atm-001"]);
    assert!(token.trim().starts_with("cv1."), "{token}");
    let list = i.json(&["terminal", "list"]);
    assert_eq!(list[0]["name"], "atm-001");
    assert_eq!(list[0]["state"], "pending");
    assert!(list[0]["tunnel_ip"].as_str().unwrap().starts_with("10.8."));
    let before = i.snapshot();
    let err = i.fails(&["terminal", "add", "atm-001"], 1);
    assert!(err.contains("atm-001"), "{err}");
    assert_eq!(before, i.snapshot());
    assert_eq!(i.json(&["terminal", "list"]).as_array().unwrap().len(), 1);
    let shown = i.json(&["terminal", "show", "atm-001"]);
    assert_eq!(shown["state"], "pending");
}

#[test]
fn server_keygen_profile_verifies_against_the_terminal_ca_only() {
    let i = Install::new();
    let added = i.json(&["terminal", "add", "atm-002", "--server-keygen"]);
    let profile_path = added["profile"].as_str().unwrap();
    assert_eq!(mode(std::path::Path::new(profile_path)), 0o600);
    let profile = fs::read_to_string(profile_path).unwrap();
    assert!(profile.contains(&format!("remote {PUBLIC_IP} 7742")), "{profile}");
    assert!(profile.contains("<key>") && profile.contains("<tls-crypt-v2>"));
    assert!(profile.contains("auth-retry nointeract"), "terminals retry after a denial");
    let cert = i.path("atm.crt");
    fs::write(&cert, inline_block(&profile, "cert")).unwrap();
    let (ok, out) =
        openssl(&["verify", "-CAfile", i.path("pki/terminal-ca.crt").to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) =
        openssl(&["verify", "-CAfile", i.path("pki/admin-ca.crt").to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(!ok, "a terminal cert must not verify against the admin CA: {out}");
    let (_, text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CN=atm-002") || text.contains("CN = atm-002"), "{text}");
}

#[test]
fn admin_credentials_get_the_lowest_free_port_and_the_52nd_is_refused() {
    let i = Install::new();
    let out_dir = i.path("out");
    fs::create_dir(&out_dir).unwrap();
    for n in 0..51 {
        let name = format!("admin{n}");
        let out = out_dir.join(format!("{name}.ovpn"));
        let r = i.json(&["admin-vpn", "issue", &name, "--out", out.to_str().unwrap()]);
        assert_eq!(r["port"], 12000 + n);
    }
    let out = out_dir.join("late.ovpn");
    let err = i.fails(&["admin-vpn", "issue", "late", "--out", out.to_str().unwrap()], 1);
    assert!(err.contains("12000-12050"), "the error names the exhausted range: {err}");
    assert!(!out.exists(), "no profile for a refused credential");

    // The admin profile verifies against the admin CA only and connects to its own port.
    let profile = fs::read_to_string(out_dir.join("admin7.ovpn")).unwrap();
    assert_eq!(mode(&out_dir.join("admin7.ovpn")), 0o600);
    assert!(profile.contains(&format!("remote {PUBLIC_IP} 12007")));
    let cert = i.path("admin.crt");
    fs::write(&cert, inline_block(&profile, "cert")).unwrap();
    assert!(openssl(&["verify", "-CAfile", i.path("pki/admin-ca.crt").to_str().unwrap(), cert.to_str().unwrap()]).0);
    assert!(
        !openssl(&["verify", "-CAfile", i.path("pki/terminal-ca.crt").to_str().unwrap(), cert.to_str().unwrap()]).0
    );

    // Revoking frees the port; the next credential takes it.
    let r = i.json(&["revoke", "admin3"]);
    assert_eq!(r["freed_port"], 12003);
    let r = i.json(&["admin-vpn", "issue", "late", "--out", out.to_str().unwrap()]);
    assert_eq!(r["port"], 12003);
}

#[test]
fn revoke_publishes_a_crl_with_the_serial_and_allows_a_new_credential() {
    let i = Install::new();
    let alice = i.path("alice.ovpn");
    i.ok(&["admin-vpn", "issue", "alice", "--out", alice.to_str().unwrap()]);
    let cert = i.path("alice.crt");
    fs::write(&cert, inline_block(&fs::read_to_string(&alice).unwrap(), "cert")).unwrap();
    let (_, serial) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_uppercase();

    let r = i.json(&["revoke", "alice", "--reason", "key-compromise"]);
    assert_eq!(r["already_revoked"], false);
    let (ok, crl) = openssl(&["crl", "-in", i.path("pki/crl-admin.pem").to_str().unwrap(), "-noout", "-text"]);
    assert!(ok, "{crl}");
    assert!(crl.to_uppercase().contains(&serial), "CRL lists {serial}: {crl}");
    assert!(crl.contains("Key Compromise"), "{crl}");
    let (ok, out) = openssl(&[
        "crl",
        "-in",
        i.path("pki/crl-admin.pem").to_str().unwrap(),
        "-noout",
        "-CAfile",
        i.path("pki/admin-ca.crt").to_str().unwrap(),
    ]);
    assert!(ok && out.contains("verify OK"), "the CRL verifies with the admin CA: {out}");

    // The audit trail ends with what the kill step did, after the store's own revocation row.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let audit = rt.block_on(async {
        let store = cas_vpn::db::Store::open_sqlite(&i.path("db/cas-vpn.sqlite")).await.unwrap();
        store.list_audit(10).await.unwrap()
    });
    let actions: Vec<&str> = audit.iter().filter(|a| a.subject == "alice").map(|a| a.action.as_str()).collect();
    assert_eq!(&actions[..2], ["revoke.sessions", "revoke"], "newest first: {actions:?}");
    assert!(audit[0].detail.contains("no serve running"), "{:?}", audit[0]);

    let again = i.ok(&["revoke", "alice"]);
    assert!(again.contains("already revoked"), "{again}");
    let err = i.fails(&["revoke", "nobody-here"], 1);
    assert!(err.contains("nobody-here"), "{err}");

    let alice2 = i.path("alice2.ovpn");
    i.ok(&["admin-vpn", "issue", "alice", "--out", alice2.to_str().unwrap()]);
    fs::write(&cert, inline_block(&fs::read_to_string(&alice2).unwrap(), "cert")).unwrap();
    let (_, serial2) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    assert_ne!(serial2.trim().trim_start_matches("serial=").to_uppercase(), serial, "a new serial");
}

#[test]
fn import_is_all_or_nothing_and_writes_profiles_and_tokens() {
    let i = Install::new();
    let csv = i.path("names.csv");
    let names: Vec<String> = (0..150).map(|n| format!("atm-{n:04}")).collect();
    fs::write(&csv, format!("name\n{}\n", names.join("\n"))).unwrap();
    let out = i.path("out");
    i.ok(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(fs::read_dir(&out).unwrap().count(), 151, "150 profiles + tokens.csv");
    let tokens = fs::read_to_string(out.join("tokens.csv")).unwrap();
    assert_eq!(tokens.lines().count(), 151);
    assert_eq!(mode(&out.join("atm-0149.ovpn")), 0o600);
    let list = i.json(&["terminal", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 150);
    // Spread over the 11 instances, ~14 each.
    let mut per = std::collections::HashMap::new();
    for t in list.as_array().unwrap() {
        *per.entry(t["home_instance"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per.len(), 11);
    assert!(per.values().all(|&c| (13..=14).contains(&c)), "{per:?}");

    // A clash with an existing name: nothing of the second batch is created.
    fs::write(&csv, "atm-new-1\natm-0003\natm-new-2\n").unwrap();
    let before = i.snapshot();
    let err = i.fails(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen"], 1);
    assert!(err.contains("atm-0003"), "{err}");
    assert_eq!(before, i.snapshot(), "no file written");
    assert_eq!(i.json(&["terminal", "list"]).as_array().unwrap().len(), 150, "no row written");
}

#[test]
fn status_reports_configuration_and_expiry() {
    let i = Install::new();
    let s = i.json(&["status"]);
    assert_eq!(s["scenario"], "A");
    assert_eq!(s["database"], "sqlite");
    assert_eq!(s["instances"].as_array().unwrap().len(), 11);
    assert_eq!(s["instances"][0]["port"], 13000);
    assert!(s["warnings"].as_array().unwrap().is_empty(), "{s}");
    let crl = s["expiry"].as_array().unwrap().iter().find(|e| e["what"] == "terminal CRL").unwrap();
    assert!(crl["seconds_left"].as_i64().unwrap() > 29 * 86400);
}

#[test]
fn commands_before_init_fail_with_a_clear_error() {
    let i = Install::empty();
    let err = i.fails(&["terminal", "add", "atm-1"], 1);
    assert!(err.contains("init"), "{err}");
}

/// A store that does not open (a damaged SQLite file, a PostgreSQL that refuses connections) is doctor's first
/// finding, with the rest of the report, not an error instead of one.
#[test]
fn doctor_reports_a_store_that_does_not_open() {
    let i = Install::new();
    let check = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(1), "{why}: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor printed its report");
        let find = |what: &str| r["checks"].as_array().unwrap().iter().find(|c| c["check"] == what).cloned().unwrap();
        let store = find("store");
        assert_eq!(store["level"], "fail", "{why}: {store}");
        assert!(store["detail"].as_str().unwrap().contains("did not open"), "{why}: {store}");
        assert!(store["fix"].as_str().is_some_and(|f| !f.is_empty()), "{why}: {store}");
        // What needs the store is unknown, never ok; what does not is still checked.
        assert_eq!(find("expiry")["level"], "unknown", "{why}");
        assert_eq!(find("key modes")["level"], "ok", "{why}");
        assert_eq!(find("configuration")["level"], "ok", "{why}");
        assert_eq!(r["healthy"], false);
    };
    let db = i.path("db/cas-vpn.sqlite");
    let saved = fs::read(&db).unwrap();
    for f in ["db/cas-vpn.sqlite-wal", "db/cas-vpn.sqlite-shm"] {
        let _ = fs::remove_file(i.path(f));
    }
    fs::write(&db, vec![0x5a_u8; 8192]).unwrap();
    check(i.run(&["doctor", "--json"]), "damaged SQLite file");
    fs::write(&db, saved).unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let out =
        i.cmd().env("CAS_VPN_DATABASE_URL", "postgres://cas@127.0.0.1:1/none").args(["doctor", "--json"]).output();
    check(out.unwrap(), "PostgreSQL refusing connections");
    // The text report too: every line printed, then the one-line failure.
    let out = i.cmd().env("CAS_VPN_DATABASE_URL", "postgres://cas@127.0.0.1:1/none").arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("store")), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("doctor found problems"));
}

#[test]
fn doctor_fails_on_a_readable_key_and_warns_before_a_crl_expires() {
    use std::os::unix::fs::PermissionsExt;
    let i = Install::new();
    // Nothing serves this root: doctor says so and fails (a down service is an outage), but still reports the rest.
    let doctor = |i: &Install| -> serde_json::Value {
        let out = i.run(&["doctor", "--json"]);
        assert_eq!(out.status.code(), Some(1), "doctor must fail while the services are down");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = doctor(&i);
    let find = |r: &serde_json::Value, what: &str| {
        r["checks"].as_array().unwrap().iter().find(|c| c["check"] == what).cloned().unwrap()
    };
    assert_eq!(find(&r, "key modes")["level"], "ok");
    assert_eq!(find(&r, "terminal CRL")["level"], "ok");
    // Every check that is not ok says what to do, in one line; an ok one says nothing.
    for c in r["checks"].as_array().unwrap() {
        match c["level"].as_str().unwrap() {
            "ok" => assert!(c["fix"].is_null(), "{c}"),
            _ => assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty() && !f.contains('\n')), "{c}"),
        }
    }
    assert_eq!(find(&r, "store")["level"], "ok");
    assert_eq!(find(&r, "CRL freshness")["level"], "ok");
    assert_eq!(find(&r, "openvpn")["detail"].as_str().map(|d| d.starts_with("OpenVPN 2.")), Some(true));
    let certs = find(&r, "client certificates");
    assert_eq!(certs["level"], "ok", "{certs}");
    assert!(certs["detail"].as_str().unwrap().contains("no terminal certificate"), "{certs}");
    // What cannot be determined is said so, never ok: no service runs to look at, and the firewall is not
    // cas-vpn's here (manage=no), so neither door can be judged.
    for unknown in ["service users", "pairing port 7741", "web UI port 7777"] {
        let c = find(&r, unknown);
        assert_eq!(c["level"], "unknown", "{c}");
    }
    // One uid for every service (these tests): owners separate nothing, and doctor says so.
    assert_eq!(find(&r, "file owners")["level"], "warn");
    assert_eq!(find(&r, "serve")["level"], "fail", "the VPN service is not running here");
    let services = find(&r, "services");
    assert_eq!(services["level"], "fail");
    assert!(services["detail"].as_str().unwrap().contains("net, signer, vpn, gate, master"), "{services}");

    // A CRL with less than three days left is a warning, long before it locks anyone out.
    let vpn = i.path("config/vpn");
    fs::write(&vpn, fs::read_to_string(&vpn).unwrap().replace("\ncrl_validity=\n", "\ncrl_validity=2d\n")).unwrap();
    i.ok(&["crl", "--out", i.path("crl.pem").to_str().unwrap()]);
    let r = doctor(&i);
    let crl = find(&r, "terminal CRL");
    assert_eq!(crl["level"], "warn", "{crl}");
    assert!(crl["detail"].as_str().unwrap().contains("expires in"), "{crl}");
    let s = i.json(&["status"]);
    assert!(s["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("terminal CRL")), "{s}");

    fs::set_permissions(i.path("pki/gate.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = i.fails(&["doctor"], 1);
    assert!(err.contains("doctor found problems"), "{err}");
    let out = String::from_utf8(i.run(&["doctor"]).stdout).unwrap();
    assert!(out.contains("gate.key"), "{out}");
}

/// Invariant 9 (ARCHITECTURE.md): an import killed with SIGKILL at any moment leaves, once recovered (`init` or `serve`
/// start), either every terminal with its profile or none of them; never a temp file, a row without its profile,
/// or a profile without its row.
#[test]
fn a_killed_import_is_all_or_nothing_after_recovery() {
    use std::time::{Duration, Instant};
    let i = Install::new();
    const N: usize = 800;
    // Kill moments spread over the whole run (generation, staging, commit, renames).
    for (round, delay_ms) in [5u64, 40, 120, 250, 400, 600, 900].into_iter().enumerate() {
        let prefix = format!("r{round}-");
        let csv = i.path(&format!("names{round}.csv"));
        fs::write(&csv, (0..N).map(|n| format!("{prefix}{n:04}\n")).collect::<String>()).unwrap();
        let mut child = i.spawn(&["terminal", "import", csv.to_str().unwrap(), "--server-keygen"]);
        // The kill moment: `delay_ms` after the start, or as soon as the import ends by itself.
        let kill_at = Instant::now() + Duration::from_millis(delay_ms);
        crate::support::wait::poll_until(kill_at, || child.try_wait().unwrap().is_some());
        let _ = child.kill();
        child.wait().unwrap();

        i.ok(&["init"]);
        let rows = i
            .json(&["terminal", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"].as_str().unwrap().starts_with(&prefix))
            .count();
        let pending: Vec<String> = fs::read_dir(i.path("pki/pending"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let temps: Vec<&String> = pending.iter().filter(|f| f.contains(".tmp-")).collect();
        assert!(temps.is_empty(), "round {round}: {} temp files left, e.g. {:?}", temps.len(), temps.first());
        let files = pending.iter().filter(|f| f.starts_with(&prefix)).count();
        assert!(rows == 0 || rows == N, "round {round} (kill at {delay_ms} ms): {rows} of {N} rows");
        assert_eq!(
            files, rows,
            "round {round} (kill at {delay_ms} ms): every row has its profile and no profile is orphaned"
        );
    }
}

/// Invariant 14: a typo in an unrelated configuration file never blocks a revocation (nor reading the fleet); the
/// commands that need the broken value still refuse, naming it.
#[test]
fn a_broken_config_file_does_not_block_revocation() {
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-stolen", "--server-keygen"]);
    i.ok(&["admin-vpn", "issue", "alice", "--out", i.path("alice.ovpn").to_str().unwrap()]);
    let vpn = i.path("config/vpn");
    std::fs::write(&vpn, std::fs::read_to_string(&vpn).unwrap() + "terminal_portz=13000-13010\n").unwrap();
    let net = i.path("config/network");
    std::fs::write(&net, std::fs::read_to_string(&net).unwrap().replace("public_ip=198.51.100.1", "public_ip=nope"))
        .unwrap();

    let out = i.run(&["revoke", "atm-stolen", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "revoke blocked by an unrelated typo: {stderr}");
    assert!(stderr.contains("warning") && stderr.contains("terminal_portz"), "the broken vpn file is named: {stderr}");
    assert!(stderr.contains("public_ip"), "the broken network file is named: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["name"], "atm-stolen");
    let crl = i.path("pki/crl-terminal.pem");
    let text =
        std::process::Command::new("openssl").args(["crl", "-noout", "-text", "-in"]).arg(&crl).output().unwrap();
    let serial = r["serials"][0].as_str().expect("a server-keygen terminal has a certificate");
    let listed = String::from_utf8_lossy(&text.stdout).to_lowercase();
    assert!(listed.contains(serial.trim_start_matches('0')), "serial {serial} is not in the new CRL:\n{listed}");
    assert!(i.run(&["crl"]).status.success(), "crl blocked by an unrelated typo");
    let list = i.run(&["terminal", "list", "--all", "--json"]);
    assert!(list.status.success(), "terminal list blocked by an unrelated typo");

    // What needs the broken values still refuses, naming the file and key.
    let err = i.fails(&["admin-vpn", "issue", "bob"], 1);
    assert!(err.contains("terminal_portz") || err.contains("public_ip"), "{err}");
}

/// `cas-vpn terminal list | head`: when the reader goes away, the command ends quietly (SIGPIPE, as any Unix tool),
/// never with a panic.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let i = Install::new();
    i.ok(&["terminal", "add", "atm-1"]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("cas-vpn"))
        .env("CAS_VPN_ROOT", i.root())
        .env(crate::support::USERS_ENV, "none")
        .args(["terminal", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.signal() == Some(13) || out.status.success(), "{:?}: {stderr}", out.status);
}
