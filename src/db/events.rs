//! Events: changes that must reach live sessions on every node (`cluster`). A change writes its event row in
//! its own transaction and, on PostgreSQL, `pg_notify(EVENTS_CHANNEL, id)` with it (delivered at commit, ids only:
//! a payload stays far below PostgreSQL's 8000-byte limit); nodes read the rows themselves (catch-up), so a
//! notification a node missed costs only the time to its next catch-up. Nodes acknowledge what they applied.

use super::{DbError, Store};

/// The PostgreSQL channel events are announced on.
pub const EVENTS_CHANNEL: &str = "cas_vpn_events";

/// What a node does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// End every live session of the credential named `subject` (revoked, or suspended).
    Kill,
    /// The node named `subject` moves its terminals elsewhere and takes no new ones.
    Drain,
    /// The node named `subject` serves again.
    Resume,
    /// Re-plan from the store: the VPN instances (an admin credential issued or revoked) and the firewall (its
    /// admin ports, the pairing window).
    Reload,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Kill => "kill",
            EventKind::Drain => "drain",
            EventKind::Resume => "resume",
            EventKind::Reload => "reload",
        }
    }

    fn parse(raw: &str) -> Result<EventKind, DbError> {
        match raw {
            "kill" => Ok(EventKind::Kill),
            "drain" => Ok(EventKind::Drain),
            "resume" => Ok(EventKind::Resume),
            "reload" => Ok(EventKind::Reload),
            other => Err(DbError::Corrupt(format!("event kind {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub kind: EventKind,
    pub subject: String,
    /// The one node it is for; `None`: every node.
    pub node: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    at: i64,
    kind: String,
    subject: String,
    node: Option<String>,
}

/// One node's acknowledgement of an event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventAck {
    pub node: String,
    pub at: i64,
    pub killed: i64,
}

/// How a transaction announces an event: PostgreSQL notifies listeners at commit; SQLite has no listeners
/// (one node, told through its control socket and its own catch-up).
pub(crate) trait Notify {
    fn notify_event(&mut self, id: i64) -> impl std::future::Future<Output = Result<(), DbError>> + Send;
}

impl Notify for sqlx::SqliteConnection {
    async fn notify_event(&mut self, _id: i64) -> Result<(), DbError> {
        Ok(())
    }
}

impl Notify for sqlx::PgConnection {
    async fn notify_event(&mut self, id: i64) -> Result<(), DbError> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS_CHANNEL).bind(id.to_string()).execute(self).await?;
        Ok(())
    }
}

/// At most this many events are read per catch-up (the rest at the next one, at once).
const CATCH_UP_BATCH: i64 = 500;

impl Store {
    /// Publishes an event in a transaction of its own (for changes with nothing else to write, e.g. a kill
    /// redone by a second `revoke`). Returns its id.
    pub async fn publish_event(
        &self,
        kind: EventKind,
        subject: &str,
        node: Option<&str>,
        now: i64,
    ) -> Result<i64, DbError> {
        in_tx!(self, tx => async { publish_event_in!(tx, kind, subject, node, now) })
    }

    /// Events after `after` that concern `node` (addressed to it or to every node), oldest first.
    pub async fn events_after(&self, after: i64, node: &str) -> Result<Vec<Event>, DbError> {
        let rows: Vec<EventRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, at, kind, subject, node FROM events WHERE id > $1 AND (node IS NULL OR node = $2) \
                 ORDER BY id LIMIT $3",
            )
            .bind(after)
            .bind(node)
            .bind(CATCH_UP_BATCH)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(Event { id: r.id, at: r.at, kind: EventKind::parse(&r.kind)?, subject: r.subject, node: r.node })
            })
            .collect()
    }

    /// The newest event's id (0 when there is none): where a starting node begins following.
    pub async fn last_event_id(&self) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(id), 0) FROM events").fetch_one(pool).await?
        }))
    }

    /// Records that `node` applied event `id` (ending `killed` sessions). Applying one twice keeps the first.
    pub async fn ack_event(&self, id: i64, node: &str, killed: i64, now: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO event_acks (event_id, node, at, killed) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event_id, node) DO NOTHING",
            )
            .bind(id)
            .bind(node)
            .bind(now)
            .bind(killed)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Who acknowledged event `id`, by node name.
    pub async fn event_acks(&self, id: i64) -> Result<Vec<EventAck>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT node, at, killed FROM event_acks WHERE event_id = $1 ORDER BY node")
                .bind(id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Each node's acknowledgements of the events `first..=last` (a bulk revocation's kills): the newest event it
    /// acknowledged there and the sessions it ended for them all. A node applies events in order, so having
    /// acknowledged `last` means it applied every one before.
    pub async fn event_acks_between(&self, first: i64, last: i64) -> Result<Vec<(String, i64, i64)>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT node, MAX(event_id), CAST(COALESCE(SUM(killed), 0) AS BIGINT) FROM event_acks \
                 WHERE event_id BETWEEN $1 AND $2 GROUP BY node ORDER BY node",
            )
            .bind(first)
            .bind(last)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Deletes events (and their acknowledgements) older than `before`: a node that was down longer than that
    /// starts afresh anyway (its sessions were cleared). Returns how many.
    pub async fn prune_events(&self, before: i64) -> Result<u64, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM events WHERE at < $1").bind(before).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }
}

/// Why an [`EventListener`] woke its node up: every reason leads to a catch-up read of the event rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A notification arrived.
    Notified,
    /// The connection was lost and is back (or is being retried): notifications sent meanwhile are lost.
    Reconnected,
    /// Nothing within the period (the periodic catch-up).
    Quiet,
}

/// PostgreSQL's `LISTEN` on [`EVENTS_CHANNEL`] (sqlx `PgListener`, which reconnects and listens again by
/// itself); on SQLite there is nothing to listen to and every wait is `Quiet`.
pub struct EventListener(Option<sqlx::postgres::PgListener>);

impl Store {
    /// A listener for events (see [`EventListener::wait`]).
    pub async fn event_listener(&self) -> Result<EventListener, DbError> {
        match self {
            Store::Sqlite(_) => Ok(EventListener(None)),
            Store::Postgres(pool) => {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen(EVENTS_CHANNEL).await?;
                Ok(EventListener(Some(l)))
            }
        }
    }
}

impl EventListener {
    /// Waits at most `period` for a notification. A lost connection is `Reconnected` (sqlx reconnects at the
    /// next wait); a failed reconnection is an error, after which the caller waits a little and tries again.
    pub async fn wait(&mut self, period: std::time::Duration) -> Result<Wake, DbError> {
        let Some(l) = self.0.as_mut() else {
            tokio::time::sleep(period).await;
            return Ok(Wake::Quiet);
        };
        match tokio::time::timeout(period, l.try_recv()).await {
            Err(_) => Ok(Wake::Quiet),
            Ok(Ok(Some(_))) => Ok(Wake::Notified),
            Ok(Ok(None)) => Ok(Wake::Reconnected),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}
