//! Terminal upgrades: a terminal older than the minimum version gets `426 upgrade_required` with where the package
//! is; `GET /v1/upgrade/{file}` serves it from `batm.download`, `Range` included, at most `batm.processing-slots`
//! at a time (the others get `503 slots_full` with `Retry-After`).
//!
//! The package is described in `<root>/config/upgrade`, a file of cas-vpn's own (gate.properties belongs to CAS,
//! and cas-vpn's reader of it keeps only the keys it knows): `key=value` lines, `#` comments, every key checked:
//!
//! ```text
//! file=batm-terminal-20240115.pkg     # the name served under /v1/upgrade/
//! sha256=<64 hex digits>              # checked before the package is ever served
//! size=12345678
//! upstream=https://updates.example.com/batm-terminal-20240115.pkg   # optional: where to fetch it from once
//! min_version=20230801                # optional (default 20230801)
//! ```
//!
//! When the file is missing from `batm.download` (or does not match its checksum), the first download fetches it
//! from `upstream` once (concurrent requests wait for that one fetch), into a temp file that is hashed while
//! written, fsynced and renamed into place only if size and SHA-256 match. Every later request reuses it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::response::Response;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore, watch};
use tower::ServiceExt;

use super::GateState;
use super::pair::guarded;
use crate::app::{AppError, Ctx};
use crate::http::ApiError;
use crate::http::client::{Target, Trust};
use crate::http::server::peer_ip;
use crate::wire::UpgradeInfo;

/// `Retry-After` of a download refused for lack of a slot.
pub const SLOTS_RETRY_AFTER: u64 = 5;
/// `Retry-After` when the package could not be fetched.
const FETCH_RETRY_AFTER: u64 = 60;
/// An upstream fetch must be done within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// After a failed fetch, requests wait this long before the next attempt (they get 503 meanwhile).
const FETCH_BACKOFF: Duration = Duration::from_secs(10);
/// Name of the package description under `<root>/config`.
pub const UPGRADE_FILE: &str = "upgrade";

/// The package as described in `config/upgrade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub file: String,
    pub sha256: [u8; 32],
    pub size: u64,
    pub upstream: Option<Upstream>,
    pub min_version: Option<u32>,
}

/// An `http://` or `https://` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let bad = |why: &str| format!("invalid URL {}: {why}", crate::domain::shown(url));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("expected http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in URLs are not supported"));
        }
        let t = Target::parse(authority, if https { 443 } else { 80 }, None).map_err(|_| bad("bad host or port"))?;
        if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
            return Err(bad("the path must be printable ASCII without spaces or fragments"));
        }
        Ok(Upstream { https, host: t.host, port: t.port, path: path.to_owned() })
    }
}

impl Package {
    /// Parses `config/upgrade`; errors name the line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Package, AppError> {
        let err = |line: usize, why: String| AppError::Input { path: path.to_owned(), line, why };
        let (mut file, mut sha, mut size, mut upstream, mut min_version) = (None, None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l.split_once('=').ok_or_else(|| err(line, "expected key=value".into()))?;
            let (k, v) = (k.trim(), v.trim());
            let dup = |slot_set: bool| if slot_set { Err(err(line, format!("{k} is set twice"))) } else { Ok(()) };
            match k {
                "file" => {
                    dup(file.is_some())?;
                    let ok = !v.is_empty()
                        && v.len() <= 128
                        && !v.starts_with('.')
                        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
                    if !ok {
                        return Err(err(line, "file: a plain file name (A-Z a-z 0-9 . - _ +), at most 128".into()));
                    }
                    file = Some(v.to_owned());
                }
                "sha256" => {
                    dup(sha.is_some())?;
                    let bytes = hex::decode(v).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                    sha = Some(bytes.ok_or_else(|| err(line, "sha256: 64 hex digits".into()))?);
                }
                "size" => {
                    dup(size.is_some())?;
                    size = Some(v.parse::<u64>().map_err(|_| err(line, "size: a number of bytes".into()))?);
                }
                "upstream" => {
                    dup(upstream.is_some())?;
                    upstream = Some(Upstream::parse(v).map_err(|e| err(line, format!("upstream: {e}")))?);
                }
                "min_version" => {
                    dup(min_version.is_some())?;
                    let d = crate::wire::version_date(v).filter(|_| v.len() == 8);
                    min_version = Some(d.ok_or_else(|| err(line, "min_version: YYYYMMDD".into()))?);
                }
                other => return Err(err(line, format!("unknown key {}", crate::domain::shown(other)))),
            }
        }
        let missing = |k: &str| err(0, format!("{k} is required"));
        Ok(Package {
            file: file.ok_or_else(|| missing("file"))?,
            sha256: sha.ok_or_else(|| missing("sha256"))?,
            size: size.ok_or_else(|| missing("size"))?,
            upstream,
            min_version,
        })
    }
}

/// Download counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct UpgradeStats {
    pub slots: usize,
    pub in_flight: usize,
    /// The most downloads ever served at the same time.
    pub max_in_flight: usize,
    pub started: u64,
    pub refused_busy: u64,
    /// Fetches from upstream that completed.
    pub fetches: u64,
}

pub struct Upgrades {
    pkg: Option<Package>,
    dir: PathBuf,
    slots: Arc<Semaphore>,
    total_slots: usize,
    verified: AtomicBool,
    /// Held during a check or fetch (single flight); remembers when the last fetch failed.
    fetch_lock: Mutex<Option<std::time::Instant>>,
    /// Downloads in progress: a watch, so the gate can publish each change for `/metrics` (`gate::publish_gauges`).
    in_flight: Arc<watch::Sender<usize>>,
    max_in_flight: AtomicUsize,
    started: AtomicU64,
    refused: AtomicU64,
    fetches: AtomicU64,
}

impl Upgrades {
    pub fn load(ctx: &Ctx) -> Result<Upgrades, AppError> {
        let path = ctx.cfg.config_dir().join(UPGRADE_FILE);
        let pkg = crate::sys::fs::read_optional(&path)?.map(|t| Package::parse(&t, &path)).transpose()?;
        let total = usize::try_from(ctx.cfg.gate.processing_slots).unwrap_or(1).max(1);
        Ok(Upgrades {
            pkg,
            dir: ctx.cfg.gate.download_dir.clone(),
            slots: Arc::new(Semaphore::new(total)),
            total_slots: total,
            verified: AtomicBool::new(false),
            fetch_lock: Mutex::new(None),
            in_flight: Arc::new(watch::Sender::new(0)),
            max_in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        })
    }

    pub fn min_version(&self) -> Option<u32> {
        self.pkg.as_ref().and_then(|p| p.min_version)
    }

    /// What a terminal that must upgrade is told; `None` when no package is configured.
    pub fn info(&self) -> Option<UpgradeInfo> {
        self.pkg.as_ref().map(|p| UpgradeInfo {
            url: format!("/v1/upgrade/{}", p.file),
            sha256: hex::encode(p.sha256),
            size: p.size,
        })
    }

    /// Follows the downloads in progress.
    pub fn watch_in_flight(&self) -> watch::Receiver<usize> {
        self.in_flight.subscribe()
    }

    pub fn stats(&self) -> UpgradeStats {
        UpgradeStats {
            slots: self.total_slots,
            in_flight: *self.in_flight.borrow(),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            started: self.started.load(Ordering::SeqCst),
            refused_busy: self.refused.load(Ordering::SeqCst),
            fetches: self.fetches.load(Ordering::SeqCst),
        }
    }

    /// Makes sure the package is in `batm.download` and matches its checksum, fetching it once if needed. Callers
    /// that arrive during a fetch wait for it instead of starting their own.
    async fn ensure_present(&self, pkg: &Package) -> Result<(), String> {
        if self.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut last_failure = self.fetch_lock.lock().await;
        if self.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        if last_failure.is_some_and(|t| t.elapsed() < FETCH_BACKOFF) {
            return Err("the last fetch failed moments ago; waiting before the next".into());
        }
        let path = self.dir.join(&pkg.file);
        let on_disk = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || hash_file(&p)).await.map_err(|e| e.to_string())?
        };
        match on_disk {
            Some((size, sha)) if size == pkg.size && sha == pkg.sha256 => {}
            found => {
                if found.is_some() {
                    tracing::warn!(file = %path.display(), "the upgrade package on disk does not match config/upgrade");
                }
                let Some(up) = &pkg.upstream else {
                    return Err(format!(
                        "{} is missing or damaged and config/upgrade names no upstream",
                        path.display()
                    ));
                };
                let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(up, pkg, &self.dir))
                    .await
                    .map_err(|_| "the upstream fetch timed out".to_owned())
                    .and_then(|r| r);
                if let Err(e) = fetched {
                    *last_failure = Some(std::time::Instant::now());
                    return Err(e);
                }
                self.fetches.fetch_add(1, Ordering::SeqCst);
                tracing::info!(file = %pkg.file, "upgrade package fetched from upstream and verified");
            }
        }
        self.verified.store(true, Ordering::Release);
        Ok(())
    }
}

/// Size and SHA-256 of a file; `None` when it does not exist or cannot be read.
fn hash_file(path: &Path) -> Option<(u64, [u8; 32])> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).ok()?;
    Some((n, h.finalize().into()))
}

/// Downloads `up` into `dir/<file>`: temp file (hidden, swept after a crash), hashed while written, size-capped,
/// fsynced, renamed only when size and SHA-256 match, directory fsynced.
async fn fetch(up: &Upstream, pkg: &Package, dir: &Path) -> Result<(), String> {
    crate::sys::fs::ensure_dir(dir, 0o755).or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e.to_string()) })?;
    let target = Target { host: up.host.clone(), port: up.port, tls: up.https.then_some(Trust::System), source: None };
    let (resp, _) =
        crate::http::client::open(&target, hyper::Method::GET, &up.path, Default::default(), bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!("upstream answered {}", resp.status()));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", pkg.file))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temp file in {}: {e}", dir.display()))?;
    let mut body = resp.into_body();
    let mut hash = Sha256::new();
    let mut got: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("download interrupted: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        got += data.len() as u64;
        if got > pkg.size {
            return Err("upstream sent more bytes than config/upgrade says".into());
        }
        hash.update(&data);
        tmp.write_all(&data).map_err(|e| e.to_string())?;
    }
    if got != pkg.size {
        return Err(format!("upstream sent {got} bytes, {} expected", pkg.size));
    }
    if <[u8; 32]>::from(hash.finalize()) != pkg.sha256 {
        return Err("the downloaded package does not match its sha256".into());
    }
    let final_path = dir.join(&pkg.file);
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
        tmp.as_file().sync_all().map_err(|e| e.to_string())?;
        tmp.persist(&final_path).map_err(|e| e.to_string())?;
        if let Some(d) = final_path.parent() {
            std::fs::File::open(d).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A download's slot, counted as in flight until its body is dropped (fully sent, or the client went away).
///
/// The slot is a field so that it is released only after `drop` has taken the download off the count: were it
/// released first, the next download could be counted before this one is uncounted, and the count would show more
/// downloads than there are slots.
struct InFlight {
    count: Arc<watch::Sender<usize>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl InFlight {
    fn new(up: &Upgrades, slot: tokio::sync::OwnedSemaphorePermit) -> InFlight {
        up.in_flight.send_modify(|n| {
            *n += 1;
            up.max_in_flight.fetch_max(*n, Ordering::SeqCst);
        });
        up.started.fetch_add(1, Ordering::SeqCst);
        InFlight { count: up.in_flight.clone(), _slot: slot }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n -= 1);
    }
}

/// `GET /v1/upgrade/{file}` (and HEAD).
pub async fn download(
    State(st): State<GateState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(file): UrlPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let ip = peer_ip(&peer).to_string();
    guarded(&st, &ip, st.ctx().clock.now(), super::pair::Request::Upgrade, async {
        let up = &st.0.upgrades;
        let pkg = up.pkg.as_ref().filter(|p| p.file == file).ok_or(ApiError::NotFound)?;
        let Ok(permit) = up.slots.clone().try_acquire_owned() else {
            up.refused.fetch_add(1, Ordering::SeqCst);
            return Err(ApiError::SlotsFull { retry_after: SLOTS_RETRY_AFTER });
        };
        let held = InFlight::new(up, permit);
        if let Err(why) = up.ensure_present(pkg).await {
            tracing::warn!(file = %pkg.file, %why, "upgrade package unavailable");
            return Err(ApiError::UpgradeUnavailable { retry_after: FETCH_RETRY_AFTER });
        }
        let path = up.dir.join(&pkg.file);
        let resp = tower_http::services::ServeFile::new(&path).oneshot(req).await.map_err(ApiError::internal)?;
        let (parts, body) = resp.into_parts();
        // The slot and the count are held by the body: released when it is fully sent or dropped.
        let body = body.map_frame(move |f| {
            let _ = &held;
            f
        });
        Ok(Response::from_parts(parts, Body::new(body)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_package_file() {
        let sha = "ab".repeat(32);
        let text = format!(
            "# pkg\nfile=batm-20240115.pkg\nsha256={sha}\nsize=10\nupstream=https://u.example:8443/p/batm.pkg?x=1\n\
             min_version=20230901\n"
        );
        let p = Package::parse(&text, Path::new("/x")).unwrap();
        assert_eq!(p.file, "batm-20240115.pkg");
        assert_eq!(p.size, 10);
        assert_eq!(p.min_version, Some(20230901));
        let u = p.upstream.unwrap();
        assert!(u.https);
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("u.example", 8443, "/p/batm.pkg?x=1"));
        let u = Upstream::parse("http://127.0.0.1:9/f").unwrap();
        assert_eq!((u.https, u.port), (false, 9));

        for (bad, line) in [
            (format!("file=../x\nsha256={sha}\nsize=1\n"), 1),
            ("file=x\nsha256=zz\nsize=1\n".to_string(), 2),
            (format!("file=x\nsha256={sha}\nsize=-1\n"), 3),
            (format!("file=x\nsha256={sha}\nsize=1\nbogus=1\n"), 4),
            (format!("file=x\nsha256={sha}\nsize=1\nupstream=ftp://x/y\n"), 4),
            (format!("file=x\nfile=y\nsha256={sha}\nsize=1\n"), 2),
            ("file=x\nsize=1\n".to_string(), 0),
        ] {
            match Package::parse(&bad, Path::new("/x")) {
                Err(AppError::Input { line: l, .. }) => assert_eq!(l, line, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
