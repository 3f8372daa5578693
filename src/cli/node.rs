//! `cas-vpn node list | drain NAME | resume NAME`: the VPN nodes sharing this store (`ops::nodes`).

use clap::Subcommand;

use super::{Json, print_json};
use crate::domain::Name;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Every VPN node of this store: address, heartbeat, sessions, draining.
    List {
        #[command(flatten)]
        json: Json,
    },
    /// Send a node's terminals to the other nodes and turn new ones away, until `node resume` (PostgreSQL).
    Drain {
        name: Name,
        #[command(flatten)]
        json: Json,
    },
    /// End a node's drain: it takes terminals again.
    Resume {
        name: Name,
        #[command(flatten)]
        json: Json,
    },
}

pub async fn run(ctx: Ctx, cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::List { json } => {
            let r = ops::nodes::list(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            if r.nodes.is_empty() {
                println!("no node has run `serve vpn` on this store yet ({})", r.backend);
                return Ok(());
            }
            println!("{:<20} {:<24} {:<6} {:<9} {:>8}  last seen", "NODE", "ADDRESS", "LIVE", "STATE", "SESSIONS");
            for n in &r.nodes {
                let state = if n.draining { "draining" } else { "serving" };
                let live = if n.live { "yes" } else { "no" };
                println!(
                    "{:<20} {:<24} {:<6} {:<9} {:>8}  {}",
                    n.name, n.address, live, state, n.sessions, n.last_seen
                );
            }
        }
        NodeCmd::Drain { name, json } => {
            let r = ops::nodes::drain(&ctx, &name).await?;
            if json.json {
                return print_json(&r);
            }
            if !r.acknowledged {
                eprintln!("warning: node {} did not acknowledge within the deadline (is it running?)", r.node);
            }
            println!("node {} is draining: {} terminal session(s) sent elsewhere, {} left", r.node, r.moved, r.left);
        }
        NodeCmd::Resume { name, json } => {
            let r = ops::nodes::resume(&ctx, &name).await?;
            if json.json {
                return print_json(&r);
            }
            println!("node {} takes terminals again", r.node);
        }
    }
    Ok(())
}
