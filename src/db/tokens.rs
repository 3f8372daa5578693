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
/// writes run it too, `Store::gate_writes`): the conditional UPDATE that takes the token of an active terminal (when
/// it takes nothing, the prechecks say why), the certificate, the terminal marked paired (with the hardware serial
/// it reported, if any).
/// Evaluates to `Result<Result<Redeemed, TokenRefusal>, DbError>`; refusals are the inner `Err`, so that the
/// transaction still commits the lock of a mismatch. A macro because `in_tx!` expands its body once per backend.
macro_rules! redeem_in_tx {
    ($tx:ident, $id:expr, $pubkey:expr, $cert:expr, $hw:expr, $now:expr) => {
        async {
            let (id, pubkey_sha256, cert, hw, now): (&str, &str, &$crate::db::NewCert, Option<&str>, i64) =
                ($id, $pubkey, $cert, $hw, $now);
            // The common path is one statement: the guard that matters (whatever was read before, only one UPDATE
            // can find the token unused, unlocked, unexpired) with the terminal still active, returning the
            // terminal. Each statement is a round trip to the SQLite connection's thread, so the reads that explain
            // a refusal run only when it took nothing.
            let took: Option<i64> = sqlx::query_scalar($crate::db::tokens::TAKE_TOKEN_OF_ACTIVE)
                .bind(now)
                .bind(pubkey_sha256)
                .bind(cert.serial.as_str())
                .bind(id)
                .fetch_optional(&mut *$tx)
                .await?;
            let Some(credential_id) = took else {
                // Why not, in the order every redemption checks (nothing was changed above).
                let token = $crate::db::tokens::redeem_prechecks!($tx, id, pubkey_sha256, now);
                let active: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM credentials WHERE id = $1 AND kind = 'terminal' AND revoked_at IS NULL",
                )
                .bind(token.credential_id)
                .fetch_optional(&mut *$tx)
                .await?;
                return Ok(Err(if active.is_none() {
                    $crate::db::TokenRefusal::Revoked
                } else {
                    $crate::db::TokenRefusal::Used
                }));
            };
            $crate::db::certificates::insert_cert($crate::domain::Kind::Terminal, Some(credential_id), cert, now)
                .execute(&mut *$tx)
                .await
                .map_err(|e| $crate::db::certificates::cert_err(e, cert))?;
            sqlx::query("UPDATE credentials SET paired_at = $1, hw_serial = COALESCE($2, hw_serial) WHERE id = $3")
                .bind(now)
                .bind(hw)
                .bind(credential_id)
                .execute(&mut *$tx)
                .await?;
            Ok::<_, $crate::db::DbError>(Ok($crate::db::Redeemed::Fresh {
                credential_id,
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

/// [`TAKE_TOKEN`] for a redemption that records a new certificate: also requires the token's terminal to be an
/// active terminal, and returns its credential id (no row: refused, and nothing changed). A correlated `EXISTS`
/// (one primary-key lookup), not `credential_id IN (SELECT …)`: SQLite runs that one as a scan of every active
/// credential, per redemption.
pub(crate) const TAKE_TOKEN_OF_ACTIVE: &str = "UPDATE pairing_tokens SET used_at = $1, pubkey_sha256 = $2, cert_serial = $3 \
     WHERE id = $4 AND used_at IS NULL AND locked_at IS NULL AND expires_at > $1 \
     AND EXISTS (SELECT 1 FROM credentials c WHERE c.id = pairing_tokens.credential_id \
                 AND c.kind = 'terminal' AND c.revoked_at IS NULL) \
     RETURNING credential_id";

pub(crate) const TOKEN_BY_ID: &str = "SELECT id, credential_id, secret_hash, created_at, expires_at, used_at, pubkey_sha256, \
                           cert_serial, locked_at FROM pairing_tokens WHERE id = $1";

/// What the gate reads before it evaluates a token request ([`Store::pairing_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingLookup {
    /// When the pairing window closes (`None`: closed), as [`Store::pairing_window`].
    pub window_until: Option<i64>,
    /// The token asked for and its credential, when a token has that id.
    pub token: Option<(TokenRow, Option<super::Credential>)>,
}

/// The window, the token and its credential in one query. The token's columns are renamed `t_…` (they share names
/// with the credential's, which keep theirs for [`CredRow`]); no token leaves them and the credential's NULL.
const LOOKUP: &str = concat!(
    "SELECT w.open_until AS window_until, t.id AS t_id, t.credential_id AS t_credential_id, \
     t.secret_hash AS t_secret_hash, t.created_at AS t_created_at, t.expires_at AS t_expires_at, \
     t.used_at AS t_used_at, t.pubkey_sha256 AS t_pubkey_sha256, t.cert_serial AS t_cert_serial, \
     t.locked_at AS t_locked_at, ",
    "c.id, c.name, c.kind, c.created_at, c.revoked_at, c.revoke_reason, c.home_instance, c.host_index, \
     c.admin_port, c.hw_serial, c.version, c.last_seen, c.paired_at, c.suspended_at \
     FROM pairing_window w LEFT JOIN pairing_tokens t ON t.id = $1 \
     LEFT JOIN credentials c ON c.id = t.credential_id WHERE w.id = 1"
);

/// Decodes a [`LOOKUP`] row (once per backend: the body of `on_pool!`).
macro_rules! lookup_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let window_until: Option<i64> = row.try_get("window_until")?;
        let t_id: Option<String> = row.try_get("t_id")?;
        let token = match t_id {
            None => None,
            Some(id) => {
                let token = TokenRow {
                    id,
                    credential_id: row.try_get("t_credential_id")?,
                    secret_hash: row.try_get("t_secret_hash")?,
                    created_at: row.try_get("t_created_at")?,
                    expires_at: row.try_get("t_expires_at")?,
                    used_at: row.try_get("t_used_at")?,
                    pubkey_sha256: row.try_get("t_pubkey_sha256")?,
                    cert_serial: row.try_get("t_cert_serial")?,
                    locked_at: row.try_get("t_locked_at")?,
                };
                let cred_id: Option<i64> = row.try_get("id")?;
                let cred = match cred_id {
                    None => None,
                    Some(_) => Some(<CredRow as sqlx::FromRow<'_, _>>::from_row(&row)?.into_credential()?),
                };
                Some((token, cred))
            }
        };
        PairingLookup { window_until, token }
    }};
}

impl Store {
    /// The pairing window and, when `token_id` is given, that token with its credential: what the gate reads
    /// before evaluating a token request, in one query (each query is a round trip to a SQLite connection's
    /// thread; under a burst of pairings those hand-offs were most of the gate's work).
    pub async fn pairing_lookup(&self, token_id: Option<&str>) -> Result<PairingLookup, DbError> {
        Ok(on_pool!(self, pool => {
            let row = sqlx::query(LOOKUP).bind(token_id).fetch_one(pool).await?;
            lookup_from_row!(row)
        }))
    }

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
