//! Shipping: the Debian package (its units, sysusers and tmpfiles snippets, modes, maintainer scripts), the units
//! run the way they say on a throwaway root (`scripts/bench-package`), `scripts/setup`'s units, and the container
//! (the Dockerfile builds with the README's command; `docker/entrypoint.sh` runs `init` then `serve all`).
//!
//! Tests that need root or a tool that may be absent (cargo-deb, dpkg-deb, systemd-analyze, shellcheck) are
//! ignored by default and fail, naming it, when it is missing; `scripts/test` runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{Install, KillOnDrop, wait::poll_until};

/// The services, in the order their units start.
const SERVICES: [&str; 6] = ["net", "signer", "vpn", "gate", "master", "admin"];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? scripts/install-deps --test)"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A unit file's `[Service]`/`[Unit]`/`[Install]` keys, each with every value it was given (comments skipped).
fn unit(name: &str) -> BTreeMap<String, Vec<String>> {
    parse_unit(&read(&format!("packaging/{name}")))
}

fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        m.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    m
}

fn one<'a>(u: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match u.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

/// The `cargo build` command of a text: every line (or backquoted span) that starts with `cargo build`.
fn build_commands(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("RUN ");
        if line.starts_with("cargo build") {
            found.push(line.split(" #").next().unwrap().trim().to_owned());
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with("cargo build") {
                found.push(span.trim().to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_dockerfile_and_setup_build_with_the_readmes_command() {
    let readme = build_commands(&read("README.md"));
    assert_eq!(readme.len(), 1, "the README names one build command: {readme:?}");
    let readme = &readme[0];
    assert!(readme.contains("--release") && readme.contains("--locked"), "{readme}");
    assert_eq!(build_commands(&read("docker/Dockerfile")), std::slice::from_ref(readme), "docker/Dockerfile");
    assert_eq!(build_commands(&read("scripts/setup")), std::slice::from_ref(readme), "scripts/setup");
    // The parser sees a command that differs (so the comparison above can fail).
    assert_eq!(build_commands("RUN cargo build --locked --bin cas-vpn\n"), ["cargo build --locked --bin cas-vpn"]);
    // The runtime stage takes what that command made, and starts through the entrypoint script.
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.contains("COPY --from=build /src/target/release/cas-vpn /usr/local/bin/cas-vpn"));
    assert!(dockerfile.contains("COPY docker/entrypoint.sh /usr/local/bin/cas-vpn-entrypoint"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/cas-vpn-entrypoint"]"#));
    assert!(dockerfile.contains(r#"CMD ["serve", "all"]"#));
    let compose = read("docker/compose.yaml");
    for needed in ["cap_add: [NET_ADMIN]", "/dev/net/tun:/dev/net/tun", "batm:/batm", "profiles: [postgres]"] {
        assert!(compose.contains(needed), "compose.yaml lacks {needed}");
    }
}

#[test]
fn every_unit_is_hardened_and_runs_its_service_as_the_shipping_section_says() {
    let tmpfiles = read("packaging/cas-vpn.tmpfiles");
    let made_dirs: Vec<&str> =
        tmpfiles.lines().filter_map(|l| l.strip_prefix("d ")).filter_map(|l| l.split_whitespace().next()).collect();
    let target = unit("cas-vpn.target");
    let wants = target["Wants"].join(" ");
    for s in SERVICES {
        let name = format!("cas-vpn-{s}.service");
        let u = unit(&name);
        let at = |k: &str| format!("{name}: {k}");
        assert!(wants.split_whitespace().any(|w| w == name), "cas-vpn.target does not want {name}");
        assert_eq!(one(&u, "PartOf"), "cas-vpn.target", "{}", at("PartOf"));
        assert_eq!(one(&u, "ExecStart"), format!("/usr/bin/cas-vpn serve {s}"), "{}", at("ExecStart"));
        assert_eq!(one(&u, "Environment"), "CAS_VPN_ROOT=/batm", "{}", at("Environment"));
        let env_files = &u["EnvironmentFile"];
        assert_eq!(env_files[0], "-/etc/cas-vpn/env", "{}", at("EnvironmentFile"));
        // The CA passphrase reaches the signer alone.
        let signer_env = env_files.iter().any(|f| f == "-/etc/cas-vpn/signer.env");
        assert_eq!(signer_env, s == "signer", "{}", at("EnvironmentFile"));
        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("SystemCallFilter", "@system-service"),
            ("UMask", "0007"),
        ] {
            assert_eq!(one(&u, k), v, "{}", at(k));
        }
        let families = one(&u, "RestrictAddressFamilies");
        assert!(families.starts_with("AF_UNIX AF_"), "{}", at("RestrictAddressFamilies"));
        assert_eq!(families.contains("AF_NETLINK"), matches!(s, "net" | "vpn"), "{}", at("RestrictAddressFamilies"));
        let caps = one(&u, "CapabilityBoundingSet");
        match s {
            "net" => assert_eq!(caps, "CAP_NET_ADMIN CAP_NET_RAW"),
            "vpn" => {
                assert_eq!(caps, "CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_KILL")
            }
            _ => assert_eq!(caps, "", "{}", at("CapabilityBoundingSet")),
        }
        match s {
            "gate" | "master" | "admin" => {
                assert_eq!(one(&u, "User"), format!("batm{s}"), "{}", at("User"));
                assert_eq!(one(&u, "Group"), "batm", "{}", at("Group"));
            }
            _ => {
                assert!(!u.contains_key("User"), "{}", at("User: root"));
                assert_eq!(one(&u, "SupplementaryGroups"), "batm", "{}", at("SupplementaryGroups"));
            }
        }
        let after = u.get("After").map(|a| a.join(" ")).unwrap_or_default();
        match s {
            "net" => assert!(!after.contains("cas-vpn-"), "{}", at("After")),
            "signer" => assert_eq!(after, "cas-vpn-net.service"),
            _ => assert_eq!(after, "cas-vpn-net.service cas-vpn-signer.service", "{}", at("After")),
        }
        // Every writable path under the root exists before the unit starts (tmpfiles), or systemd refuses to start it.
        for p in one(&u, "ReadWritePaths").split_whitespace() {
            if let Some(p) = p.strip_prefix("/batm") {
                assert!(
                    made_dirs.contains(&format!("/batm{p}").as_str()),
                    "{}: {p} not in tmpfiles",
                    at("ReadWritePaths")
                );
            } else {
                assert!(p.starts_with('-'), "{}: {p} outside the root must be optional", at("ReadWritePaths"));
            }
        }
        // Every unit is in the package.
        assert!(read("Cargo.toml").contains(&format!("[\"packaging/{name}\", \"usr/lib/systemd/system/\", \"644\"]")));
    }
    // The users the units name are the ones sysusers makes.
    let sysusers = read("packaging/cas-vpn.sysusers");
    for u in ["batmgate", "batmmaster", "batmadmin", "batmvpn"] {
        assert!(sysusers.lines().any(|l| l.starts_with(&format!("u {u} ")) && l.contains("-:batm")), "sysusers: {u}");
    }
    assert!(sysusers.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["g", "batm", "-"]));
}

/// `systemd-analyze verify` of `units` (paths in `dir/usr/lib/systemd/system` or `dir/etc/systemd/system`) with
/// `dir` as the root: the exit status and everything it printed. It warns about an unknown key without failing,
/// so a clean result is exit 0 *and* no output.
fn verify(dir: &Path, units: &[PathBuf]) -> (bool, String) {
    let out = run(Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", dir.display())).args(units));
    (out.status.success() && text(&out).trim().is_empty(), text(&out))
}

/// A root for `systemd-analyze verify --root`: systemd's own units (what ours are ordered against) and stubs of the
/// executables ours name.
fn verify_root() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("cv-it-verify-").tempdir().unwrap();
    let units = d.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let out = run(Command::new("cp").arg("-r").arg("/usr/lib/systemd/system/.").arg(&units));
    assert!(out.status.success(), "{}", text(&out));
    for exe in
        ["usr/bin/cas-vpn", "usr/lib/cas-vpn/wait-ready", "usr/local/bin/cas-vpn", "usr/local/lib/cas-vpn/wait-ready"]
    {
        let p = d.path().join(exe);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

#[test]
#[ignore = "needs systemd-analyze (scripts/install-deps --test): scripts/test runs it"]
fn the_units_and_setups_units_pass_systemd_analyze_verify() {
    let root = verify_root();
    let dir = root.path().join("usr/lib/systemd/system");
    let mut ours = Vec::new();
    for f in std::iter::once("cas-vpn.target".to_owned()).chain(SERVICES.map(|s| format!("cas-vpn-{s}.service"))) {
        std::fs::copy(repo(&format!("packaging/{f}")), dir.join(&f)).unwrap();
        ours.push(dir.join(&f));
    }
    let (ok, out) = verify(root.path(), &ours);
    assert!(ok, "systemd-analyze verify: {out}");

    // scripts/setup installs the same units with its own paths.
    let etc = root.path().join("etc/systemd/system");
    let out = run(Command::new(repo("scripts/setup")).arg("--render-units").arg(&etc).args(["--root", "/srv/cas-vpn"]));
    assert!(out.status.success(), "{}", text(&out));
    let rendered: Vec<PathBuf> = ours.iter().map(|p| etc.join(p.file_name().unwrap())).collect();
    for (pkg, setup) in ours.iter().zip(&rendered) {
        let pkg = std::fs::read_to_string(pkg).unwrap();
        let expect = pkg
            .replace("/usr/bin/cas-vpn", "/usr/local/bin/cas-vpn")
            .replace("/usr/lib/cas-vpn/", "/usr/local/lib/cas-vpn/")
            .replace("/batm", "/srv/cas-vpn");
        assert_eq!(std::fs::read_to_string(setup).unwrap(), expect, "{}", setup.display());
    }
    let (ok, out) = verify(root.path(), &rendered);
    assert!(ok, "systemd-analyze verify (setup's units): {out}");

    // The check catches a unit systemd would half ignore.
    let bad = dir.join("cas-vpn-bad.service");
    std::fs::write(&bad, read("packaging/cas-vpn-gate.service").replace("ProtectHome=yes", "ProtectHom=yes")).unwrap();
    assert!(!verify(root.path(), &[bad]).0, "a misspelled key passed");
}

/// The package, built once per test run from the debug binary the tests use (a release build would take half an
/// hour here; `cargo deb` on the operator's side builds release). In `<target>/debian-it/`.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let bin = PathBuf::from(assert_cmd::cargo::cargo_bin!("cas-vpn"));
        let target = bin.parent().and_then(Path::parent).expect("<target>/debug/cas-vpn").to_owned();
        let out_dir = target.join("debian-it");
        let _ = std::fs::remove_dir_all(&out_dir);
        // `--profile dev`: the package's asset target/release/cas-vpn is taken from <target>/debug/.
        let out = run(Command::new("cargo")
            .args(["deb", "--no-build", "--profile", "dev", "--fast", "--locked", "-o"])
            .arg(&out_dir)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        assert!(out.status.success(), "cargo deb (scripts/install-deps --package installs cargo-deb): {}", text(&out));
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("cargo deb made no .deb")
    })
}

#[test]
#[ignore = "needs cargo-deb and dpkg-deb (scripts/install-deps --test): scripts/test runs it"]
fn the_package_holds_the_binary_units_sysusers_tmpfiles_and_scripts_with_their_modes() {
    let deb = package();
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(deb)));
    // `-rwxr-xr-x root/root SIZE DATE TIME ./path`
    let entries: BTreeMap<String, (String, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| (f[5].trim_start_matches('.').to_owned(), (f[0].to_owned(), f[1].to_owned())))
        })
        .collect();
    let expect = |path: &str, mode: &str| {
        let (m, owner) = entries.get(path).unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert_eq!((m.as_str(), owner.as_str()), (mode, "0/0"), "{path}");
    };
    expect("/usr/bin/cas-vpn", "-rwxr-xr-x");
    expect("/usr/lib/cas-vpn/wait-ready", "-rwxr-xr-x");
    expect("/usr/lib/systemd/system/cas-vpn.target", "-rw-r--r--");
    for s in SERVICES {
        expect(&format!("/usr/lib/systemd/system/cas-vpn-{s}.service"), "-rw-r--r--");
    }
    expect("/usr/lib/sysusers.d/cas-vpn.conf", "-rw-r--r--");
    expect("/usr/lib/tmpfiles.d/cas-vpn.conf", "-rw-r--r--");
    expect("/usr/share/cas-vpn/env", "-rw-r--r--");
    expect("/usr/share/cas-vpn/signer.env", "-rw-r--r--");
    // Nothing under /batm or /etc: the tree is made by tmpfiles and init, the environment files by postinst, so
    // that dpkg never replaces what the operator changed.
    assert!(!entries.keys().any(|p| p.starts_with("/batm") || p.starts_with("/etc")), "{listing}");

    let d = tempfile::Builder::new().prefix("cv-it-deb-").tempdir().unwrap();
    let out = run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(d.path()));
    assert!(out.status.success(), "{}", text(&out));
    for (packaged, source) in [
        ("usr/lib/sysusers.d/cas-vpn.conf", "packaging/cas-vpn.sysusers"),
        ("usr/lib/tmpfiles.d/cas-vpn.conf", "packaging/cas-vpn.tmpfiles"),
        ("usr/lib/systemd/system/cas-vpn-vpn.service", "packaging/cas-vpn-vpn.service"),
    ] {
        assert_eq!(std::fs::read_to_string(d.path().join(packaged)).unwrap(), read(source), "{packaged}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = d.path().join("DEBIAN").join(script);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), read(&format!("packaging/debian/{script}")), "{script}");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o755, "{script}");
    }
    let control = std::fs::read_to_string(d.path().join("DEBIAN/control")).unwrap();
    let depends = control.lines().find_map(|l| l.strip_prefix("Depends: ")).expect("Depends");
    for dep in ["openvpn", "iproute2", "nftables", "libssl3"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
}

#[test]
#[ignore = "needs root, cargo-deb, dpkg, unshare, setpriv and jq: scripts/test runs it"]
fn the_package_installs_on_a_fresh_root_and_every_unit_runs_as_it_says() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (namespaces, dpkg into a throwaway root)");
    let deb = package();
    // bench-package leaves nothing behind: its root, processes and network namespace die with its pid namespace.
    let out = run(Command::new(repo("scripts/bench-package")).arg("--runs").arg("1").arg("--deb").arg(deb));
    let all = text(&out);
    assert!(out.status.success(), "scripts/bench-package failed: {all}");
    let line = |what: &str| -> String {
        all.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no `{what}` line in: {all}")).to_owned()
    };
    // Root services keep exactly their unit's bounding set; the service users none; all with no_new_privs.
    for (s, uid_root, capbnd) in [
        ("net", true, "0000000000003000"),
        ("signer", true, "0000000000000000"),
        ("vpn", true, "00000000000010eb"),
        ("gate", false, "0000000000000000"),
        ("master", false, "0000000000000000"),
        ("admin", false, "0000000000000000"),
    ] {
        let l = line(&format!("check: serve {s} "));
        assert_eq!(l.contains(" uid 0 "), uid_root, "{l}");
        assert!(l.contains(&format!("capbnd {capbnd} nnp 1")), "{l}");
    }
    // openvpn as its own user with CAP_NET_ADMIN alone, under the vpn unit's restrictions.
    let l = line("check: openvpn ");
    assert!(l.contains("user batmvpn capeff 0000000000001000"), "{l}");
    let l = line("check: modes ");
    for m in [
        "/batm=root:batm:750",
        "/batm/db=root:batm:2770",
        "/batm/pki/pending=batmgate:root:700",
        "/batm/pki/terminal-ca.key=root:root:600",
        "/batm/pki/gate.key=batmgate:root:600",
        "/etc/cas-vpn/signer.env=root:root:600",
    ] {
        assert!(l.contains(m), "{m} in {l}");
    }
    // The maintainer scripts: enable and start on a first install; on an upgrade restart what ran and enable
    // nothing (an operator's disable stays); stop everything on removal; purge keeps /batm and the accounts.
    let units = SERVICES.map(|s| format!("cas-vpn-{s}.service")).join(" ");
    assert!(line("check: systemctl install: ").ends_with(": enable cas-vpn.target;daemon-reload;start cas-vpn.target"));
    assert!(line("check: systemctl upgrade: ").ends_with(&format!(": daemon-reload;try-restart {units}")));
    assert!(
        line("check: systemctl remove: ").contains(&format!(": stop cas-vpn.target {units};disable cas-vpn.target"))
    );
    assert!(
        line("check: after purge: ").ends_with(": /batm/pki/terminal-ca.key /batm/db/cas-vpn.sqlite user:batmgate")
    );
    assert!(line("install_s=").contains("upgrade_restart_s="), "{all}");
}

#[test]
#[ignore = "needs shellcheck (scripts/install-deps --test): scripts/test runs it"]
fn the_shipping_shell_scripts_pass_shellcheck() {
    let scripts = [
        "scripts/setup",
        "scripts/install-deps",
        "scripts/bench-package",
        "packaging/wait-ready",
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
        "docker/entrypoint.sh",
    ];
    let out = run(Command::new("shellcheck").args(scripts.map(repo)));
    assert!(out.status.success(), "shellcheck: {}", text(&out));
}

/// `docker/entrypoint.sh ARGS` with the test's cas-vpn, one uid, on `root`.
fn entrypoint(root: &Path, public_ip: Option<&str>) -> Command {
    let mut c = Command::new(repo("docker/entrypoint.sh"));
    c.env("CAS_VPN_BIN", assert_cmd::cargo::cargo_bin!("cas-vpn"))
        .env("CAS_VPN_ROOT", root)
        .env(crate::support::USERS_ENV, "none")
        .env_remove("CAS_VPN_DATABASE_URL")
        .env_remove("RUST_LOG");
    match public_ip {
        Some(ip) => c.env("CAS_VPN_PUBLIC_IP", ip),
        None => c.env_remove("CAS_VPN_PUBLIC_IP"),
    };
    c
}

#[test]
fn the_entrypoint_initialises_before_serve_and_passes_other_commands_through() {
    let i = Install::empty();
    // Not `serve`: runs as it is, no init (an empty root stays uninitialised, and says so).
    let out = run(entrypoint(i.root(), Some("198.51.100.7")).arg("status"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!i.path("config/network").exists());
    // `serve …`: init first, with the public address, then the command (here its help: exits 0, serves nothing).
    let out = run(entrypoint(i.root(), Some("198.51.100.7")).args(["serve", "--help"]));
    assert!(out.status.success(), "{}", text(&out));
    let network = std::fs::read_to_string(i.path("config/network")).unwrap();
    assert!(network.contains("public_ip=198.51.100.7"), "{network}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"), "{}", text(&out));
    // A second start changes nothing that is there (init is idempotent), even without the variable.
    let out = run(entrypoint(i.root(), None).args(["serve", "--help"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(i.path("config/network")).unwrap(), network);
}

#[test]
fn the_entrypoint_runs_serve_all_as_its_own_process_until_sigterm() {
    let i = Install::new();
    // Scenario B on loopback addresses of this test's own (no VPN, no interface, no firewall: no root needed).
    let props = i.path("config/gate.properties");
    let t = std::fs::read_to_string(&props).unwrap().replace("batm.vpn-skip=false", "batm.vpn-skip=true");
    std::fs::write(&props, t).unwrap();
    let net = i.path("config/network");
    let t = std::fs::read_to_string(&net)
        .unwrap()
        .replace("master_bind_ip=10.3.2.1", "master_bind_ip=127.0.0.52")
        .replace("gate_bind_ip=10.3.1.1", "gate_bind_ip=127.0.0.53");
    std::fs::write(&net, t).unwrap();

    let child = entrypoint(i.root(), None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let child = KillOnDrop::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in ["127.0.0.53:7741", "127.0.0.52:7741"] {
        assert!(poll_until(deadline, || std::net::TcpStream::connect(addr).is_ok()), "{addr} does not listen");
    }
    // The entrypoint exec'd: the process it started is `serve all` itself (docker's SIGTERM reaches it).
    let pid = child.id();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert_eq!(args.iter().rev().skip(1).take(2).collect::<Vec<_>>(), ["all", "serve"], "{args:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut child = child.take();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    assert!(poll_until(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success(), "serve all exited {status:?}");
    assert!(std::net::TcpStream::connect("127.0.0.53:7741").is_err(), "the gate outlived serve all");
}
