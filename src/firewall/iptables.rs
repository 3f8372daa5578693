//! The iptables renderer: `iptables-restore --noflush` input for IPv4 and IPv6 that (re)declares cas-vpn's own
//! chains (`CASVPN-*`; declaring a chain empties it, so each apply replaces them whole, in one commit per table)
//! and never touches another chain. The built-in chains get one jump each into ours, inserted once at the top
//! (`HOOKS`, checked with `-C` before inserting), by the engine.
//!
//! IPv6: tunnels carry none (everything from them is dropped); the public doors are the same except the ones
//! limited to IPv4 sources and the DNAT door (public_ip is IPv4).

use std::fmt::Write as _;

use super::{ADMIN_TUNNELS, ADMIN_UI_PORT, AGENT_STATUS_PORT, Door, PAIRING_PORT, Plan, TERMINAL_TUNNELS};

/// `(table, built-in chain, our chain)`: the jumps the engine makes sure exist, once, at position 1.
pub const HOOKS_V4: [(&str, &str, &str); 3] = [
    ("filter", "INPUT", "CASVPN-INPUT"),
    ("filter", "FORWARD", "CASVPN-FORWARD"),
    ("nat", "PREROUTING", "CASVPN-PREROUTING"),
];
pub const HOOKS_V6: [(&str, &str, &str); 2] =
    [("filter", "INPUT", "CASVPN-INPUT"), ("filter", "FORWARD", "CASVPN-FORWARD")];

/// Our chains per table, in the order `-S` lists them for drift checks.
pub const CHAINS_V4: [(&str, &str); 6] = [
    ("nat", "CASVPN-PREROUTING"),
    ("filter", "CASVPN-INPUT"),
    ("filter", "CASVPN-TERMINAL"),
    ("filter", "CASVPN-ADMIN"),
    ("filter", "CASVPN-INTERNET"),
    ("filter", "CASVPN-FORWARD"),
];
pub const CHAINS_V6: [(&str, &str); 3] =
    [("filter", "CASVPN-INPUT"), ("filter", "CASVPN-INTERNET"), ("filter", "CASVPN-FORWARD")];

/// `iptables` takes at most 15 ports in one `multiport` match.
const MULTIPORT_MAX: usize = 15;

fn dports(p: &[u16]) -> Vec<String> {
    match p {
        [one] => vec![format!("-p tcp --dport {one}")],
        many => many
            .chunks(MULTIPORT_MAX)
            .map(|c| {
                format!("-p tcp -m multiport --dports {}", c.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
            })
            .collect(),
    }
}

fn door_rules(w: &mut String, d: &Door, v6: bool) {
    let comment = format!("-m comment --comment cas-vpn:{}", d.name);
    let mask = if v6 { 128 } else { 32 };
    // Per-source sources are IPv4: a door limited to them has no IPv6 side.
    let sources: Vec<String> = if d.from.is_empty() {
        vec![String::new()]
    } else if v6 {
        return;
    } else {
        d.from.iter().map(|c| format!("-s {c} ")).collect()
    };
    let dst = match d.dnat_to {
        Some(_) if v6 => return,
        Some(to) => format!("-d {to}/32 -m conntrack --ctstate DNAT "),
        None => String::new(),
    };
    for port in dports(&d.ports) {
        // With DNAT the sources were checked in PREROUTING already.
        let srcs: &[String] = if d.dnat_to.is_some() { &[String::new()] } else { &sources };
        for src in srcs {
            if let Some(n) = d.per_source_cap {
                let _ = writeln!(
                    w,
                    "-A CASVPN-INTERNET {src}{dst}{port} --syn -m connlimit --connlimit-above {n} --connlimit-mask {mask} {comment} -j DROP"
                );
            }
            let _ = writeln!(w, "-A CASVPN-INTERNET {src}{dst}{port} {comment} -j ACCEPT");
        }
    }
}

/// `iptables-restore --noflush` input (IPv4).
pub fn render_v4(p: &Plan) -> String {
    let mut s = String::from(
        "# cas-vpn firewall (iptables, IPv4): generated; do not edit.\n*nat\n:CASVPN-PREROUTING - [0:0]\n",
    );
    let w = &mut s;
    if let (Some(iface), Some(public_ip)) = (&p.public_interface, p.public_ip) {
        for d in p.doors.iter().filter(|d| d.dnat_to.is_some()) {
            let to = d.dnat_to.expect("filtered");
            let port = d.ports[0];
            let srcs: Vec<String> = if d.from.is_empty() {
                vec![String::new()]
            } else {
                d.from.iter().map(|c| format!("-s {c} ")).collect()
            };
            for src in srcs {
                let _ = writeln!(
                    w,
                    "-A CASVPN-PREROUTING -i {iface} {src}-d {public_ip}/32 -p tcp --dport {port} -m comment --comment cas-vpn:{} -j DNAT --to-destination {to}:{port}",
                    d.name
                );
            }
        }
    }
    let _ = writeln!(w, "COMMIT\n*filter");
    for (_, chain) in CHAINS_V4.iter().filter(|(t, _)| *t == "filter") {
        let _ = writeln!(w, ":{chain} - [0:0]");
    }
    let _ = writeln!(w, "-A CASVPN-INPUT -i lo -j ACCEPT");
    let _ = writeln!(w, "-A CASVPN-INPUT -i {TERMINAL_TUNNELS}+ -j CASVPN-TERMINAL");
    let _ = writeln!(w, "-A CASVPN-INPUT -i {ADMIN_TUNNELS}+ -j CASVPN-ADMIN");
    if let Some(iface) = &p.public_interface {
        let _ = writeln!(w, "-A CASVPN-INPUT -i {iface} -j CASVPN-INTERNET");
    }
    let _ = writeln!(w, "-A CASVPN-INPUT -d {}/32 -j DROP", p.master_ip);
    let _ = writeln!(w, "-A CASVPN-INPUT -d {}/32 -j DROP", p.admin_ip);
    let _ = writeln!(w, "-A CASVPN-TERMINAL -d {}/32 -p tcp --dport {PAIRING_PORT} -j ACCEPT", p.master_ip);
    // Answers to master's health probes: the reply direction of connections master opened, nothing new.
    let _ = writeln!(
        w,
        "-A CASVPN-TERMINAL -d {}/32 -p tcp --sport {AGENT_STATUS_PORT} -m conntrack --ctstate ESTABLISHED \
         --ctdir REPLY -j ACCEPT",
        p.master_ip
    );
    let _ = writeln!(w, "-A CASVPN-TERMINAL -j DROP");
    let _ = writeln!(w, "-A CASVPN-ADMIN -d {}/32 -p tcp --dport {ADMIN_UI_PORT} -j ACCEPT", p.admin_ip);
    let _ = writeln!(w, "-A CASVPN-ADMIN -j DROP");
    internet(w, p, false);
    forward(w);
    let _ = writeln!(w, "COMMIT");
    s
}

/// `ip6tables-restore --noflush` input (IPv6).
pub fn render_v6(p: &Plan) -> String {
    let mut s = String::from("# cas-vpn firewall (iptables, IPv6): generated; do not edit.\n*filter\n");
    let w = &mut s;
    for (_, chain) in CHAINS_V6 {
        let _ = writeln!(w, ":{chain} - [0:0]");
    }
    let _ = writeln!(w, "-A CASVPN-INPUT -i lo -j ACCEPT");
    let _ = writeln!(w, "-A CASVPN-INPUT -i {TERMINAL_TUNNELS}+ -j DROP");
    let _ = writeln!(w, "-A CASVPN-INPUT -i {ADMIN_TUNNELS}+ -j DROP");
    if let Some(iface) = &p.public_interface {
        let _ = writeln!(w, "-A CASVPN-INPUT -i {iface} -j CASVPN-INTERNET");
    }
    internet(w, p, true);
    forward(w);
    let _ = writeln!(w, "COMMIT");
    s
}

fn internet(w: &mut String, p: &Plan, v6: bool) {
    if p.public_interface.is_none() {
        return;
    }
    let _ = writeln!(w, "-A CASVPN-INTERNET -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    let _ = writeln!(w, "-A CASVPN-INTERNET -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(w, "-A CASVPN-INTERNET -p {} -j ACCEPT", if v6 { "ipv6-icmp" } else { "icmp" });
    for d in &p.doors {
        door_rules(w, d, v6);
    }
    let _ = writeln!(w, "-A CASVPN-INTERNET -j DROP");
}

fn forward(w: &mut String) {
    for t in [TERMINAL_TUNNELS, ADMIN_TUNNELS] {
        let _ = writeln!(w, "-A CASVPN-FORWARD -i {t}+ -j DROP");
        let _ = writeln!(w, "-A CASVPN-FORWARD -o {t}+ -j DROP");
    }
}
