//! `cas-vpn web-user add|list|disable|enable|reset-totp NAME`: accounts of the admin web UI from a shell (the
//! first one is made here: there is nobody yet to make it in the UI).

use clap::Subcommand;

use super::{Json, print_json};
use crate::domain::Name;
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum WebUserCmd {
    /// Add a user; prints a one-time setup link (24 h) where they choose a password and set up TOTP.
    Add {
        name: Name,
        /// The user exists: give them a new setup link (their password and authenticator start afresh).
        #[arg(long)]
        renew: bool,
        #[command(flatten)]
        json: Json,
    },
    /// List the users.
    List {
        #[command(flatten)]
        json: Json,
    },
    /// Disable a user: their sessions and API tokens end at once.
    Disable { name: Name },
    /// Enable a disabled user again.
    Enable { name: Name },
    /// Take a user's authenticator away (a lost phone): their next login sets up a new one.
    ResetTotp { name: Name },
}

pub async fn run(ctx: Ctx, cmd: WebUserCmd) -> anyhow::Result<()> {
    match cmd {
        WebUserCmd::Add { name, renew, json } => {
            let a = ops::web_users::add(&ctx, &name, renew).await?;
            if json.json {
                return print_json(&a);
            }
            println!("web user {}: one-time setup link, valid until {}:", a.name, a.expires_at);
            println!("{}", a.setup_url);
            println!("(open it through an admin VPN tunnel; `cas-vpn admin-vpn issue NAME` makes one)");
        }
        WebUserCmd::List { json } => {
            let rows = ops::web_users::list(&ctx).await?;
            if json.json {
                return print_json(&rows);
            }
            println!("{:<24} {:<14} {:<5} CREATED", "NAME", "STATE", "TOTP");
            for r in rows {
                println!("{:<24} {:<14} {:<5} {}", r.name, r.state, if r.totp { "yes" } else { "no" }, r.created_at);
            }
        }
        WebUserCmd::Disable { name } => say(ops::web_users::set_disabled(&ctx, &name, true).await?, "disabled"),
        WebUserCmd::Enable { name } => say(ops::web_users::set_disabled(&ctx, &name, false).await?, "enabled"),
        WebUserCmd::ResetTotp { name } => {
            let r = ops::web_users::reset_totp(&ctx, &name).await?;
            println!("{}: authenticator reset; their next login sets up a new one", r.name);
        }
    }
    Ok(())
}

fn say(r: ops::web_users::Changed, what: &str) {
    if r.changed {
        println!("{}: {what}", r.name);
    } else {
        println!("{}: already {what}", r.name);
    }
}
