//! Terminals: `terminal add`, `terminal import` (bulk, all or nothing), `terminal list`, `terminal show`.
//!
//! Everything for a batch (keys, certificates, tokens, profiles) is made in memory, the files are staged under
//! temp names, the store commits the batch in one transaction, and only then do the files appear. A failure at
//! any step leaves no row and no file. An import with `--out` stages in the root's private `pki/imports/` and is
//! journaled, so a kill at any moment is rolled back or finished (`ops::import`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cas_pki::{Issued, KeyType, Validity};
use serde::Serialize;

use super::instances::{hosts_per_slice, terminal_ip, terminal_slices};
use super::profile::ProfileMaker;
use super::{Ctx, OpsError, rfc3339};
use crate::app::new_cert;
use crate::db::{Credential, NewTerminal, NewToken, TerminalLayout};
use crate::domain::{Dur, Kind, Name, PairingToken};
use crate::sys::fs::Staged;

/// Default lifetime of a pairing token when neither `--expires` nor `token_ttl` says otherwise.
const DEFAULT_TOKEN_TTL: u64 = 24 * 3600;

#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    pub expires: Option<Dur>,
    pub server_keygen: bool,
}

/// One terminal as created. `token` is the secret pairing token: shown once, stored only hashed.
#[derive(Debug, Serialize)]
pub struct Added {
    pub name: Name,
    pub token: String,
    pub token_expires_at: String,
    pub home_instance: Option<u32>,
    pub tunnel_ip: Option<String>,
    pub server_keygen: bool,
    /// Where the server-made profile waits (for delivery by the gate, or in `--out`).
    pub profile: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub created: usize,
    pub out_dir: Option<String>,
    pub terminals: Vec<Added>,
    /// The id of an interrupted import this run finished instead of starting a new one (not part of the JSON
    /// shape: the report is the same as if it had never been interrupted).
    #[serde(skip)]
    pub resumed: Option<String>,
}

/// What a caller wants to see while a batch is made (the CLI draws a progress bar).
pub trait Progress: Sync {
    fn step(&self, n: u64);
}

impl Progress for () {
    fn step(&self, _: u64) {}
}

pub async fn add(ctx: &Ctx, name: Name, opts: &AddOptions) -> Result<Added, OpsError> {
    let mut added = create_batch(ctx, vec![name], opts, &()).await?;
    Ok(added.pop().expect("a batch of one yields one"))
}

/// Reads names from a CSV file (first column; one per line; an optional `name` header; blank lines skipped) and
/// creates them all or none. Every bad line is reported with its line number before anything is made. An earlier
/// import of this root left unfinished (killed) is dealt with first (`ops::import`): rolled back when it never
/// reached the store, finished when this is the same import again, reported otherwise. With `--out` the import is
/// journaled and resumable (`ops::import`); without it the tokens are only in the report.
pub async fn import(
    ctx: &Ctx,
    csv_path: &Path,
    opts: &AddOptions,
    out: Option<&Path>,
    progress: &dyn Progress,
) -> Result<ImportReport, OpsError> {
    let names = read_names(csv_path)?;
    let lock = super::import::lock(ctx)?;
    if let Some(resumed) = super::import::settle_before(ctx, &lock, &names, out, opts.server_keygen).await? {
        return Ok(resumed);
    }
    if let Some(dir) = out {
        return super::import::run(ctx, &lock, names, opts, dir, progress).await;
    }
    let terminals = create_batch(ctx, names, opts, progress).await?;
    Ok(ImportReport { created: terminals.len(), out_dir: None, terminals, resumed: None })
}

pub fn read_names(csv_path: &Path) -> Result<Vec<Name>, OpsError> {
    let file = std::fs::File::open(csv_path).map_err(|e| OpsError::Input {
        path: csv_path.to_owned(),
        line: 0,
        why: e.to_string(),
    })?;
    read_names_from(std::io::BufReader::new(file), csv_path)
}

/// [`read_names`] from any reader; `label` names it in errors.
pub fn read_names_from(input: impl std::io::Read, label: &Path) -> Result<Vec<Name>, OpsError> {
    let err = |line: usize, why: String| OpsError::Input { path: label.to_owned(), line, why };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(input);
    let mut names = Vec::new();
    let mut seen: HashMap<Name, usize> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(e.position().map_or(i + 1, |p| p.line() as usize), e.to_string()))?;
        let line = record.position().map_or(i + 1, |p| p.line() as usize);
        let Some(first) = record.get(0).filter(|f| !f.is_empty()) else { continue };
        if names.is_empty() && seen.is_empty() && first.eq_ignore_ascii_case("name") {
            continue;
        }
        let name: Name = first.parse().map_err(|e: crate::domain::DomainError| err(line, e.to_string()))?;
        if let Some(prev) = seen.insert(name.clone(), line) {
            return Err(err(line, format!("{name} already appears on line {prev}")));
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err(err(1, "no names in the file".into()));
    }
    Ok(names)
}

struct Made {
    name: Name,
    token: PairingToken,
    issued: Option<Issued>,
    profile: Option<String>,
}

/// A batch made in memory (keys, certificates, tokens, profiles), not yet in the store.
pub(super) struct Batch {
    made: Vec<Made>,
    new: Vec<NewTerminal>,
    layout: TerminalLayout,
    slices: Option<Vec<crate::domain::Subnet>>,
    /// When the batch is created (the store's `created_at`).
    pub(super) now: i64,
    expires_at: i64,
}

impl Batch {
    /// Makes everything for `names`; touches neither the store nor a file.
    /// `nodes`: the store's nodes, whose addresses server-made profiles list as `remote`s.
    pub(super) fn make(
        ctx: &Ctx,
        names: &[Name],
        opts: &AddOptions,
        nodes: &[crate::db::NodeRow],
        progress: &dyn Progress,
    ) -> Result<Batch, OpsError> {
        let vpn = match (ctx.vpn("--server-keygen"), opts.server_keygen) {
            (Ok(v), _) => Some(v),
            (Err(e), true) => return Err(e),
            (Err(_), false) => None,
        };
        let pin = ctx.pki.gate_pin()?;
        let ttl = opts.expires.map(|d| d.as_secs()).or(vpn.map(|v| v.token_ttl.as_secs())).unwrap_or(DEFAULT_TOKEN_TTL);
        let now = ctx.clock.now();
        let expires_at = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));

        // Keys and certificates: CPU-bound, so made on every core before the store is touched.
        let keygen = match (opts.server_keygen, vpn) {
            (true, Some(v)) => {
                let maker = ProfileMaker::new(ctx, Kind::Terminal)?;
                let _ = maker.take_nodes(nodes);
                Some((ctx.pki.load_ca(Kind::Terminal)?, maker, v))
            }
            _ => None,
        };
        let made = make_all(
            names,
            pin,
            keygen.as_ref().map(|(ca, maker, v)| (ca, maker, v.key_type, v.terminal_cert_days)),
            progress,
        )?;
        let new: Vec<NewTerminal> = made
            .iter()
            .map(|m| {
                Ok(NewTerminal {
                    name: m.name.clone(),
                    cert: m.issued.as_ref().map(|i| new_cert(&i.cert_pem)).transpose()?,
                    token: Some(NewToken {
                        id: m.token.id().to_owned(),
                        secret_hash: m.token.secret_hash(),
                        expires_at,
                    }),
                })
            })
            .collect::<Result<_, OpsError>>()?;
        let slices = vpn.map(terminal_slices).transpose()?;
        let layout = match &slices {
            Some(s) => TerminalLayout { instances: s.len() as u32, hosts_per_instance: hosts_per_slice(&s[0]) },
            // Scenario B: no tunnel addresses are handed out; one roomy pseudo-instance keeps the store's rules
            // simple.
            None => TerminalLayout { instances: 1, hosts_per_instance: 1 << 24 },
        };
        Ok(Batch { made, new, layout, slices, now, expires_at })
    }

    /// Each server-made profile with its terminal's name.
    pub(super) fn profiles(&self) -> impl Iterator<Item = (&Name, &str)> {
        self.made.iter().filter_map(|m| m.profile.as_deref().map(|p| (&m.name, p)))
    }

    /// `tokens.csv`: the secrets, one terminal a line, as `terminal import --out` writes it.
    pub(super) fn tokens_csv(&self) -> String {
        let mut csv = String::from("name,token,expires_at\n");
        for m in &self.made {
            csv.push_str(&format!("{},{},{}\n", m.name, m.token.expose(), rfc3339(self.expires_at)));
        }
        csv
    }

    /// The id of the first terminal's token: once the store holds it, the whole batch is committed (the batch is
    /// one transaction), which is how a resumed import tells a committed batch from a rolled-back one.
    pub(super) fn marker_token(&self) -> Option<&str> {
        self.made.first().map(|m| m.token.id())
    }

    /// Commits the batch with its audit row: one store transaction, all or nothing.
    pub(super) async fn commit(&self, ctx: &Ctx, audit: &crate::db::NewAudit) -> Result<Vec<Credential>, OpsError> {
        Ok(ctx.store.create_terminals_audited(&self.new, self.layout, self.now, Some(audit)).await?)
    }
}

/// The home instance and tunnel address of a stored terminal, under the current layout (`None` under Scenario B).
pub(super) fn placement(c: &Credential, slices: Option<&[crate::domain::Subnet]>) -> (Option<u32>, Option<String>) {
    let ip = match (slices, c.home_instance.zip(c.host_index)) {
        (Some(s), Some((home, host))) => terminal_ip(s, home, host).map(|ip| ip.to_string()),
        _ => None,
    };
    (slices.and(c.home_instance), ip)
}

/// `terminal add` and an import without `--out`: profiles go to `pki/pending/` (staged beside their final names,
/// renamed after the commit; `app::pending` recovers a crash in between), tokens only into the report.
async fn create_batch(
    ctx: &Ctx,
    names: Vec<Name>,
    opts: &AddOptions,
    progress: &dyn Progress,
) -> Result<Vec<Added>, OpsError> {
    let batch = Batch::make(ctx, &names, opts, &ctx.store.list_nodes().await?, progress)?;
    let mut staged = Staged::default();
    let mut profile_paths = Vec::with_capacity(batch.made.len());
    for m in &batch.made {
        let path = m.profile.as_ref().map(|text| {
            let path = ctx.pki.pending_dir().join(format!("{}.ovpn", m.name));
            staged.stage(&path, text.as_bytes(), 0o600).map(|()| path)
        });
        profile_paths.push(path.transpose()?);
    }
    let action = if names.len() == 1 { "terminal.add" } else { "terminal.import" };
    let subject = if names.len() == 1 { names[0].to_string() } else { format!("{} terminals", names.len()) };
    let audit = ctx.audit_entry(action, &subject, if opts.server_keygen { "server-keygen" } else { "token" });
    let created = batch.commit(ctx, &audit).await?;
    staged.publish()?;
    let pending: Vec<&Path> = profile_paths.iter().flatten().map(PathBuf::as_path).collect();
    super::ownership::give_pending(&ctx.pki.pending_dir(), &pending)?;

    let by_name: HashMap<&Name, &Credential> = created.iter().map(|c| (&c.name, c)).collect();
    let Batch { made, slices, expires_at, .. } = batch;
    Ok(made
        .into_iter()
        .zip(profile_paths)
        .map(|(m, path)| {
            let (home_instance, tunnel_ip) =
                by_name.get(&m.name).map_or((None, None), |c| placement(c, slices.as_deref()));
            Added {
                token: m.token.expose(),
                token_expires_at: rfc3339(expires_at),
                home_instance,
                tunnel_ip,
                server_keygen: m.issued.is_some(),
                profile: path.map(|p: PathBuf| p.display().to_string()),
                name: m.name,
            }
        })
        .collect())
}

fn make_all(
    names: &[Name],
    pin: [u8; 32],
    keygen: Option<(&cas_pki::Ca, &ProfileMaker, KeyType, u32)>,
    progress: &dyn Progress,
) -> Result<Vec<Made>, OpsError> {
    let make = |name: &Name| -> Result<Made, OpsError> {
        let token = PairingToken::generate(pin);
        let (issued, profile) = match keygen {
            Some((ca, maker, kt, days)) => {
                let issued = ca
                    .issue_client(name.as_str(), kt, Validity::days_from_now(days))
                    .map_err(|e| OpsError::Ca(e.to_string()))?;
                let profile = maker.render(name, &issued.cert_pem, Some(&issued.key), None, None)?;
                (Some(issued), Some(profile))
            }
            None => (None, None),
        };
        progress.step(1);
        Ok(Made { name: name.clone(), token, issued, profile })
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = names.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            names.chunks(chunk).map(|part| s.spawn(move || part.iter().map(make).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("key generation worker panicked")).collect()
    })
}

#[derive(Debug, Serialize)]
pub struct TerminalRow {
    pub name: Name,
    /// `pending` (not yet paired), `paired`, `online` (a session on a live node), or `revoked`.
    pub state: &'static str,
    /// `healthy`, `agent_silent` (tunnel up, agent silent), `offline`, `never_paired` or `revoked`
    /// (`domain::health`).
    pub health: crate::domain::Health,
    /// When it entered that health (RFC 3339), as master recorded it; `None` when not recorded.
    pub health_since: Option<String>,
    pub home_instance: Option<u32>,
    pub tunnel_ip: Option<String>,
    pub created_at: String,
    pub paired_at: Option<String>,
    pub last_seen: Option<String>,
    pub version: Option<String>,
    pub revoked_at: Option<String>,
}

pub async fn list(ctx: &Ctx, include_revoked: bool) -> Result<Vec<TerminalRow>, OpsError> {
    let slices = ctx.cfg.vpn.as_ref().and_then(|v| terminal_slices(v).ok());
    let clock = ctx.health_clock();
    let facts: HashMap<i64, crate::db::HealthFacts> =
        ctx.store.health_facts(&clock, None).await?.into_iter().map(|f| (f.credential_id, f)).collect();
    let rows = ctx.store.list_credentials(Some(Kind::Terminal), include_revoked).await?;
    Ok(rows.iter().map(|c| row(c, slices.as_deref(), facts.get(&c.id), &clock)).collect())
}

fn row(
    c: &Credential,
    slices: Option<&[crate::domain::Subnet]>,
    facts: Option<&crate::db::HealthFacts>,
    clock: &crate::db::HealthClock,
) -> TerminalRow {
    // Online: a session on a live node (stale rows a crashed node left are not).
    let online = facts.is_some_and(|f| f.tunnel_ip.is_some());
    let health = facts.map_or(
        if c.revoked_at.is_some() { crate::domain::Health::Revoked } else { crate::domain::Health::NeverPaired },
        |f| f.health(clock),
    );
    let state = if c.revoked_at.is_some() {
        "revoked"
    } else if online {
        "online"
    } else if c.paired_at.is_some() {
        "paired"
    } else {
        "pending"
    };
    TerminalRow {
        name: c.name.clone(),
        state,
        health,
        health_since: facts.and_then(|f| f.since(clock)).map(rfc3339),
        home_instance: slices.and(c.home_instance),
        tunnel_ip: slices
            .zip(c.home_instance.zip(c.host_index))
            .and_then(|(s, (h, i))| terminal_ip(s, h, i))
            .map(|ip| ip.to_string()),
        created_at: rfc3339(c.created_at),
        paired_at: c.paired_at.map(rfc3339),
        last_seen: c.last_seen.map(rfc3339),
        version: c.version.clone(),
        revoked_at: c.revoked_at.map(rfc3339),
    }
}

#[derive(Debug, Serialize)]
pub struct CertSummary {
    pub serial: String,
    pub not_after: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TerminalDetail {
    #[serde(flatten)]
    pub row: TerminalRow,
    pub hw_serial: Option<String>,
    pub revoke_reason: Option<String>,
    pub certificates: Vec<CertSummary>,
}

pub async fn show(ctx: &Ctx, name: &Name) -> Result<TerminalDetail, OpsError> {
    let c = match ctx.store.credential_by_name(name).await? {
        Some(c) if c.kind == Kind::Terminal => c,
        _ => return Err(crate::db::DbError::NotFound { what: format!("terminal {name}") }.into()),
    };
    let slices = ctx.cfg.vpn.as_ref().and_then(|v| terminal_slices(v).ok());
    let clock = ctx.health_clock();
    let facts = ctx.store.health_facts(&clock, Some(c.id)).await?.pop();
    let certificates = ctx
        .store
        .certificates_of(c.id)
        .await?
        .into_iter()
        .map(|r| CertSummary {
            serial: r.serial,
            not_after: rfc3339(r.not_after),
            revoked_at: r.revoked_at.map(rfc3339),
        })
        .collect();
    Ok(TerminalDetail {
        row: row(&c, slices.as_deref(), facts.as_ref(), &clock),
        hw_serial: c.hw_serial.clone(),
        revoke_reason: c.revoke_reason.clone(),
        certificates,
    })
}
