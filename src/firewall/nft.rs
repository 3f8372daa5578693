//! The nft renderer: one script that replaces cas-vpn's own table `inet cas_vpn` in one transaction
//! (`nft -f`: `table …` creates it if missing, `delete table …` empties the slate, then the whole table). Tables
//! cas-vpn does not own are never flushed or edited; the old isolation table `inet cas_vpn_tunnels` (ours, from
//! before the firewall) is removed by the same transaction.
//!
//! Our base chains run at priority `filter - 10`, before the usual `filter` chains of other tables: our drops are
//! final, our accepts only end our own chain (another table may still drop), which is how nftables composes.

use std::fmt::Write as _;

use super::{ADMIN_TUNNELS, ADMIN_UI_PORT, AGENT_STATUS_PORT, Door, PAIRING_PORT, Plan, TERMINAL_TUNNELS};
use crate::domain::Cidr;

/// The table cas-vpn owns.
pub const TABLE: &str = "cas_vpn";
/// The isolation table of earlier versions, removed on every apply.
pub const OLD_TABLE: &str = "cas_vpn_tunnels";

fn set_name(d: &Door, v6: bool) -> String {
    format!("{}_conns{}", d.name.replace('-', "_"), if v6 { "6" } else { "4" })
}

fn ports(p: &[u16]) -> String {
    match p {
        [one] => one.to_string(),
        many => format!("{{ {} }}", many.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn sources(from: &[Cidr]) -> String {
    match from {
        [] => String::new(),
        [one] => format!(" ip saddr {one}"),
        many => format!(" ip saddr {{ {} }}", many.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// The script for `nft -f`.
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# cas-vpn firewall (nft): generated from the configuration and the store; do not edit.");
    for t in [OLD_TABLE, TABLE] {
        let _ = writeln!(w, "table inet {t}\ndelete table inet {t}");
    }
    let _ = writeln!(w, "table inet {TABLE} {{");
    for d in p.doors.iter().filter(|d| d.per_source_cap.is_some()) {
        // The DNAT door's sources are IPv4 only (public_ip is an IPv4 address); others count both families.
        let families: &[bool] = if d.dnat_to.is_some() { &[false] } else { &[false, true] };
        for &v6 in families {
            let ty = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            let _ = writeln!(w, "\tset {} {{\n\t\ttype {ty}\n\t\tsize 65535\n\t\tflags dynamic\n\t}}", set_name(d, v6));
        }
    }
    let dnat: Vec<&Door> = p.doors.iter().filter(|d| d.dnat_to.is_some()).collect();
    if let (Some(iface), Some(public_ip)) = (&p.public_interface, p.public_ip) {
        let _ = writeln!(w, "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;");
        for d in &dnat {
            let to = d.dnat_to.expect("filtered");
            let port = d.ports[0];
            let _ = writeln!(
                w,
                "\t\tiifname \"{iface}\" ip daddr {public_ip} tcp dport {port}{} dnat ip to {to}:{port}",
                sources(&d.from)
            );
        }
        let _ = writeln!(w, "\t}}");
    }

    let _ = writeln!(w, "\tchain input {{\n\t\ttype filter hook input priority filter - 10; policy accept;");
    let _ = writeln!(w, "\t\tiifname \"lo\" accept");
    let _ = writeln!(w, "\t\tiifname \"{TERMINAL_TUNNELS}*\" jump from_terminal");
    let _ = writeln!(w, "\t\tiifname \"{ADMIN_TUNNELS}*\" jump from_admin");
    if let Some(iface) = &p.public_interface {
        let _ = writeln!(w, "\t\tiifname \"{iface}\" jump from_internet");
    }
    // Anything else (another LAN, a second uplink): master and the admin UI still answer only their tunnels.
    let _ = writeln!(w, "\t\tip daddr {{ {}, {} }} drop", p.master_ip, p.admin_ip);
    let _ = writeln!(w, "\t}}");

    let _ = writeln!(w, "\tchain from_terminal {{");
    let _ = writeln!(w, "\t\tip daddr {} tcp dport {PAIRING_PORT} accept", p.master_ip);
    // Answers to master's health probes: the reply direction of connections master opened, nothing new.
    let _ = writeln!(
        w,
        "\t\tip daddr {} tcp sport {AGENT_STATUS_PORT} ct direction reply ct state established accept",
        p.master_ip
    );
    let _ = writeln!(w, "\t\tdrop\n\t}}");
    let _ = writeln!(w, "\tchain from_admin {{");
    let _ = writeln!(w, "\t\tip daddr {} tcp dport {ADMIN_UI_PORT} accept", p.admin_ip);
    let _ = writeln!(w, "\t\tdrop\n\t}}");

    if p.public_interface.is_some() {
        let _ = writeln!(w, "\tchain from_internet {{");
        let _ = writeln!(w, "\t\tct state established,related accept");
        let _ = writeln!(w, "\t\tct state invalid drop");
        // ICMP (errors, PMTU, ping) and ICMPv6 (neighbour discovery: IPv6 breaks without it) are not doors.
        let _ = writeln!(w, "\t\tmeta l4proto {{ icmp, ipv6-icmp }} accept");
        for d in &p.doors {
            let dport = ports(&d.ports);
            let (dst, from) = match d.dnat_to {
                // Only connections our own DNAT made: the gate's private address itself is no door.
                Some(to) => (format!("ct status dnat ip daddr {to} "), String::new()),
                None => (String::new(), sources(&d.from)),
            };
            if let Some(n) = d.per_source_cap {
                let families: &[(bool, &str)] =
                    if d.dnat_to.is_some() { &[(false, "ip")] } else { &[(false, "ip"), (true, "ip6")] };
                for &(v6, fam) in families {
                    let _ = writeln!(
                        w,
                        "\t\t{dst}tcp dport {dport}{from} ct state new add @{} {{ {fam} saddr ct count over {n} }} drop",
                        set_name(d, v6)
                    );
                }
            }
            let _ = writeln!(w, "\t\t{dst}tcp dport {dport}{from} accept");
        }
        let _ = writeln!(w, "\t\tdrop\n\t}}");
    }

    let _ = writeln!(w, "\tchain forward {{\n\t\ttype filter hook forward priority filter - 10; policy accept;");
    let _ = writeln!(w, "\t\tiifname {{ \"{TERMINAL_TUNNELS}*\", \"{ADMIN_TUNNELS}*\" }} drop");
    let _ = writeln!(w, "\t\toifname {{ \"{TERMINAL_TUNNELS}*\", \"{ADMIN_TUNNELS}*\" }} drop");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");
    s
}

/// The script that removes everything cas-vpn installed with nft (rollback to "nothing was installed").
pub fn render_removal() -> String {
    let mut s = String::new();
    for t in [OLD_TABLE, TABLE] {
        let _ = writeln!(s, "table inet {t}\ndelete table inet {t}");
    }
    s
}
