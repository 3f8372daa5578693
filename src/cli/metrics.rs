//! `cas-vpn metrics token|revoke`: the bearer token a Prometheus scraper presents at `/metrics` (admin UI,
//! `admin_bind_ip:7777`). Printed once; the store keeps only its SHA-256.

use clap::Subcommand;

use super::{Json, print_json};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum MetricsCmd {
    /// Make a new metrics token (it replaces the previous one) and print it once.
    Token {
        #[command(flatten)]
        json: Json,
    },
    /// Revoke the metrics token: `/metrics` answers 401 to everyone until a new one is made.
    Revoke,
}

pub async fn run(ctx: Ctx, cmd: MetricsCmd) -> anyhow::Result<()> {
    match cmd {
        MetricsCmd::Token { json } => {
            let r = ops::metrics::new_token(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            println!("{}", r.token);
            eprintln!(
                "metrics token (shown once; the store keeps only its hash{}): put it in the scraper's \
                 `authorization: credentials_file`",
                if r.replaced > 0 { "; the previous token no longer works" } else { "" }
            );
        }
        MetricsCmd::Revoke => {
            let n = ops::metrics::revoke_tokens(&ctx).await?;
            println!("metrics tokens revoked: {n}");
        }
    }
    Ok(())
}
