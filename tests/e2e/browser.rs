//! Proves the browser harness (`support/browser.rs`) with a small page and no cas-vpn: a headless Chromium in a
//! client namespace loads a page served in the server namespace across the test LAN, fills and submits a form,
//! reads text, saves a screenshot, downloads an attachment and reads it, and does not see the host's loopback
//! (it really is inside its namespace). Then nothing is left: no browser process, no namespace.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};

use crate::support::*;

const PORT: u16 = 8080;
/// Generous: a loaded 2-core CI machine, not how long it takes.
const TIMEOUT: Duration = Duration::from_secs(20);
/// What the download link serves; the name comes from `Content-Disposition`, not from the link (like the admin
/// UI's one-time download links).
const FILE_NAME: &str = "hello.ovpn";
const FILE_BODY: &str = "client\nremote 198.51.100.1 1194\n";

const INDEX: &str = r#"<!doctype html>
<html><head><title>harness</title></head><body>
<h1>Browser harness</h1>
<form id="greet" method="post" action="/greet">
  <input name="name" value="placeholder">
  <button id="greet-submit" type="submit">Greet</button>
</form>
<a id="download" href="/download/ticket-1">profile</a>
</body></html>
"#;

/// The page server: routes of a tiny site that looks like the admin UI's flows (form POST, attachment download).
fn site() -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/greet", post(greet))
        .route("/download/ticket-1", get(download))
}

async fn greet(axum::Form(form): axum::Form<HashMap<String, String>>) -> Html<String> {
    let name = form.get("name").map(String::as_str).unwrap_or("").replace('&', "&amp;").replace('<', "&lt;");
    Html(format!("<!doctype html><html><body><p id=\"greeting\">Hello, {name}!</p></body></html>"))
}

async fn download() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/x-openvpn-profile".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{FILE_NAME}\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        FILE_BODY,
    )
}

/// [`site`] served on `ip:PORT` by a thread inside `ns`; stopped on drop.
struct PageServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    fn start(ns: &Netns, ip: Ipv4Addr) -> PageServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_in_netns(ns, "page-server", move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind((ip, PORT)).await.expect("bind the page server");
                let _ = ready_tx.send(());
                // Not a graceful shutdown: that would wait for the browser's keep-alive connections.
                tokio::select! {
                    served = axum::serve(listener, site()) => served.expect("page server"),
                    _ = stopped => {}
                }
            });
        });
        ready_rx.recv_timeout(TIMEOUT).expect("the page server did not start listening (its panic is above)");
        PageServer { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A port bound on the host's 127.0.0.1 must be out of the browser's reach: the client namespace has its own
/// loopback, where nothing listens on that port.
fn assert_host_loopback_unreachable(browser: &Browser) {
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind on the host's loopback");
    host.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}/", host.local_addr().unwrap().port());
    // Chromium shows its own error page for a refused connection; whether chromedriver also reports an error for
    // the navigation does not matter here.
    let nav = browser.run({
        let url = url.clone();
        move |c| async move { c.goto(&url).await }
    });
    let accepted = host.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the browser reached the host's {url} ({accepted:?}): it is not inside its namespace"
    );
    if nav.is_ok() {
        let page = browser.source();
        assert!(page.contains("ERR_CONNECTION_REFUSED"), "expected Chromium's connection-refused page, got {page}");
    }
    // The control: the same listener is reachable from the host's namespace, so the miss above was the namespace.
    let _client = TcpStream::connect(host.local_addr().unwrap()).expect("connect from the host");
    wait_until("the host's listener accepts a host connection", TIMEOUT, || host.accept().is_ok());
}

#[test]
#[ignore = "needs root, network namespaces and chromium: scripts/test runs it with --include-ignored"]
fn headless_browser_in_a_namespace_submits_a_form_and_downloads_a_file() {
    require_root();
    require_browser();
    let started = Instant::now();
    let lan = Lan::new(1);
    let names = lan.namespace_names();
    // Declared before the browser so it is dropped after it (locals drop in reverse order).
    let server = PageServer::start(lan.server(), lan.server_ip());
    let browser = Browser::start(lan.client(0));
    eprintln!("browser up after {:?}", started.elapsed());

    let base = format!("http://{}:{PORT}", lan.server_ip());
    browser.goto(&format!("{base}/"));
    assert_eq!(browser.text("h1"), "Browser harness");
    assert_eq!(browser.attr("#download", "href").as_deref(), Some("/download/ticket-1"));
    assert_eq!(browser.attr("#download", "data-missing"), None);

    // The form: replaces the prefilled value, submits, and the click returns with the answer page loaded.
    browser.fill("input[name=name]", "Alice <admin>");
    browser.click("#greet-submit");
    browser.wait_for("#greeting", TIMEOUT);
    assert_eq!(browser.text("#greeting"), "Hello, Alice <admin>!");
    assert_eq!(browser.current_url(), format!("{base}/greet"));
    assert!(!browser.exists("form#greet"), "still on the form page");

    let shot = browser.screenshot("browser-harness-greeting");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{} is not a real PNG", shot.display());

    // The download: saved without a prompt, under the name the server gave.
    browser.goto("/");
    browser.click("#download");
    let file = browser.wait_download(FILE_NAME, TIMEOUT);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), FILE_BODY);
    assert_eq!(file.parent(), Some(&*browser.download_dir()));

    assert_host_loopback_unreachable(&browser);
    eprintln!("test steps done after {:?}", started.elapsed());

    // Cleanup: chromedriver and every Chromium process ran inside the client namespace, where nothing else runs.
    let client_ns = lan.client(0);
    assert!(client_ns.pids().len() >= 2, "chromedriver and Chromium should be running in {}", client_ns.name());
    let download_dir = browser.download_dir();
    drop(browser);
    let left = client_ns.pids();
    assert!(left.is_empty(), "processes left behind in {} by the browser: {left:?}", client_ns.name());
    assert!(!download_dir.exists(), "download directory {} left behind", download_dir.display());
    drop(server);
    drop(lan);
    let left: Vec<String> = list_netns().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!("all done after {:?}", started.elapsed());
}
