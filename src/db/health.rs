//! Terminal health (`terminal_health`, migration 0009): the facts `domain::health` derives a terminal's state
//! from, read in one query, and the two things master writes: when a terminal's state last changed (so the time
//! survives restarts) and when its agent last answered a probe.
//!
//! A session counts as a live tunnel only when its node's heartbeat is alive (`cluster::ALIVE_FOR_SECS`): rows a
//! crashed `serve vpn` left behind (SQLite included, where no other node clears them) never make a terminal look
//! online. The paged read model (`views`) filters by health in SQL with [`health_sql`], the same rules as
//! `domain::health::derive` (a test on both backends holds them together).

use super::{DbError, Store};
use crate::domain::health::{Health, Observed, Tunnel};

/// The moment health is judged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthClock {
    pub now: i64,
    /// A node whose heartbeat is at least this recent is alive (`now - cluster::ALIVE_FOR_SECS`).
    pub alive_since: i64,
    /// The agent is heard from when its last heartbeat or successful probe is younger than this many seconds.
    pub silent_after: i64,
    /// Scenario A (cas-vpn runs the VPN): the tunnel's state is known.
    pub vpn: bool,
}

impl HealthClock {
    /// Heartbeats or probes strictly after this are fresh.
    pub fn fresh_after(&self) -> i64 {
        self.now - self.silent_after
    }
}

/// "`c` has a session on a live node", with `alive` the placeholder of [`HealthClock::alive_since`].
pub(super) fn live_sql(alive: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM sessions s JOIN nodes n ON n.name = s.node \
         WHERE s.credential_id = c.id AND n.last_seen >= {alive})"
    )
}

/// `domain::health::derive` in SQL, over `credentials c LEFT JOIN terminal_health h`: `alive`, `fresh` and `vpn`
/// are the placeholders of [`HealthClock::alive_since`], [`HealthClock::fresh_after`] and the scenario (1: A).
pub(super) fn health_sql(alive: &str, fresh: &str, vpn: &str) -> String {
    let live = live_sql(alive);
    format!(
        "(CASE WHEN c.revoked_at IS NOT NULL THEN 'revoked' \
         WHEN c.paired_at IS NULL AND NOT ({vpn} = 1 AND {live}) THEN 'never_paired' \
         WHEN {vpn} = 1 AND NOT {live} THEN 'offline' \
         WHEN c.last_seen > {fresh} OR h.probed_ok_at > {fresh} THEN 'healthy' \
         WHEN {vpn} = 1 THEN 'agent_silent' ELSE 'offline' END)"
    )
}

/// One terminal's facts, and what master last recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFacts {
    pub credential_id: i64,
    pub name: String,
    pub observed: Observed,
    /// The tunnel address of its newest session on a live node.
    pub tunnel_ip: Option<String>,
    /// The state master last recorded and since when.
    pub recorded: Option<(Health, i64)>,
}

impl HealthFacts {
    pub fn health(&self, clock: &HealthClock) -> Health {
        crate::domain::health::derive(&self.observed, clock.now, clock.silent_after)
    }

    /// When the current state began, if master recorded that change (`None`: not recorded yet, e.g. master is not
    /// running, or it went offline while no master looked).
    pub fn since(&self, clock: &HealthClock) -> Option<i64> {
        self.recorded.filter(|(h, _)| *h == self.health(clock)).map(|(_, t)| t)
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    name: String,
    revoked_at: Option<i64>,
    paired_at: Option<i64>,
    last_seen: Option<i64>,
    probed_ok_at: Option<i64>,
    state: Option<String>,
    since: Option<i64>,
    tunnel_ip: Option<String>,
}

impl Store {
    /// The facts of every terminal (or of one), by name.
    pub async fn health_facts(&self, clock: &HealthClock, only: Option<i64>) -> Result<Vec<HealthFacts>, DbError> {
        const SQL: &str = "SELECT c.id, c.name, c.revoked_at, c.paired_at, c.last_seen, h.probed_ok_at, h.state, h.since, \
             (SELECT s.tunnel_ip FROM sessions s JOIN nodes n ON n.name = s.node \
              WHERE s.credential_id = c.id AND n.last_seen >= $1 ORDER BY s.since DESC, s.id DESC LIMIT 1) AS tunnel_ip \
             FROM credentials c LEFT JOIN terminal_health h ON h.credential_id = c.id \
             WHERE c.kind = 'terminal' AND ($2 < 0 OR c.id = $2) ORDER BY c.name";
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(clock.alive_since).bind(only.unwrap_or(-1)).fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|r| {
                let recorded = match (r.state, r.since) {
                    (Some(s), Some(t)) => Some((s.parse::<Health>().map_err(DbError::Corrupt)?, t)),
                    _ => None,
                };
                let tunnel = match (clock.vpn, r.tunnel_ip.is_some()) {
                    (false, _) => Tunnel::Unknown,
                    (true, true) => Tunnel::Up,
                    (true, false) => Tunnel::Down,
                };
                Ok(HealthFacts {
                    credential_id: r.id,
                    name: r.name,
                    observed: Observed {
                        revoked: r.revoked_at.is_some(),
                        paired: r.paired_at.is_some(),
                        tunnel,
                        last_heartbeat: r.last_seen,
                        last_probe_ok: r.probed_ok_at,
                    },
                    tunnel_ip: r.tunnel_ip,
                    recorded,
                })
            })
            .collect()
    }

    /// Records that terminal `credential_id` is in `state` at `now`: the time is written only when the state
    /// changed (or was never recorded). Returns whether it changed. Idempotent, so two masters (two nodes) that
    /// see the same change record it once.
    pub async fn record_health(&self, credential_id: i64, state: Health, now: i64) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO terminal_health (credential_id, state, since) VALUES ($1, $2, $3) \
                 ON CONFLICT (credential_id) DO UPDATE SET state = excluded.state, since = excluded.since \
                 WHERE terminal_health.state <> excluded.state",
            )
            .bind(credential_id)
            .bind(state.as_str())
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Records a successful probe of the terminal's agent at `now` (the state is recorded by the caller).
    pub async fn record_probe_ok(&self, credential_id: i64, now: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO terminal_health (credential_id, state, since, probed_ok_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (credential_id) DO UPDATE SET probed_ok_at = excluded.probed_ok_at",
            )
            .bind(credential_id)
            .bind(Health::Healthy.as_str())
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}
