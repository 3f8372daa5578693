//! master's half of terminal health: records every change of a terminal's health (so `terminal list` can say
//! since when), and *pulls* when the pushes stop: a terminal whose tunnel is up but whose heartbeats are older
//! than the threshold (`domain::health`: 3 missed periods) is probed on its tunnel address, where its agent
//! serves `GET /v1/status` (`agent::status`) to master alone.
//!
//! Every [`TICK`] (jittered, so that the masters of several nodes do not beat in step): read every terminal's
//! facts in one query, derive each health, record the ones that changed (`Store::record_health` writes only a
//! change, so two masters record it once), then probe the agent-silent ones whose backoff allows it: at most
//! [`PER_TICK`] a tick, [`CONCURRENCY`] at once, [`PROBE_TIMEOUT`] each. A probe connects from `master_bind_ip`
//! (the only address the agent accepts), presents master's certificate and checks the agent's terminal
//! certificate and name. A success is stored (`probed_ok_at`) and makes the terminal healthy; a failure doubles
//! the terminal's backoff (from [`FIRST_RETRY`] to [`MAX_RETRY`], jittered), kept in memory only: a restarted
//! master simply probes again. Under Scenario B there is no tunnel to probe and no probe is made.
//!
//! Several nodes: a terminal's tunnel ends on one node and nothing is routed between nodes, so another node's
//! master cannot reach it: its probe times out and backs off, while the master of the terminal's node succeeds
//! (only successes are stored).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::sync::watch;

use super::MasterState;
use crate::db::{HealthClock, HealthFacts};
use crate::domain::Health;
use crate::http::client::{self as http, Target, Trust};
use crate::http::mtls::ClientTls;
use crate::wire::{AGENT_STATUS_PORT, AgentStatus};

/// How often health is looked at.
pub const TICK: Duration = Duration::from_secs(5);
/// Most probes started in one tick (the rest wait for the next).
pub const PER_TICK: usize = 32;
/// Probes in flight at once.
pub const CONCURRENCY: usize = 8;
/// One probe, connection to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from an agent.
const MAX_ANSWER: usize = 16 * 1024;
/// Backoff after a failed probe, doubling to [`MAX_RETRY`].
pub const FIRST_RETRY: i64 = 15;
pub const MAX_RETRY: i64 = 300;

/// When each silent terminal may be probed again. Pure: the caller gives the time and the jitter.
#[derive(Debug, Default)]
pub struct Backoff {
    /// credential id → (not before, current delay)
    next: HashMap<i64, (i64, i64)>,
}

impl Backoff {
    pub fn due(&self, id: i64, now: i64) -> bool {
        self.next.get(&id).is_none_or(|(at, _)| now >= *at)
    }

    /// A failed probe: wait twice as long as last time (the first time [`FIRST_RETRY`]), plus `jitter` seconds.
    pub fn failed(&mut self, id: i64, now: i64, jitter: i64) {
        let delay = self.next.get(&id).map_or(FIRST_RETRY, |(_, d)| (d * 2).min(MAX_RETRY));
        self.next.insert(id, (now + delay + jitter, delay));
    }

    /// A success, or the terminal is no longer silent: forget it.
    pub fn forget(&mut self, id: i64) {
        self.next.remove(&id);
    }

    /// Keeps only the terminals `silent` says are still silent.
    pub fn retain(&mut self, silent: impl Fn(i64) -> bool) {
        self.next.retain(|id, _| silent(*id));
    }
}

/// master's side of the probe's TLS: its certificate and key, the terminal CA.
struct ProbeTls {
    cert: String,
    key: zeroize::Zeroizing<String>,
    ca: String,
}

/// The prober's state between ticks.
pub struct Prober {
    tls: Arc<ProbeTls>,
    /// The address probes come from: `master_bind_ip`, the one address agents accept.
    source: IpAddr,
    port: u16,
    backoff: Backoff,
}

impl Prober {
    /// Probes from `master_bind_ip` to `wire::AGENT_STATUS_PORT`, with master's TLS material from `pki/`.
    pub fn new(state: &MasterState) -> Result<Prober, crate::app::AppError> {
        let ctx = &state.0.ctx;
        Prober::with(state, IpAddr::V4(ctx.cfg.network.master_bind_ip), AGENT_STATUS_PORT)
    }

    /// As [`Prober::new`], from another source address and to another port (tests on loopback).
    pub fn with(state: &MasterState, source: IpAddr, port: u16) -> Result<Prober, crate::app::AppError> {
        let (cert, key, ca) = state.0.ctx.pki.read_master_tls()?;
        Ok(Prober { tls: Arc::new(ProbeTls { cert, key, ca }), source, port, backoff: Backoff::default() })
    }

    /// One tick: record the changes, then (Scenario A) probe the due silent terminals and record the answers.
    pub async fn tick(&mut self, state: &MasterState) -> Result<(), crate::db::DbError> {
        let ctx = &state.0.ctx;
        let vpn = state.0.tunnel_required.load(Ordering::Relaxed);
        let clock = ctx.health_clock_in(vpn);
        let facts = ctx.store.health_facts(&clock, None).await?;
        record_changes(state, &clock, &facts).await?;
        if !vpn {
            return Ok(());
        }
        let silent: HashMap<i64, &HealthFacts> =
            facts.iter().filter(|f| f.health(&clock) == Health::AgentSilent).map(|f| (f.credential_id, f)).collect();
        self.backoff.retain(|id| silent.contains_key(&id));
        let due: Vec<HealthFacts> = silent
            .values()
            .filter(|f| f.tunnel_ip.is_some() && self.backoff.due(f.credential_id, clock.now))
            .take(PER_TICK)
            .map(|f| (*f).clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for f in due {
            let (tls, permits, source, port) = (self.tls.clone(), permits.clone(), self.source, self.port);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let answer = probe(&tls, source, port, &f).await;
                (f, answer)
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((f, answer)) = done else { continue };
            let now = ctx.clock.now();
            match answer {
                Ok(st) => {
                    self.backoff.forget(f.credential_id);
                    ctx.store.record_probe_ok(f.credential_id, now).await?;
                    if ctx.store.record_health(f.credential_id, Health::Healthy, now).await? {
                        tracing::info!(terminal = %f.name, openvpn = %st.openvpn, version = %st.version,
                            "terminal healthy: its agent answered master's probe");
                    }
                }
                Err(why) => {
                    self.backoff.failed(f.credential_id, now, rand::random_range(0..5));
                    tracing::debug!(terminal = %f.name, why, "probe failed");
                }
            }
        }
        Ok(())
    }
}

/// Runs until `stop` turns true.
pub async fn run(state: MasterState, mut stop: watch::Receiver<bool>) {
    let mut prober = match Prober::new(&state) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "master: no TLS material for probes; terminal health is not followed");
            return;
        }
    };
    let mut failing = false;
    loop {
        let jitter = Duration::from_millis(rand::random_range(0..1000));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(TICK + jitter) => {}
        }
        match prober.tick(&state).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("master: health tick works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "master: health tick failed (store unreachable?)");
            }
            Err(_) => {}
        }
    }
}

/// Records each terminal whose health differs from what the store last recorded.
async fn record_changes(
    state: &MasterState,
    clock: &HealthClock,
    facts: &[HealthFacts],
) -> Result<(), crate::db::DbError> {
    for f in facts {
        let h = f.health(clock);
        if f.recorded.map(|(r, _)| r) != Some(h)
            && state.0.ctx.store.record_health(f.credential_id, h, clock.now).await?
        {
            tracing::info!(terminal = %f.name, health = %h, "terminal health changed");
        }
    }
    Ok(())
}

/// Asks one terminal's agent for its status.
async fn probe(tls: &ProbeTls, source: IpAddr, port: u16, f: &HealthFacts) -> Result<AgentStatus, String> {
    let ip = f.tunnel_ip.as_deref().ok_or("no tunnel address")?;
    let client = ClientTls::for_probe(&tls.ca, &tls.cert, &tls.key, &f.name).map_err(|e| e.to_string())?;
    let target = Target { host: ip.to_owned(), port, tls: Some(Trust::Mutual(client)), source: Some(source) };
    let reply = http::send_json(&target, Method::GET, "/v1/status", None::<&()>, PROBE_TIMEOUT, MAX_ANSWER)
        .await
        .map_err(|e| e.to_string())?;
    if reply.status != StatusCode::OK {
        return Err(format!("answered {}", reply.status));
    }
    let st: AgentStatus = reply.json().map_err(|e| format!("unreadable answer: {e}"))?;
    if st.terminal != f.name {
        return Err(format!("the agent says it is {:?}", st.terminal));
    }
    Ok(st)
}

/// master's heartbeat handler: a heartbeat makes its terminal healthy (under Scenario A it came through the
/// terminal's live tunnel, which `identify` checked). A store error is logged, never the heartbeat's failure.
pub async fn on_heartbeat(state: &MasterState, credential_id: i64, name: &str, now: i64) {
    match state.0.ctx.store.record_health(credential_id, Health::Healthy, now).await {
        Ok(true) => tracing::info!(terminal = name, "terminal healthy: heartbeat"),
        Ok(false) => {}
        Err(e) => tracing::warn!(terminal = name, error = %e, "cannot record the terminal's health"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_forgets_on_success() {
        let mut b = Backoff::default();
        assert!(b.due(1, 0), "a newly silent terminal is probed at once");
        b.failed(1, 0, 0);
        assert!(!b.due(1, FIRST_RETRY - 1) && b.due(1, FIRST_RETRY));
        b.failed(1, 100, 0);
        assert!(!b.due(1, 100 + 2 * FIRST_RETRY - 1) && b.due(1, 100 + 2 * FIRST_RETRY));
        for _ in 0..10 {
            b.failed(1, 1000, 0);
        }
        assert!(b.due(1, 1000 + MAX_RETRY) && !b.due(1, 1000 + MAX_RETRY - 1));
        b.failed(1, 2000, 3);
        assert!(!b.due(1, 2000 + MAX_RETRY + 2), "jitter is added");
        b.forget(1);
        assert!(b.due(1, 2000));
        b.failed(2, 0, 0);
        b.retain(|id| id != 2);
        assert!(b.due(2, 0), "a terminal no longer silent starts afresh");
    }
}
