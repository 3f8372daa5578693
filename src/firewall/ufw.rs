//! The ufw renderer: the plan as far as ufw's command line can say it, as `ufw` argument lists (each rule
//! commented `cas-vpn`, so the engine can take back exactly what it added), plus one message per part of the plan
//! ufw cannot express. ufw's own default (deny incoming) closes everything else, the tunnels included, so the
//! tunnels' single doors are opened by their subnets.

use super::{ADMIN_UI_PORT, PAIRING_PORT, Plan};

/// What ufw cannot do of the plan; said by `plan` and `apply`.
pub fn unsupported(p: &Plan) -> Vec<String> {
    let mut out = vec![
        "ufw cannot cap connections per source (its `limit` is a rate, not a count): 7742 and 7741 are not capped"
            .to_owned(),
        "ufw cannot match interface patterns: forwarding between tunnels is left to ufw's routed policy \
         (keep it deny) and tunnel isolation relies on ufw's default deny incoming"
            .to_owned(),
    ];
    if p.doors.iter().any(|d| d.dnat_to.is_some()) {
        out.push(
            "ufw cannot DNAT from its command line: the open pairing window's public_ip:7741 -> gate_bind_ip:7741 \
             is not installed (use the nft or iptables backend)"
                .to_owned(),
        );
    }
    out
}

/// `ufw` argument lists, in order. Requires ufw's default incoming policy to be deny (ufw's own default).
pub fn render(p: &Plan) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rule = |words: Vec<String>| {
        let mut r = words;
        r.extend(["comment".to_owned(), "cas-vpn".to_owned()]);
        out.push(r);
    };
    let s = |x: &str| x.to_owned();
    if let Some(iface) = &p.public_interface {
        for d in p.doors.iter().filter(|d| d.dnat_to.is_none()) {
            let sources: Vec<String> =
                if d.from.is_empty() { vec![s("any")] } else { d.from.iter().map(ToString::to_string).collect() };
            for src in sources {
                for port in &d.ports {
                    rule(vec![
                        s("allow"),
                        s("in"),
                        s("on"),
                        iface.to_string(),
                        s("proto"),
                        s("tcp"),
                        s("from"),
                        src.clone(),
                        s("to"),
                        s("any"),
                        s("port"),
                        port.to_string(),
                    ]);
                }
            }
        }
    }
    for (subnet, ip, port) in
        [(p.terminal_subnet, p.master_ip, PAIRING_PORT), (p.admin_subnet, p.admin_ip, ADMIN_UI_PORT)]
    {
        if let Some(subnet) = subnet {
            rule(vec![
                s("allow"),
                s("proto"),
                s("tcp"),
                s("from"),
                subnet.to_string(),
                s("to"),
                ip.to_string(),
                s("port"),
                port.to_string(),
            ]);
        }
    }
    out
}

/// The text `plan` prints for ufw: one command per line.
pub fn render_text(p: &Plan) -> String {
    let mut s = String::from("# cas-vpn firewall (ufw): generated; ufw's default incoming policy must be deny.\n");
    for r in render(p) {
        s.push_str("ufw ");
        s.push_str(&r.join(" "));
        s.push('\n');
    }
    for u in unsupported(p) {
        s.push_str(&format!("# NOT EXPRESSED: {u}\n"));
    }
    s
}
