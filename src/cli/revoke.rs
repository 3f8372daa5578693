//! `cas-vpn revoke --file NAMES`: reads the names and prints what `ops::bulk_revoke` did.

use std::path::Path;

use cas_pki::RevocationReason;

use super::{Json, print_json};
use crate::ops::{self, Ctx};

pub async fn revoke_file(
    ctx: Ctx,
    file: &Path,
    allow_revoked: bool,
    reason: RevocationReason,
    json: Json,
) -> anyhow::Result<()> {
    let names = if file == Path::new("-") {
        ops::terminal::read_names_from(std::io::stdin().lock(), Path::new("<stdin>"))?
    } else {
        ops::terminal::read_names(file)?
    };
    let r = ops::bulk_revoke::revoke_many(&ctx, &names, reason, allow_revoked).await?;
    if json.json {
        return print_json(&r);
    }
    print!("revoked {} credential(s)", r.revoked);
    if r.redone > 0 {
        print!(", ended the sessions of {} already revoked one(s) again", r.redone);
    }
    let crls: Vec<String> = r.crls.iter().map(|c| format!("{} CRL #{}", c.ca, c.crl_number)).collect();
    println!("; {} published", crls.join(", "));
    let freed: Vec<String> = r.credentials.iter().filter_map(|c| c.freed_port).map(|p| p.to_string()).collect();
    if !freed.is_empty() {
        println!("admin port(s) free again: {}", freed.join(", "));
    }
    print_kills(r.killed_sessions, &r.nodes, true);
    Ok(())
}

/// What a revocation's kills did: here (`None`: no `serve` runs here) and on each other node; a node that did not
/// acknowledge is a warning on stderr (the revocation stands, and that node ends the sessions when it catches up).
pub(super) fn print_kills(here: Option<usize>, nodes: &[ops::nodes::NodeAck], many: bool) {
    match here {
        Some(n) => println!("{n} live session(s) ended"),
        None => println!("no cas-vpn serve is running here: no live session to end"),
    }
    let (sessions, credentials) =
        if many { ("sessions", "credentials at their") } else { ("session", "credential at its") };
    for n in nodes {
        if n.acknowledged {
            println!("node {}: {} live session(s) ended", n.node, n.killed);
        } else {
            eprintln!(
                "warning: node {} did not acknowledge within {} s; it ends the {sessions} when it catches up, and \
                 refuses the {credentials} next connection",
                n.node,
                ops::nodes::ACK_DEADLINE.as_secs()
            );
        }
    }
}
