//! `POST /v1/pair` (token and approval flows) and `GET /v1/pair/{id}` (approval polling).
//!
//! Order of checks, cheapest and least revealing first: ban → window → body → version → token (parse, lookup,
//! constant-time secret check, pin) → CSR. Only then is anything written: one store transaction that uses the token,
//! records the certificate and gives the attempt's reservation back (grouped with other requests' writes,
//! `writer`). Refusals caused by the client count towards a ban of its address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::writer;
use super::{BAN_SECS, GateState, MAX_FAILURES, MAX_NET_FAILURES_V4, MAX_NET_FAILURES_V6};
use crate::app::csr::{self, CheckedCsr};
use crate::app::new_cert;
use crate::control::signer;
use crate::db::{BanKey, GateWrite, GateWritten, RedeemWrite, Reserved};
use crate::db::{Credential, DbError, PendingPairing, Redeemed, Submitted, TokenRefusal};
use crate::domain::OpenVpnVersion;
use crate::domain::{Kind, Name, PairingState, PairingToken};
use crate::http::ApiError;
use crate::http::{read_json, server::peer_ip};
use crate::wire::{
    MIN_TERMINAL_VERSION, PairRequest, PairResponse, PendingResponse, UpgradeInfo, pairing_code, version_date,
};

/// An approval-flow pairing waits this long for an admin.
pub const PENDING_TTL_SECS: i64 = 3600;
/// At most this many approval-flow pairings wait at once (a flood of CSRs cannot fill the store).
pub const MAX_PENDING: u32 = 500;
/// … and at most this many from one source address.
pub const MAX_PENDING_PER_SOURCE: u32 = 20;
/// Marks the token of a server-keygen delivery (the requester's key identifies a retry, or `none`).
const KEYGEN_PREFIX: &str = "keygen:";

/// What a successful pairing request gets.
pub enum Outcome {
    Paired(PairResponse),
    Pending(PendingResponse),
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut r = match self {
            Outcome::Paired(p) => (StatusCode::OK, Json(p)).into_response(),
            Outcome::Pending(p) => (StatusCode::ACCEPTED, Json(p)).into_response(),
        };
        r.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
        r
    }
}

pub async fn pair(
    State(st): State<GateState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Outcome, ApiError> {
    let ip = peer_ip(&peer).to_string();
    let now = st.ctx().clock.now();
    let attempt = Attempt::new(&ip);
    guarded_attempt(&st, &attempt, now, Request::Pair, async {
        // The body is read first so that the window, the token and its terminal come from the store in one query
        // (each query is a round trip to a SQLite connection's thread); the answers keep their order: window,
        // body, version, token.
        let req: Result<PairRequest, ApiError> = read_json(&headers, body).await;
        let token = req.as_ref().ok().and_then(|r| r.token.as_deref()).map(str::parse::<PairingToken>);
        let token_id = token.as_ref().and_then(|t| t.as_ref().ok()).map(PairingToken::id);
        let lookup = st.ctx().store.pairing_lookup(token_id).await?;
        if lookup.window_until.is_none_or(|until| until <= now) {
            return Err(ApiError::WindowClosed);
        }
        let req = req?;
        check_terminal_info(&st, &req)?;
        match token {
            Some(token) => {
                let token = token.map_err(|_| ApiError::InvalidToken("malformed"))?;
                token_flow(&st, &req, &token, lookup.token, &attempt, now).await
            }
            None => approval_flow(&st, &req, &ip, now).await,
        }
    })
    .await
}

pub async fn poll(
    State(st): State<GateState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Outcome, ApiError> {
    let ip = peer_ip(&peer).to_string();
    let now = st.ctx().clock.now();
    guarded(&st, &ip, now, Request::Poll, async {
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ApiError::NotFound);
        }
        let p = st.ctx().store.pending_pairing(&id).await?.ok_or(ApiError::NotFound)?;
        pending_answer(&st, p, now).await
    })
    .await
}

/// Refuses banned addresses up front, counts the client's failures, logs the outcome (never the body).
/// What a guarded request is, for its log line and its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Pair,
    Poll,
    Upgrade,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Pair => "pair",
            Request::Poll => "poll",
            Request::Upgrade => "upgrade",
        }
    }
}

/// A pairing attempt of one source: the keys it is counted under, and whether its reservation was already given
/// back (by the redemption that paired, in the pairing's own transaction).
pub(crate) struct Attempt {
    ip: String,
    keys: Vec<BanKey>,
    given_back: AtomicBool,
}

impl Attempt {
    pub(crate) fn new(ip: &str) -> Attempt {
        Attempt { ip: ip.to_owned(), keys: ban_keys(ip), given_back: AtomicBool::new(false) }
    }

    /// The reservation to give back with a redemption (see [`Attempt::given_back`]).
    fn keys(&self) -> Vec<BanKey> {
        self.keys.clone()
    }

    /// Records that the reservation was given back in the transaction that paired.
    fn given_back(&self) {
        self.given_back.store(true, Ordering::Relaxed);
    }
}

pub(crate) async fn guarded<T>(
    st: &GateState,
    ip: &str,
    now: i64,
    what: Request,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    guarded_attempt(st, &Attempt::new(ip), now, what, work).await
}

/// [`guarded`] for an attempt whose work may give its reservation back itself.
async fn guarded_attempt<T>(
    st: &GateState,
    attempt: &Attempt,
    now: i64,
    what: Request,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let ip = attempt.ip.as_str();
    // Pairing attempts (a token or a pairing id is a guess at a secret) are evaluated one at a time per source, so
    // the ban a burst earns stops the rest of that burst (`per_source`); upgrade downloads are not attempts.
    let _turn = match what {
        Request::Upgrade => None,
        Request::Pair | Request::Poll => Some(st.0.per_source.turn(ip).await),
    };
    let name = what.name();
    let store = &st.ctx().store;
    let keys = &attempt.keys;
    if what == Request::Upgrade {
        // Downloads are not guesses: they are not counted, but a banned source gets none.
        if let Some((key, _)) = store.banned_key(keys, now).await? {
            tracing::info!(ip, what = name, outcome = "banned", key);
            return Err(ApiError::Banned);
        }
        let result = work.await;
        log_outcome(ip, name, &result, &[]);
        return result;
    }
    // Counted before it is evaluated, in the store (shared by every gate): see `db::bans`. Written with the other
    // requests' writes waiting at that moment, in one transaction (`writer`).
    let reserve = GateWrite::Reserve { keys: keys.clone(), now, window_secs: BAN_SECS };
    let reserved = match writer::write(st, reserve).await? {
        GateWritten::Reserved(r) => r,
        other => return Err(ApiError::internal(format!("a reservation answered {other:?}"))),
    };
    match reserved {
        Reserved::Go => {}
        Reserved::Banned { key, .. } => {
            tracing::info!(ip, what = name, outcome = "banned", key);
            return Err(ApiError::Banned);
        }
        Reserved::Busy { key } => {
            tracing::info!(ip, what = name, outcome = "too_many_attempts", key);
            return Err(ApiError::TooManyAttempts);
        }
    }
    let result = work.await;
    let failed = matches!(&result, Err(e) if e.counts_as_failure());
    let banned = if failed {
        // A failure is settled at once, alone: its ban must be in force before this source's next turn. (A work
        // that gave its reservation back has paired: the answer was rendered before, so it does not fail after.)
        let _w = st.0.writes.lock().await;
        store.settle_attempt(keys, true, now, BAN_SECS).await?
    } else {
        if !attempt.given_back.load(Ordering::Relaxed) {
            give_back(st, keys.clone()).await;
        }
        Vec::new()
    };
    if banned.iter().any(|k| k == ip) {
        // What a banned address queued for approval goes too: it cannot fill the queue and leave.
        let dropped = store.expire_pending_pairings(Some(ip), now).await?;
        if dropped > 0 {
            tracing::info!(ip, dropped, "pending pairings of a banned address expired");
        }
    }
    log_outcome(ip, name, &result, &banned);
    result
}

/// Gives a successful attempt's reservation back (with the other writes waiting, `writer`). A give-back the store
/// refuses, or one lost in a crash, leaves the attempt counted as a failure for the rest of the window: the
/// cautious side.
async fn give_back(st: &GateState, keys: Vec<BanKey>) {
    if let Err(e) = writer::write(st, GateWrite::GiveBack { keys }).await {
        tracing::warn!(error = %e, "could not give back the reservation of a successful attempt");
    }
}

/// The keys a source is counted under: its address (5 failures) and its /24 or /64 (more: a site or a carrier NAT
/// holds several terminals; an IPv6 host usually holds its whole /64).
pub fn ban_keys(ip: &str) -> Vec<BanKey> {
    let mut keys = vec![BanKey { key: ip.to_owned(), max: MAX_FAILURES }];
    match ip.parse::<std::net::IpAddr>().map(|a| a.to_canonical()) {
        Ok(std::net::IpAddr::V4(v4)) => {
            let o = v4.octets();
            keys.push(BanKey { key: format!("{}.{}.{}.0/24", o[0], o[1], o[2]), max: MAX_NET_FAILURES_V4 });
        }
        Ok(v6 @ std::net::IpAddr::V6(_)) => {
            let net = crate::domain::budget::source_of(v6);
            keys.push(BanKey { key: format!("{net}/64"), max: MAX_NET_FAILURES_V6 });
        }
        Err(_) => {}
    }
    keys
}

fn log_outcome<T>(ip: &str, what: &'static str, result: &Result<T, ApiError>, banned: &[String]) {
    match result {
        Ok(_) => tracing::info!(ip, what, outcome = "ok"),
        Err(e) => {
            let banned_now = banned.join(",");
            tracing::info!(ip, what, outcome = e.code().as_str(), banned_now)
        }
    }
}

fn check_terminal_info(st: &GateState, req: &PairRequest) -> Result<(), ApiError> {
    let v = &req.terminal.version;
    let Some(date) = version_date(v) else {
        return Err(ApiError::InvalidRequest("terminal.version must start with YYYYMMDD, e.g. 20240115".into()));
    };
    if let Some(serial) = &req.terminal.serial
        && (serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ApiError::InvalidRequest(
            "terminal.serial must be 1 to 64 printable ASCII characters without spaces".into(),
        ));
    }
    let min = st.0.upgrades.min_version().unwrap_or(MIN_TERMINAL_VERSION);
    if date < min {
        let upgrade: Option<UpgradeInfo> = st.0.upgrades.info();
        return Err(ApiError::UpgradeRequired { version: v.clone(), min, upgrade });
    }
    if let Some(text) = &req.terminal.openvpn {
        let ovpn: OpenVpnVersion = text
            .parse()
            .map_err(|e: crate::domain::DomainError| ApiError::InvalidRequest(format!("terminal.openvpn: {e}")))?;
        // Only a profile needs tls-crypt-v2: under Scenario B the gate hands out none.
        if st.0.delivery.is_some() && !ovpn.supports_tls_crypt_v2() {
            return Err(ApiError::OpenVpnTooOld(ovpn.to_string()));
        }
    }
    Ok(())
}

/// The token flow (zero-touch). `found`: the token's row and its credential, read with the window.
async fn token_flow(
    st: &GateState,
    req: &PairRequest,
    token: &PairingToken,
    found: Option<(crate::db::TokenRow, Option<Credential>)>,
    attempt: &Attempt,
    now: i64,
) -> Result<Outcome, ApiError> {
    let store = &st.ctx().store;
    // An unknown id and a wrong secret look the same from outside.
    let Some((row, cred)) = found.filter(|(r, _)| token.matches_hash(&r.secret_hash)) else {
        return Err(ApiError::InvalidToken("unknown token"));
    };
    tracing::info!(token_id = token.id(), "pairing token presented");
    if token.pin() != &st.0.pin {
        return Err(ApiError::InvalidToken("made for another gate key"));
    }
    let cred = cred.ok_or_else(|| ApiError::internal("token of a missing credential"))?;
    if cred.kind != Kind::Terminal {
        return Err(ApiError::internal("token of a non-terminal credential"));
    }
    if cred.is_revoked() {
        return Err(ApiError::InvalidToken("its terminal was revoked"));
    }
    if row.locked_at.is_some() {
        return Err(ApiError::TokenUsed(" and is locked"));
    }
    let checked = req.csr.as_deref().map(|p| csr::check(p, Some(cred.name.as_str()))).transpose()?;
    let hw = req.terminal.serial.as_deref();

    let pending = pending_profile(st, &cred.name);
    let keygen_used = row.pubkey_sha256.as_deref().is_some_and(|k| k.starts_with(KEYGEN_PREFIX));
    if keygen_used || (row.used_at.is_none() && pending.is_file()) {
        return keygen_flow(st, token, &row, &cred, checked.as_ref(), hw, now).await;
    }

    let checked = checked.ok_or_else(|| ApiError::InvalidRequest("missing field `csr`".into()))?;
    let pk = checked.public_key_sha256_hex();
    if row.used_at.is_some() {
        if row.pubkey_sha256.as_deref() == Some(pk.as_str()) {
            let serial = row.cert_serial.as_deref().unwrap_or_default();
            return answer_for_serial(st, &cred, serial).await;
        }
        let _w = st.0.writes.lock().await;
        store.lock_token(token.id(), now).await?;
        return Err(ApiError::KeyMismatch);
    }
    if row.expires_at <= now {
        return Err(ApiError::TokenExpired);
    }

    // The signer looks the terminal up again and checks the CSR again: it trusts nothing from this process.
    let csr_pem = req.csr.as_deref().unwrap_or_default();
    let (cert_pem, _) =
        signer::sign(&st.ctx().cfg.root, Kind::Terminal, &cred.name, csr_pem).await.map_err(ApiError::internal)?;
    let new = new_cert(&cert_pem)?;
    // Rendered before the store changes, so a failure here writes nothing.
    let answer = answer(st, &cred.name, &new.cert_pem, &new.serial)?;
    // One transaction (shared with other requests' writes, `writer`): the token taken, the certificate recorded,
    // the terminal marked paired, and this attempt's reservation given back.
    let redeem = RedeemWrite {
        token_id: token.id().to_owned(),
        pubkey_sha256: pk,
        cert: new,
        hw_serial: hw.map(str::to_owned),
        give_back: attempt.keys(),
        now,
    };
    let serial = redeem.cert.serial.clone();
    let redeemed = match writer::write(st, GateWrite::Redeem(redeem)).await? {
        GateWritten::Redeemed(r) => r,
        other => return Err(ApiError::internal(format!("a redemption answered {other:?}"))),
    };
    if matches!(redeemed, Ok(Redeemed::Fresh { .. })) {
        attempt.given_back();
    }
    match redeemed {
        Ok(Redeemed::Fresh { .. }) => {
            tracing::info!(token_id = token.id(), terminal = %cred.name, %serial, "terminal paired");
            Ok(answer)
        }
        Ok(Redeemed::AlreadySameKey { cert_serial, .. }) => answer_for_serial(st, &cred, &cert_serial).await,
        Err(reason) => Err(refusal(reason)),
    }
}

/// Server-keygen delivery: the profile (private key included) was made at `terminal add` and waits in
/// `pki/pending/<name>.ovpn`. It is handed out once, then deleted: the store records the delivery (token used by
/// this requester's key, terminal paired), the file is removed, and only then is the answer sent. A retry by the
/// same requester gets the same profile as long as the file still exists (a crash between the two steps), else
/// `already_delivered` (410): a private key the server no longer holds cannot be sent again.
async fn keygen_flow(
    st: &GateState,
    token: &PairingToken,
    row: &crate::db::TokenRow,
    cred: &Credential,
    checked: Option<&CheckedCsr>,
    hw: Option<&str>,
    now: i64,
) -> Result<Outcome, ApiError> {
    let store = &st.ctx().store;
    let identity =
        format!("{KEYGEN_PREFIX}{}", checked.map_or_else(|| "none".to_owned(), |c| c.public_key_sha256_hex()));
    if row.used_at.is_some() && row.pubkey_sha256.as_deref() != Some(identity.as_str()) {
        let _w = st.0.writes.lock().await;
        store.lock_token(token.id(), now).await?;
        return Err(ApiError::KeyMismatch);
    }
    if row.used_at.is_none() && row.expires_at <= now {
        return Err(ApiError::TokenExpired);
    }
    let path = pending_profile(st, &cred.name);
    let Some(text) = crate::sys::fs::read_optional(&path).map_err(ApiError::internal)? else {
        return Err(if row.used_at.is_some() {
            ApiError::AlreadyDelivered
        } else {
            ApiError::internal("profile missing")
        });
    };
    let serial = store
        .certificates_of(cred.id)
        .await?
        .into_iter()
        .filter(|c| c.revoked_at.is_none())
        .max_by_key(|c| c.not_after)
        .map(|c| c.serial)
        .ok_or_else(|| ApiError::internal("server-keygen terminal without a certificate"))?;
    let redeemed = {
        let _w = st.0.writes.lock().await;
        store.redeem_token_keygen(token.id(), &identity, &serial, hw, now).await
    };
    match redeemed {
        Ok(_) => {}
        Err(DbError::TokenUnusable { reason }) => return Err(refusal(reason)),
        Err(e) => return Err(e.into()),
    }
    remove_delivered(&path)?;
    tracing::info!(token_id = token.id(), terminal = %cred.name, "server-made profile delivered and deleted");
    let ovpn = st.0.delivery.as_ref().map(|_| text);
    let cert = store.certificate_by_serial(&serial).await?.map(|c| c.cert_pem);
    Ok(Outcome::Paired(PairResponse {
        terminal: cred.name.to_string(),
        ovpn,
        master: st.0.master.clone(),
        cert,
        ca: Some(st.0.terminal_ca.clone()),
    }))
}

/// The approval flow: record (or find) the pairing of this key and answer with its state.
async fn approval_flow(st: &GateState, req: &PairRequest, ip: &str, now: i64) -> Result<Outcome, ApiError> {
    let pem = req.csr.as_deref().ok_or_else(|| ApiError::InvalidRequest("missing field `csr`".into()))?;
    let checked = csr::check(pem, None)?;
    if let Some(cn) = &checked.common_name
        && cn.parse::<Name>().is_err()
    {
        return Err(ApiError::CsrNameMismatch(format!("CN {} is not a valid terminal name", crate::domain::shown(cn))));
    }
    let new = PendingPairing {
        id: hex::encode(rand::random::<[u8; 16]>()),
        pubkey_sha256: checked.public_key_sha256_hex(),
        csr_pem: pem.to_owned(),
        code: pairing_code(&checked.csr.public_key_sha256()),
        common_name: checked.common_name.clone(),
        hw_serial: req.terminal.serial.clone(),
        version: Some(req.terminal.version.clone()),
        source_ip: ip.to_owned(),
        created_at: now,
        // It ends with the window it was made in (or after the TTL, if that comes first).
        expires_at: st
            .ctx()
            .store
            .pairing_window()
            .await?
            .map_or(now + PENDING_TTL_SECS, |until| until.min(now + PENDING_TTL_SECS)),
        state: PairingState::Pending,
        decided_at: None,
        credential_id: None,
        cert_serial: None,
    };
    let submitted = {
        let _w = st.0.writes.lock().await;
        st.ctx().store.submit_pending_pairing(&new, MAX_PENDING, MAX_PENDING_PER_SOURCE, now).await?
    };
    match submitted {
        Submitted::Created(p) => {
            tracing::info!(pairing_id = %p.id, code = %p.code, ip, "pairing waits for approval");
            pending_answer(st, p, now).await
        }
        Submitted::Existing(p) => pending_answer(st, p, now).await,
        Submitted::TooMany => Err(ApiError::TooManyPending),
    }
}

async fn pending_answer(st: &GateState, p: PendingPairing, now: i64) -> Result<Outcome, ApiError> {
    match p.state {
        PairingState::Pending if p.expires_at > now => {
            Ok(Outcome::Pending(PendingResponse { pairing_id: p.id, code: p.code }))
        }
        PairingState::Pending => Err(ApiError::Expired),
        PairingState::Rejected => Err(ApiError::Rejected),
        PairingState::Approved => {
            let (Some(id), Some(serial)) = (p.credential_id, p.cert_serial.as_deref()) else {
                return Err(ApiError::internal("approved pairing without a certificate"));
            };
            let cred = st.ctx().store.credential_by_id(id).await?.ok_or_else(|| ApiError::internal("no terminal"))?;
            if cred.is_revoked() {
                return Err(ApiError::Rejected);
            }
            answer_for_serial(st, &cred, serial).await
        }
    }
}

/// The answer for a certificate recorded earlier (retries, polls): re-rendered, byte-identical.
async fn answer_for_serial(st: &GateState, cred: &Credential, serial: &str) -> Result<Outcome, ApiError> {
    let cert = st
        .ctx()
        .store
        .certificate_by_serial(serial)
        .await?
        .filter(|c| c.credential_id == Some(cred.id))
        .ok_or_else(|| ApiError::internal("the recorded certificate is missing"))?;
    if cert.revoked_at.is_some() {
        return Err(ApiError::InvalidToken("its certificate was revoked"));
    }
    answer(st, &cred.name, &cert.cert_pem, &cert.serial)
}

fn answer(st: &GateState, name: &Name, cert_pem: &str, serial: &str) -> Result<Outcome, ApiError> {
    let ovpn = st.0.delivery.as_ref().map(|d| d.render(name, cert_pem, serial)).transpose()?;
    Ok(Outcome::Paired(PairResponse {
        terminal: name.to_string(),
        ovpn,
        master: st.0.master.clone(),
        cert: Some(cert_pem.to_owned()),
        ca: Some(st.0.terminal_ca.clone()),
    }))
}

fn refusal(reason: TokenRefusal) -> ApiError {
    match reason {
        TokenRefusal::Expired => ApiError::TokenExpired,
        TokenRefusal::Used => ApiError::TokenUsed(""),
        TokenRefusal::KeyMismatch => ApiError::KeyMismatch,
        TokenRefusal::Locked => ApiError::TokenUsed(" and is locked"),
        TokenRefusal::Revoked => ApiError::InvalidToken("its terminal was revoked"),
        TokenRefusal::Unknown => ApiError::InvalidToken("unknown token"),
    }
}

fn pending_profile(st: &GateState, name: &Name) -> std::path::PathBuf {
    st.ctx().pki.pending_dir().join(format!("{name}.ovpn"))
}

/// Deletes a delivered profile and makes the deletion durable.
fn remove_delivered(path: &std::path::Path) -> Result<(), ApiError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ApiError::internal(format!("cannot delete {}: {e}", path.display()))),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(ApiError::internal)?;
    }
    Ok(())
}

/// Removes server-made profiles whose delivery the store already recorded (a crash between the store commit and
/// the delete). Run when the gate starts.
pub async fn sweep_delivered(st: &GateState) -> Result<usize, crate::app::AppError> {
    let dir = st.ctx().pki.pending_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
    let mut n = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".ovpn")).and_then(|n| n.parse::<Name>().ok())
        else {
            continue;
        };
        let delivered = match st.ctx().store.credential_by_name(&name).await? {
            Some(c) => c.paired_at.is_some() || c.is_revoked(),
            None => false,
        };
        if delivered && remove_delivered(&e.path()).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
