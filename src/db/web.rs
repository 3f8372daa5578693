//! The admin web UI's rows: its users, their server-side sessions, recovery codes, one-time setup links, API
//! tokens and one-time credential downloads. Only hashes of secrets come here (the TOTP seed excepted: a code
//! cannot be checked without it); the `web` service makes and checks them.

use super::{DbError, Store, narrow};
use crate::domain::Name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUser {
    pub id: i64,
    pub name: Name,
    /// `None` until the user has followed their setup link.
    pub password_hash: Option<String>,
    /// Base32 TOTP seed; `None` until enrolled (or after an admin reset it).
    pub totp_secret: Option<String>,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    /// Wrong passwords or codes since the last good login.
    pub failed_logins: u32,
    /// No password is checked for this user before this time (slows guessing; never a lock-out).
    pub slow_until: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    name: String,
    password_hash: Option<String>,
    totp_secret: Option<String>,
    created_at: i64,
    disabled_at: Option<i64>,
    failed_logins: i64,
    slow_until: Option<i64>,
}

impl UserRow {
    fn into_user(self) -> Result<WebUser, DbError> {
        Ok(WebUser {
            id: self.id,
            name: self.name.parse().map_err(|e: crate::domain::DomainError| DbError::Corrupt(e.to_string()))?,
            password_hash: self.password_hash,
            totp_secret: self.totp_secret,
            created_at: self.created_at,
            disabled_at: self.disabled_at,
            failed_logins: narrow("failed_logins", Some(self.failed_logins))?.unwrap_or(0),
            slow_until: self.slow_until,
        })
    }
}

const USER_COLS: &str =
    "SELECT id, name, password_hash, totp_secret, created_at, disabled_at, failed_logins, slow_until FROM web_users ";

/// How far a web session got: the password was right (`Password`, TOTP next), TOTP must be enrolled first
/// (`Enroll`), or fully logged in (`Full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Password,
    Enroll,
    Full,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Password => "password",
            Stage::Enroll => "enroll",
            Stage::Full => "full",
        }
    }
    fn parse(raw: &str) -> Result<Stage, DbError> {
        match raw {
            "password" => Ok(Stage::Password),
            "enroll" => Ok(Stage::Enroll),
            "full" => Ok(Stage::Full),
            other => Err(DbError::Corrupt(format!("web session stage {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// SHA-256 (hex) of the cookie value: the cookie itself is never stored.
    pub id_hash: String,
    pub user_id: i64,
    pub stage: Stage,
    pub csrf: String,
    pub source: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub pending_totp: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id_hash: String,
    user_id: i64,
    stage: String,
    csrf: String,
    source: String,
    created_at: i64,
    last_seen: i64,
    pending_totp: Option<String>,
}

impl SessionRow {
    fn into_session(self) -> Result<WebSession, DbError> {
        Ok(WebSession {
            stage: Stage::parse(&self.stage)?,
            id_hash: self.id_hash,
            user_id: self.user_id,
            csrf: self.csrf,
            source: self.source,
            created_at: self.created_at,
            last_seen: self.last_seen,
            pending_totp: self.pending_totp,
        })
    }
}

const SESSION_COLS: &str =
    "SELECT id_hash, user_id, stage, csrf, source, created_at, last_seen, pending_totp FROM web_sessions ";

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            other => Err(format!("unknown scope {other:?} (expected read or write)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub label: String,
    pub scope: Scope,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    user_id: i64,
    label: String,
    scope: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl TokenRow {
    fn into_token(self) -> Result<ApiToken, DbError> {
        Ok(ApiToken {
            scope: self.scope.parse().map_err(DbError::Corrupt)?,
            id: self.id,
            user_id: self.user_id,
            label: self.label,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
        })
    }
}

const TOKEN_COLS: &str =
    "SELECT id, user_id, label, scope, created_at, expires_at, revoked_at, last_used_at FROM api_tokens ";

/// What became of a one-time download link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// Taken now: issue the credential of this name.
    Take(Name),
    Used,
    Expired,
    /// Unknown, or asked for from another web session.
    Unknown,
}

impl Store {
    /// Creates a web user (no password, no TOTP yet) with a one-time setup link, in one transaction.
    pub async fn create_web_user(
        &self,
        name: &Name,
        link_hash: &str,
        link_expires_at: i64,
        now: i64,
    ) -> Result<WebUser, DbError> {
        in_tx!(self, tx => async {
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM web_users WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(DbError::NameTaken { name: name.clone() });
            }
            let id: i64 =
                sqlx::query_scalar("INSERT INTO web_users (name, created_at) VALUES ($1, $2) RETURNING id")
                    .bind(name.as_str())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO web_setup_links (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(link_hash)
            .bind(id)
            .bind(now)
            .bind(link_expires_at)
            .execute(&mut *tx)
            .await?;
            let row: UserRow = sqlx::query_as(&format!("{USER_COLS} WHERE id = $1")).bind(id).fetch_one(&mut *tx).await?;
            row.into_user()
        })
    }

    /// A new setup link for an existing user (the earlier unused ones stop working).
    pub async fn new_setup_link(
        &self,
        user_id: i64,
        link_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError> {
        in_tx!(self, tx => async {
            sqlx::query("UPDATE web_setup_links SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
                .bind(now)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO web_setup_links (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(link_hash)
            .bind(user_id)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }

    /// The enabled user an unused, unexpired setup link belongs to.
    pub async fn setup_link_user(&self, link_hash: &str, now: i64) -> Result<Option<WebUser>, DbError> {
        let row: Option<UserRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!(
                "{USER_COLS} WHERE disabled_at IS NULL AND id = (SELECT user_id FROM web_setup_links \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2)"
            ))
            .bind(link_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        row.map(UserRow::into_user).transpose()
    }

    /// Uses a setup link: sets the password (and clears TOTP: a setup link starts the account afresh) in one
    /// transaction. `None` when the link is unknown, used, expired or its user disabled: nothing changes.
    pub async fn use_setup_link(
        &self,
        link_hash: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<WebUser>, DbError> {
        in_tx!(self, tx => async {
            let user_id: Option<i64> = sqlx::query_scalar(
                "UPDATE web_setup_links SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                 AND user_id IN (SELECT id FROM web_users WHERE disabled_at IS NULL) RETURNING user_id",
            )
            .bind(now)
            .bind(link_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = user_id else { return Ok(None) };
            sqlx::query(
                "UPDATE web_users SET password_hash = $1, totp_secret = NULL, failed_logins = 0, slow_until = NULL \
                 WHERE id = $2",
            )
            .bind(password_hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM web_recovery_codes WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM web_sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
            let row: UserRow = sqlx::query_as(&format!("{USER_COLS} WHERE id = $1")).bind(id).fetch_one(&mut *tx).await?;
            row.into_user().map(Some)
        })
    }

    pub async fn web_user_by_name(&self, name: &str) -> Result<Option<WebUser>, DbError> {
        let row: Option<UserRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{USER_COLS} WHERE name = $1")).bind(name).fetch_optional(pool).await?
        });
        row.map(UserRow::into_user).transpose()
    }

    pub async fn web_user(&self, id: i64) -> Result<Option<WebUser>, DbError> {
        let row: Option<UserRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{USER_COLS} WHERE id = $1")).bind(id).fetch_optional(pool).await?
        });
        row.map(UserRow::into_user).transpose()
    }

    pub async fn list_web_users(&self) -> Result<Vec<WebUser>, DbError> {
        let rows: Vec<UserRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{USER_COLS} ORDER BY name")).fetch_all(pool).await?
        });
        rows.into_iter().map(UserRow::into_user).collect()
    }

    /// How many enabled users can log in (have a password).
    pub async fn count_active_web_users(&self) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM web_users WHERE disabled_at IS NULL AND password_hash IS NOT NULL",
            )
            .fetch_one(pool)
            .await?
        }))
    }

    pub async fn set_web_password(&self, user_id: i64, password_hash: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE web_users SET password_hash = $1 WHERE id = $2")
                .bind(password_hash)
                .bind(user_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Enrols TOTP: the seed and a fresh set of recovery codes (hashes) replace the old ones, in one transaction.
    pub async fn set_totp(&self, user_id: i64, secret: &str, recovery_hashes: &[String]) -> Result<(), DbError> {
        in_tx!(self, tx => async {
            sqlx::query("UPDATE web_users SET totp_secret = $1 WHERE id = $2")
                .bind(secret)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM web_recovery_codes WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
            for h in recovery_hashes {
                sqlx::query("INSERT INTO web_recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                    .bind(user_id)
                    .bind(h.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    }

    /// Takes TOTP and recovery codes away and ends every session of the user: the next login enrols anew.
    /// `false` when there is no such user.
    pub async fn reset_totp(&self, user_id: i64) -> Result<bool, DbError> {
        in_tx!(self, tx => async {
            let n = sqlx::query("UPDATE web_users SET totp_secret = NULL WHERE id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM web_recovery_codes WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM web_sessions WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
            Ok(n == 1)
        })
    }

    /// Uses a recovery code once. `false` if it is unknown or already used.
    pub async fn use_recovery_code(&self, user_id: i64, code_hash: &str, now: i64) -> Result<bool, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "UPDATE web_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(now)
            .bind(user_id)
            .bind(code_hash)
            .execute(pool)
            .await?
            .rows_affected()
        }) == 1)
    }

    pub async fn unused_recovery_codes(&self, user_id: i64) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM web_recovery_codes WHERE user_id = $1 AND used_at IS NULL")
                .bind(user_id)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Disables (or enables) a user; disabling ends their sessions and API tokens at once. `false`: no change.
    pub async fn set_web_user_disabled(&self, user_id: i64, disabled_at: Option<i64>) -> Result<bool, DbError> {
        in_tx!(self, tx => async {
            let changed = sqlx::query(
                "UPDATE web_users SET disabled_at = $1 WHERE id = $2 AND (disabled_at IS NULL) = ($1 IS NOT NULL)",
            )
            .bind(disabled_at)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let Some(at) = disabled_at {
                sqlx::query("DELETE FROM web_sessions WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
                sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(changed == 1)
        })
    }

    /// Records a failed login of the user: one more failure, and no password checked before `slow_until`.
    pub async fn web_login_failed(&self, user_id: i64, slow_until: Option<i64>) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE web_users SET failed_logins = failed_logins + 1, slow_until = $1 WHERE id = $2")
                .bind(slow_until)
                .bind(user_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn web_login_succeeded(&self, user_id: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE web_users SET failed_logins = 0, slow_until = NULL WHERE id = $1")
                .bind(user_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn create_web_session(&self, s: &WebSession) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO web_sessions (id_hash, user_id, stage, csrf, source, created_at, last_seen, pending_totp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(s.id_hash.as_str())
            .bind(s.user_id)
            .bind(s.stage.as_str())
            .bind(s.csrf.as_str())
            .bind(s.source.as_str())
            .bind(s.created_at)
            .bind(s.last_seen)
            .bind(s.pending_totp.as_deref())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn web_session(&self, id_hash: &str) -> Result<Option<WebSession>, DbError> {
        let row: Option<SessionRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{SESSION_COLS} WHERE id_hash = $1")).bind(id_hash).fetch_optional(pool).await?
        });
        row.map(SessionRow::into_session).transpose()
    }

    pub async fn web_sessions_of(&self, user_id: i64) -> Result<Vec<WebSession>, DbError> {
        let rows: Vec<SessionRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{SESSION_COLS} WHERE user_id = $1 ORDER BY last_seen DESC"))
                .bind(user_id)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(SessionRow::into_session).collect()
    }

    pub async fn touch_web_session(&self, id_hash: &str, now: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE web_sessions SET last_seen = $1 WHERE id_hash = $2")
                .bind(now)
                .bind(id_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Moves a session to `stage` (with the TOTP seed being enrolled, if any).
    pub async fn set_web_session_stage(
        &self,
        id_hash: &str,
        stage: Stage,
        pending_totp: Option<&str>,
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE web_sessions SET stage = $1, pending_totp = $2 WHERE id_hash = $3")
                .bind(stage.as_str())
                .bind(pending_totp)
                .bind(id_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn delete_web_session(&self, id_hash: &str) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1").bind(id_hash).execute(pool).await?;
        });
        Ok(())
    }

    /// "Log out everywhere": every session of the user. Returns how many ended.
    pub async fn delete_web_sessions_of(&self, user_id: i64) -> Result<u64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions WHERE user_id = $1").bind(user_id).execute(pool).await?.rows_affected()
        }))
    }

    /// Deletes sessions idle since before `idle_before` or created before `created_before`, and download links
    /// expired before `now`.
    pub async fn expire_web_sessions(&self, idle_before: i64, created_before: i64, now: i64) -> Result<u64, DbError> {
        Ok(on_pool!(self, pool => {
            let n = sqlx::query("DELETE FROM web_sessions WHERE last_seen < $1 OR created_at < $2")
                .bind(idle_before)
                .bind(created_before)
                .execute(pool)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM web_downloads WHERE expires_at < $1").bind(now).execute(pool).await?;
            n
        }))
    }

    pub async fn create_api_token(
        &self,
        user_id: i64,
        label: &str,
        token_hash: &str,
        scope: Scope,
        expires_at: i64,
        now: i64,
    ) -> Result<ApiToken, DbError> {
        let row: TokenRow = on_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO api_tokens (user_id, label, token_hash, scope, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING id, user_id, label, scope, created_at, expires_at, revoked_at, last_used_at",
            )
            .bind(user_id)
            .bind(label)
            .bind(token_hash)
            .bind(scope.as_str())
            .bind(now)
            .bind(expires_at)
            .fetch_one(pool)
            .await?
        });
        row.into_token()
    }

    /// The live token with this hash (unrevoked, unexpired, its user enabled), marked used now.
    pub async fn use_api_token(&self, token_hash: &str, now: i64) -> Result<Option<(ApiToken, WebUser)>, DbError> {
        let row: Option<TokenRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!(
                "{TOKEN_COLS} WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2"
            ))
            .bind(token_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        let Some(token) = row.map(TokenRow::into_token).transpose()? else { return Ok(None) };
        let Some(user) = self.web_user(token.user_id).await?.filter(|u| u.disabled_at.is_none()) else {
            return Ok(None);
        };
        on_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(token.id)
                .execute(pool)
                .await?;
        });
        Ok(Some((token, user)))
    }

    pub async fn api_tokens_of(&self, user_id: i64) -> Result<Vec<ApiToken>, DbError> {
        let rows: Vec<TokenRow> = on_pool!(self, pool => {
            sqlx::query_as(&format!("{TOKEN_COLS} WHERE user_id = $1 ORDER BY id DESC"))
                .bind(user_id)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(TokenRow::into_token).collect()
    }

    /// Revokes one of the user's tokens. `false` when it is not theirs or already revoked.
    pub async fn revoke_api_token(&self, user_id: i64, token_id: i64, now: i64) -> Result<bool, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL")
                .bind(now)
                .bind(token_id)
                .bind(user_id)
                .execute(pool)
                .await?
                .rows_affected()
        }) == 1)
    }

    pub async fn create_download(
        &self,
        ticket_hash: &str,
        session_hash: &str,
        credential: &Name,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO web_downloads (ticket_hash, session_hash, credential_name, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ticket_hash)
            .bind(session_hash)
            .bind(credential.as_str())
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Uses a download link once, from the session it was made for.
    pub async fn take_download(&self, ticket_hash: &str, session_hash: &str, now: i64) -> Result<Download, DbError> {
        in_tx!(self, tx => async {
            let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
                "SELECT credential_name, expires_at, used_at FROM web_downloads \
                 WHERE ticket_hash = $1 AND session_hash = $2",
            )
            .bind(ticket_hash)
            .bind(session_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((name, expires_at, used_at)) = row else { return Ok(Download::Unknown) };
            if used_at.is_some() {
                return Ok(Download::Used);
            }
            if expires_at <= now {
                return Ok(Download::Expired);
            }
            sqlx::query("UPDATE web_downloads SET used_at = $1 WHERE ticket_hash = $2")
                .bind(now)
                .bind(ticket_hash)
                .execute(&mut *tx)
                .await?;
            let name = name.parse().map_err(|e: crate::domain::DomainError| DbError::Corrupt(e.to_string()))?;
            Ok(Download::Take(name))
        })
    }

    /// When bootstrap mode ended (the first admin VPN session), if it has.
    pub async fn bootstrap_ended(&self) -> Result<Option<i64>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT ended_at FROM web_bootstrap WHERE id = 1").fetch_optional(pool).await?
        }))
    }

    /// Ends bootstrap mode if the credential is an admin one; `true` when this call ended it.
    pub async fn end_bootstrap_by(&self, credential_id: i64, now: i64) -> Result<bool, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO web_bootstrap (id, ended_at) SELECT 1, $1 \
                 WHERE EXISTS (SELECT 1 FROM credentials WHERE id = $2 AND kind = 'admin') \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(now)
            .bind(credential_id)
            .execute(pool)
            .await?
            .rows_affected()
        }) == 1)
    }
}
