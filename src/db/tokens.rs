//! One-time pairing tokens (invariant 8).
//!
//! A token is a public lookup `id` plus a secret that the store never sees: only its SHA-256 (`secret_hash`) is
//! stored, and the caller compares hashes (in constant time) before calling [`Store::redeem_token`]. Redemption
//! is a conditional UPDATE (`used_at IS NULL AND locked_at IS NULL AND expires_at > now`) in the same transaction
//! as the certificate insert, so of any number of concurrent attempts exactly one pairs.

use std::time::{SystemTime, UNIX_EPOCH};

use super::certificates::NewCert;
use super::credentials::{CRED_BY_ID, CredRow};
use super::{DbError, Store};
use crate::domain::Kind;

/// The checks every redemption makes first, inside its transaction, in this order: unknown, locked, used (the
/// same key gets `AlreadySameKey`; another key locks the token), expired. Evaluates to the token row, or returns
/// the refusal from the enclosing transaction body. A macro because `in_tx!` expands the body once per backend.
macro_rules! redeem_prechecks {
    ($tx:ident, $id:expr, $identity:expr, $now:expr) => {{
        let token: Option<$crate::db::tokens::TokenRow> =
            sqlx::query_as($crate::db::tokens::TOKEN_BY_ID).bind($id).fetch_optional(&mut *$tx).await?;
        let Some(token) = token else { return Ok(Err($crate::db::TokenRefusal::Unknown)) };
        if token.locked_at.is_some() {
            return Ok(Err($crate::db::TokenRefusal::Locked));
        }
        if token.used_at.is_some() {
            if token.pubkey_sha256.as_deref() == Some($identity) {
                return Ok(Ok($crate::db::Redeemed::AlreadySameKey {
                    credential_id: token.credential_id,
                    cert_serial: token.cert_serial.unwrap_or_default(),
                }));
            }
            sqlx::query("UPDATE pairing_tokens SET locked_at = $1 WHERE id = $2 AND locked_at IS NULL")
                .bind($now)
                .bind($id)
                .execute(&mut *$tx)
                .await?;
            return Ok(Err($crate::db::TokenRefusal::KeyMismatch));
        }
        if token.expires_at <= $now {
            return Ok(Err($crate::db::TokenRefusal::Expired));
        }
        token
    }};
}
pub(crate) use redeem_prechecks;

/// The body of a redemption inside an open transaction `$tx` (see [`Store::redeem_token`]; the gate's grouped
/// writes run it too, `Store::gate_writes`): prechecks, the terminal still active, the conditional UPDATE that takes
/// the token, the certificate, the terminal marked paired (with the hardware serial it reported, if any).
/// Evaluates to `Result<Result<Redeemed, TokenRefusal>, DbError>`; refusals are the inner `Err`, so that the
/// transaction still commits the lock of a mismatch. A macro because `in_tx!` expands its body once per backend.
macro_rules! redeem_in_tx {
    ($tx:ident, $id:expr, $pubkey:expr, $cert:expr, $hw:expr, $now:expr) => {
        async {
            let (id, pubkey_sha256, cert, hw, now): (&str, &str, &$crate::db::NewCert, Option<&str>, i64) =
                ($id, $pubkey, $cert, $hw, $now);
            let token = $crate::db::tokens::redeem_prechecks!($tx, id, pubkey_sha256, now);
            let active: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM credentials WHERE id = $1 AND kind = 'terminal' AND revoked_at IS NULL",
            )
            .bind(token.credential_id)
            .fetch_optional(&mut *$tx)
            .await?;
            if active.is_none() {
                return Ok(Err($crate::db::TokenRefusal::Revoked));
            }
            // The guard that matters: whatever was read above, only one UPDATE can find the token unused.
            let took = sqlx::query($crate::db::tokens::TAKE_TOKEN)
                .bind(now)
                .bind(pubkey_sha256)
                .bind(cert.serial.as_str())
                .bind(id)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            if took != 1 {
                return Ok(Err($crate::db::TokenRefusal::Used));
            }
            $crate::db::certificates::insert_cert($crate::domain::Kind::Terminal, Some(token.credential_id), cert, now)
                .execute(&mut *$tx)
                .await
                .map_err(|e| $crate::db::certificates::cert_err(e, cert))?;
            sqlx::query("UPDATE credentials SET paired_at = $1, hw_serial = COALESCE($2, hw_serial) WHERE id = $3")
                .bind(now)
                .bind(hw)
                .bind(token.credential_id)
                .execute(&mut *$tx)
                .await?;
            Ok::<_, $crate::db::DbError>(Ok($crate::db::Redeemed::Fresh {
                credential_id: token.credential_id,
                cert_serial: cert.serial.clone(),
            }))
        }
        .await
    };
}
pub(crate) use redeem_in_tx;

/// Why a token was refused: the `reason` of [`DbError::TokenUnusable`]. Its text is stable and safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRefusal {
    /// No token has that id.
    Unknown,
    /// Past its `expires_at`, never used.
    Expired,
    /// Already used (by another attempt that won the race).
    Used,
    /// Used with another public key: the token is now locked (the caller answers 409).
    KeyMismatch,
    /// Locked earlier (a key mismatch, or its credential was revoked): refused for good.
    Locked,
    /// Its credential was revoked.
    Revoked,
}

impl TokenRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unknown",
            TokenRefusal::Expired => "expired",
            TokenRefusal::Used => "used",
            TokenRefusal::KeyMismatch => "key_mismatch",
            TokenRefusal::Locked => "locked",
            TokenRefusal::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token to store with a terminal: its lookup id, the hex SHA-256 of its secret, and its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: String,
    pub secret_hash: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken").field("id", &self.id).field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// A stored token.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub credential_id: i64,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// Hex SHA-256 of the public key it was redeemed with.
    pub pubkey_sha256: Option<String>,
    /// The certificate issued when it was redeemed.
    pub cert_serial: Option<String>,
    pub locked_at: Option<i64>,
}

impl std::fmt::Debug for TokenRow {
    // The hash is not the secret, but it is the one thing that checks it: keep it out of logs all the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("id", &self.id)
            .field("credential_id", &self.credential_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("pubkey_sha256", &self.pubkey_sha256)
            .field("cert_serial", &self.cert_serial)
            .field("locked_at", &self.locked_at)
            .finish_non_exhaustive()
    }
}

/// What a successful [`Store::redeem_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// This call used the token: the certificate was recorded and the terminal marked paired.
    Fresh { credential_id: i64, cert_serial: String },
    /// The token was already used with this same public key (a retry after a lost response): nothing changed;
    /// answer with the certificate recorded then.
    AlreadySameKey { credential_id: i64, cert_serial: String },
}

/// The guard of every redemption: whatever was read before, only one UPDATE finds the token unused, unlocked and
/// unexpired. Binds: now, the key identity, the certificate serial, the token id.
pub(crate) const TAKE_TOKEN: &str = "UPDATE pairing_tokens SET used_at = $1, pubkey_sha256 = $2, cert_serial = $3 \
                                     WHERE id = $4 AND used_at IS NULL AND locked_at IS NULL AND expires_at > $1";

pub(crate) const TOKEN_BY_ID: &str = "SELECT id, credential_id, secret_hash, created_at, expires_at, used_at, pubkey_sha256, \
                           cert_serial, locked_at FROM pairing_tokens WHERE id = $1";

impl Store {
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, DbError> {
        Ok(on_pool!(self, pool => sqlx::query_as(TOKEN_BY_ID).bind(id).fetch_optional(pool).await?))
    }

    /// Stores another token for an active terminal (its `created_at` is the system clock: the struct carries
    /// only what the caller decides).
    pub async fn new_token(&self, credential_id: i64, token: &NewToken) -> Result<(), DbError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        in_tx!(self, tx => async {
            let row: Option<CredRow> = sqlx::query_as(CRED_BY_ID).bind(credential_id).fetch_optional(&mut *tx).await?;
            let Some(credential) = row.map(CredRow::into_credential).transpose()? else {
                return Err(DbError::NotFound { what: format!("credential #{credential_id}") });
            };
            if credential.is_revoked() {
                return Err(DbError::AlreadyRevoked { name: credential.name });
            }
            if credential.kind != Kind::Terminal {
                let (name, actual) = (credential.name, credential.kind);
                return Err(DbError::WrongKind { name, actual, expected: Kind::Terminal });
            }
            sqlx::query(
                "INSERT INTO pairing_tokens (id, credential_id, secret_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token.id.as_str())
            .bind(credential_id)
            .bind(token.secret_hash.as_str())
            .bind(now)
            .bind(token.expires_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }

    /// Redeems token `id` for the public key whose SHA-256 is `pubkey_sha256`: in ONE transaction, marks it used
    /// (conditional UPDATE), records `cert` for its terminal (CA `terminal`) and sets the terminal's `paired_at`.
    /// The caller must already have checked the secret against [`TokenRow::secret_hash`].
    ///
    /// Refusals are `DbError::TokenUnusable` with a [`TokenRefusal`]; a different key on a used token also locks
    /// the token (that change is committed although the call fails).
    pub async fn redeem_token(
        &self,
        id: &str,
        pubkey_sha256: &str,
        cert: &NewCert,
        now: i64,
    ) -> Result<Redeemed, DbError> {
        // The inner Result carries refusals, so that the transaction still commits the lock of a mismatch.
        let outcome: Result<Redeemed, TokenRefusal> =
            in_tx!(self, tx => async { redeem_in_tx!(tx, id, pubkey_sha256, cert, None::<&str>, now) })?;
        outcome.map_err(|reason| DbError::TokenUnusable { reason })
    }

    /// Locks token `id` for good. Returns whether it was unlocked before.
    pub async fn lock_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE pairing_tokens SET locked_at = $1 WHERE id = $2 AND locked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }
}
