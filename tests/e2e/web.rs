//! The admin web UI end to end, as an administrator meets it: `serve all` in the server namespace; an admin's
//! laptop (client 0) on the Internet side with an admin VPN tunnel, running a real headless Chromium that trusts
//! exactly the UI's self-signed certificate (by its public key, as an admin who compared the fingerprint would).
//!
//! Through the tunnel it sets up an account from a one-time link, enrols TOTP, logs out and in (password + TOTP),
//! adds a terminal and reads its token, issues an admin credential and downloads it once (a second use of the link
//! fails), checks it against the admin CA with openssl, connects a real openvpn client with it from a second
//! machine (client 1), revokes it in the UI and sees the session end within 1 s. Screenshots of the dashboard,
//! terminals and audit pages go to `target/e2e-artifacts/`. The UI answers through an admin tunnel only: not from
//! the Internet, not from a terminal tunnel.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::support::deploy::{ADMIN_IP, Deployment, PUBLIC_IP};
use crate::support::{Browser, client_address, require_root, tcp_connect, tun_device, wait_initialized, wait_until};

const T: Duration = Duration::from_secs(30);
const PROBE: Duration = Duration::from_millis(1500);

/// `--ignore-certificate-errors-spki-list` takes base64(SHA-256(SubjectPublicKeyInfo)) of the one certificate to
/// accept: the UI's, read from the server's `pki/`.
fn spki_pin(cert_pem: &str) -> String {
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).unwrap();
    let spki = cert.public_key().unwrap().public_key_to_der().unwrap();
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&spki))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn ui(path: &str) -> String {
    format!("https://{ADMIN_IP}:7777{path}")
}

/// The first `<cert>` block of a profile.
fn profile_cert(ovpn: &str) -> String {
    let start = ovpn.find("<cert>").expect("a <cert> block") + "<cert>".len();
    let end = ovpn.find("</cert>").expect("</cert>");
    ovpn[start..end].trim().to_owned() + "\n"
}

#[test]
#[ignore = "needs root, network namespaces, openvpn and chromium: scripts/test runs it with --include-ignored"]
fn an_admin_sets_up_issues_downloads_connects_and_revokes_in_a_real_browser() {
    require_root();
    crate::support::require_browser();
    let mut d = Deployment::new(3, &[]);
    d.start_service("all");
    wait_until("the admin UI listens", T, || tcp_connect(d.server(), ADMIN_IP, 7777, PROBE));

    // Not reachable from the Internet: neither on the public address nor (routed by a hostile neighbour) on
    // admin_bind_ip.
    let internet = d.lan.client(2);
    assert!(!tcp_connect(internet, PUBLIC_IP, 7777, PROBE), "public 7777 answers outside bootstrap mode");
    internet.ip(&["route", "replace", &format!("{ADMIN_IP}/32"), "via", &PUBLIC_IP.to_string()]).unwrap();
    assert!(!tcp_connect(internet, ADMIN_IP, 7777, PROBE), "admin_bind_ip answers the Internet");

    // Not from a terminal tunnel either (routed into the tunnel by a terminal that tries).
    let terminal = d.terminal("atm-t");
    let atm = d.connect(2, &terminal);
    wait_initialized(&atm, T);
    let dev = tun_device(&atm).expect("the terminal's tun device");
    internet.ip(&["route", "replace", &format!("{ADMIN_IP}/32"), "dev", &dev]).unwrap();
    assert!(!tcp_connect(internet, ADMIN_IP, 7777, PROBE), "admin_bind_ip answers a terminal tunnel");
    drop(atm);

    // The operator's side: an admin tunnel for the laptop, and a web account with a one-time setup link.
    let (laptop_profile, _) = d.admin("ops-laptop");
    let laptop_vpn = d.connect(0, &laptop_profile);
    wait_initialized(&laptop_vpn, T);
    let setup = d.json(&["web-user", "add", "alice"]);
    let setup_url = setup["setup_url"].as_str().unwrap().to_owned();
    assert!(setup_url.starts_with(&ui("/setup/")), "{setup_url}");

    let cert = std::fs::read_to_string(d.root().join("pki/web-ui.crt")).unwrap();
    let browser =
        Browser::start_with(d.lan.client(0), &[format!("--ignore-certificate-errors-spki-list={}", spki_pin(&cert))]);

    // Account setup: password, then TOTP enrolment with a code computed from the secret on the page.
    browser.goto(&setup_url);
    browser.fill("form#setup input[name=password]", "correct horse battery staple");
    browser.fill("form#setup input[name=password2]", "correct horse battery staple");
    browser.click("#setup-submit");
    browser.wait_for("#totp-secret", T);
    let seed = browser.text("#totp-secret");
    assert!(browser.attr("#totp-qr", "src").is_some_and(|s| s.starts_with("data:image/svg+xml;base64,")));
    let code = cas_vpn::web::totp::code_at(&seed, "alice", now()).unwrap();
    browser.fill("form#enroll input[name=code]", &code);
    browser.click("#enroll-submit");
    browser.wait_for("#recovery-codes", T);
    assert_eq!(browser.source().matches("<li><code>").count(), 10, "ten recovery codes, shown once");
    browser.click("#continue");
    browser.wait_for("h1", T);
    assert_eq!(browser.text("h1"), "Dashboard");

    // Log out and in again: password, then a code. (A code's 30-s step is accepted once; the enrolment used
    // this step, so the login uses the next one, which one step of clock skew accepts.)
    browser.click("form#logout button");
    browser.wait_for("form#login", T);
    browser.fill("form#login input[name=username]", "alice");
    browser.fill("form#login input[name=password]", "correct horse battery staple");
    browser.click("#login-submit");
    browser.wait_for("form#totp", T);
    let code = cas_vpn::web::totp::code_at(&seed, "alice", now() + 30).unwrap();
    browser.fill("form#totp input[name=code]", &code);
    browser.click("#totp-submit");
    browser.wait_for("#window-state", T);
    browser.screenshot("web-dashboard");

    // A terminal: its pairing token as text (and QR).
    browser.goto(&ui("/terminals"));
    browser.fill("form#terminal-add input[name=name]", "atm-web-1");
    browser.click("#terminal-add-submit");
    browser.wait_for("#pairing-token", T);
    let token = browser.text("#pairing-token");
    assert!(token.starts_with("cv1."), "{token}");
    assert!(browser.exists("#pairing-qr"));
    let shown = d.json(&["terminal", "show", "atm-web-1"]);
    assert_eq!(shown["state"], "pending", "{shown}");
    browser.goto(&ui("/terminals"));
    browser.wait_for("tr[data-name=atm-web-1]", T);
    browser.screenshot("web-terminals");

    // An admin credential: a one-time link; the profile is made when it is followed.
    browser.goto(&ui("/admin-vpn"));
    browser.fill("form#admin-issue input[name=name]", "alice-laptop");
    browser.click("#admin-issue-submit");
    browser.wait_for("#download", T);
    let link = browser.attr("#download", "href").unwrap();
    browser.click("#download");
    let file = browser.wait_download("alice-laptop.ovpn", T);
    let ovpn = std::fs::read_to_string(&file).unwrap();
    assert!(ovpn.contains("<key>") && ovpn.contains("<tls-crypt-v2>"), "a complete profile");
    // Nothing of it stays on the server.
    let leftovers = walk(d.root()).into_iter().filter(|p| p.to_string_lossy().contains("alice-laptop")).count();
    assert_eq!(leftovers, 0, "the profile was written on the server");
    // The second use of the link fails.
    browser.goto(&ui(&link));
    browser.wait_for("#link-used", T);

    // It is an admin certificate (and not a terminal one).
    let dir = crate::support::temp_dir("web-verify");
    let cert_path = dir.path().join("alice.crt");
    std::fs::write(&cert_path, profile_cert(&ovpn)).unwrap();
    let verify = |ca: &str| {
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(d.root().join(ca))
            .arg(&cert_path)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify("pki/admin-ca.crt"), "the downloaded certificate does not verify against the admin CA");
    assert!(!verify("pki/terminal-ca.crt"), "the downloaded certificate verifies against the terminal CA");

    // A real openvpn client connects with it, from another machine.
    let alice_vpn = d.connect(1, &file);
    wait_initialized(&alice_vpn, T);
    wait_until("alice-laptop's session is recorded", T, || d.sessions_of("alice-laptop") == 1);
    assert!(tcp_connect(d.lan.client(1), ADMIN_IP, 7777, PROBE), "the new credential reaches the UI");

    // Revoke it in the UI: its session ends within a second.
    browser.goto(&ui("/admin-vpn"));
    browser.wait_for("tr[data-name=alice-laptop]", T);
    browser.fill("tr[data-name=alice-laptop] input[name=confirm]", "alice-laptop");
    let mark = alice_vpn.mark();
    let t0 = Instant::now();
    browser.click("tr[data-name=alice-laptop] .revoke-submit");
    let (_, line) = alice_vpn.wait_for_line_from(
        mark,
        |l| ["AUTH_FAILED", "Connection reset", "SIGUSR1", "TLS Error"].iter().any(|s| l.contains(s)),
        Duration::from_secs(1),
    );
    let gone = t0.elapsed();
    eprintln!("the client saw `{line}` {gone:?} after the click");
    assert!(gone <= Duration::from_secs(1), "the session must end within 1 s of the revocation, took {gone:?}");
    assert_eq!(d.sessions_of("alice-laptop"), 0);
    let listed = d.json(&["admin-vpn", "list", "--all"]);
    let row = listed.as_array().unwrap().iter().find(|r| r["name"] == "alice-laptop").cloned().unwrap();
    assert_eq!(row["state"], "revoked", "{listed}");

    // The audit trail names alice, from her tunnel address, for what she did in the UI.
    browser.goto(&ui("/audit"));
    browser.wait_for("table#audit", T);
    browser.screenshot("web-audit");
    let page = browser.source();
    for action in ["web.login", "terminal.add", "admin.issue", "revoke"] {
        assert!(page.contains(action), "the audit page lacks {action}");
    }
    let laptop_ip: Ipv4Addr = client_address(d.lan.client(0), &laptop_vpn);
    assert!(page.contains("web:alice") && page.contains(&laptop_ip.to_string()), "actor and source");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `curl -k` inside `ns` (the UI's certificate is self-signed; this test is about the door, not the trust).
fn fetch(ns: &crate::support::Netns, url: &str) -> Option<String> {
    let out = ns.cmd("curl").args(["-sk", "--max-time", "3", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "needs root, network namespaces, openvpn and nft: scripts/test runs it with --include-ignored"]
fn bootstrap_mode_opens_public_7777_until_the_first_admin_vpn_session() {
    require_root();
    let mut d = Deployment::new(2, &[]);
    d.set_firewall(&[("drift_check", "1s")]);
    let r = d.json(&["init", "--web-bootstrap"]);
    let url = r["bootstrap_url"].as_str().expect("a bootstrap link").to_owned();
    assert!(url.starts_with(&format!("https://{PUBLIC_IP}:7777/setup/")), "{url}");
    d.start_service("all");
    wait_until("the admin UI listens", T, || tcp_connect(d.server(), ADMIN_IP, 7777, PROBE));

    // From the Internet, the public address answers with the UI, which says loudly that it is exposed.
    let internet = d.lan.client(1);
    wait_until("public 7777 answers", T, || tcp_connect(internet, PUBLIC_IP, 7777, PROBE));
    let login = fetch(internet, &format!("https://{PUBLIC_IP}:7777/login")).expect("the login page");
    assert!(login.contains("Bootstrap mode"), "no bootstrap banner: {login}");
    let setup = fetch(internet, &url).expect("the setup page");
    assert!(setup.contains("Welcome, admin"), "{setup}");
    // Still nothing else: admin_bind_ip itself stays out of reach.
    internet.ip(&["route", "replace", &format!("{ADMIN_IP}/32"), "via", &PUBLIC_IP.to_string()]).unwrap();
    assert!(!tcp_connect(internet, ADMIN_IP, 7777, PROBE), "admin_bind_ip answers the Internet");

    // The first admin VPN session closes the public door, for good.
    let (profile, _) = d.admin("first-admin");
    let vpn = d.connect(0, &profile);
    wait_initialized(&vpn, T);
    let t0 = Instant::now();
    wait_until("public 7777 closes", Duration::from_secs(5), || !tcp_connect(internet, PUBLIC_IP, 7777, PROBE));
    eprintln!("public 7777 closed {:?} after the admin session came up", t0.elapsed());
    assert!(tcp_connect(d.lan.client(0), ADMIN_IP, 7777, PROBE), "the UI answers through the admin tunnel");
    let again = d.cli(&["init", "--web-bootstrap"]);
    assert!(!again.status.success(), "bootstrap mode came back");
    assert!(String::from_utf8_lossy(&again.stderr).contains("ended for good"));
    // A restart of everything keeps it closed.
    drop(vpn);
    let status = d.json(&["firewall", "status"]);
    assert!(!status.to_string().contains("admin-ui-bootstrap"), "{status}");
}
