//! `/metrics` (served by `serve admin`, `web::metrics`) and `cas-vpn metrics token`: one Prometheus scrape
//! aggregates, at the moment it is asked, what the other processes know:
//!
//! - the store: live sessions per instance, pairings (ok, failed, banned), bans, revocations, the soonest client
//!   certificates, terminal renewals overdue or failed (cumulative counters are read from the store, so they
//!   survive restarts of every service);
//! - the vpn service, through its control socket (`Status`): instance readiness, restarts, crash loops and the
//!   management answer latency histogram;
//! - the PKI files: seconds until each CA, server certificate and CRL (next update) expires.
//!
//! A source that does not answer is said so (`casvpn_source_up{source} 0`) and its series are left out, never
//! made up. Rendered by a small typed writer (Prometheus text format 0.0.4): the `metrics` crate keeps a
//! process-global registry of values pushed as they change, which fits neither values read from other processes
//! at each scrape nor series that must vanish with their instance.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{Ctx, OpsError};
use crate::control::InstanceStatus;
use crate::db::Counter;
use crate::domain::Kind;
use crate::pkifiles::ServerRole;

/// Client certificates ending within this many seconds are counted (`casvpn_client_certs_expiring_30d`).
pub const EXPIRING_WITHIN_SECS: i64 = 30 * 86400;
/// What a metrics token starts with (so a scraper's config shows what it holds).
pub const TOKEN_PREFIX: &str = "cvmet_";
/// How long the vpn service may take to answer its status.
const VPN_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// One sample: `name{suffix}{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `""`, or `_bucket`, `_sum`, `_count` of a histogram.
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// One metric family with its HELP and TYPE.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub samples: Vec<Sample>,
}

/// Every family of one scrape, in the order they are written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: MetricType, help: &'static str) -> &mut Family {
        self.families.push(Family { name, help, kind, samples: Vec::new() });
        self.families.last_mut().expect("just pushed")
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(f.name);
                out.push_str(s.suffix);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(s.value));
            }
        }
        out
    }
}

impl Family {
    fn add(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Family {
        self.samples.push(Sample {
            suffix: "",
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            value,
        });
        self
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, the rest as Rust prints floats (both are valid Go floats).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Terminal => "terminal",
        Kind::Admin => "admin",
    }
}

/// Unix seconds of a certificate's notAfter, when the PEM reads.
fn cert_end(pem: Option<String>) -> Option<i64> {
    pem.and_then(|p| cas_pki::cert_info(&p).ok()).map(|i| i.not_after.unix_timestamp())
}

/// Unix seconds of a CRL's nextUpdate (the first CRL of the file).
fn crl_next_update(pem: &str) -> Option<i64> {
    let crl = openssl::x509::X509Crl::from_pem(pem.as_bytes()).ok()?;
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(crl.next_update()?).ok()?;
    Some(i64::from(d.days) * 86400 + i64::from(d.secs))
}

/// What the store contributes to a scrape (read together, so one failure leaves all of it out).
struct FromStore {
    sessions: Vec<crate::db::InstanceSessions>,
    pairings_ok: i64,
    counters: Vec<(Counter, i64)>,
    bans_active: usize,
    revoked: Vec<(Kind, i64)>,
    client_certs: Vec<crate::db::ClientCertExpiry>,
    /// Each running gate's upgrade downloads in progress, by node.
    gate_gauges: Vec<(String, i64)>,
    renewal: crate::app::renewal::FleetRenewal,
}

async fn from_store(ctx: &Ctx, now: i64) -> Result<FromStore, crate::db::DbError> {
    let s = &ctx.store;
    let mut revoked = Vec::new();
    let mut client_certs = Vec::new();
    for kind in [Kind::Terminal, Kind::Admin] {
        revoked.push((kind, s.count_revoked(kind).await?));
        client_certs.push(s.client_cert_expiry(kind, now + EXPIRING_WITHIN_SECS).await?);
    }
    Ok(FromStore {
        sessions: s.sessions_per_instance(ctx.alive_since()).await?,
        pairings_ok: s.count_pairings().await?,
        counters: s.metric_counters().await?,
        bans_active: s.banned_ips(now).await?.len(),
        revoked,
        client_certs,
        gate_gauges: s.gate_gauges(now - crate::gate::GAUGES_FRESH.as_secs() as i64).await?,
        renewal: crate::app::renewal::fleet(s, crate::app::renewal::policy(&ctx.cfg), now, 0).await?,
    })
}

/// The running vpn service's instances: `Ok(None)` when none runs.
async fn from_vpn(ctx: &Ctx) -> Result<Option<Vec<InstanceStatus>>, String> {
    match crate::control::request(&ctx.cfg.root, &crate::control::Request::Status, VPN_STATUS_TIMEOUT).await {
        Ok(Some(crate::control::Response::Status { instances })) => Ok(Some(instances)),
        Ok(Some(crate::control::Response::Error { message })) => Err(message),
        Ok(Some(other)) => Err(format!("unexpected answer {other:?}")),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// One scrape: everything this process can learn now, each value from where it is true.
pub async fn collect(ctx: &Ctx) -> Exposition {
    let now = ctx.clock.now();
    let mut x = Exposition::default();
    let store = from_store(ctx, now).await;
    if let Err(e) = &store {
        tracing::warn!(error = %e, "metrics: the store did not answer");
    }
    // Under Scenario B no vpn service is meant to run: it is no source then.
    let scenario_a = ctx.cfg.active_vpn().is_some();
    let vpn = if scenario_a { from_vpn(ctx).await } else { Ok(None) };
    if let Err(e) = &vpn {
        tracing::warn!(error = %e, "metrics: the vpn service did not answer its status");
    }
    let up = x.family(
        "casvpn_source_up",
        MetricType::Gauge,
        "Whether a source of this scrape answered: store; vpn (Scenario A only), the vpn service's control \
         socket, 0 when it does not run.",
    );
    up.add(&[("source", "store")], f64::from(u8::from(store.is_ok())));
    if scenario_a {
        up.add(&[("source", "vpn")], f64::from(u8::from(matches!(vpn, Ok(Some(_))))));
    }

    if let Ok(s) = &store {
        let f = x.family(
            "casvpn_sessions",
            MetricType::Gauge,
            "Live VPN sessions per node, instance and credential kind (from the store).",
        );
        for r in &s.sessions {
            f.add(&[("node", &r.node), ("instance", &r.instance), ("kind", kind_label(r.kind))], r.sessions as f64);
        }
        let f = x.family(
            "casvpn_pairings_total",
            MetricType::Counter,
            "Pairings by result: ok (terminals that completed pairing), failed (attempts settled as failures), \
             banned (attempts refused to a banned source).",
        );
        f.add(&[("result", "ok")], s.pairings_ok as f64);
        for (c, v) in &s.counters {
            match c {
                Counter::PairingsFailed => f.add(&[("result", "failed")], *v as f64),
                Counter::PairingsBanned => f.add(&[("result", "banned")], *v as f64),
                Counter::Bans => f,
            };
        }
        let bans = s.counters.iter().find(|(c, _)| *c == Counter::Bans).map_or(0, |(_, v)| *v);
        x.family(
            "casvpn_bans_total",
            MetricType::Counter,
            "Bans imposed on pairing sources (an address, or its /24 or /64).",
        )
        .add(&[], bans as f64);
        x.family("casvpn_bans_active", MetricType::Gauge, "Addresses and networks banned now.")
            .add(&[], s.bans_active as f64);
        let f = x.family("casvpn_revocations_total", MetricType::Counter, "Credentials revoked, by kind.");
        for (kind, n) in &s.revoked {
            f.add(&[("kind", kind_label(*kind))], *n as f64);
        }
        let f = x.family(
            "casvpn_client_cert_expiry_seconds",
            MetricType::Gauge,
            "Seconds until the soonest certificate of an active terminal or admin credential expires \
             (absent when there is none).",
        );
        for c in s.client_certs.iter() {
            if let Some(end) = c.soonest {
                f.add(&[("kind", kind_label(c.kind))], (end - now) as f64);
            }
        }
        let f = x.family(
            "casvpn_client_certs_expiring_30d",
            MetricType::Gauge,
            "Certificates of active terminal or admin credentials that expire within 30 days (expired included).",
        );
        for c in s.client_certs.iter() {
            f.add(&[("kind", kind_label(c.kind))], c.expiring as f64);
        }
        let f = x.family(
            "casvpn_upgrade_slots_in_use",
            MetricType::Gauge,
            "Upgrade downloads a node's gate serves now (each gate publishes it to the store at every change; a \
             gate that stopped is absent).",
        );
        for (node, n) in &s.gate_gauges {
            f.add(&[("node", node.as_str())], *n as f64);
        }
        x.family(
            "casvpn_terminal_renewals_overdue",
            MetricType::Gauge,
            "Terminal certificates past their renewal point by more than an hour and not renewed (expired ones \
             included).",
        )
        .add(&[], s.renewal.overdue as f64);
        x.family(
            "casvpn_terminal_renewal_failures",
            MetricType::Gauge,
            "Active terminals whose last certificate renewal failed (`cas-vpn status` names them and says why).",
        )
        .add(&[], s.renewal.failed as f64);
    }

    if let Ok(Some(instances)) = &vpn {
        let f = x.family(
            "casvpn_instance_ready",
            MetricType::Gauge,
            "Whether an openvpn instance runs with its management interface connected (it can admit clients).",
        );
        for i in instances {
            f.add(&[("instance", i.name.as_str()), ("kind", kind_label(i.kind))], f64::from(u8::from(i.ready)));
        }
        let f = x.family(
            "casvpn_instance_restarts_total",
            MetricType::Counter,
            "Restarts of an openvpn instance since the vpn service started it.",
        );
        for i in instances {
            f.add(&[("instance", i.name.as_str()), ("kind", kind_label(i.kind))], i.restarts as f64);
        }
        let f = x.family(
            "casvpn_instance_crash_loop",
            MetricType::Gauge,
            "1 while an openvpn instance is crash-looping (5 exits within 2 minutes).",
        );
        for i in instances {
            f.add(&[("instance", i.name.as_str()), ("kind", kind_label(i.kind))], f64::from(u8::from(i.crash_loop)));
        }
        let f = x.family(
            "casvpn_mgmt_answer_seconds",
            MetricType::Histogram,
            "Time from openvpn's CONNECT/REAUTH question to its acknowledged answer, per instance.",
        );
        for i in instances.iter().filter(|i| !i.answers.bounds.is_empty()) {
            let base = [("instance", i.name.to_string()), ("kind", kind_label(i.kind).to_owned())];
            for (bound, n) in i.answers.bounds.iter().zip(&i.answers.buckets) {
                let mut labels = base.to_vec();
                labels.push(("le", number(*bound)));
                f.samples.push(Sample { suffix: "_bucket", labels, value: *n as f64 });
            }
            let mut labels = base.to_vec();
            labels.push(("le", "+Inf".into()));
            f.samples.push(Sample { suffix: "_bucket", labels, value: i.answers.count as f64 });
            f.samples.push(Sample { suffix: "_sum", labels: base.to_vec(), value: i.answers.sum_seconds });
            f.samples.push(Sample { suffix: "_count", labels: base.to_vec(), value: i.answers.count as f64 });
        }
    }

    let pki = &ctx.pki;
    let f = x.family(
        "casvpn_ca_expiry_seconds",
        MetricType::Gauge,
        "Seconds until a root CA certificate expires (negative once it has; absent when unreadable).",
    );
    for kind in [Kind::Terminal, Kind::Admin] {
        if let Some(end) = cert_end(pki.read_ca_cert(kind).ok()) {
            f.add(&[("ca", kind_label(kind))], (end - now) as f64);
        }
    }
    let f = x.family(
        "casvpn_server_cert_expiry_seconds",
        MetricType::Gauge,
        "Seconds until a server certificate expires (VPN servers, gate, master, the web UI).",
    );
    for role in [ServerRole::TerminalVpn, ServerRole::AdminVpn, ServerRole::Gate, ServerRole::Master] {
        if let Some(end) = cert_end(pki.read_server_cert(role).ok()) {
            f.add(&[("cert", role.common_name())], (end - now) as f64);
        }
    }
    if let Some(end) = cert_end(std::fs::read_to_string(pki.web_cert_path()).ok()) {
        f.add(&[("cert", "web-ui")], (end - now) as f64);
    }
    let f = x.family(
        "casvpn_crl_next_update_seconds",
        MetricType::Gauge,
        "Seconds until a CRL's nextUpdate: once it passes openvpn refuses every client of that CA.",
    );
    for kind in [Kind::Terminal, Kind::Admin] {
        if let Some(next) = pki.read_crl(kind).ok().flatten().as_deref().and_then(crl_next_update) {
            f.add(&[("ca", kind_label(kind))], (next - now) as f64);
        }
    }
    x.family(
        "casvpn_upgrade_slots_limit",
        MetricType::Gauge,
        "Upgrade downloads a gate serves at once (batm.processing-slots).",
    )
    .add(&[], f64::from(ctx.cfg.gate.processing_slots));
    x
}

/// `cas-vpn metrics token`: the new token, shown once.
#[derive(Debug, Serialize)]
pub struct TokenReport {
    pub token: String,
    /// Tokens it replaced (0 or 1).
    pub replaced: usize,
}

/// Makes a new metrics token (256 random bits), replacing the previous one; the store keeps only its SHA-256.
pub async fn new_token(ctx: &Ctx) -> Result<TokenReport, OpsError> {
    let token = format!("{TOKEN_PREFIX}{}", crate::app::secret::new_secret());
    let replaced = ctx.store.metrics_token_hashes().await?.len();
    let now = ctx.clock.now();
    ctx.store.set_metrics_token(&crate::app::secret::hash_secret(&token), now).await?;
    ctx.audit("metrics.token", "metrics", if replaced > 0 { "replaced" } else { "created" }, now).await?;
    Ok(TokenReport { token, replaced })
}

/// `cas-vpn metrics revoke`: no token works any more. Returns how many there were.
pub async fn revoke_tokens(ctx: &Ctx) -> Result<u64, OpsError> {
    let n = ctx.store.clear_metrics_tokens().await?;
    ctx.audit("metrics.revoke", "metrics", &format!("{n} tokens"), ctx.clock.now()).await?;
    Ok(n)
}

/// Whether `presented` is a valid metrics token: its SHA-256 compared in constant time with every stored one.
pub async fn token_valid(ctx: &Ctx, presented: &str) -> Result<bool, OpsError> {
    use subtle::ConstantTimeEq;
    if !presented.starts_with(TOKEN_PREFIX) || presented.len() > 128 {
        return Ok(false);
    }
    let hash = crate::app::secret::hash_secret(presented);
    let mut ok = subtle::Choice::from(0);
    for stored in ctx.store.metrics_token_hashes().await? {
        ok |= hash.as_bytes().ct_eq(stored.as_bytes());
    }
    Ok(bool::from(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_escapes_labels_and_keeps_help_and_type() {
        let mut x = Exposition::default();
        x.family("casvpn_x", MetricType::Gauge, "An x.").add(&[("a", "q\"b\\c\nd")], 1.5).add(&[], 3.0);
        assert_eq!(
            x.render(),
            "# HELP casvpn_x An x.\n# TYPE casvpn_x gauge\ncasvpn_x{a=\"q\\\"b\\\\c\\nd\"} 1.5\ncasvpn_x 3\n"
        );
        assert_eq!(number(-86400.0), "-86400");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
