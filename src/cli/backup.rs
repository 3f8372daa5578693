//! `cas-vpn backup FILE` and `cas-vpn restore FILE`: the passphrase (from `CAS_VPN_BACKUP_PASSPHRASE`, or asked on
//! the terminal: twice for a backup) and the short report. The passphrase is never an argument: argv is
//! world-readable in `/proc`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Json, print_json};
use crate::ops::backup::{self, PASSPHRASE_ENV, Passphrase};
use crate::ops::{self, Ctx};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write (replaced atomically, mode 0600). Passphrase: env CAS_VPN_BACKUP_PASSPHRASE, or
    /// asked on the terminal.
    pub file: PathBuf,
    #[command(flatten)]
    pub json: Json,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file to restore onto --root, which must be absent or empty (and so must the store of
    /// --database-url).
    pub file: PathBuf,
    #[command(flatten)]
    pub json: Json,
}

/// The passphrase from the environment, or typed on the terminal (`confirm`: asked twice, both must match).
fn passphrase(confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(p) = Passphrase::from_env() {
        return Ok(p?);
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| anyhow::anyhow!("no passphrase: set {PASSPHRASE_ENV} or run this on a terminal ({e})"))
    };
    let first = ask("backup passphrase: ")?;
    if confirm {
        let again = ask("the same passphrase again: ")?;
        if again != first {
            anyhow::bail!("the two passphrases differ; nothing was written");
        }
    }
    Ok(Passphrase::new(first)?)
}

pub async fn backup(root: &Path, db: Option<&str>, args: BackupArgs) -> anyhow::Result<()> {
    let pass = passphrase(true)?;
    // A broken configuration file must not stand in the way of a backup (it is copied as it is).
    let (ctx, warnings) = Ctx::open_lenient(root, db).await?;
    for w in warnings {
        eprintln!("cas-vpn: warning: {w}");
    }
    let r = ops::backup::backup(&ctx, &args.file, &pass).await?;
    if args.json.json {
        return print_json(&r);
    }
    let rows: u64 = r.tables.iter().map(|t| t.rows).sum();
    println!("backup {} written to {} ({} bytes)", r.id, r.file, r.bytes);
    println!(
        "store: {} ({} tables, {rows} rows, migration {}); files: {} from config/ and pki/",
        r.backend,
        r.tables.len(),
        r.migration,
        r.files
    );
    println!("keep the passphrase apart from the file: without it the backup cannot be opened");
    Ok(())
}

pub async fn restore(root: &Path, db: Option<&str>, args: RestoreArgs) -> anyhow::Result<()> {
    let pass = passphrase(false)?;
    let r = backup::restore(root, db, &args.file, &pass).await?;
    if args.json.json {
        return print_json(&r);
    }
    let rows: u64 = r.tables.iter().map(|t| t.rows).sum();
    if r.finished_earlier_restore {
        println!("the store already held this backup (an interrupted restore): its files are now in place");
    }
    println!(
        "restored backup {} (made {} by cas-vpn {}) onto {}",
        r.backup_id, r.backup_created_at, r.cas_vpn_version, r.root
    );
    println!("store: {} ({} tables, {rows} rows); files: {}", r.backend, r.tables.len(), r.files);
    if r.crls_republished {
        println!("CRLs made afresh from the restored store");
    }
    for w in &r.warnings {
        eprintln!("cas-vpn: warning: {w}");
    }
    println!("start it with `cas-vpn serve` (live sessions, bans and web sessions start empty)");
    Ok(())
}
