//! Certificates (every one ever issued, by serial) and CRL bookkeeping.
//!
//! The `certificates` primary key is the guarantee that a serial is never used twice (invariant 9): a
//! duplicate fails the whole transaction it is part of and surfaces as `DbError::SerialTaken`. Serials are
//! lowercase hex text (the CHECK refuses anything else), so the same number can never appear in two spellings.

use super::credentials::{CRED_BY_ID, CredRow};
use super::{Clash, DbError, Store, clash, parse_kind};
use crate::domain::Kind;

/// A freshly issued certificate to record. Only public material: the private key never reaches the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCert {
    /// Lowercase hex.
    pub serial: String,
    pub common_name: String,
    pub not_before: i64,
    pub not_after: i64,
    pub cert_pem: String,
}

/// A recorded certificate. `credential_id` is `None` for server certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub serial: String,
    pub ca: Kind,
    pub credential_id: Option<i64>,
    pub common_name: String,
    pub not_before: i64,
    pub not_after: i64,
    pub cert_pem: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CertRaw {
    serial: String,
    ca: String,
    credential_id: Option<i64>,
    common_name: String,
    not_before: i64,
    not_after: i64,
    cert_pem: String,
    created_at: i64,
    revoked_at: Option<i64>,
    revoke_reason: Option<String>,
}

impl CertRaw {
    fn into_row(self) -> Result<CertRow, DbError> {
        Ok(CertRow {
            serial: self.serial,
            ca: parse_kind(&self.ca)?,
            credential_id: self.credential_id,
            common_name: self.common_name,
            not_before: self.not_before,
            not_after: self.not_after,
            cert_pem: self.cert_pem,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            revoke_reason: self.revoke_reason,
        })
    }
}

const CERT_COLS: &str = "serial, ca, credential_id, common_name, not_before, not_after, cert_pem, created_at, \
                         revoked_at, revoke_reason";

/// The one INSERT of a certificate row, for whichever backend the executor it runs on belongs to.
pub(crate) fn insert_cert<'q, DB: sqlx::Database>(
    ca: Kind,
    credential_id: Option<i64>,
    cert: &'q NewCert,
    now: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO certificates (serial, ca, credential_id, common_name, not_before, not_after, cert_pem, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(cert.serial.as_str())
    .bind(ca.as_str())
    .bind(credential_id)
    .bind(cert.common_name.as_str())
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(cert.cert_pem.as_str())
    .bind(now)
}

/// Maps a failed certificate insert: a duplicate serial becomes `SerialTaken`.
pub(crate) fn cert_err(e: sqlx::Error, cert: &NewCert) -> DbError {
    match clash(&e) {
        Some(Clash::Serial) => DbError::SerialTaken { serial: cert.serial.clone() },
        _ => DbError::Sqlx(e),
    }
}

impl Store {
    /// Records a server certificate (no credential), so that its serial, too, is never reused.
    pub async fn record_server_cert(&self, ca: Kind, cert: &NewCert, now: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            insert_cert(ca, None, cert, now).execute(pool).await.map_err(|e| cert_err(e, cert))?;
        });
        Ok(())
    }

    /// Records a new certificate of an active credential (renewal, approval pairing). Refused with `NotFound`,
    /// `AlreadyRevoked` or `WrongKind` (a terminal never gets an admin-CA certificate, nor the reverse).
    pub async fn add_certificate(&self, credential_id: i64, ca: Kind, cert: &NewCert, now: i64) -> Result<(), DbError> {
        self.insert_credential_cert(credential_id, ca, cert, now, false).await
    }

    /// Records a terminal's renewed certificate and, in the same transaction, forgets its last renewal failure
    /// (`db::renewals`): a renewal that succeeded is never still shown as failed. Refused like
    /// [`Store::add_certificate`].
    pub async fn add_renewed_certificate(&self, credential_id: i64, cert: &NewCert, now: i64) -> Result<(), DbError> {
        self.insert_credential_cert(credential_id, Kind::Terminal, cert, now, true).await
    }

    async fn insert_credential_cert(
        &self,
        credential_id: i64,
        ca: Kind,
        cert: &NewCert,
        now: i64,
        renewed: bool,
    ) -> Result<(), DbError> {
        in_tx!(self, tx => async {
            let row: Option<CredRow> = sqlx::query_as(CRED_BY_ID).bind(credential_id).fetch_optional(&mut *tx).await?;
            let Some(credential) = row.map(CredRow::into_credential).transpose()? else {
                return Err(DbError::NotFound { what: format!("credential #{credential_id}") });
            };
            if credential.is_revoked() {
                return Err(DbError::AlreadyRevoked { name: credential.name });
            }
            if credential.kind != ca {
                return Err(DbError::WrongKind { name: credential.name, actual: credential.kind, expected: ca });
            }
            insert_cert(ca, Some(credential_id), cert, now).execute(&mut *tx).await.map_err(|e| cert_err(e, cert))?;
            if renewed {
                sqlx::query(super::renewals::CLEAR_FAILURE).bind(credential_id).execute(&mut *tx).await?;
            }
            Ok(())
        })
    }

    /// A credential's certificates, oldest first.
    pub async fn certificates_of(&self, credential_id: i64) -> Result<Vec<CertRow>, DbError> {
        let sql = format!(
            "SELECT {CERT_COLS} FROM certificates WHERE credential_id = $1 ORDER BY created_at, not_before, serial"
        );
        let rows: Vec<CertRaw> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(credential_id).fetch_all(pool).await?);
        rows.into_iter().map(CertRaw::into_row).collect()
    }

    pub async fn certificate_by_serial(&self, serial: &str) -> Result<Option<CertRow>, DbError> {
        let sql = format!("SELECT {CERT_COLS} FROM certificates WHERE serial = $1");
        let row: Option<CertRaw> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(serial).fetch_optional(pool).await?);
        row.map(CertRaw::into_row).transpose()
    }

    /// Every revoked certificate of one CA: `(serial, revoked_at, reason)`, oldest revocation first. Expired ones
    /// stay listed: dropping them is the CRL writer's call. (The CRL itself reads `revoked_serials`.)
    pub async fn revoked_certificates(&self, ca: Kind) -> Result<Vec<(String, i64, String)>, DbError> {
        let rows: Vec<(String, i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT serial, revoked_at, COALESCE(revoke_reason, '') FROM certificates \
                 WHERE ca = $1 AND revoked_at IS NOT NULL ORDER BY revoked_at, serial",
            )
            .bind(ca.as_str())
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Every revoked certificate of one CA, for its CRL, one row per revocation time and reason:
    /// `(revoked_at, reason, serials joined by commas)`, in no particular order (a CRL's entries need none).
    /// Aggregated in the store: handing 100,000 rows over one by one costs more than making the CRL, and a bulk
    /// revocation is one row. SQLite reads the groups in order from the covering index `certificates_crl`.
    pub async fn revoked_serials(&self, ca: Kind) -> Result<Vec<(i64, String, String)>, DbError> {
        let rows: Vec<(i64, String, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT revoked_at, COALESCE(revoke_reason, ''), string_agg(serial, ',') FROM certificates \
                 WHERE ca = $1 AND revoked_at IS NOT NULL GROUP BY revoked_at, revoke_reason",
            )
            .bind(ca.as_str())
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// The next CRL number of `ca` (1, 2, …), recording the new CRL's thisUpdate and nextUpdate. One statement,
    /// so two writers can never get the same number. The text kept of the previous CRL goes: it is not CRL
    /// number n, and `crl_newer_than` must never offer it as such.
    pub async fn next_crl_number(&self, ca: Kind, this_update: i64, next_update: i64) -> Result<u64, DbError> {
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO crl_state (ca, crl_number, this_update, next_update) VALUES ($1, 1, $2, $3) \
                 ON CONFLICT (ca) DO UPDATE SET crl_number = crl_state.crl_number + 1, \
                 this_update = excluded.this_update, next_update = excluded.next_update, pem = NULL \
                 RETURNING crl_number",
            )
            .bind(ca.as_str())
            .bind(this_update)
            .bind(next_update)
            .fetch_one(pool)
            .await?
        });
        u64::try_from(n).map_err(|_| DbError::Corrupt(format!("crl_number = {n}")))
    }

    /// Keeps the text of CRL number `crl_number` of `ca`, so every node publishes the same CRL. A CRL whose number
    /// is no longer the newest (another node made a later one meanwhile) is not kept: the later one is.
    pub async fn record_crl(&self, ca: Kind, crl_number: u64, pem: &str) -> Result<(), DbError> {
        let n = i64::try_from(crl_number).map_err(|_| DbError::Corrupt(format!("crl_number = {crl_number}")))?;
        on_pool!(self, pool => {
            sqlx::query("UPDATE crl_state SET pem = $1 WHERE ca = $2 AND crl_number = $3")
                .bind(pem)
                .bind(ca.as_str())
                .bind(n)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The newest CRL of `ca` the store keeps the text of, if its number is above `above`: `(number, pem)`.
    /// Nodes ask this often, so the text is read only when there is something newer.
    pub async fn crl_newer_than(&self, ca: Kind, above: u64) -> Result<Option<(u64, String)>, DbError> {
        let above = i64::try_from(above).unwrap_or(i64::MAX);
        let row: Option<(i64, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT crl_number, pem FROM crl_state WHERE ca = $1 AND crl_number > $2 AND pem IS NOT NULL",
            )
            .bind(ca.as_str())
            .bind(above)
            .fetch_optional(pool)
            .await?
        });
        row.map(|(n, pem)| {
            u64::try_from(n).map(|n| (n, pem)).map_err(|_| DbError::Corrupt(format!("crl_number = {n}")))
        })
        .transpose()
    }

    /// The last CRL of `ca`: `(crl_number, this_update, next_update)`, or `None` before the first.
    pub async fn crl_state(&self, ca: Kind) -> Result<Option<(u64, i64, i64)>, DbError> {
        let row: Option<(i64, i64, i64)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT crl_number, this_update, next_update FROM crl_state WHERE ca = $1")
                .bind(ca.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(|(n, this, next)| {
            u64::try_from(n).map(|n| (n, this, next)).map_err(|_| DbError::Corrupt(format!("crl_number = {n}")))
        })
        .transpose()
    }
}
