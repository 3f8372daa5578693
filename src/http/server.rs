//! The HTTP(S) accept loop shared by the gate (TLS) and master (mutual TLS).
//!
//! What a hostile or broken client can hold is bounded: the connection budgets of `http::budget` (per source and in
//! all, a connection is pending until its first request head has arrived, established after), a TLS handshake
//! timeout, a header timeout (hyper, from the accept, and also between requests on a kept-alive connection), a body
//! timeout and size cap (the handlers), no keep-alive for the gate and master (a terminal makes a handful of
//! requests; an idle connection is nothing but a held slot), and a ceiling on any connection's lifetime. The
//! peer address of the TCP connection goes into every request as `ConnectInfo<SocketAddr>`: bans and master's
//! identification use it, never a header; a client certificate the handshake verified goes in as
//! `mtls::PeerCertificate` (master's acceptor requires one).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVersion};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_openssl::SslStream;
use tower::ServiceExt;

use super::budget::Doorman;
use super::mtls::PeerCertificate;
use crate::domain::budget::Limits;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// The listener's name in log lines.
    pub name: &'static str,
    pub budget: Limits,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    /// No connection lives longer than this (a download on a very slow link included).
    pub max_connection_time: Duration,
    /// How long a graceful shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Keep connections open between requests (the admin UI: a browser makes many; the gate and master: no).
    pub keep_alive: bool,
    /// Accept connections from this address only: any other is closed at once, before TLS (the agent's status
    /// endpoint answers master alone).
    pub only_from: Option<std::net::IpAddr>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            name: "http",
            // A stranger's pending connections live at most handshake + header timeouts (10 s): 8 per source and
            // 512 in all keep a flood from 60 sources from filling the door while one legitimate client waits.
            budget: Limits {
                per_source_pending: 8,
                per_source_rate: 10.0,
                per_source_burst: 40,
                pending: 512,
                total: 4096,
            },
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            max_connection_time: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(10),
            keep_alive: false,
            only_from: None,
        }
    }
}

impl ServeLimits {
    /// The gate (Internet-facing while a window is open): the default budgets.
    pub fn gate() -> ServeLimits {
        ServeLimits { name: "gate", ..ServeLimits::default() }
    }

    /// Master. Scenario A: every terminal has its own tunnel address, so per-source budgets are per terminal and
    /// one compromised terminal cannot starve the others. Scenario B: every terminal may arrive through one VPN
    /// router address, so the per-source budgets must fit a whole fleet's heartbeats (2,000 terminals every 60 s
    /// with retries) and the global pending budget and short deadlines do the work.
    pub fn master(one_source_per_terminal: bool) -> ServeLimits {
        let mut l =
            ServeLimits { name: "master", max_connection_time: Duration::from_secs(120), ..ServeLimits::default() };
        if !one_source_per_terminal {
            l.budget.per_source_pending = 256;
            l.budget.per_source_rate = 400.0;
            l.budget.per_source_burst = 2000;
        }
        l
    }

    /// The agent's status endpoint (`agent::status`): master's probe, one connection at a time, short deadlines,
    /// from master's address only.
    pub fn agent_status(master: std::net::IpAddr) -> ServeLimits {
        ServeLimits {
            name: "agent status",
            budget: Limits { per_source_pending: 1, per_source_rate: 1.0, per_source_burst: 4, pending: 1, total: 1 },
            handshake_timeout: Duration::from_secs(3),
            header_timeout: Duration::from_secs(3),
            max_connection_time: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
            keep_alive: false,
            only_from: Some(master),
        }
    }

    /// The admin UI: a browser opens several kept-alive connections at once and many over a session.
    pub fn admin() -> ServeLimits {
        let mut l = ServeLimits { name: "admin", keep_alive: true, ..ServeLimits::default() };
        l.budget.per_source_pending = 16;
        l.budget.per_source_rate = 20.0;
        l.budget.per_source_burst = 100;
        l.budget.pending = 256;
        l.budget.total = 1024;
        l
    }
}

/// A TLS 1.2+ acceptor for a certificate and its key (PEM).
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<SslAcceptor, openssl::error::ErrorStack> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes())?;
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes())?;
    b.set_certificate(&cert)?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    Ok(b.build())
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting and lets requests in flight finish
/// (at most `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<SslAcceptor>,
    app: Router,
    mut stop: watch::Receiver<bool>,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let door = Doorman::new(limits.name, limits.budget);
    let tls = tls.map(Arc::new);
    loop {
        let (stream, peer, pass) = tokio::select! {
            next = door.next(&listener) => next,
            _ = stop.wait_for(|s| *s) => break,
        };
        if limits.only_from.is_some_and(|ip| ip != peer_ip(&peer)) {
            tracing::debug!(%peer, listener = limits.name, "connection from another address than the one allowed: closed");
            drop((stream, pass));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let pass = Arc::new(pass);
            let proven = pass.clone();
            // Set once the handshake verified a client certificate (master's mutual TLS), before any request.
            let client_cert = Arc::new(std::sync::OnceLock::<PeerCertificate>::new());
            let cert_for_requests = client_cert.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // A whole request head arrived (after the TLS handshake): the connection is no stranger's idle slot.
                proven.establish();
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(c) = cert_for_requests.get() {
                    req.extensions_mut().insert(c.clone());
                }
                app.clone().oneshot(req)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(limits.keep_alive);
            let served = async {
                match tls {
                    Some(acceptor) => {
                        let Ok(ssl) = Ssl::new(acceptor.context()) else { return };
                        let Ok(mut s) = SslStream::new(ssl, stream) else { return };
                        match tokio::time::timeout(limits.handshake_timeout, Pin::new(&mut s).accept()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                        let verified = s.ssl().verify_result() == openssl::x509::X509VerifyResult::OK;
                        let der = s.ssl().peer_certificate().filter(|_| verified).and_then(|c| c.to_der().ok());
                        if let Some(der) = der {
                            let _ = client_cert.set(PeerCertificate(Arc::new(der)));
                        }
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(s), svc)).await;
                    }
                    None => {
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await;
                    }
                }
            };
            tokio::select! {
                r = tokio::time::timeout(limits.max_connection_time, served) => if r.is_err() {
                    tracing::info!(%peer, "connection closed after the maximum connection time");
                },
                // Shed for a newcomer while still pending (the door logged it).
                () = pass.shed() => {}
            }
            drop(pass);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain_timeout) => tracing::warn!("requests still in flight at shutdown were cut"),
    }
    Ok(())
}

/// The address a request came from, as the TCP peer saw it (IPv4-mapped IPv6 shown as IPv4).
pub fn peer_ip(peer: &SocketAddr) -> std::net::IpAddr {
    peer.ip().to_canonical()
}
