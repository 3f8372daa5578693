//! Golden files for every `--json` shape of the CLI (`tests/fixtures/golden/json/`; `UPDATE_GOLDEN=1` rewrites
//! them). One installation is driven through a scenario that makes every shape with its optional fields both set
//! and unset where that is cheap; volatile values (times, tokens, serials, pins, counters, the temp root) are
//! replaced by placeholders that keep the JSON type, so an added, removed, renamed or reordered key, or a changed
//! type, fails the comparison.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::agent::RunningGate;
use crate::gate::{Fixture, csr, req};
use crate::support::{Install, PUBLIC_IP};

/// Keys whose values change from run to run, with their placeholder tag.
const VOLATILE: &[(&str, &str)] = &[
    // times
    ("created_at", "time"),
    ("paired_at", "time"),
    ("last_seen", "time"),
    ("revoked_at", "time"),
    ("not_after", "time"),
    ("token_expires_at", "time"),
    ("open_until", "time"),
    ("expires_at", "time"),
    ("until", "time"),
    ("since", "time"),
    ("failed_at", "time"),
    ("health_since", "time"),
    ("seconds_left", "seconds"),
    ("remaining_secs", "seconds"),
    // secrets and random identifiers
    ("token", "token"),
    ("code", "code"),
    ("pairing_id", "pairing_id"),
    ("gate_pin", "pin"),
    ("web_fingerprint", "fingerprint"),
    ("setup_url", "url"),
    ("serial", "serial"),
    ("serials", "serial"),
    ("crl_number", "crl_number"),
    // measurements (agent bench)
    ("prepare_secs", "float"),
    ("elapsed_secs", "float"),
    ("pairings_per_sec", "float"),
    ("p50_ms", "float"),
    ("p90_ms", "float"),
    ("p99_ms", "float"),
    ("max_ms", "float"),
];

/// A JSON value that keeps its object keys in the order they were printed (`serde_json::Value` sorts them).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Num(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(n).map(Node::Num).ok_or_else(|| E::custom("not a JSON number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Node::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry()? {
                    v.push((k, x));
                }
                Ok(Node::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Num(n) => n.serialize(s),
            Node::Str(x) => s.serialize_str(x),
            Node::Arr(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for x in v {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Node::Obj(v) => {
                let mut map = s.serialize_map(Some(v.len()))?;
                for (k, x) in v {
                    map.serialize_entry(k, x)?;
                }
                map.end()
            }
        }
    }
}

/// The placeholder for a volatile value: `null` stays `null`, a string becomes `"<tag>"`, a number
/// `"<tag:number>"`, a boolean `"<tag:bool>"`; arrays are redacted element by element, except under a tag ending in
/// `...`, whose length is volatile too: such an array becomes `["<tag...>"]`.
fn placeholder(n: &Node, tag: &str) -> Node {
    match n {
        Node::Arr(_) if tag.ends_with("...") => Node::Arr(vec![Node::Str(format!("<{tag}>"))]),
        // A tag ending in `?`: a string or null, depending on the machine (doctor's `fix`).
        Node::Null | Node::Str(_) if tag.ends_with('?') => Node::Str(format!("<{tag}>")),
        Node::Null => Node::Null,
        Node::Str(_) => Node::Str(format!("<{tag}>")),
        Node::Num(_) => Node::Str(format!("<{tag}:number>")),
        Node::Bool(_) => Node::Str(format!("<{tag}:bool>")),
        Node::Arr(v) => Node::Arr(v.iter().map(|x| placeholder(x, tag)).collect()),
        Node::Obj(_) => panic!("a volatile key holds an object: redact inside it instead"),
    }
}

/// Redacts by key (`VOLATILE` plus `extra`), and writes the temp root as `<root>` wherever a string holds it.
fn redact(n: Node, root: &str, extra: &[(&str, &str)]) -> Node {
    match n {
        Node::Obj(v) => Node::Obj(
            v.into_iter()
                .map(|(k, x)| {
                    let tag = VOLATILE.iter().chain(extra).find(|(key, _)| *key == k).map(|(_, tag)| *tag);
                    let x = match (tag, &x) {
                        // An object under a volatile key keeps its shape: its own keys decide.
                        (Some(_), Node::Obj(_)) | (None, _) => redact(x, root, extra),
                        (Some(tag), _) => placeholder(&x, tag),
                    };
                    (k, x)
                })
                .collect(),
        ),
        Node::Arr(v) => Node::Arr(v.into_iter().map(|x| redact(x, root, extra)).collect()),
        Node::Str(s) => Node::Str(s.replace(root, "<root>")),
        other => other,
    }
}

/// Collects every shape's mismatch, so one run reports (or, with `UPDATE_GOLDEN=1`, rewrites) them all.
pub(crate) struct Golden {
    root: String,
    failures: Vec<String>,
}

impl Golden {
    pub(crate) fn new(root: &Path) -> Golden {
        Golden { root: root.display().to_string(), failures: Vec::new() }
    }

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/json")
    }

    pub(crate) fn check(&mut self, name: &str, stdout: &str, extra: &[(&str, &str)]) {
        let node: Node = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {stdout:?}"));
        let redacted = redact(node, &self.root, extra);
        let mut text = serde_json::to_string_pretty(&redacted).unwrap();
        text.push('\n');
        let path = Golden::dir().join(format!("{name}.json"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(Golden::dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(want) => {
                let mut diff = String::new();
                for (i, (w, g)) in want.lines().zip(text.lines()).enumerate() {
                    if w != g {
                        let _ = write!(diff, "\n  line {}: golden {w:?}\n          now    {g:?}", i + 1);
                        break;
                    }
                }
                if diff.is_empty() {
                    diff = format!("\n  golden has {} lines, now {}", want.lines().count(), text.lines().count());
                }
                self.failures.push(format!("{} differs:{diff}\n--- now:\n{text}", path.display()));
            }
            Err(e) => self.failures.push(format!("{}: {e} (UPDATE_GOLDEN=1 makes it)", path.display())),
        }
    }

    pub(crate) fn finish(self) {
        assert!(self.failures.is_empty(), "--json shapes changed:\n{}", self.failures.join("\n\n"));
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Runs the CLI without blocking the runtime that serves the gate; returns stdout, requiring success.
async fn cli(i: &Install, args: &[&str]) -> String {
    let mut cmd = i.cmd();
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "cas-vpn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_json_shapes() {
    let install = Install::empty();
    let mut g = Golden::new(install.root());
    let root = install.root().to_owned();
    let p = |rel: &str| root.join(rel).display().to_string();

    g.check("init", &cli(&install, &["init", "--public-ip", PUBLIC_IP, "--json"]).await, &[]);
    let f = Fixture::on(install, None).await;
    let i = &f.install;

    // Terminals: a token one, a server-keygen one, a batch.
    let added = cli(i, &["terminal", "add", "atm-1", "--json"]).await;
    g.check("terminal_add", &added, &[]);
    let token: serde_json::Value = serde_json::from_str(&added).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    g.check(
        "terminal_add_server_keygen",
        &cli(i, &["terminal", "add", "atm-2", "--server-keygen", "--json"]).await,
        &[],
    );
    std::fs::write(p("names.csv"), "name\natm-3\natm-4\n").unwrap();
    let imported = cli(i, &["terminal", "import", &p("names.csv"), "--out", &p("out"), "--json"]).await;
    g.check("terminal_import", &imported, &[]);

    // The gate: the agent pairs atm-1 with its token; bench pairs the batch.
    f.open_window().await;
    let gate = RunningGate::start(&f).await;
    let args = ["agent", "pair", "--gate", &gate.addr(), "--token", &token, "--dir", &p("agent"), "--serial", "SN-1"];
    g.check("agent_pair", &cli(i, &[&args[..], &["--json"]].concat()).await, &[]);
    let bench = cli(i, &["agent", "bench", "--gate", &gate.addr(), "--tokens", &p("out/tokens.csv"), "--json"]).await;
    g.check("agent_bench", &bench, &[]);
    gate.stop().await;

    // atm-1 heartbeats (master records it healthy) and has a live session on a live node.
    // One node registered (as `serve vpn` does at its start).
    let node: cas_vpn::domain::Name = "n1".parse().unwrap();
    let start = cas_vpn::db::NodeStart {
        name: &node,
        address: PUBLIC_IP,
        version: "0.1.0",
        run_id: "r",
        now: unix_now(),
        alive_since: unix_now() - 15,
    };
    f.ctx.store.register_node(&start).await.unwrap().unwrap();
    let atm1 = f.ctx.store.credential_by_name(&"atm-1".parse().unwrap()).await.unwrap().unwrap().id;
    f.ctx.store.touch_terminal(atm1, "20240115", unix_now()).await.unwrap();
    f.ctx.store.record_health(atm1, cas_vpn::domain::Health::Healthy, unix_now()).await.unwrap();
    f.ctx
        .store
        .upsert_session(&cas_vpn::db::NewSession {
            node: "n1".into(),
            instance: "terminal-0".into(),
            credential_id: atm1,
            common_name: "atm-1".into(),
            tunnel_ip: "10.8.0.2".into(),
            real_addr: "198.51.100.7:40000".into(),
            since: unix_now(),
            client_id: 1,
        })
        .await
        .unwrap();

    // Admin credentials; one is revoked (its port is freed), and so is a terminal.
    g.check(
        "admin_vpn_issue",
        &cli(i, &["admin-vpn", "issue", "alice", "--out", &p("alice.ovpn"), "--json"]).await,
        &[],
    );
    cli(i, &["admin-vpn", "issue", "bob", "--out", &p("bob.ovpn")]).await;
    g.check("revoke", &cli(i, &["revoke", "bob", "--reason", "key-compromise", "--json"]).await, &[]);
    g.check("revoke_terminal", &cli(i, &["revoke", "atm-2", "--json"]).await, &[]);
    g.check("revoke_again", &cli(i, &["revoke", "atm-2", "--json"]).await, &[]);

    // The node's heartbeat, as `serve vpn` writes it every 5 s: its sessions count while it is alive.
    f.ctx.store.node_heartbeat(&node, "r", unix_now()).await.unwrap();
    g.check("terminal_list", &cli(i, &["terminal", "list", "--all", "--json"]).await, &[]);
    g.check("terminal_show", &cli(i, &["terminal", "show", "atm-1", "--json"]).await, &[]);
    g.check("terminal_show_revoked", &cli(i, &["terminal", "show", "atm-2", "--json"]).await, &[]);
    g.check("admin_vpn_list", &cli(i, &["admin-vpn", "list", "--all", "--json"]).await, &[]);
    g.check("admin_vpn_resume", &cli(i, &["admin-vpn", "resume", "alice", "--json"]).await, &[]);
    // atm-1's last renewal failed (master refused it), at a fixed time so that the warning naming it is stable.
    f.ctx
        .store
        .record_renewal_failure(
            atm1,
            cas_vpn::domain::renewal::FailureSource::Master,
            &"not_in_renewal_window".parse().unwrap(),
            &"the current certificate is not yet in its renewal window (from 2028-01-01T00:00:00Z)".parse().unwrap(),
            1_800_000_000,
        )
        .await
        .unwrap();
    g.check("status", &cli(i, &["status", "--json"]).await, &[]);
    // A bulk revocation: an admin (its port freed) and the already revoked atm-2 (allowed: redone).
    cli(i, &["admin-vpn", "issue", "dave", "--out", &p("dave.ovpn")]).await;
    std::fs::write(p("bulk.txt"), "# a bulk revocation\natm-2\ndave\n").unwrap();
    let bulk = cli(i, &["revoke", "--file", &p("bulk.txt"), "--allow-revoked", "--json"]).await;
    g.check("revoke_file", &bulk, &[]);
    g.check("node_list", &cli(i, &["node", "list", "--json"]).await, &[("started_at", "time"), ("version", "version")]);
    g.check("web_user_add", &cli(i, &["web-user", "add", "carol", "--json"]).await, &[]);
    g.check("web_user_list", &cli(i, &["web-user", "list", "--json"]).await, &[]);
    // The audit trail: its ids and times are the run's, its actor the unix user running the tests.
    let audit_extra = [("id", "id"), ("at", "time"), ("actor", "actor")];
    g.check("audit", &cli(i, &["audit", "--action", "web_user", "--json"]).await, &audit_extra);
    // What doctor finds depends on the machine (openvpn, nft, tun): its levels, details and fixes are not pinned, nor is
    // its exit code.
    let doctor = i.run(&["doctor", "--json"]);
    let doctor_extra = [("level", "level"), ("detail", "detail"), ("fix", "fix?"), ("healthy", "healthy")];
    g.check("doctor", &String::from_utf8(doctor.stdout).unwrap(), &doctor_extra);
    // The firewall's plan is pinned by its own golden files (tests/fixtures/golden/firewall/); what is installed
    // (the diff, the drift) is this machine's.
    let fw_extra = [("rules", "rules"), ("plan", "plan"), ("diff", "diff..."), ("drift", "drift")];
    g.check("firewall_plan", &cli(i, &["firewall", "plan", "--json"]).await, &fw_extra);
    g.check("firewall_status", &cli(i, &["firewall", "status", "--json"]).await, &fw_extra);

    // Pairing administration: two approval-flow pairings (one approved, one rejected) and a banned address.
    // Both from one address: they list in the order of their random ids when made in the same second, and must
    // look alike once redacted.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = f.pair("192.0.2.10", &req(None, Some(&csr(&KeyPair::generate().unwrap())))).await;
        assert_eq!(s.as_u16(), 202, "{v}");
        ids.push((v["pairing_id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned()));
    }
    let k = [cas_vpn::db::BanKey { key: "192.0.2.99".into(), max: 1 }];
    f.ctx.store.reserve_attempt(&k, unix_now(), 900).await.unwrap();
    f.ctx.store.settle_attempt(&k, true, unix_now(), 900).await.unwrap();
    g.check("pairing_open", &cli(i, &["pairing", "open", "--for", "10m", "--json"]).await, &[]);
    g.check("pairing_status", &cli(i, &["pairing", "status", "--json"]).await, &[]);
    let (id, code) = &ids[0];
    let approved = cli(i, &["pairing", "approve", id, "--code", code, "--name", "atm-a", "--json"]).await;
    g.check("pairing_approve", &approved, &[]);
    g.check("pairing_reject", &cli(i, &["pairing", "reject", &ids[1].0, "--json"]).await, &[]);
    g.check("pairing_reject_all", &cli(i, &["pairing", "reject", "--all", "--json"]).await, &[]);
    g.check("unban_ip", &cli(i, &["unban-ip", "192.0.2.99", "--json"]).await, &[]);
    g.check("pairing_close", &cli(i, &["pairing", "close", "--json"]).await, &[]);
    g.check("pairing_status_closed", &cli(i, &["pairing", "status", "--json"]).await, &[]);
    g.finish();
}
