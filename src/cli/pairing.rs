//! `cas-vpn pairing open|close|status|approve|reject`, `cas-vpn unban-ip`, `cas-vpn agent pair|run`.

use std::net::IpAddr;

use clap::Subcommand;

use super::{Json, print_json};
use crate::domain::{Dur, Name};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum PairingCmd {
    /// Open the pairing window (the gate pairs only while it is open).
    Open {
        /// How long (e.g. 15m, 2h); default 15m.
        #[arg(long = "for", value_name = "DUR")]
        duration: Option<Dur>,
        #[command(flatten)]
        json: Json,
    },
    /// Close the pairing window now.
    Close {
        #[command(flatten)]
        json: Json,
    },
    /// The window, pairings waiting for approval, banned addresses.
    Status {
        #[command(flatten)]
        json: Json,
    },
    /// Approve a waiting pairing after comparing its code with the one the terminal shows.
    Approve {
        id: String,
        #[arg(long)]
        code: String,
        /// Terminal name (default: the name the CSR asks for, else the terminal's serial).
        #[arg(long)]
        name: Option<Name>,
        #[command(flatten)]
        json: Json,
    },
    /// Reject a waiting pairing.
    Reject {
        id: String,
        #[command(flatten)]
        json: Json,
    },
}

pub async fn pairing(ctx: Ctx, cmd: PairingCmd) -> anyhow::Result<()> {
    match cmd {
        PairingCmd::Open { duration, json } => {
            let r = ops::pairing::open_window(&ctx, duration).await?;
            if json.json {
                return print_json(&r);
            }
            println!("pairing window open until {}", r.open_until.as_deref().unwrap_or("-"));
        }
        PairingCmd::Close { json } => {
            let r = ops::pairing::close_window(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            println!("pairing window closed");
        }
        PairingCmd::Status { json } => {
            let r = ops::pairing::status(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            match (&r.window.open_until, r.window.remaining_secs) {
                (Some(u), Some(s)) => println!("window:   open until {u} ({s} s left)"),
                _ => println!("window:   closed"),
            }
            println!("gate pin: {}", r.gate_pin.as_deref().unwrap_or("(no gate certificate)"));
            if r.pending.is_empty() {
                println!("no pairing waits for approval");
            } else {
                println!("{:<32} {:<9} {:<20} {:<16} EXPIRES", "PAIRING ID", "CODE", "NAME/SERIAL", "FROM");
                for p in &r.pending {
                    let who = p.common_name.as_deref().or(p.hw_serial.as_deref()).unwrap_or("-");
                    println!("{:<32} {:<9} {:<20} {:<16} {}", p.pairing_id, p.code, who, p.source_ip, p.expires_at);
                }
            }
            for b in &r.banned {
                println!("banned:   {} until {}", b.ip, b.until);
            }
        }
        PairingCmd::Approve { id, code, name, json } => {
            let r = ops::pairing::approve(&ctx, &id, &code, name).await?;
            if json.json {
                return print_json(&r);
            }
            let ip = r.tunnel_ip.as_ref().map_or(String::new(), |ip| format!(", tunnel address {ip}"));
            if r.already_approved {
                println!("pairing {} was already approved: terminal {}{ip}", r.pairing_id, r.terminal);
            } else {
                println!(
                    "approved: terminal {} (certificate {}){ip}; it gets its configuration at its next poll",
                    r.terminal, r.serial
                );
            }
        }
        PairingCmd::Reject { id, json } => {
            let r = ops::pairing::reject(&ctx, &id).await?;
            if json.json {
                return print_json(&r);
            }
            if r.rejected {
                println!("pairing {} rejected", r.pairing_id);
            } else {
                println!("pairing {} was no longer pending; nothing changed", r.pairing_id);
            }
        }
    }
    Ok(())
}

pub async fn unban_ip(ctx: Ctx, ip: IpAddr, json: Json) -> anyhow::Result<()> {
    let r = ops::pairing::unban(&ctx, ip).await?;
    if json.json {
        return print_json(&r);
    }
    if r.was_listed {
        println!("{}: ban lifted and failures forgotten", r.ip);
    } else {
        println!("{}: was not banned", r.ip);
    }
    Ok(())
}
