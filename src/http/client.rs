//! A small HTTP/1.1 client over plain TCP or TLS (OpenSSL), one connection per request: what the agent needs to
//! talk to the gate and master, and what the gate needs to fetch its upgrade package from upstream.
//!
//! TLS trust is explicit: a pin (SHA-256 of the server's SubjectPublicKeyInfo, as carried by pairing tokens) and
//! nothing else; first use (accept any key, report its pin); the terminal CA with master's name and our client
//! certificate (master, `mtls`); or the system's CA store with host name checks (upstream downloads). A pinned connection sends no byte of the request before the pin matched.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::ssl::{Ssl, SslConnector, SslContext, SslMethod, SslVerifyMode, SslVersion};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_openssl::SslStream;

/// How a TLS server is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Its public key must have this SHA-256 pin; no CA is consulted.
    Pin([u8; 32]),
    /// Anything (trust on first use): the caller records the pin it saw.
    FirstUse,
    /// The system CA store, with host name verification.
    System,
    /// master: its certificate verified against the terminal CA and its name, ours presented (`mtls`).
    Mutual(crate::http::mtls::ClientTls),
}

/// Where to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `None`: plain HTTP.
    pub tls: Option<Trust>,
    /// The local address to connect from (`None`: the route's). The pairing benchmark spreads its clients over
    /// loopback addresses, as terminals come from many addresses.
    pub source: Option<std::net::IpAddr>,
}

impl Target {
    /// `HOST:PORT` (IPv6 as `[::1]:PORT`).
    pub fn parse(host_port: &str, default_port: u16, tls: Option<Trust>) -> Result<Target, HttpError> {
        let bad = || HttpError::Address(crate::domain::shown(host_port));
        let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
            let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if tail.is_empty() => default_port,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (host_port.to_owned(), default_port),
            }
        };
        if host.is_empty()
            || host.len() > 253
            || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        {
            return Err(bad());
        }
        Ok(Target { host, port, tls, source: None })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid address {0}")]
    Address(String),
    #[error("cannot connect to {target}: {why}")]
    Connect { target: String, why: String },
    #[error("TLS with {target} failed: {why}")]
    Tls { target: String, why: String },
    #[error("{target} presented key {seen}, not the pinned {expected}: refusing to talk to it")]
    PinMismatch { target: String, seen: String, expected: String },
    #[error("HTTP exchange with {target} failed: {why}")]
    Exchange { target: String, why: String },
    #[error("{target} did not answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("the answer from {target} is larger than {limit} bytes")]
    TooLarge { target: String, limit: usize },
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The pin of the TLS server's key, when TLS was used.
    pub peer_pin: Option<[u8; 32]>,
}

impl Reply {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("unexpected answer ({}): {e}", self.status))
    }
}

/// Sends one request with an optional JSON body and reads the whole answer (at most `max_body` bytes), all within
/// `timeout`.
pub async fn send_json(
    target: &Target,
    method: Method,
    path: &str,
    json: Option<&impl serde::Serialize>,
    timeout: Duration,
    max_body: usize,
) -> Result<Reply, HttpError> {
    let body = match json {
        Some(v) => Bytes::from(
            serde_json::to_vec(v).map_err(|e| HttpError::Exchange { target: name(target), why: e.to_string() })?,
        ),
        None => Bytes::new(),
    };
    let mut headers = HeaderMap::new();
    if json.is_some() {
        headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    }
    let work = async {
        let (resp, peer_pin) = open(target, method, path, headers, body).await?;
        let (parts, incoming) = resp.into_parts();
        let body = Limited::new(incoming, max_body).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge { target: name(target), limit: max_body }
            } else {
                HttpError::Exchange { target: name(target), why: e.to_string() }
            }
        })?;
        Ok(Reply { status: parts.status, headers: parts.headers, body: body.to_bytes(), peer_pin })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout { target: name(target), secs: timeout.as_secs() })?
}

/// Sends one request and returns the answer with its body still streaming (for large downloads). No timeout: the
/// caller bounds it.
pub async fn open(
    target: &Target,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(Response<Incoming>, Option<[u8; 32]>), HttpError> {
    let connect_err = |e: std::io::Error| HttpError::Connect { target: name(target), why: e.to_string() };
    let tcp = match target.source {
        None => TcpStream::connect((target.host.as_str(), target.port)).await.map_err(connect_err)?,
        Some(source) => {
            let ip: std::net::IpAddr = target.host.parse().map_err(|_| HttpError::Address(target.host.clone()))?;
            let sock = if ip.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(connect_err)?;
            sock.bind(std::net::SocketAddr::new(source, 0)).map_err(connect_err)?;
            sock.connect(std::net::SocketAddr::new(ip, target.port)).await.map_err(connect_err)?
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut req = Request::builder().method(method).uri(path);
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    req = req.header(hyper::header::HOST, host_header).header(hyper::header::CONNECTION, "close");
    let mut req =
        req.body(Full::new(body)).map_err(|e| HttpError::Exchange { target: name(target), why: e.to_string() })?;
    req.headers_mut().extend(headers);
    match &target.tls {
        None => Ok((exchange(tcp, req, target).await?, None)),
        Some(trust) => {
            let (tls, pin) = tls_connect(tcp, target, trust).await?;
            Ok((exchange(tls, req, target).await?, Some(pin)))
        }
    }
}

async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>, target: &Target) -> Result<Response<Incoming>, HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let err = |e: hyper::Error| HttpError::Exchange { target: name(target), why: e.to_string() };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(err)
}

async fn tls_connect(
    tcp: TcpStream,
    target: &Target,
    trust: &Trust,
) -> Result<(SslStream<TcpStream>, [u8; 32]), HttpError> {
    let tls_err = |why: String| HttpError::Tls { target: name(target), why };
    let is_ip = target.host.parse::<std::net::IpAddr>().is_ok();
    let seen_in_handshake = std::sync::Arc::new(std::sync::Mutex::new(None::<[u8; 32]>));
    let ssl = match trust {
        Trust::Mutual(m) => m.ssl().map_err(|e| tls_err(e.to_string()))?,
        Trust::System => {
            // Loads the system CA store: only for the rare upstream download.
            let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_err(e.to_string()))?;
            b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(|e| tls_err(e.to_string()))?;
            b.set_verify(SslVerifyMode::PEER);
            let mut cfg = b.build().configure().map_err(|e| tls_err(e.to_string()))?;
            cfg.set_use_server_name_indication(!is_ip);
            cfg.into_ssl(&target.host).map_err(|e| tls_err(e.to_string()))?
        }
        Trust::Pin(_) | Trust::FirstUse => {
            // No CA store at all (loading one costs milliseconds per connection and would trust nothing here).
            let mut ssl =
                Ssl::new(pinned_context().map_err(|e| tls_err(e.to_string()))?).map_err(|e| tls_err(e.to_string()))?;
            if !is_ip {
                ssl.set_hostname(&target.host).map_err(|e| tls_err(e.to_string()))?;
            }
            if let &Trust::Pin(pin) = trust {
                // The only trust decision is the pin of the leaf's key (the handshake proves the server holds it).
                let seen = seen_in_handshake.clone();
                ssl.set_verify_callback(SslVerifyMode::PEER, move |_, ctx| {
                    if ctx.error_depth() != 0 {
                        return true;
                    }
                    let p = ctx.current_cert().and_then(|c| cert_pin(c).ok());
                    if let Ok(mut s) = seen.lock() {
                        *s = p;
                    }
                    p == Some(pin)
                });
            } else {
                ssl.set_verify(SslVerifyMode::NONE);
            }
            ssl
        }
    };
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| tls_err(e.to_string()))?;
    let handshake = std::pin::Pin::new(&mut stream).connect().await;
    let seen_early = seen_in_handshake.lock().ok().and_then(|s| *s);
    handshake.map_err(|e| match (trust, stream_pin(&stream).or(seen_early)) {
        (&Trust::Pin(expected), Some(seen)) if seen != expected => HttpError::PinMismatch {
            target: name(target),
            seen: crate::wire::pin_text(&seen),
            expected: crate::wire::pin_text(&expected),
        },
        _ => tls_err(e.to_string()),
    })?;
    let seen = stream_pin(&stream).ok_or_else(|| tls_err("the server sent no certificate".into()))?;
    if let &Trust::Pin(expected) = trust
        && seen != expected
    {
        return Err(HttpError::PinMismatch {
            target: name(target),
            seen: crate::wire::pin_text(&seen),
            expected: crate::wire::pin_text(&expected),
        });
    }
    Ok((stream, seen))
}

/// The client context for pinned and first-use connections: TLS 1.2+, no CA store, made once.
fn pinned_context() -> Result<&'static SslContext, openssl::error::ErrorStack> {
    static CTX: std::sync::OnceLock<SslContext> = std::sync::OnceLock::new();
    if let Some(c) = CTX.get() {
        return Ok(c);
    }
    let mut b = SslContext::builder(SslMethod::tls_client())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_verify(SslVerifyMode::PEER);
    Ok(CTX.get_or_init(|| b.build()))
}

fn stream_pin(s: &SslStream<TcpStream>) -> Option<[u8; 32]> {
    s.ssl().peer_certificate().and_then(|c| cert_pin(&c).ok())
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn cert_pin(cert: &openssl::x509::X509Ref) -> Result<[u8; 32], openssl::error::ErrorStack> {
    Ok(Sha256::digest(cert.public_key()?.public_key_to_der()?).into())
}

fn name(t: &Target) -> String {
    format!("{}:{}", t.host, t.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("127.0.0.1:7741", 1, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 7741));
        let t = Target::parse("gate.example", 7741, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("gate.example", 7741));
        let t = Target::parse("[::1]:9", 1, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in ["", ":80", "a b:1", "host:x", "h/x:1", "[::1]x"] {
            assert!(Target::parse(bad, 1, None).is_err(), "{bad}");
        }
    }
}
