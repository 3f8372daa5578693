//! Live VPN sessions, as reported by the OpenVPN management sockets. The supervisor keeps these rows in step
//! with what the instances say; master looks a request's source address up here (invariant 2).

use super::{DbError, Store};

/// A session that just connected. `client_id` is OpenVPN's CID, unique within one instance of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The node whose openvpn holds it (`cluster`): each node clears only its own.
    pub node: String,
    pub instance: String,
    pub credential_id: i64,
    pub common_name: String,
    pub tunnel_ip: String,
    pub real_addr: String,
    pub since: i64,
    pub client_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub id: i64,
    pub node: String,
    pub instance: String,
    pub credential_id: i64,
    pub common_name: String,
    pub tunnel_ip: String,
    pub real_addr: String,
    pub since: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub client_id: i64,
}

/// One change to a node's session rows, as one of its instances saw it: applied in order, many in one
/// transaction ([`Store::apply_session_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session is up (ESTABLISHED); for a terminal, its first session marks it paired.
    Record {
        row: NewSession,
        terminal: bool,
    },
    Remove {
        instance: String,
        client_id: i64,
    },
    /// A session's byte counters, as openvpn reports them (`status 3`). A session gone already is no error.
    Bytes {
        instance: String,
        client_id: i64,
        bytes_in: i64,
        bytes_out: i64,
    },
    /// The instance's process is gone: every row of that instance.
    Clear {
        instance: String,
    },
}

/// Records a session, unless its credential is revoked: a revocation removes its credential's rows in its own
/// transaction (`Store::revoke`), and a session the writer had queued before it (an ESTABLISHED a moment earlier)
/// is never written after it. (`NOT EXISTS … revoked`, not `EXISTS … active`: a credential that does not exist
/// still fails the foreign key, and with it the writer's whole batch, as any broken change does.) Each value is cast to its column's type: in `INSERT … SELECT` PostgreSQL does not
/// take a parameter's type from the target column.
const UPSERT_SESSION: &str = "INSERT INTO sessions (instance, credential_id, common_name, tunnel_ip, real_addr, since, client_id, node) \
     SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS TEXT), CAST($4 AS TEXT), CAST($5 AS TEXT), \
     CAST($6 AS BIGINT), CAST($7 AS BIGINT), CAST($8 AS TEXT) \
     WHERE NOT EXISTS (SELECT 1 FROM credentials WHERE id = $2 AND revoked_at IS NOT NULL) \
     ON CONFLICT (node, instance, client_id) DO UPDATE SET credential_id = excluded.credential_id, \
     common_name = excluded.common_name, tunnel_ip = excluded.tunnel_ip, \
     real_addr = excluded.real_addr, since = excluded.since, bytes_in = 0, bytes_out = 0";
const REMOVE_SESSION: &str = "DELETE FROM sessions WHERE instance = $1 AND client_id = $2 AND node = $3";
const SESSION_BYTES: &str =
    "UPDATE sessions SET bytes_in = $1, bytes_out = $2 WHERE instance = $3 AND client_id = $4 AND node = $5";
const CLEAR_SESSIONS: &str = "DELETE FROM sessions WHERE node = $2 AND ($1 IS NULL OR instance = $1)";
/// A terminal's first VPN session counts as its pairing when it never paired through the gate: a server-made
/// profile handed over out of band (`terminal import --out`) is in use.
const MARK_PAIRED_BY_SESSION: &str = "UPDATE credentials SET paired_at = $1 \
     WHERE id = $2 AND kind = 'terminal' AND paired_at IS NULL AND revoked_at IS NULL";

macro_rules! session_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, node, instance, credential_id, common_name, tunnel_ip, real_addr, since, bytes_in, bytes_out, \
             client_id FROM sessions ",
            $tail
        )
    };
}

impl Store {
    /// Records a session; a row with the same (node, instance, client_id) is replaced (an instance restarted
    /// and reused the CID), its byte counters reset.
    pub async fn upsert_session(&self, s: &NewSession) -> Result<(), DbError> {
        let change = SessionChange::Record { row: s.clone(), terminal: false };
        self.apply_session_changes(&s.node, std::slice::from_ref(&change)).await.map(drop)
    }

    /// Applies `changes` of `node`'s sessions in order, in one transaction: a fleet coming back writes about 2,000
    /// rows within seconds, and one transaction each would make every other writer of the store wait behind them.
    /// A `Record` names its node in its row. Returns the names of the terminals whose first session marked them
    /// paired.
    pub async fn apply_session_changes(&self, node: &str, changes: &[SessionChange]) -> Result<Vec<String>, DbError> {
        in_tx!(self, tx => async {
            let mut paired = Vec::new();
            for change in changes {
                match change {
                    SessionChange::Record { row, terminal } => {
                        sqlx::query(UPSERT_SESSION)
                            .bind(row.instance.as_str())
                            .bind(row.credential_id)
                            .bind(row.common_name.as_str())
                            .bind(row.tunnel_ip.as_str())
                            .bind(row.real_addr.as_str())
                            .bind(row.since)
                            .bind(row.client_id)
                            .bind(row.node.as_str())
                            .execute(&mut *tx)
                            .await?;
                        if *terminal {
                            let done = sqlx::query(MARK_PAIRED_BY_SESSION)
                                .bind(row.since)
                                .bind(row.credential_id)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                            if done > 0 {
                                paired.push(row.common_name.clone());
                            }
                        }
                    }
                    SessionChange::Remove { instance, client_id } => {
                        sqlx::query(REMOVE_SESSION).bind(instance).bind(client_id).bind(node).execute(&mut *tx).await?;
                    }
                    SessionChange::Bytes { instance, client_id, bytes_in, bytes_out } => {
                        sqlx::query(SESSION_BYTES)
                            .bind(bytes_in)
                            .bind(bytes_out)
                            .bind(instance)
                            .bind(client_id)
                            .bind(node)
                            .execute(&mut *tx)
                            .await?;
                    }
                    SessionChange::Clear { instance } => {
                        sqlx::query(CLEAR_SESSIONS).bind(Some(instance)).bind(node).execute(&mut *tx).await?;
                    }
                }
            }
            Ok(paired)
        })
    }

    /// Forgets a session (disconnect). Forgetting one that is gone already is not an error.
    pub async fn remove_session(&self, node: &str, instance: &str, client_id: i64) -> Result<(), DbError> {
        let change = SessionChange::Remove { instance: instance.to_owned(), client_id };
        self.apply_session_changes(node, std::slice::from_ref(&change)).await.map(drop)
    }

    /// Forgets every session of `instance` on `node` (it stopped or restarted), or of all that node's
    /// instances (the node starts). Other nodes' sessions are theirs. Returns how many.
    pub async fn clear_sessions(&self, node: &str, instance: Option<&str>) -> Result<u64, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query(CLEAR_SESSIONS)
                .bind(instance)
                .bind(node)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Every session, by node, instance, then CID.
    pub async fn list_sessions(&self) -> Result<Vec<SessionRow>, DbError> {
        const SQL: &str = session_select!("ORDER BY node, instance, client_id");
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?))
    }

    /// The sessions of nodes whose heartbeat is at least as recent as `alive_since` (`now - cluster::ALIVE_FOR_SECS`),
    /// by node, instance, then CID: what is online. A node that died (`kill -9`, a power cut) leaves its rows until
    /// another node or its own restart clears them; they are never shown as online.
    pub async fn live_sessions(&self, alive_since: i64) -> Result<Vec<SessionRow>, DbError> {
        const SQL: &str = "SELECT s.id, s.node, s.instance, s.credential_id, s.common_name, s.tunnel_ip, s.real_addr, \
                           s.since, s.bytes_in, s.bytes_out, s.client_id FROM sessions s \
                           JOIN nodes n ON n.name = s.node AND n.last_seen >= $1 \
                           ORDER BY s.node, s.instance, s.client_id";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).bind(alive_since).fetch_all(pool).await?))
    }

    /// How many sessions [`Store::live_sessions`] lists.
    pub async fn count_live_sessions(&self, alive_since: i64) -> Result<i64, DbError> {
        const SQL: &str = "SELECT COUNT(*) FROM sessions s JOIN nodes n ON n.name = s.node AND n.last_seen >= $1";
        Ok(on_pool!(self, pool => sqlx::query_scalar(SQL).bind(alive_since).fetch_one(pool).await?))
    }

    /// Every live session (of a node alive since `alive_since`, as [`Store::live_sessions`]) with its credential's
    /// kind (`terminal`/`admin`), in one query.
    pub async fn list_sessions_with_kind(&self, alive_since: i64) -> Result<Vec<(SessionRow, String)>, DbError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            session: SessionRow,
            kind: String,
        }
        const SQL: &str = "SELECT s.id, s.node, s.instance, s.credential_id, s.common_name, s.tunnel_ip, s.real_addr, s.since, \
                           s.bytes_in, s.bytes_out, s.client_id, c.kind FROM sessions s \
                           JOIN credentials c ON c.id = s.credential_id \
                           JOIN nodes n ON n.name = s.node AND n.last_seen >= $1 \
                           ORDER BY s.node, s.instance, s.client_id";
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(SQL).bind(alive_since).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|r| (r.session, r.kind)).collect())
    }

    /// The sessions of one credential, oldest first.
    pub async fn sessions_of(&self, credential_id: i64) -> Result<Vec<SessionRow>, DbError> {
        const SQL: &str = session_select!("WHERE credential_id = $1 ORDER BY since, id");
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).bind(credential_id).fetch_all(pool).await?))
    }

    /// The session holding tunnel address `ip` (the newest, should a stale row linger beside it).
    pub async fn session_by_tunnel_ip(&self, ip: &str) -> Result<Option<SessionRow>, DbError> {
        const SQL: &str = session_select!("WHERE tunnel_ip = $1 ORDER BY since DESC, id DESC LIMIT 1");
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).bind(ip).fetch_optional(pool).await?))
    }
}
