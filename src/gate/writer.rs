//! Group commit of the gate's pairing writes (reservations, give-backs, redemptions; `app::group_commit`): the
//! writes of every request waiting at that moment go into one transaction (`Store::gate_writes`), serialised with
//! this gate's other writes (`Inner::writes`). A redemption's outcome that no request waits for any more (its
//! client went away) is still written: the terminal's retry with the same key gets the same certificate.

use super::GateState;
use crate::app::group_commit::GroupCommit;
use crate::db::{DbError, GateWrite, GateWritten};

/// At most this many writes share one transaction (a bound on how long one holds the store's write lock).
const MAX_GROUP: usize = 256;

pub(crate) type Writer = GroupCommit<GateWrite, Result<GateWritten, DbError>>;

pub(crate) fn new() -> Writer {
    GroupCommit::new(MAX_GROUP)
}

/// Writes `write` with whatever else is waiting, and returns its outcome.
pub(crate) async fn write(st: &GateState, write: GateWrite) -> Result<GateWritten, DbError> {
    let st2 = st.clone();
    let run = move |writes: Vec<GateWrite>| {
        let st = st2.clone();
        async move {
            let _w = st.0.writes.lock().await;
            st.ctx().store.gate_writes(&writes).await
        }
    };
    st.0.writer.submit(write, run).await.unwrap_or(Err(DbError::Sqlx(sqlx::Error::WorkerCrashed)))
}
