//! `cas-vpn pairing open|close|status|approve|reject`, `cas-vpn unban-ip`, `cas-vpn agent pair|run`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;

use super::{Json, print_json};
use crate::domain::{Cidr, Dur, Name};
use crate::ops::{self, Ctx};

#[derive(Debug, Subcommand)]
pub enum PairingCmd {
    /// Open the pairing window (the gate pairs only while it is open).
    Open {
        /// How long (e.g. 15m, 2h); default 15m.
        #[arg(long = "for", value_name = "DUR")]
        duration: Option<Dur>,
        /// Only these sources may reach the pairing port (comma-separated a.b.c.d/len or a.b.c.d; repeatable).
        #[arg(long, value_name = "CIDR", value_delimiter = ',')]
        from: Vec<Cidr>,
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
    /// Reject a waiting pairing, or with --all every one of them.
    Reject {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: Json,
    },
}

pub async fn pairing(ctx: Ctx, cmd: PairingCmd) -> anyhow::Result<()> {
    match cmd {
        PairingCmd::Open { duration, from, json } => {
            let r = ops::pairing::open_window(&ctx, duration, &from).await?;
            if json.json {
                return print_json(&r);
            }
            let who = if r.from.is_empty() {
                String::new()
            } else {
                format!(" for {}", r.from.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            println!("pairing window open until {}{who}", r.open_until.as_deref().unwrap_or("-"));
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
        PairingCmd::Reject { id: None, json, .. } => {
            let r = ops::pairing::reject_all(&ctx).await?;
            if json.json {
                return print_json(&r);
            }
            println!("{} pending pairing(s) rejected", r.rejected);
        }
        PairingCmd::Reject { id: Some(id), json, .. } => {
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

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Pair this terminal through the gate: with a token (zero-touch), or by waiting for an admin's approval.
    Pair {
        /// The gate, HOST:PORT (port 7741 when omitted).
        #[arg(long, value_name = "HOST:PORT")]
        gate: String,
        /// The pairing token (cv1.…); its pin is the only thing that authenticates the gate.
        #[arg(
            long,
            env = "CAS_VPN_PAIRING_TOKEN",
            hide_env_values = true,
            conflicts_with = "wait_approval",
            required_unless_present = "wait_approval"
        )]
        token: Option<crate::domain::PairingToken>,
        /// No token: show a pairing id and code, and wait until an admin approves them.
        #[arg(long)]
        wait_approval: bool,
        /// The agent's directory (key, profile, master address); created 0700.
        #[arg(long)]
        dir: PathBuf,
        /// The gate's key pin for the approval flow (`cas-vpn pairing status` shows it); without it, the key seen
        /// on first contact is trusted and recorded.
        #[arg(long, value_name = "sha256:HEX", value_parser = parse_pin)]
        gate_pin: Option<[u8; 32]>,
        /// The hardware serial to report (also the default terminal name in the approval flow).
        #[arg(long)]
        serial: Option<String>,
        /// The firmware version to report (YYYYMMDD).
        #[arg(long, default_value = crate::agent::AGENT_VERSION)]
        report_version: String,
        /// The openvpn program whose version is reported (the gate refuses a client too old for the profile).
        #[arg(long, default_value = "openvpn")]
        openvpn: String,
        /// How often to poll while waiting for approval.
        #[arg(long, default_value = "3s")]
        poll: Dur,
        /// Give up waiting for approval after this long.
        #[arg(long)]
        wait_timeout: Option<Dur>,
        #[command(flatten)]
        json: Json,
    },
    /// Run the openvpn client (Scenario A), heartbeat master over mutual TLS, renew the certificate before it
    /// expires.
    Run {
        #[arg(long)]
        dir: PathBuf,
        /// Heartbeat period.
        #[arg(long, default_value = "60s")]
        heartbeat: Dur,
        /// Connect to master at HOST:PORT instead of what pairing said (its certificate must still name what
        /// pairing said).
        #[arg(long, value_name = "HOST:PORT")]
        master: Option<String>,
        /// The openvpn program.
        #[arg(long, default_value = "openvpn")]
        openvpn: String,
        #[arg(long, default_value = crate::agent::AGENT_VERSION)]
        report_version: String,
    },
    /// Benchmark: pair every token of FILE (tokens.csv of `terminal import --out`) against a gate.
    #[command(hide = true)]
    Bench {
        #[arg(long, value_name = "HOST:PORT")]
        gate: String,
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Each client connects from its own loopback address (the gate must listen on loopback).
        #[arg(long)]
        spread_loopback: bool,
        #[command(flatten)]
        json: Json,
    },
}

fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    crate::wire::parse_pin(s).ok_or_else(|| "expected sha256:<64 hex digits>".to_owned())
}

pub async fn agent(cmd: AgentCmd) -> anyhow::Result<()> {
    use crate::agent::{PairEvent, PairOptions, run::RunEvent, run::RunOptions};
    match cmd {
        AgentCmd::Pair {
            gate,
            token,
            wait_approval: _,
            dir,
            gate_pin,
            serial,
            report_version,
            openvpn,
            poll,
            wait_timeout,
            json,
        } => {
            let openvpn_version = crate::agent::openvpn_version(&openvpn);
            if openvpn_version.is_none() {
                eprintln!("could not read the version of {openvpn}; pairing without reporting it");
            }
            let opts = PairOptions {
                gate,
                token,
                gate_pin,
                dir,
                serial,
                version: report_version,
                openvpn: openvpn_version,
                poll_every: poll.0,
                wait_timeout: wait_timeout.map(|d| d.0),
            };
            let events = |e: PairEvent| match e {
                PairEvent::KeyCreated(p) => eprintln!("new key {} (0600), kept for every retry", p.display()),
                PairEvent::KeyReused(p) => eprintln!("reusing the key {}", p.display()),
                PairEvent::TrustOnFirstUse { pin } => eprintln!(
                    "WARNING: no --gate-pin given: trusting the gate's key as first seen ({pin}); compare it with \
                     `cas-vpn pairing status` on the server"
                ),
                PairEvent::Pending { pairing_id, code } => {
                    println!("pairing id: {pairing_id}");
                    println!("code: {code}");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    eprintln!(
                        "waiting for an administrator to run: cas-vpn pairing approve {pairing_id} --code {code}"
                    );
                }
                PairEvent::PollFailed(why) => eprintln!("still waiting ({why})"),
                PairEvent::Busy { status, retry_after_secs } => {
                    eprintln!("the gate is busy ({status}); trying again in {retry_after_secs} s")
                }
            };
            let r = crate::agent::pair(&opts, &events).await?;
            if json.json {
                return print_json(&r);
            }
            if r.already_paired {
                println!(
                    "already paired as {} (nothing sent); master at {}:{}",
                    r.terminal, r.master.host, r.master.port
                );
            } else {
                println!("paired as {}; master at {}:{}", r.terminal, r.master.host, r.master.port);
            }
            match &r.ovpn {
                Some(p) => println!("profile: {p}"),
                None => println!("no VPN profile (the server does not run the VPN)"),
            }
        }
        AgentCmd::Run { dir, heartbeat, master, openvpn, report_version } => {
            let opts = RunOptions { dir, heartbeat: heartbeat.0, master, openvpn, version: report_version };
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = stop_tx.send(true);
            });
            let events = |e: RunEvent| match e {
                RunEvent::OpenVpnStarted { pid } => eprintln!("openvpn started (pid {pid})"),
                RunEvent::OpenVpnExited { status, restart_in } => {
                    eprintln!("openvpn exited ({status}); restarting in {} s", restart_in.as_secs())
                }
                RunEvent::Heartbeat { terminal, .. } => eprintln!("heartbeat ok ({terminal})"),
                RunEvent::HeartbeatFailed(why) => eprintln!("heartbeat failed: {why}"),
                RunEvent::Renewed { not_after } => {
                    eprintln!("certificate renewed (valid until {})", not_after.as_deref().unwrap_or("?"))
                }
                RunEvent::RenewFailed(why) => eprintln!("renewal failed: {why}"),
                RunEvent::Stopped => eprintln!("stopped"),
            };
            crate::agent::run::run(&opts, stop, &events).await?;
        }
        AgentCmd::Bench { gate, tokens, concurrency, spread_loopback, json } => {
            let tokens = crate::agent::bench::read_tokens(&tokens)?;
            let r = crate::agent::bench::bench(&gate, tokens, concurrency, spread_loopback).await?;
            if json.json {
                return print_json(&r);
            }
            println!(
                "{} pairings ({} ok, {} errors) with {} concurrent clients in {:.2} s: {:.0} pairings/s; \
                 latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                r.pairings,
                r.ok,
                r.errors,
                r.concurrency,
                r.elapsed_secs,
                r.pairings_per_sec,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.max_ms
            );
            for e in &r.error_samples {
                println!("error: {e}");
            }
        }
    }
    Ok(())
}
