//! `agent bench` (hidden): many token pairings against a gate, for `scripts/bench-pairing`. Each pairing is what
//! `agent pair` does on the wire (new key, CSR, TLS with the token's pin, `POST /v1/pair`); the latency measured is
//! that of the HTTPS exchange (connect, handshake, request, answer).
//!
//! Every client's key and CSR are made before the clock starts: a terminal makes its key long before it pairs, and
//! the generator shares the machine's cores with the gate and the signer, so key generation in the timed part would
//! be measured as the gate's slowness. The report says how long they took (`prepare_secs`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cas_pki::{KeyType, PrivateKey};
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::Mutex;

use super::{AgentError, make_csr};
use crate::domain::PairingToken;
use crate::http::client::{self as http, Target, Trust};
use crate::wire::{PairRequest, SERVICE_PORT, TerminalInfo};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub pairings: usize,
    pub ok: usize,
    pub errors: usize,
    /// The first few distinct errors.
    pub error_samples: Vec<String>,
    pub concurrency: usize,
    /// Making every client's key and CSR, before the timed part.
    pub prepare_secs: f64,
    pub elapsed_secs: f64,
    pub pairings_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Reads tokens from a `tokens.csv` of `terminal import --out` (or one token per line).
pub fn read_tokens(path: &Path) -> Result<Vec<PairingToken>, AgentError> {
    let text = crate::sys::fs::read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(field) = line.split(',').find(|f| f.starts_with("cv1.")) else { continue };
        out.push(field.parse().map_err(|e| AgentError::Usage(format!("{}:{}: {e}", path.display(), i + 1)))?);
    }
    if out.is_empty() {
        return Err(AgentError::Usage(format!("{}: no tokens", path.display())));
    }
    Ok(out)
}

/// Pairs every token against `gate` with `concurrency` clients. With `spread`, client k connects from its own
/// loopback address in its own /24 (`127.<1 + k % 250>.<k / 250>.1`), as a fleet comes from many addresses: the
/// gate's per-source budgets and ban keys then see what they would see in the field (the gate must be on
/// loopback).
pub async fn bench(
    gate: &str,
    tokens: Vec<PairingToken>,
    concurrency: usize,
    spread: bool,
) -> Result<BenchReport, AgentError> {
    let base = Target::parse(gate, SERVICE_PORT, None)?;
    let n = tokens.len();
    let prepared = Instant::now();
    let requests = tokio::task::spawn_blocking(move || tokens.into_iter().map(prepare).collect::<Vec<_>>())
        .await
        .map_err(|e| AgentError::Local(format!("preparing the clients' keys: {e}")))?;
    let prepare_secs = prepared.elapsed().as_secs_f64();
    let queue = Arc::new(Mutex::new(requests));
    let results = Arc::new(Mutex::new(Vec::<Result<Duration, String>>::with_capacity(n)));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for k in 0..concurrency.max(1) {
        let (queue, results, mut base) = (queue.clone(), results.clone(), base.clone());
        if spread {
            base.source = Some(std::net::Ipv4Addr::new(127, 1 + (k % 250) as u8, (k / 250) as u8, 1).into());
        }
        workers.spawn(async move {
            loop {
                let Some(prepared) = queue.lock().await.pop() else { return };
                let r = match prepared {
                    Ok((pin, req)) => one(&base, pin, &req).await,
                    Err(e) => Err(e),
                };
                results.lock().await.push(r);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let results = std::mem::take(&mut *results.lock().await);
    let mut lat: Vec<Duration> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    lat.sort();
    let mut samples: Vec<String> = Vec::new();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        if samples.len() < 5 && !samples.contains(e) {
            samples.push(e.clone());
        }
    }
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Ok(BenchReport {
        pairings: n,
        ok: lat.len(),
        errors: n - lat.len(),
        error_samples: samples,
        concurrency,
        prepare_secs,
        elapsed_secs: elapsed.as_secs_f64(),
        pairings_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

/// A client's request, made before the timed part: a new key, its CSR, the token; and the gate's pin.
fn prepare(token: PairingToken) -> Result<([u8; 32], PairRequest), String> {
    let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
    let req = PairRequest {
        token: Some(token.expose()),
        csr: Some(make_csr(&key).map_err(|e| e.to_string())?),
        terminal: TerminalInfo { serial: None, version: super::AGENT_VERSION.to_owned(), openvpn: None },
    };
    Ok((*token.pin(), req))
}

async fn one(base: &Target, pin: [u8; 32], req: &PairRequest) -> Result<Duration, String> {
    let target = Target { tls: Some(Trust::Pin(pin)), ..base.clone() };
    let t = Instant::now();
    let reply = http::send_json(&target, Method::POST, "/v1/pair", Some(req), Duration::from_secs(60), 256 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    let took = t.elapsed();
    if reply.status != StatusCode::OK {
        return Err(format!(
            "{} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).chars().take(120).collect::<String>()
        ));
    }
    Ok(took)
}
