//! The gate (`serve gate`): HTTPS on `gate_bind_ip:7741`, the only service reachable from the Internet, and only
//! while a pairing window is open (DNAT). Pairing (token and approval flows), terminal upgrades. Its TLS key's
//! SHA-256 pin travels in every pairing token, so a terminal authenticates the gate with no CA.
//!
//! Absences this module keeps: no request body, token or key is ever logged (a token's public id is); no CA key
//! in this process (certificates come from the signer, `control::signer`); a refused request writes no row and no
//! file (every check runs before the one store transaction that pairs).

pub mod delivery;
pub mod pair;
pub mod per_source;
pub mod upgrade;
pub(crate) mod writer;

pub use pair::ban_keys;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{AppError, Ctx};
use crate::domain::Name;
use crate::http::{ApiError, ServeLimits, server};
use crate::pkifiles::ServerRole;
use crate::wire::{self, MasterAddr, SERVICE_PORT};
use delivery::Delivery;

/// Failures from one address before it is banned, and for how long.
pub const MAX_FAILURES: u32 = 5;
pub const BAN_SECS: i64 = 15 * 60;
/// Failures from one IPv4 /24 (on top of each address's own 5) that ban the whole /24.
pub const MAX_NET_FAILURES_V4: u32 = 20;
/// Failures from one IPv6 /64 that ban it (one host usually holds a whole /64, and can change address in it).
pub const MAX_NET_FAILURES_V6: u32 = 10;

/// Everything the gate's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct GateState(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) pin: [u8; 32],
    /// `None` under Scenario B.
    pub(crate) delivery: Option<Delivery>,
    pub(crate) master: MasterAddr,
    /// The terminal CA's certificate (PEM), in every pairing answer: terminals verify master against it.
    pub(crate) terminal_ca: String,
    pub(crate) upgrades: upgrade::Upgrades,
    /// Serialises this process's store writes: SQLite lets one writer in at a time and makes the others sleep
    /// in its busy handler (milliseconds each, growing), which under a burst of pairings costs far more than
    /// queueing them here.
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// The pairing writes waiting to be written together (group commit, `writer`).
    pub(crate) writer: writer::Writer,
    /// One pairing attempt at a time per source address (see `pair::guarded`).
    pub(crate) per_source: Arc<per_source::Locks>,
}

impl GateState {
    /// Loads what the gate needs from an opened installation: the terminal CA, the gate's pin, the profile
    /// renderer (Scenario A), the upgrade package description (`config/upgrade`, optional).
    pub fn new(ctx: Arc<Ctx>) -> Result<GateState, AppError> {
        let pin = ctx.pki.gate_pin()?;
        let delivery = Delivery::new(&ctx)?;
        let net = &ctx.cfg.network;
        let host =
            ctx.cfg.gate.master_hostname.as_ref().map_or_else(|| net.master_bind_ip.to_string(), |h| h.to_string());
        let upgrades = upgrade::Upgrades::load(&ctx)?;
        let terminal_ca = ctx.pki.read_ca_cert(crate::domain::Kind::Terminal)?;
        Ok(GateState(Arc::new(Inner {
            pin,
            delivery,
            master: MasterAddr { host, port: SERVICE_PORT },
            terminal_ca,
            upgrades,
            writes: tokio::sync::Mutex::new(()),
            writer: writer::new(),
            per_source: Arc::default(),
            ctx,
        })))
    }

    /// The SHA-256 pin of the gate's TLS public key (what tokens carry).
    pub fn pin(&self) -> [u8; 32] {
        self.0.pin
    }

    /// True when no source has an attempt in flight or waiting (tests: per-source entries do not pile up).
    pub fn per_source_is_empty(&self) -> bool {
        self.0.per_source.is_empty()
    }

    /// Counters of the upgrade downloads (for tests and `status`).
    pub fn upgrade_stats(&self) -> upgrade::UpgradeStats {
        self.0.upgrades.stats()
    }

    pub(crate) fn ctx(&self) -> &Ctx {
        &self.0.ctx
    }
}

/// The gate's routes. Handlers read the peer address from `ConnectInfo<SocketAddr>` (set by [`server::serve`], or
/// by a `MockConnectInfo` layer in tests).
pub fn router(state: GateState) -> Router {
    Router::new()
        .route("/v1/pair", post(pair::pair))
        .route("/v1/pair/{id}", get(pair::poll))
        .route("/v1/upgrade/{file}", get(upgrade::download))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// `serve gate`: HTTPS on `gate_bind_ip:7741` until `stop` turns true. `node`: `serve --node`, the name its
/// gauges are published under (`cluster::node_name`).
pub async fn run_gate(ctx: Arc<Ctx>, stop: watch::Receiver<bool>, node: Option<Name>) -> Result<(), AppError> {
    let addr = SocketAddr::new(ctx.cfg.network.gate_bind_ip.into(), SERVICE_PORT);
    let node = crate::cluster::node_name(&ctx.cfg, node.as_ref());
    let state = GateState::new(ctx)?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            " (gate_bind_ip is not an address of this host: `serve all` or `serve vpn` puts it on the service \
             interface under Scenario A; under Scenario B it must exist already)"
        } else {
            ""
        };
        AppError::Other(format!("gate: cannot listen on {addr}: {e}{hint}"))
    })?;
    let gauges = tokio::spawn(publish_gauges(state.clone(), node, stop.clone()));
    let served = run_gate_on(state, listener, stop, ServeLimits::gate()).await;
    gauges.abort();
    served
}

/// Serves the gate on an already bound listener (tests bind 127.0.0.1:0).
pub async fn run_gate_on(
    state: GateState,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    limits: ServeLimits,
) -> Result<(), AppError> {
    let pki = &state.ctx().pki;
    let cert = pki.read_server_cert(ServerRole::Gate)?;
    let key = pki.read_server_key(ServerRole::Gate)?.to_pem();
    let tls = server::tls_acceptor(&cert, &key).map_err(|e| AppError::Other(format!("gate TLS: {e}")))?;
    let swept = pair::sweep_delivered(&state).await?;
    if swept > 0 {
        tracing::info!(swept, "removed server-made profiles that were delivered before a crash");
    }
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, pin = %wire::pin_text(&state.pin()), "gate listening");
    let nodes = tokio::spawn(follow_nodes(state.clone(), stop.clone()));
    let served = server::serve(listener, Some(tls), router(state), stop, limits)
        .await
        .map_err(|e| AppError::Other(format!("gate: {e}")));
    nodes.abort();
    served
}

/// How often the gate re-writes its gauges even when nothing changed: `/metrics` ignores a row older than
/// `GAUGES_FRESH` (a gate that stopped).
const GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// A gauge row at most this old is a running gate's.
pub const GAUGES_FRESH: std::time::Duration = std::time::Duration::from_secs(90);

/// Publishes what only this process knows (the upgrade downloads in progress) to the store, where `/metrics`
/// (the admin service) reads it: at every change (coalesced: the latest value wins) and every `GAUGES_EVERY`.
/// A store that does not answer costs a warning; the gate serves on.
pub async fn publish_gauges(state: GateState, node: Name, mut stop: watch::Receiver<bool>) {
    let mut in_flight = state.0.upgrades.watch_in_flight();
    let mut tick = tokio::time::interval(GAUGES_EVERY);
    loop {
        let value = i64::try_from(*in_flight.borrow_and_update()).unwrap_or(i64::MAX);
        let now = state.ctx().clock.now();
        if let Err(e) = state.ctx().store.set_gate_gauges(node.as_str(), value, now).await {
            tracing::warn!(error = %e, "cannot publish the gate's gauges to the store");
        }
        tokio::select! {
            _ = stop.changed() => return,
            changed = in_flight.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// How often the gate re-reads the nodes its profiles list as `remote`s.
const NODES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the delivered profiles' `remote` lines in step with the nodes sharing the store.
async fn follow_nodes(state: GateState, mut stop: watch::Receiver<bool>) {
    let Some(delivery) = state.0.delivery.as_ref() else { return };
    let mut tick = tokio::time::interval(NODES_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                match delivery.load_nodes(&state.ctx().store).await {
                    Ok(Some(n)) => tracing::info!(remotes = n, "profiles now list {n} node address(es)"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the nodes for the profiles' remotes; keeping the last list"),
                }
            }
        }
    }
}
