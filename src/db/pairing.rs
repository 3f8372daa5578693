//! The pairing window (pairing only while a window is open); one statement each. Failure bans are in `bans`.

use super::{DbError, Store};

impl Store {
    /// Opens the pairing window until `open_until` (unix seconds), or closes it (`None`).
    pub async fn set_pairing_window(&self, open_until: Option<i64>) -> Result<(), DbError> {
        self.set_pairing_window_from(open_until, None).await
    }

    /// As [`Store::set_pairing_window`], with the sources allowed to reach the pairing port (`None`: everyone), in
    /// one statement so the firewall never sees a window with another window's sources.
    pub async fn set_pairing_window_from(&self, open_until: Option<i64>, from: Option<&str>) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE pairing_window SET open_until = $1, open_from = $2 WHERE id = 1")
                .bind(open_until)
                .bind(from)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The window's end and its sources (`None`: everyone) as [`Store::set_pairing_window_from`] stored them.
    pub async fn pairing_window_from(&self) -> Result<(Option<i64>, Option<String>), DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT open_until, open_from FROM pairing_window WHERE id = 1").fetch_one(pool).await?
        }))
    }

    /// When the pairing window closes; `None` when it was closed explicitly (or never opened). A time in the past
    /// means closed as well: the caller compares with its clock.
    pub async fn pairing_window(&self) -> Result<Option<i64>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT open_until FROM pairing_window WHERE id = 1").fetch_one(pool).await?
        }))
    }
}
