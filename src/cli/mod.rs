//! The command line. The only module (with its submodules) that prints: every command calls an `ops` function
//! and renders its report as text or, with `--json`, as a stable JSON shape documented in the README.

pub mod audit;
pub mod backup;
pub mod metrics;
pub mod node;
pub mod pairing;
pub mod revoke;
pub mod web_user;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use cas_pki::{KeyType, RevocationReason};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::domain::{Dur, Name};
use crate::ops::{self, Ctx};

#[derive(Debug, Parser)]
#[command(name = "cas-vpn", version, about = "OpenVPN orchestrator for Bitcoin ATM fleets (CAS-compatible)")]
pub struct Cli {
    /// Installation root (config/, pki/, vpn/, db/).
    #[arg(long, global = true, env = "CAS_VPN_ROOT", default_value = "/batm")]
    pub root: PathBuf,
    /// PostgreSQL URL (postgres://…); the default is SQLite in <root>/db/.
    #[arg(long, global = true, env = "CAS_VPN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Args)]
pub struct Json {
    /// Print a stable JSON shape instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create config files, PKI and store where missing (idempotent).
    Init {
        #[arg(long)]
        public_ip: Option<Ipv4Addr>,
        #[arg(long)]
        key_type: Option<KeyType>,
        /// Open the web UI on public_ip:7777 until the first admin VPN session, and make the first web user
        /// (`admin`) with a one-time setup link there.
        #[arg(long)]
        web_bootstrap: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Run a service (net, signer, vpn, gate, master), or all of them as child processes under their own users.
    Serve {
        #[arg(value_enum, default_value = "all")]
        what: crate::daemon::Service,
        /// This VPN node's name when several nodes share one PostgreSQL store (default: `node` in config/vpn,
        /// else the host name).
        #[arg(long)]
        node: Option<Name>,
    },
    /// What is configured, stored, running and about to expire.
    Status {
        #[command(flatten)]
        json: Json,
    },
    /// Checks tools, modes, expiry and the running service; exit 1 when a check fails.
    Doctor {
        #[command(flatten)]
        json: Json,
    },
    /// Terminals (ATMs).
    #[command(subcommand)]
    Terminal(TerminalCmd),
    /// Administration VPN credentials.
    #[command(subcommand, name = "admin-vpn")]
    AdminVpn(AdminCmd),
    /// Accounts of the admin web UI.
    #[command(subcommand, name = "web-user")]
    WebUser(web_user::WebUserCmd),
    /// VPN nodes sharing this store (several need PostgreSQL).
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// The Prometheus scrape token of `/metrics` (admin UI).
    #[command(subcommand)]
    Metrics(metrics::MetricsCmd),
    /// End a terminal or admin credential (and its live session), or every one named in --file.
    Revoke {
        #[arg(required_unless_present = "file")]
        name: Option<Name>,
        /// One name per line (blank lines and `#` comments skipped; `-` reads stdin): all are revoked in one
        /// transaction with one CRL, or none when a name is unknown or already revoked.
        #[arg(long, conflicts_with = "name", value_name = "NAMES")]
        file: Option<PathBuf>,
        /// With --file: already revoked names are not an error; their live sessions are ended again.
        #[arg(long, requires = "file")]
        allow_revoked: bool,
        #[arg(long, default_value = "unspecified")]
        reason: RevocationReason,
        #[command(flatten)]
        json: Json,
    },
    /// Make fresh CRLs now and print them (or write them to --out).
    Crl {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The pairing window and approval-flow decisions.
    #[command(subcommand)]
    Pairing(pairing::PairingCmd),
    /// Lift the pairing ban of an address (5 failures ban it for 15 minutes).
    UnbanIp {
        ip: std::net::IpAddr,
        #[command(flatten)]
        json: Json,
    },
    /// The reference terminal agent: pair with the gate, then keep the VPN and master heartbeat up.
    #[command(subcommand)]
    Agent(pairing::AgentCmd),
    /// The firewall `serve net` keeps in force: show the rules, install them, compare with what is installed.
    #[command(subcommand)]
    Firewall(FirewallCmd),
    /// The audit trail, oldest first: who did what to which credential, and from where.
    Audit(audit::AuditArgs),
    /// Write the store, config/ and pki/ into one passphrase-encrypted file (while serve runs).
    Backup(backup::BackupArgs),
    /// Put a backup onto an empty root (and an empty store with --database-url).
    Restore(backup::RestoreArgs),
}

#[derive(Debug, Subcommand)]
pub enum FirewallCmd {
    /// Print the exact rules and a diff against what is installed.
    Plan {
        /// Render for this backend instead of config/firewall's.
        #[arg(long)]
        backend: Option<crate::config::Backend>,
        #[command(flatten)]
        json: Json,
    },
    /// Install the rules now (refused when they would cut the SSH session this runs in).
    Apply {
        #[arg(long)]
        backend: Option<crate::config::Backend>,
        /// Put the previous rules back after DUR unless `cas-vpn firewall confirm` runs first (waits until then).
        #[arg(long, value_name = "DUR")]
        confirm: Option<Dur>,
        #[command(flatten)]
        json: Json,
    },
    /// Keep the rules of a pending `apply --confirm`.
    Confirm {
        #[command(flatten)]
        json: Json,
    },
    /// Installed against planned (drift), the pairing window and what the Internet can reach.
    Status {
        #[arg(long)]
        backend: Option<crate::config::Backend>,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Create a terminal and print its one-time pairing token.
    Add {
        name: Name,
        /// Token lifetime (default: token_ttl from config/vpn, 24h).
        #[arg(long)]
        expires: Option<Dur>,
        /// Make the key and the whole .ovpn on the server (delivered once by the gate).
        #[arg(long)]
        server_keygen: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Create many terminals from a CSV file (one name per line), all or none.
    Import {
        #[arg(required_unless_present = "resume")]
        file: Option<PathBuf>,
        #[arg(long)]
        server_keygen: bool,
        /// Write tokens.csv (and .ovpn files with --server-keygen) here, 0600.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Finish an interrupted import (publish a committed one, roll back one killed before its commit).
        #[arg(long, conflicts_with_all = ["file", "server_keygen", "out"])]
        resume: bool,
        #[command(flatten)]
        json: Json,
    },
    List {
        /// Include revoked terminals.
        #[arg(long)]
        all: bool,
        /// Only terminals in this health: healthy, agent_silent, offline, never_paired or revoked.
        #[arg(long, value_name = "HEALTH")]
        health: Option<crate::domain::Health>,
        #[command(flatten)]
        json: Json,
    },
    Show {
        name: Name,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Issue an admin credential; writes the .ovpn (0600) and prints its port.
    Issue {
        user: Name,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Let a suspended admin credential (its session was taken over repeatedly from different addresses) connect
    /// again, once you know only its owner holds it; or revoke and re-issue it.
    Resume {
        user: Name,
        #[command(flatten)]
        json: Json,
    },
}

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Parses argv; usage errors are reduced to one line on stderr and exit 2.
impl Cmd {
    /// `serve` and `agent run`: they live on sockets (where a closed peer is an error to handle, not a signal to
    /// die of) rather than on a reader of their stdout.
    pub fn is_long_running(&self) -> bool {
        matches!(self, Cmd::Serve { .. } | Cmd::Agent(pairing::AgentCmd::Run { .. }))
    }
}

pub fn parse() -> Result<Cli, i32> {
    match Cli::try_parse() {
        Ok(c) => Ok(c),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(EXIT_OK)
        }
        Err(e) => {
            eprintln!("cas-vpn: {}", usage_error_line(&e));
            Err(EXIT_USAGE)
        }
    }
}

/// One line for a usage error. A bad value is described by our own validation error (which shows the value
/// escaped and cut short), never by echoing the raw argument: it may hold a newline or a secret.
fn usage_error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ErrorKind};
    if e.kind() == ErrorKind::ValueValidation {
        let arg = e.get(ContextKind::InvalidArg).map(|a| a.to_string()).unwrap_or_default();
        let why = std::error::Error::source(e).map_or_else(|| "invalid value".to_owned(), |s| s.to_string());
        return format!("{arg}: {why}");
    }
    let text = e.render().to_string();
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let mut first = lines.next().unwrap_or("bad usage").trim_start_matches("error: ").to_owned();
    // "the following required arguments were not provided:" lists them on the next lines: keep them on this one.
    if first.ends_with(':') {
        let listed: Vec<&str> = lines.take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
        first = format!("{first} {}", listed.join(", "));
    }
    first.chars().flat_map(char::escape_debug).collect::<String>().replace("\\'", "'")
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Runs one command; errors come back for `main` to print on one line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root.clone();
    let db = cli.database_url.as_deref();
    match cli.cmd {
        Cmd::Init { public_ip, key_type, web_bootstrap, json } => {
            let r = ops::init::init(&root, db, ops::init::InitOptions { public_ip, key_type, web_bootstrap }).await?;
            if json.json {
                return print_json(&r);
            }
            for s in &r.steps {
                println!("{:<8} {}", format!("{:?}", s.action).to_lowercase(), s.what);
            }
            if r.changed {
                println!("cas-vpn is initialised in {}", r.root);
            } else {
                println!("nothing to do: {} was already initialised", r.root);
            }
            if let Some(fp) = &r.web_fingerprint {
                println!("web UI certificate (SHA-256): {fp}");
            }
            if let Some(url) = &r.bootstrap_url {
                println!("BOOTSTRAP MODE: the web UI answers on the Internet until the first admin VPN session.");
                println!("first web user `admin`, one-time setup link (24 h): {url}");
            }
        }
        Cmd::Serve { what, node } => crate::daemon::serve(&root, db, what, node).await?,
        Cmd::Status { json } => {
            let ctx = Ctx::open(&root, db).await?;
            let s = ops::status::status(&ctx).await?;
            if json.json {
                return print_json(&s);
            }
            print_status(&s);
        }
        Cmd::Doctor { json } => {
            // A store that does not open and a configuration file that does not parse are findings, not errors.
            let (ctx, warnings, store_error) = Ctx::open_for_doctor(&root, db).await?;
            let r = ops::doctor::doctor(&ctx, store_error.as_deref(), &warnings).await?;
            if json.json {
                print_json(&r)?;
            } else {
                for c in &r.checks {
                    let level = format!("{:?}", c.level).to_uppercase();
                    println!("{level:<7} {:<36} {}", c.check, c.detail);
                    if let Some(fix) = &c.fix {
                        println!("{:<7} {:<36} fix: {fix}", "", "");
                    }
                }
            }
            if !r.healthy {
                anyhow::bail!("doctor found problems (FAIL lines above)");
            }
        }
        // Reading the fleet must not wait for an unrelated typo to be fixed either.
        Cmd::Terminal(t @ (TerminalCmd::List { .. } | TerminalCmd::Show { .. })) => {
            terminal(open_lenient(&root, db).await?, t).await?
        }
        Cmd::Terminal(t) => terminal(Ctx::open(&root, db).await?, t).await?,
        Cmd::WebUser(w) => web_user::run(Ctx::open(&root, db).await?, w).await?,
        Cmd::Metrics(m) => metrics::run(Ctx::open(&root, db).await?, m).await?,
        Cmd::AdminVpn(a) => {
            let ctx = Ctx::open(&root, db).await?;
            match a {
                AdminCmd::Issue { user, out, json } => {
                    let r = ops::admin::issue(&ctx, &user, out.as_deref()).await?;
                    if json.json {
                        return print_json(&r);
                    }
                    println!(
                        "{}: port {}, tunnel address {}, profile written to {}",
                        r.name, r.port, r.tunnel_ip, r.profile
                    );
                    println!("valid until {}", r.not_after);
                }
                AdminCmd::List { all, json } => {
                    let rows = ops::admin::list(&ctx, all).await?;
                    if json.json {
                        return print_json(&rows);
                    }
                    println!("{:<24} {:>6} {:<9} CREATED", "NAME", "PORT", "STATE");
                    for r in rows {
                        let port = r.port.map_or("-".into(), |p| p.to_string());
                        println!("{:<24} {:>6} {:<9} {}", r.name, port, r.state, r.created_at);
                    }
                }
                AdminCmd::Resume { user, json } => {
                    let r = ops::admin::resume(&ctx, &user).await?;
                    if json.json {
                        return print_json(&r);
                    }
                    if r.resumed {
                        println!("{} may connect again", r.name);
                    } else {
                        println!("{} was not suspended; nothing to do", r.name);
                    }
                }
            }
        }
        Cmd::Revoke { name: None, file: Some(file), allow_revoked, reason, json } => {
            // Invariant 14: a broken configuration file never blocks a revocation.
            revoke::revoke_file(open_lenient(&root, db).await?, &file, allow_revoked, reason, json).await?;
        }
        Cmd::Revoke { name: None, file: None, .. } => anyhow::bail!("a NAME or --file is required"),
        Cmd::Revoke { name: Some(name), reason, json, .. } => {
            // Invariant 14: a broken configuration file never blocks a revocation.
            let ctx = open_lenient(&root, db).await?;
            let r = ops::revoke::revoke(&ctx, &name, reason).await?;
            if json.json {
                return print_json(&r);
            }
            if r.already_revoked {
                println!(
                    "{} {} is already revoked (since {}); CRL #{} republished",
                    r.kind, r.name, r.revoked_at, r.crl_number
                );
            } else {
                let certs = match r.serials.len() {
                    0 => "no certificate issued yet".to_owned(),
                    n => format!("{n} certificate(s)"),
                };
                println!("revoked {} {} ({certs}); CRL #{} published", r.kind, r.name, r.crl_number);
                if let Some(p) = r.freed_port {
                    println!("admin port {p} is free again");
                }
            }
            revoke::print_kills(r.killed_sessions, &r.nodes, false);
        }
        Cmd::Pairing(p) => pairing::pairing(Ctx::open(&root, db).await?, p).await?,
        Cmd::UnbanIp { ip, json } => pairing::unban_ip(Ctx::open(&root, db).await?, ip, json).await?,
        Cmd::Agent(a) => pairing::agent(a).await?,
        Cmd::Firewall(f) => firewall(Ctx::open(&root, db).await?, f).await?,
        // Reading the trail must not wait for an unrelated typo in a configuration file.
        Cmd::Audit(a) => audit::run(open_lenient(&root, db).await?, a).await?,
        Cmd::Node(n) => node::run(open_lenient(&root, db).await?, n).await?,
        Cmd::Backup(b) => backup::backup(&root, db, b).await?,
        Cmd::Restore(r) => backup::restore(&root, db, r).await?,
        Cmd::Crl { out } => {
            let ctx = open_lenient(&root, db).await?;
            let mut pem = String::new();
            for kind in [crate::domain::Kind::Terminal, crate::domain::Kind::Admin] {
                let r = ops::crl::publish(&ctx, kind).await?;
                eprintln!("{} CRL #{}: {} revoked, next update {}", r.ca, r.crl_number, r.revoked, r.next_update);
                pem.push_str(&r.pem);
            }
            match out {
                Some(path) => crate::sys::fs::write_atomic(&path, pem.as_bytes(), 0o644)?,
                None => print!("{pem}"),
            }
        }
    }
    Ok(())
}

/// Opens the installation for a command that must work with a broken configuration file; what was replaced by
/// defaults is said on stderr, one line per file.
async fn open_lenient(root: &std::path::Path, db: Option<&str>) -> anyhow::Result<Ctx> {
    let (ctx, warnings) = Ctx::open_lenient(root, db).await?;
    for w in warnings {
        eprintln!("cas-vpn: warning: {w}");
    }
    Ok(ctx)
}

async fn terminal(ctx: Ctx, cmd: TerminalCmd) -> anyhow::Result<()> {
    match cmd {
        TerminalCmd::Add { name, expires, server_keygen, json } => {
            let opts = ops::terminal::AddOptions { expires, server_keygen };
            let t = ops::terminal::add(&ctx, name, &opts).await?;
            if json.json {
                return print_json(&t);
            }
            println!("{}", t.token);
            eprintln!(
                "terminal {} created{}; pairing token above (valid until {}, shown only once)",
                t.name,
                t.tunnel_ip.as_ref().map_or(String::new(), |ip| format!(" with tunnel address {ip}")),
                t.token_expires_at
            );
        }
        TerminalCmd::Import { resume: true, json, .. } => {
            let r = ops::import::resume(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            for id in &r.rolled_back {
                eprintln!("import {id} was killed before its store commit: rolled back (its staged files deleted)");
            }
            for f in &r.finished {
                let dir = f.report.out_dir.as_deref().unwrap_or("?");
                eprintln!(
                    "import {}: {} terminals published; tokens in {dir}/tokens.csv",
                    f.import_id, f.report.created
                );
            }
            if r.rolled_back.is_empty() && r.finished.is_empty() {
                eprintln!("no unfinished import");
            }
        }
        TerminalCmd::Import { file, server_keygen, out, json, .. } => {
            let file = file.ok_or_else(|| anyhow::anyhow!("a CSV file (or --resume) is required"))?;
            let names = ops::terminal::read_names(&file)?;
            let bar = indicatif::ProgressBar::new(names.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} terminals {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let opts = ops::terminal::AddOptions { expires: None, server_keygen };
            let r = ops::terminal::import(&ctx, &file, &opts, out.as_deref(), &Bar(bar.clone())).await;
            bar.finish_and_clear();
            let r = r?;
            if json.json {
                return print_json(&r);
            }
            if let Some(id) = &r.resumed {
                eprintln!("finished the interrupted import {id} of these names instead of starting a new one");
            }
            match &r.out_dir {
                Some(d) => eprintln!("{} terminals created; tokens in {d}/tokens.csv", r.created),
                None => {
                    println!("name,token,expires_at");
                    for t in &r.terminals {
                        println!("{},{},{}", t.name, t.token, t.token_expires_at);
                    }
                    eprintln!("{} terminals created", r.created);
                }
            }
        }
        TerminalCmd::List { all, health, json } => {
            // Asking for revoked terminals includes them.
            let all = all || health == Some(crate::domain::Health::Revoked);
            let rows: Vec<_> = ops::terminal::list(&ctx, all)
                .await?
                .into_iter()
                .filter(|r| health.is_none_or(|h| r.health == h))
                .collect();
            if json.json {
                return print_json(&rows);
            }
            println!(
                "{:<24} {:<8} {:<23} {:<20} {:<16} {:<10} LAST SEEN",
                "NAME", "STATE", "HEALTH", "HEALTH SINCE", "TUNNEL IP", "VERSION"
            );
            for r in rows {
                println!(
                    "{:<24} {:<8} {:<23} {:<20} {:<16} {:<10} {}",
                    r.name,
                    r.state,
                    r.health.label(),
                    r.health_since.as_deref().unwrap_or("-"),
                    r.tunnel_ip.as_deref().unwrap_or("-"),
                    r.version.as_deref().unwrap_or("-"),
                    r.last_seen.as_deref().unwrap_or("-")
                );
            }
        }
        TerminalCmd::Show { name, json } => {
            let d = ops::terminal::show(&ctx, &name).await?;
            if json.json {
                return print_json(&d);
            }
            println!("name:        {}", d.row.name);
            println!("state:       {}", d.row.state);
            println!(
                "health:      {}{}",
                d.row.health.label(),
                d.row.health_since.as_deref().map(|t| format!(" since {t}")).unwrap_or_default()
            );
            println!("tunnel ip:   {}", d.row.tunnel_ip.as_deref().unwrap_or("-"));
            println!("instance:    {}", d.row.home_instance.map_or("-".into(), |i| format!("terminal-{i}")));
            println!("created:     {}", d.row.created_at);
            println!("paired:      {}", d.row.paired_at.as_deref().unwrap_or("-"));
            println!("last seen:   {}", d.row.last_seen.as_deref().unwrap_or("-"));
            if let Some(r) = &d.row.revoked_at {
                println!("revoked:     {r} ({})", d.revoke_reason.as_deref().unwrap_or("unspecified"));
            }
            for c in &d.certificates {
                let state = c.revoked_at.as_ref().map_or("valid".to_owned(), |r| format!("revoked {r}"));
                println!("certificate: {} until {} ({state})", c.serial, c.not_after);
            }
        }
    }
    Ok(())
}

async fn firewall(ctx: Ctx, cmd: FirewallCmd) -> anyhow::Result<()> {
    match cmd {
        FirewallCmd::Plan { backend, json } => {
            let r = ops::firewall::plan(&ctx, backend).await?;
            if json.json {
                return print_json(&r);
            }
            print!("{}", r.rules);
            for w in &r.warnings {
                println!("# WARNING: {w}");
            }
            println!("# plan {} ({}); {}", r.plan, r.backend, r.drift.summary());
            if r.diff.is_empty() {
                println!("# no difference with the installed script");
            } else {
                println!("# diff against the installed script:");
                for l in &r.diff {
                    println!("{l}");
                }
            }
        }
        FirewallCmd::Status { backend, json } => {
            let r = ops::firewall::plan(&ctx, backend).await?;
            if json.json {
                return print_json(&r);
            }
            println!(
                "backend:  {}{}",
                r.backend,
                if r.managed { "" } else { " (manage=no: serve net leaves it alone)" }
            );
            println!("plan:     {}", r.plan);
            println!("drift:    {}", r.drift.summary());
            if r.held {
                println!("held:     an unconfirmed `firewall apply --confirm` pauses serve net's installs");
            }
            match &r.window {
                crate::firewall::Window::Open { until, from } => {
                    let who = if from.is_empty() {
                        "everyone".to_owned()
                    } else {
                        from.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    };
                    println!("window:   open until {} for {who}", ops::rfc3339(*until));
                }
                crate::firewall::Window::Closed => println!("window:   closed (7741 is not reachable)"),
            }
            println!("exposed to the Internet:");
            for e in &r.exposure {
                println!("  {e}");
            }
            for w in &r.warnings {
                println!("WARNING: {w}");
            }
            if !r.drift.in_force() {
                anyhow::bail!("the installed firewall is not the plan: {}", r.drift.summary());
            }
        }
        FirewallCmd::Apply { backend, confirm, json } => {
            let ssh = std::env::var("SSH_CONNECTION").ok();
            let r = ops::firewall::apply(&ctx, backend, ssh.as_deref(), confirm.map(|d| d.0)).await?;
            if json.json {
                print_json(&r)?;
            } else {
                for w in &r.warnings {
                    eprintln!("WARNING: {w}");
                }
                let what = if r.changed { "installed" } else { "already in force" };
                println!("firewall plan {} {what} ({})", r.plan, r.backend);
            }
            if let Some(by) = &r.confirm_by {
                eprintln!("run `cas-vpn firewall confirm` before {by}, or the previous rules come back");
                // A lost SSH session must not stop the rollback: the terminal going away is exactly the case.
                crate::sys::process::ignore_hangup();
                if !ops::firewall::await_confirmation(&ctx).await? {
                    anyhow::bail!(
                        "not confirmed in time: the previous rules are back (serve net holds off until the next `firewall apply`)"
                    );
                }
                eprintln!("confirmed");
            }
        }
        FirewallCmd::Confirm { json } => {
            let r = ops::firewall::confirm(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            println!("confirmed: the new rules stay");
        }
    }
    Ok(())
}

struct Bar(indicatif::ProgressBar);

impl ops::terminal::Progress for Bar {
    fn step(&self, n: u64) {
        self.0.inc(n);
    }
}

fn print_status(s: &ops::status::Status) {
    println!("root:      {}", s.root);
    println!("scenario:  {}", if s.scenario == "A" { "A (cas-vpn runs the VPN)" } else { "B (no VPN)" });
    println!("database:  {}", s.database);
    println!("public ip: {}", s.public_ip.as_deref().unwrap_or("(not set)"));
    println!("master {}  gate {}  admin {}", s.master_bind_ip, s.gate_bind_ip, s.admin_bind_ip);
    println!("web UI:    {} (certificate SHA-256 {})", s.web_url, s.web_fingerprint.as_deref().unwrap_or("missing"));
    let c = &s.counts;
    println!(
        "terminals: {} ({} paired)  admins: {}  revoked: {}  live sessions: {}",
        c.terminals, c.terminals_paired, c.admins, c.revoked, c.sessions
    );
    let h = &c.health;
    println!(
        "health:    {} healthy, {} tunnel up but agent silent, {} offline, {} never paired, {} revoked",
        h.healthy, h.agent_silent, h.offline, h.never_paired, h.revoked
    );
    for i in &s.instances {
        println!("instance {:<12} port {:>5} {} {}", i.name, i.port, i.dev, i.subnet);
    }
    let up: Vec<String> =
        s.services.iter().map(|x| format!("{} {}", x.service, if x.running { "running" } else { "stopped" })).collect();
    println!("services:  {}", up.join(", "));
    match &s.running {
        None => println!("serve:     not running"),
        Some(r) => {
            for i in r {
                let state = format!("{:?}", i.state).split_whitespace().next().unwrap_or("").to_lowercase();
                println!(
                    "running {:<14} port {:>5} {:<8} ready={} restarts={} sessions={}{}",
                    i.name,
                    i.port,
                    state,
                    i.ready,
                    i.restarts,
                    i.sessions,
                    if i.crash_loop { " CRASH-LOOP" } else { "" }
                );
            }
        }
    }
    for x in &s.sessions {
        println!("session {:<24} {:<14} {:<16} from {}", x.common_name, x.instance, x.tunnel_ip, x.real_addr);
    }
    for e in &s.expiry {
        println!("{:<40} {}", e.what, e.not_after.as_deref().unwrap_or("missing"));
    }
    let r = &s.renewal;
    println!(
        "terminal certificates: {} expire within 7 days, {} within 30, {} within 60; {} expired, {} overdue for \
         renewal, {} failed to renew",
        r.expiring_7d, r.expiring_30d, r.expiring_60d, r.expired, r.overdue, r.failed
    );
    for f in &r.failures {
        println!("renewal failed {:<24} {} {:<8} {}: {}", f.terminal, f.failed_at, f.source, f.error, f.message);
    }
    if r.failed > r.failures.len() as u64 {
        println!("renewal failed ... and {} more", r.failed - r.failures.len() as u64);
    }
    for w in &s.warnings {
        println!("WARNING: {w}");
    }
}

/// One line for any error: the chain joined with ": ", no backtrace.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.replace('\n', " ")
}
