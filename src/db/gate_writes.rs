//! The gate's pairing writes, grouped: the writes of many requests in one transaction (group commit). Under a
//! burst of pairings a transaction per write would keep the single writer busy with its own overhead (taking the
//! write lock, committing, a round trip to the database for each statement, a wait behind other tasks for each
//! wake-up) while the requests queue behind it; one transaction for every write waiting at that moment costs those
//! once. Each write does exactly what its own function does ([`Store::reserve_attempt`],
//! [`Store::give_back_attempts`], [`Store::redeem_token`]), in the order given, so the outcome is that of running
//! them one after another. A redemption that pairs gives its request's reservation back in the same transaction:
//! the pairing and the end of its attempt are one change (a crash leaves both or neither; neither keeps the
//! attempt counted, the cautious side).

use super::bans::{give_back_in_tx, reserve_in_tx};
use super::tokens::redeem_in_tx;
use super::{BanKey, DbError, NewCert, Redeemed, Reserved, Store, TokenRefusal};

/// One write of a pairing request.
#[derive(Debug, Clone)]
pub enum GateWrite {
    /// Count an attempt of a source before it is evaluated ([`Store::reserve_attempt`]).
    Reserve { keys: Vec<BanKey>, now: i64, window_secs: i64 },
    /// Give a successful attempt's reservation back ([`Store::give_back_attempts`]).
    GiveBack { keys: Vec<BanKey> },
    /// Redeem a token ([`Store::redeem_token`], with the hardware serial the terminal reported); when it pairs,
    /// give back `give_back`, the reservation of the request's attempt (a retry that finds its earlier pairing may
    /// still fail, its certificate revoked meanwhile: its attempt is settled by the gate afterwards as any other).
    Redeem(RedeemWrite),
}

/// What [`GateWrite::Redeem`] redeems.
#[derive(Debug, Clone)]
pub struct RedeemWrite {
    pub token_id: String,
    pub pubkey_sha256: String,
    pub cert: NewCert,
    pub hw_serial: Option<String>,
    pub give_back: Vec<BanKey>,
    pub now: i64,
}

/// What one [`GateWrite`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateWritten {
    Reserved(Reserved),
    GaveBack,
    /// A refusal changed nothing but a key mismatch's lock of the token; the reservation is then still held, as it
    /// is after `AlreadySameKey`.
    Redeemed(Result<Redeemed, TokenRefusal>),
}

impl Store {
    /// Runs `writes` in one transaction, in order, and returns each one's outcome. When the transaction fails
    /// (nothing of it stays), each write is run again alone, so that one write's error is its own and the others
    /// still happen.
    pub async fn gate_writes(&self, writes: &[GateWrite]) -> Vec<Result<GateWritten, DbError>> {
        match self.gate_writes_in_one(writes).await {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) if writes.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, writes = writes.len(), "grouped pairing writes failed; writing them one by one");
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.push(self.gate_writes_in_one(std::slice::from_ref(w)).await.map(|mut d| d.remove(0)));
                }
                out
            }
        }
    }

    async fn gate_writes_in_one(&self, writes: &[GateWrite]) -> Result<Vec<GateWritten>, DbError> {
        // The body, once per backend (`in_tx!` and the durable SQLite path below).
        macro_rules! body {
            ($tx:ident) => {
                async {
                    let mut done = Vec::with_capacity(writes.len());
                    for w in writes {
                        done.push(match w {
                            GateWrite::Reserve { keys, now, window_secs } => {
                                GateWritten::Reserved(reserve_in_tx!($tx, keys, *now, *window_secs)?)
                            }
                            GateWrite::GiveBack { keys } => {
                                give_back_in_tx!($tx, keys)?;
                                GateWritten::GaveBack
                            }
                            GateWrite::Redeem(r) => {
                                let outcome = redeem_in_tx!(
                                    $tx,
                                    &r.token_id,
                                    &r.pubkey_sha256,
                                    &r.cert,
                                    r.hw_serial.as_deref(),
                                    r.now
                                )?;
                                if matches!(outcome, Ok(Redeemed::Fresh { .. })) {
                                    give_back_in_tx!($tx, &r.give_back)?;
                                }
                                GateWritten::Redeemed(outcome)
                            }
                        });
                    }
                    Ok::<_, DbError>(done)
                }
            };
        }
        // A pairing's answer is sent once this commits: a group that redeems is made durable (`in_durable_tx!`),
        // one sync per group, not per pairing.
        let durable = writes.iter().any(|w| matches!(w, GateWrite::Redeem(_)));
        if durable { in_durable_tx!(self, tx => body!(tx)) } else { in_tx!(self, tx => body!(tx)) }
    }
}
