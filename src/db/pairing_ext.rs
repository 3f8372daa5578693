//! Pairing state beyond tokens: server-keygen delivery (the certificate exists before pairing) and the approval
//! flow's pending pairings. Every change is one statement or one transaction.

use super::{DbError, Redeemed, Store, TokenRefusal};
use crate::domain::PairingState;

/// A pairing waiting for (or decided by) an admin.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingPairing {
    pub id: String,
    /// Hex SHA-256 of the CSR's SubjectPublicKeyInfo.
    pub pubkey_sha256: String,
    /// The CSR (public: it holds no secret).
    pub csr_pem: String,
    /// The short code derived from the public key (`ABCD-EFGH`).
    pub code: String,
    /// The CN the CSR asked for, if any.
    pub common_name: Option<String>,
    pub hw_serial: Option<String>,
    pub version: Option<String>,
    pub source_ip: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Stored as its text (`pending`, `approved`, `rejected`); a row with any other fails the read.
    #[sqlx(try_from = "String")]
    pub state: PairingState,
    pub decided_at: Option<i64>,
    pub credential_id: Option<i64>,
    pub cert_serial: Option<String>,
}

/// What [`Store::submit_pending_pairing`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// A new pairing was recorded.
    Created(PendingPairing),
    /// This key already has a pairing (pending and not expired, approved or rejected): here it is, unchanged.
    Existing(PendingPairing),
    /// Too many pairings are waiting already; nothing was recorded.
    TooMany,
}

const PENDING_COLS: &str = "id, pubkey_sha256, csr_pem, code, common_name, hw_serial, version, source_ip, \
                            created_at, expires_at, state, decided_at, credential_id, cert_serial";

/// Expired, undecided pairings are forgotten this long after they expired (until then a poll hears `expired`).
const KEEP_EXPIRED_SECS: i64 = 24 * 3600;

impl Store {
    /// Server-keygen delivery: the terminal's certificate was made with it, so redeeming token `id` only marks it
    /// used by `identity` (the hex SHA-256 of the requester's public key, or a fixed marker when it sent none) for
    /// `cert_serial`, and marks the terminal paired with its reported hardware serial, in one transaction. Refusals
    /// and the same-identity retry behave exactly as in [`Store::redeem_token`].
    pub async fn redeem_token_keygen(
        &self,
        id: &str,
        identity: &str,
        cert_serial: &str,
        hw_serial: Option<&str>,
        now: i64,
    ) -> Result<Redeemed, DbError> {
        let outcome: Result<Redeemed, TokenRefusal> = in_tx!(self, tx => async {
            let token = super::tokens::redeem_prechecks!(tx, id, identity, now);
            let active: Option<i64> = sqlx::query_scalar(
                "SELECT c.id FROM credentials c JOIN certificates x ON x.credential_id = c.id \
                 WHERE c.id = $1 AND c.kind = 'terminal' AND c.revoked_at IS NULL \
                 AND x.serial = $2 AND x.revoked_at IS NULL",
            )
            .bind(token.credential_id)
            .bind(cert_serial)
            .fetch_optional(&mut *tx)
            .await?;
            if active.is_none() {
                return Ok(Err(TokenRefusal::Revoked));
            }
            let took = sqlx::query(super::tokens::TAKE_TOKEN)
            .bind(now)
            .bind(identity)
            .bind(cert_serial)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if took != 1 {
                return Ok(Err(TokenRefusal::Used));
            }
            sqlx::query("UPDATE credentials SET paired_at = $1, hw_serial = COALESCE($2, hw_serial) WHERE id = $3")
                .bind(now)
                .bind(hw_serial)
                .bind(token.credential_id)
                .execute(&mut *tx)
                .await?;
            Ok(Ok(Redeemed::Fresh { credential_id: token.credential_id, cert_serial: cert_serial.to_owned() }))
        })?;
        outcome.map_err(|reason| DbError::TokenUnusable { reason })
    }

    /// Records an approval-flow pairing, unless this public key already has one (returned as it is), or
    /// `max_pending` undecided, unexpired pairings are waiting (`max_per_source` of them from the same address). A pending pairing that expired is replaced (the
    /// terminal started over); expired ones are forgotten a day after they expired.
    pub async fn submit_pending_pairing(
        &self,
        new: &PendingPairing,
        max_pending: u32,
        max_per_source: u32,
        now: i64,
    ) -> Result<Submitted, DbError> {
        let by_key = format!("SELECT {PENDING_COLS} FROM pending_pairings WHERE pubkey_sha256 = $1");
        in_tx!(self, tx => async {
            sqlx::query("DELETE FROM pending_pairings WHERE state = 'pending' AND expires_at <= $1")
                .bind(now - KEEP_EXPIRED_SECS)
                .execute(&mut *tx)
                .await?;
            let existing: Option<PendingPairing> =
                sqlx::query_as(&by_key).bind(new.pubkey_sha256.as_str()).fetch_optional(&mut *tx).await?;
            if let Some(p) = existing {
                if p.state != PairingState::Pending || p.expires_at > now {
                    return Ok(Submitted::Existing(p));
                }
                sqlx::query("DELETE FROM pending_pairings WHERE id = $1").bind(p.id.as_str()).execute(&mut *tx).await?;
            }
            let waiting: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pending_pairings WHERE state = 'pending' AND expires_at > $1")
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            let from_source: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pending_pairings WHERE state = 'pending' AND expires_at > $1 AND source_ip = $2",
            )
            .bind(now)
            .bind(new.source_ip.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if waiting >= i64::from(max_pending) || from_source >= i64::from(max_per_source) {
                return Ok(Submitted::TooMany);
            }
            sqlx::query(
                "INSERT INTO pending_pairings (id, pubkey_sha256, csr_pem, code, common_name, hw_serial, version, \
                 source_ip, created_at, expires_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending')",
            )
            .bind(new.id.as_str())
            .bind(new.pubkey_sha256.as_str())
            .bind(new.csr_pem.as_str())
            .bind(new.code.as_str())
            .bind(new.common_name.as_deref())
            .bind(new.hw_serial.as_deref())
            .bind(new.version.as_deref())
            .bind(new.source_ip.as_str())
            .bind(new.created_at)
            .bind(new.expires_at)
            .execute(&mut *tx)
            .await?;
            let mut p = new.clone();
            p.state = PairingState::Pending;
            p.decided_at = None;
            p.credential_id = None;
            p.cert_serial = None;
            Ok(Submitted::Created(p))
        })
    }

    pub async fn pending_pairing(&self, id: &str) -> Result<Option<PendingPairing>, DbError> {
        let sql = format!("SELECT {PENDING_COLS} FROM pending_pairings WHERE id = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// Pairings, oldest first: only undecided, unexpired ones unless `all`.
    pub async fn list_pending_pairings(&self, all: bool, now: i64) -> Result<Vec<PendingPairing>, DbError> {
        let sql = format!(
            "SELECT {PENDING_COLS} FROM pending_pairings \
             WHERE $1 = 1 OR (state = 'pending' AND expires_at > $2) ORDER BY created_at, id"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(i64::from(all)).bind(now).fetch_all(pool).await?
        }))
    }

    /// Approves pairing `id` for terminal `credential_id` (already created with certificate `cert_serial`): in one
    /// transaction the pairing becomes `approved` (only if it is still pending and unexpired) and the terminal is
    /// marked paired with the reported hardware serial. Returns whether it was still pending.
    pub async fn approve_pending_pairing(
        &self,
        id: &str,
        credential_id: i64,
        cert_serial: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        in_tx!(self, tx => async {
            let hw: Option<Option<String>> = sqlx::query_scalar(
                "UPDATE pending_pairings SET state = 'approved', decided_at = $1, credential_id = $2, cert_serial = $3 \
                 WHERE id = $4 AND state = 'pending' AND expires_at > $1 RETURNING hw_serial",
            )
            .bind(now)
            .bind(credential_id)
            .bind(cert_serial)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(hw) = hw else { return Ok(false) };
            sqlx::query(
                "UPDATE credentials SET paired_at = $1, hw_serial = COALESCE($2, hw_serial) \
                 WHERE id = $3 AND kind = 'terminal' AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(hw)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
            Ok(true)
        })
    }

    /// Rejects pairing `id` if it is still pending. Returns whether it was.
    pub async fn reject_pending_pairing(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE pending_pairings SET state = 'rejected', decided_at = $1 WHERE id = $2 AND state = 'pending'")
                .bind(now)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Rejects every pending pairing (`pairing reject --all`: a queue filled by strangers). Returns how many.
    pub async fn reject_all_pending_pairings(&self, now: i64) -> Result<u64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("UPDATE pending_pairings SET state = 'rejected', decided_at = $1 WHERE state = 'pending' AND expires_at > $1")
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Makes the pending pairings expire now (the window they were made in closed), optionally only those from
    /// `source_ip` (a banned address). They poll as expired from then on. Returns how many.
    pub async fn expire_pending_pairings(&self, source_ip: Option<&str>, now: i64) -> Result<u64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "UPDATE pending_pairings SET expires_at = $1 \
                 WHERE state = 'pending' AND expires_at > $1 AND ($2 IS NULL OR source_ip = $2)",
            )
            .bind(now)
            .bind(source_ip)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }
}
