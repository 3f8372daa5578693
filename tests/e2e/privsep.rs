//! Each service its own least-privileged process (invariant 11): `serve all` with real service users.
//!
//! The users are made for this test only (prefix `cvp<6 hex>`: `…gate`, `…master`, `…admin`, group `cvp…`) and
//! removed when it ends, even when it fails.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::deploy::Deployment;
use crate::support::env::require_root;
use crate::support::wait::wait_until;

/// Removes the test's users on drop.
struct Users(String);

impl Drop for Users {
    fn drop(&mut self) {
        if let Err(e) = cas_vpn::app::accounts::remove(&self.0) {
            eprintln!("could not remove test users {}: {e}", self.0);
        }
    }
}

/// Debian's udev makes `/dev/net/tun` 0666 (openvpn's user must open it); a machine without udev (this sandbox)
/// may leave it 0600. The test sets Debian's mode and restores what it found on drop.
struct TunMode(u32);

impl TunMode {
    fn debian() -> TunMode {
        use std::os::unix::fs::PermissionsExt;
        let before = std::fs::metadata("/dev/net/tun").unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
        TunMode(before)
    }
}

impl Drop for TunMode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
    }
}

/// The pid of `cas-vpn --root ROOT serve SERVICE`.
fn service_pid(root: &Path, service: &str) -> Option<i32> {
    let want = format!("--root\0{}\0serve\0{service}", root.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).trim_end_matches('\0').ends_with(&want).then_some(pid)
    })
}

fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap().trim().to_owned()
}

/// Whether `needle` occurs in any readable, writable memory region of `pid` (heap, stacks, anonymous maps).
fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

/// One request on the signer's socket from a process running as `uid:gid` (perl-base is on every Debian).
fn signer_call_as(uid: u32, gid: u32, socket: &Path, request: &str) -> String {
    let out = Command::new("perl")
        .args([
            "-MIO::Socket::UNIX",
            "-e",
            r#"my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n"; print $s "$ARGV[1]\n"; print scalar <$s>;"#,
            socket.to_str().unwrap(),
            request,
        ])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(out.status.success(), "perl client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Audit rows with this action and actor.
fn audit_count(root: &Path, action: &str, actor: &cas_vpn::domain::Actor) -> usize {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = format!("sqlite://{}", root.join("db/cas-vpn.sqlite").display());
        let store = cas_vpn::db::Store::open(&url).await.unwrap();
        let rows = store.list_audit(1000).await.unwrap();
        store.close().await;
        rows.iter().filter(|r| r.action == action && &r.actor == actor).count()
    })
}

#[test]
#[ignore = "needs root, network namespaces and openvpn: scripts/test runs it with --include-ignored"]
fn services_run_under_their_own_users_and_only_the_signer_holds_a_ca_key() {
    require_root();
    let prefix = format!("cvp{}", &crate::support::netns::run_id()[..6]);
    let users = Users(prefix.clone());
    let _tun = TunMode::debian();
    let mut d = Deployment::with_users(0, &[], &users.0);
    let acct = |suffix: &str| nix::unistd::User::from_name(&format!("{prefix}{suffix}")).unwrap().unwrap();
    let (gate_user, master_user) = (acct("gate"), acct("master"));
    let gid = nix::unistd::Group::from_name(&prefix).unwrap().unwrap().gid.as_raw();
    d.start_service("all");
    let root = d.root().to_owned();

    // doctor sees every service of the root running (each wrote its pid into its own lock file, as its own user).
    let doctor: serde_json::Value = serde_json::from_slice(&d.cli(&["doctor", "--json"]).stdout).unwrap();
    let services = doctor["checks"].as_array().unwrap().iter().find(|c| c["check"] == "services").unwrap().clone();
    assert_eq!(services["level"], "ok", "{services}");
    // … each under its own user (read from /proc, openvpn's children included), and every path has the owner and
    // mode init gave it.
    for check in ["service users", "file owners"] {
        let c = doctor["checks"].as_array().unwrap().iter().find(|c| c["check"] == check).unwrap().clone();
        assert_eq!(c["level"], "ok", "{c}");
    }

    // The gate and master run as their users, with no capabilities, and cannot open a CA key.
    let ca_key = root.join("pki/terminal-ca.key");
    // The needle: the CA's private scalar, the bytes every in-memory form of the key carries.
    let key = openssl::pkey::PKey::private_key_from_pem(&std::fs::read(&ca_key).unwrap()).unwrap();
    let key_body = key.ec_key().unwrap().private_key().to_vec_padded(32).unwrap();
    for (svc, user) in [("gate", &gate_user), ("master", &master_user)] {
        let pid = service_pid(&root, svc).unwrap_or_else(|| panic!("no {svc} process"));
        let uid = user.uid.as_raw().to_string();
        assert!(
            status_field(pid, "Uid").split_whitespace().all(|u| u == uid),
            "{svc} runs as {}",
            status_field(pid, "Uid")
        );
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "{svc} has capabilities");
        let cat = Command::new("cat").arg(&ca_key).uid(user.uid.as_raw()).gid(gid).output().unwrap();
        assert!(!cat.status.success(), "{svc}'s user could read the CA key");
        assert!(String::from_utf8_lossy(&cat.stderr).contains("Permission denied"), "{cat:?}");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(!maps.contains("-ca.key"), "{svc} maps a CA key file");
        assert!(!memory_holds(pid, &key_body), "{svc}'s memory holds the CA key");
    }
    // openvpn runs as its own user with CAP_NET_ADMIN alone, and cannot read a CA key either.
    let vpn_user = acct("vpn");
    let openvpns = d.server_openvpn_pids();
    assert!(!openvpns.is_empty(), "no openvpn runs");
    for pid in &openvpns {
        let uid = vpn_user.uid.as_raw().to_string();
        assert!(
            status_field(*pid, "Uid").split_whitespace().all(|u| u == uid),
            "openvpn {pid} runs as {}",
            status_field(*pid, "Uid")
        );
        assert_eq!(status_field(*pid, "CapEff"), "0000000000001000", "openvpn {pid}: only CAP_NET_ADMIN");
    }
    let cat = Command::new("cat").arg(&ca_key).uid(vpn_user.uid.as_raw()).gid(gid).output().unwrap();
    assert!(!cat.status.success(), "openvpn's user could read the CA key");

    // The check above can see a key: the signer, which does hold it, is found holding it.
    let signer = service_pid(&root, "signer").expect("no signer process");
    assert!(memory_holds(signer, &key_body), "the memory scan cannot see the key where it is");

    // A hostile caller on the signer socket, running as the gate's user: every request outside its rights is
    // refused, nothing is signed, and each refusal is audited.
    d.ok(&["terminal", "add", "atm-live"]);
    d.ok(&["terminal", "add", "atm-gone"]);
    d.ok(&["revoke", "atm-gone"]);
    d.admin("alice");
    let csr = |cn: &str| {
        let key = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let key = openssl::pkey::PKey::from_ec_key(key).unwrap();
        let mut b = openssl::x509::X509ReqBuilder::new().unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        b.set_subject_name(&name.build()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256()).unwrap();
        String::from_utf8(b.build().to_pem().unwrap()).unwrap()
    };
    let sock = root.join("run/signer.sock");
    let as_gate = |req: serde_json::Value| signer_call_as(gate_user.uid.as_raw(), gid, &sock, &req.to_string());
    let certs_before = d.json(&["terminal", "show", "atm-live"])["certificates"].as_array().unwrap().len();
    for (req, why) in [
        (
            serde_json::json!({"request": "sign", "kind": "terminal", "name": "atm-gone", "csr": csr("atm-gone")}),
            "revoked",
        ),
        (serde_json::json!({"request": "sign", "kind": "terminal", "name": "nobody", "csr": csr("nobody")}), "no such"),
        (serde_json::json!({"request": "sign", "kind": "admin", "name": "alice", "csr": csr("alice")}), "may not"),
        (serde_json::json!({"request": "sign", "kind": "terminal", "name": "alice", "csr": csr("alice")}), "admin"),
        (serde_json::json!({"request": "publish_crl", "kind": "terminal"}), "may not"),
        (serde_json::json!({"request": "issue", "kind": "terminal", "name": "atm-live"}), "may not"),
    ] {
        let answer = as_gate(req.clone());
        assert!(answer.contains("\"refused\"") && answer.contains(why), "{req} → {answer}");
    }
    let ca_csr = {
        let out = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "/dev/null",
            ])
            .args(["-subj", "/CN=atm-live", "-addext", "basicConstraints=critical,CA:TRUE"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let answer = as_gate(serde_json::json!({"request": "sign", "kind": "terminal", "name": "atm-live", "csr": ca_csr}));
    assert!(answer.contains("\"refused\""), "a CSR asking for CA rights was not refused: {answer}");
    assert_eq!(
        d.json(&["terminal", "show", "atm-live"])["certificates"].as_array().unwrap().len(),
        certs_before,
        "a refused request wrote a certificate"
    );
    let refused = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store =
            cas_vpn::db::Store::open(&format!("sqlite://{}", root.join("db/cas-vpn.sqlite").display())).await.unwrap();
        let rows = store.list_audit(1000).await.unwrap();
        rows.iter().filter(|r| r.action == "signer.refused" && r.actor == cas_vpn::domain::Actor::Gate).count()
    });
    assert_eq!(refused, 7, "every refusal is audited with the caller");

    // The control socket: the gate's user may ask for the status, never kill; the refusal is audited.
    let control = root.join("vpn/run/control.sock");
    let as_gate_control =
        |req: serde_json::Value| signer_call_as(gate_user.uid.as_raw(), gid, &control, &req.to_string());
    assert!(as_gate_control(serde_json::json!({"request": "status"})).contains("\"status\""));
    let answer = as_gate_control(serde_json::json!({"request": "kill", "name": "atm-live"}));
    assert!(answer.contains("may not"), "the gate's user could kill a session: {answer}");
    assert_eq!(audit_count(&root, "control.refused", &cas_vpn::domain::Actor::Gate), 1, "the refused kill is audited");

    // The store is shared by several uids: the gate (its own user) records failed pairings in the same SQLite
    // database root writes, through group-writable WAL files.
    d.ok(&["pairing", "open"]);
    let token = d.json(&["terminal", "add", "atm-bad"])["token"].as_str().unwrap().to_owned();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // Change the secret's first character: it carries six whole bits, so the token stays well-formed (the
    // last one carries two bits and four zero bits; changing it can make the token malformed, refused by the
    // agent before it reaches the gate).
    let first = parts[2].remove(0);
    parts[2].insert(0, if first == 'A' { 'B' } else { 'A' });
    let wrong = parts.join(".");
    let agent_dir = crate::support::env::temp_dir("agent");
    let banned = || d.json(&["pairing", "status"])["banned"].as_array().unwrap().len();
    for attempt in 1..=10 {
        let gate = format!("{}:7741", crate::support::deploy::GATE_IP);
        let out = crate::support::deploy::agent_pair(d.server(), &gate, &wrong, agent_dir.path());
        assert!(!out.status.success(), "a wrong secret paired");
        eprintln!("attempt {attempt}: {}", String::from_utf8_lossy(&out.stderr).trim());
        if banned() > 0 {
            break;
        }
    }
    assert_eq!(banned(), 1, "the gate (as {prefix}gate) could not record its failures in the store");
    for f in ["db/cas-vpn.sqlite-wal", "db/cas-vpn.sqlite-shm"] {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(root.join(f)).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o070), (gid, 0o060), "{f} is not group-writable by the services");
    }

    // A second `serve all` refuses at once, and the first keeps running.
    // (Inside the server namespace: were the lock broken, it would touch nothing of the host.)
    let second = d
        .server()
        .cmd(crate::support::deploy::bin())
        .env("CAS_VPN_ROOT", &root)
        .env("CAS_VPN_SERVICE_USERS", &prefix)
        .args(["serve", "all"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"), "{second:?}");
    assert!(service_pid(&root, "gate").is_some());

    // kill -9 of a child: the launcher starts it again.
    let old = service_pid(&root, "master").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("master is restarted", Duration::from_secs(10), || {
        service_pid(&root, "master").is_some_and(|p| p != old)
    });

    // kill -9 of the vpn service: its openvpn processes (running as openvpn's user, which changed credentials
    // before exec) die with it within 2 s, and the launcher brings the VPN back.
    let old_vpn = service_pid(&root, "vpn").unwrap();
    let old_openvpns = d.server_openvpn_pids();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_vpn), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the old openvpn processes are gone", Duration::from_secs(2), || {
        let now = d.server_openvpn_pids();
        old_openvpns.iter().all(|p| !now.contains(p))
    });
    wait_until("vpn is restarted", Duration::from_secs(10), || service_pid(&root, "vpn").is_some_and(|p| p != old_vpn));
    d.wait_ready(Duration::from_secs(20));

    // kill -9 of the launcher: no service and no openvpn survives 2 s.
    d.kill9_serve();
    wait_until("every service and openvpn is gone", Duration::from_secs(2), || {
        ["net", "signer", "vpn", "gate", "master"].iter().all(|s| service_pid(&root, s).is_none())
            && d.server_openvpn_pids().is_empty()
    });
}
