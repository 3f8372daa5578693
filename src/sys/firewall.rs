//! Runs the firewall tools (nft, iptables-restore/iptables, ip6tables, ufw) for `serve net` and `cas-vpn
//! firewall`, inside whatever network namespace the process runs in. Scripts come rendered from
//! `crate::firewall`; nothing here decides a rule.

use std::net::Ipv4Addr;

use super::cmd::{CmdError, run, run_with_input};

/// The interface holding `ip` (e.g. the public interface, or the one an SSH session came in on), from
/// `ip -4 -o addr show`; `None` when no interface holds it (NAT in front of the host) or `ip` fails.
pub fn interface_holding(ip: Ipv4Addr) -> Option<String> {
    let out = run("ip", ["-4", "-o", "addr", "show"]).ok()?;
    out.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (_, name, _, cidr) = (w.next()?, w.next()?, w.next()?, w.next()?);
        let addr = cidr.split('/').next()?;
        (addr.parse::<Ipv4Addr>().ok()? == ip).then(|| name.split('@').next().unwrap_or(name).to_owned())
    })
}

/// Runs an nft script as one transaction (`nft -f -`).
pub fn nft_apply(script: &str) -> Result<(), CmdError> {
    run_with_input("nft", ["-f", "-"], Some(script.as_bytes())).map(drop)
}

/// `nft -t list table inet NAME` (terse: the dynamic sets' contents, which change with traffic, are left out);
/// `None` when the table does not exist.
pub fn nft_list(table: &str) -> Result<Option<String>, CmdError> {
    match run("nft", ["-t", "list", "table", "inet", table]) {
        Ok(out) => Ok(Some(out)),
        Err(CmdError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

fn iptables(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

/// Loads `text` with `iptables-restore --noflush` (or ip6tables-restore): one commit per table; chains it
/// declares are emptied first, all others are left alone.
pub fn iptables_restore(v6: bool, text: &str) -> Result<(), CmdError> {
    let prog = if v6 { "ip6tables-restore" } else { "iptables-restore" };
    run_with_input(prog, ["--noflush"], Some(text.as_bytes())).map(drop)
}

/// Makes sure `table`'s built-in `chain` jumps to `target` (inserted at the top, once).
pub fn iptables_ensure_jump(v6: bool, table: &str, chain: &str, target: &str) -> Result<(), CmdError> {
    if run(iptables(v6), ["-w", "-t", table, "-C", chain, "-j", target]).is_ok() {
        return Ok(());
    }
    run(iptables(v6), ["-w", "-t", table, "-I", chain, "1", "-j", target]).map(drop)
}

/// The lines of `iptables -t TABLE -S` (every chain and rule of the table, in iptables' own normal form).
pub fn iptables_list_table(v6: bool, table: &str) -> Result<String, CmdError> {
    run(iptables(v6), ["-w", "-t", table, "-S"])
}

/// Removes the jump and empties and deletes `target` (each step may find nothing to do).
pub fn iptables_remove(v6: bool, table: &str, chain: &str, target: &str) {
    while run(iptables(v6), ["-w", "-t", table, "-D", chain, "-j", target]).is_ok() {}
    let _ = run(iptables(v6), ["-w", "-t", table, "-F", target]);
    let _ = run(iptables(v6), ["-w", "-t", table, "-X", target]);
}

/// Empties and deletes one of our chains that has no jump from a built-in chain.
pub fn iptables_drop_chain(v6: bool, table: &str, target: &str) {
    let _ = run(iptables(v6), ["-w", "-t", table, "-F", target]);
    let _ = run(iptables(v6), ["-w", "-t", table, "-X", target]);
}

/// Runs `ufw ARGS…` (non-interactive).
pub fn ufw(args: &[String]) -> Result<String, CmdError> {
    run("ufw", args)
}
