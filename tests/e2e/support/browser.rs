//! `Browser`: a headless Chromium inside a test network namespace, driven over WebDriver (fantoccini), so a test
//! can use a web UI the way a person behind that namespace's network would.
//!
//! - `chromedriver` runs inside the namespace (`ip netns exec`, a [`ChildGuard`]: killed with its process group on
//!   drop, also when the test panics) and listens on the namespace's loopback; Chromium, its child, inherits the
//!   namespace, so every page it loads goes through the namespace's routes and tunnels.
//! - The WebDriver connection has to be opened from inside the namespace too (the namespace's 127.0.0.1 is not the
//!   host's). A network namespace belongs to a thread, not to a process: the Browser owns one thread that moved
//!   itself into the namespace (`setns`, see [`spawn_in_netns`]) and runs a current-thread tokio runtime; every
//!   WebDriver call is sent to that thread and runs there. The test thread stays in the host's namespace.
//! - The methods are synchronous and panic with what failed: tests read like a script. [`Browser::run`] is the
//!   escape hatch to the full fantoccini API (and to errors a test expects).
//! - Waits poll with a deadline ([`Browser::wait_for`], [`Browser::wait_download`]), never a fixed sleep.
//! - Each Browser has its own temporary directory (with the run id, removed on drop) holding a fresh profile, the
//!   download directory, and the HOME and TMPDIR that chromedriver and Chromium see: Chromium writes its crash
//!   database and caches under HOME whatever `--user-data-dir` says, and root's real home is none of a test's
//!   business; its own temporary files then go away with the directory, also after a killed run (`e2e-cleanup`).
//!   Screenshots go to `target/e2e-artifacts/` and stay there for people (and CI) to look at.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/install-deps --test`).

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sched::CloneFlags;
use serde_json::json;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use super::child::ChildGuard;
use super::env::{find_program, temp_dir};
use super::netns::Netns;
use super::wait::POLL_INTERVAL;

/// The Chromium that chromedriver starts (Debian's launcher script).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound of one WebDriver command (a page load included): a hung browser fails the test instead of hanging
/// it. Generous for a loaded 2-core CI machine; a page of the admin UI loads in milliseconds.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Chromedriver's own page load timeout: shorter than [`COMMAND_TIMEOUT`], so its clearer error wins.
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long chromedriver may take to start listening, and the session (Chromium) to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing the session may take on drop before chromedriver is killed anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of every Chromium the tests start. `--no-sandbox`: the tests run as root, where Chromium's sandbox
/// refuses to start. The `--disable-*` ones stop Chromium from phoning home (updates, sync, field trials): a test
/// namespace has no route out, and such traffic would only add noise and timeouts. No proxy: a proxy set in the
/// environment would send pages elsewhere than through the namespace. QUIC off: plain TCP is what the admin UI
/// serves. The window size makes screenshots show a whole page of the UI.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
    "--window-size=1280,1024",
];

/// A unit of work for the browser thread.
type Job = Box<dyn FnOnce(&Runtime) + Send>;

/// Panics, naming the Debian packages, unless chromium and chromedriver are installed.
pub fn require_browser() {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt: chromium)"));
    }
    if find_program("chromedriver").is_none() {
        missing.push("chromedriver in PATH (apt: chromium-driver)".to_owned());
    }
    assert!(
        missing.is_empty(),
        "this e2e test drives a headless browser and cannot run here: missing {}. `scripts/install-deps --test` \
         (as root) installs them",
        missing.join(", ")
    );
}

/// Moves the calling thread into network namespace `ns` (by name, `/run/netns/<ns>`). Only for threads made for
/// it ([`spawn_in_netns`]): sockets the thread opens afterwards belong to `ns`, and so do threads it starts.
fn enter_netns(ns: &str) -> std::io::Result<()> {
    let file = File::open(Path::new("/run/netns").join(ns))?;
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Spawns a thread that runs `f` inside `ns` (the rest of the process stays where it is). Panics in that thread,
/// with the reason, when it cannot enter the namespace. Use it for servers or clients the test runs in-process.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &Netns,
    label: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let name = ns.name().to_owned();
    std::thread::Builder::new()
        .name(format!("{label}@{name}"))
        .spawn(move || {
            enter_netns(&name).unwrap_or_else(|e| panic!("cannot enter network namespace {name}: {e}"));
            f()
        })
        .expect("spawn namespace thread")
}

/// Headless Chromium in a network namespace; the session, chromedriver, Chromium and the temporary directories go
/// away on drop.
pub struct Browser {
    /// `None` only inside `drop`: closing the channel ends the browser thread.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// A handle to the session; the session itself is a task on the browser thread's runtime.
    client: Client,
    driver: ChildGuard,
    /// `profile/` (`--user-data-dir`: no state leaks between tests), `downloads/`, `home/`, `tmp/`.
    dir: TempDir,
    label: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium inside `ns`. Panics (naming the packages) when they are not
    /// installed, or when either does not start within 30 s.
    pub fn start(ns: &Netns) -> Browser {
        Browser::start_with(ns, &[])
    }

    /// As `start`, with more Chromium flags (e.g. `--ignore-certificate-errors-spki-list=…` to trust exactly one
    /// self-signed certificate).
    pub fn start_with(ns: &Netns, extra_flags: &[String]) -> Browser {
        require_browser();
        let label = format!("browser@{}", ns.name());
        let dir = temp_dir("browser");
        let [profile, downloads, home, tmp] = ["profile", "downloads", "home", "tmp"].map(|sub| dir.path().join(sub));
        for d in [&profile, &downloads, &home, &tmp] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let (jobs, thread) = browser_thread(ns);
        // Netns::new brought the namespace's `lo` up, and nothing in a fresh test namespace listens on it: a port
        // the kernel hands out there stays free for the moment until chromedriver takes it.
        let port = run_job(&jobs, &label, |_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port())
        })
        .unwrap_or_else(|e| panic!("{label}: no free port on the namespace's loopback: {e}"));
        // HOME, the XDG directories and TMPDIR inside `dir`, for chromedriver and the Chromium it starts (module doc).
        let mut cmd = ns.cmd("chromedriver");
        cmd.arg(format!("--port={port}"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("TMPDIR", &tmp);
        let driver = ChildGuard::spawn(format!("chromedriver@{}", ns.name()), cmd);
        driver.wait_for_text("started successfully", START_TIMEOUT);

        let caps = capabilities(&profile, &downloads, extra_flags);
        let url = format!("http://127.0.0.1:{port}");
        let client = run_job(&jobs, &label, move |rt| {
            within(rt, START_TIMEOUT, async move { ClientBuilder::native().capabilities(caps).connect(&url).await })
        })
        .unwrap_or_else(|_| panic!("{label}: no WebDriver session within {START_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{label}: cannot start a WebDriver session with Chromium: {e}"));
        Browser { jobs: Some(jobs), thread: Some(thread), client, driver, dir, label }
    }

    /// Runs `f` with the session on the browser thread (inside the namespace) and returns its result; any
    /// fantoccini call, and errors a test expects. Gives up with `CmdError::WaitTimeout` after [`COMMAND_TIMEOUT`].
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, CmdError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        self.run_for(COMMAND_TIMEOUT, f)
    }

    fn run_for<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, CmdError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        let client = self.client.clone();
        let jobs = self.jobs.as_ref().expect("browser thread");
        run_job(jobs, &self.label, move |rt| {
            within(rt, timeout, async move { f(client).await }).unwrap_or(Err(CmdError::WaitTimeout))
        })
    }

    /// Like [`Browser::run`], panicking with `what` and the error instead of returning it.
    fn must<T, F, Fut>(&self, what: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        self.run(f).unwrap_or_else(|e| panic!("{}: {what}: {e}", self.label))
    }

    /// Loads `url` (relative ones resolve against the current page, e.g. `"/login"`) and waits for the load.
    pub fn goto(&self, url: &str) {
        let owned = url.to_owned();
        self.must(&format!("goto {url}"), move |c| async move { c.goto(&owned).await });
    }

    /// The address of the current page.
    pub fn current_url(&self) -> String {
        self.must("current url", |c| async move { c.current_url().await.map(String::from) })
    }

    /// The current page's HTML (as the browser serializes its DOM).
    pub fn source(&self) -> String {
        self.must("page source", |c| async move { c.source().await })
    }

    /// Replaces the value of the input matching `css` with `text` (typed, like a person would).
    pub fn fill(&self, css: &str, text: &str) {
        let (sel, text) = (css.to_owned(), text.to_owned());
        self.must(&format!("fill {css}"), move |c| async move {
            let input = c.find(Locator::Css(&sel)).await?;
            input.clear().await?;
            input.send_keys(&text).await
        });
    }

    /// Clicks the element matching `css`. A click that submits a form or follows a link returns once the new page
    /// has loaded (chromedriver waits for the navigation it started); a download does not navigate.
    pub fn click(&self, css: &str) {
        let sel = css.to_owned();
        self.must(&format!("click {css}"), move |c| async move { c.find(Locator::Css(&sel)).await?.click().await });
    }

    /// The rendered text of the element matching `css` (panics when there is none; see [`Browser::wait_for`]).
    pub fn text(&self, css: &str) -> String {
        let sel = css.to_owned();
        self.must(&format!("text of {css}"), move |c| async move { c.find(Locator::Css(&sel)).await?.text().await })
    }

    /// Attribute `name` of the element matching `css`, as written in the HTML (a relative `href` stays relative);
    /// `None` when the element has no such attribute.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let (sel, name) = (css.to_owned(), name.to_owned());
        self.must(&format!("attribute {name} of {css}"), move |c| async move {
            c.find(Locator::Css(&sel)).await?.attr(&name).await
        })
    }

    /// Whether an element matches `css` right now (no waiting), e.g. to check that something is gone.
    pub fn exists(&self, css: &str) -> bool {
        let sel = css.to_owned();
        self.must(&format!("look for {css}"), move |c| async move {
            c.find_all(Locator::Css(&sel)).await.map(|found| !found.is_empty())
        })
    }

    /// Polls until an element matches `css`; panics after `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) {
        let sel = css.to_owned();
        let waited = self.run_for(timeout + COMMAND_TIMEOUT, move |c| async move {
            c.wait().at_most(timeout).every(POLL_INTERVAL).for_element(Locator::Css(&sel)).await.map(drop)
        });
        match waited {
            Ok(()) => {}
            Err(CmdError::WaitTimeout) => {
                panic!("{}: no element {css} within {timeout:?} on {}", self.label, self.current_url())
            }
            Err(e) => panic!("{}: waiting for {css}: {e}", self.label),
        }
    }

    /// Saves a PNG of the visible page as `target/e2e-artifacts/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.must(&format!("screenshot {name}"), |c| async move { c.screenshot().await });
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-artifacts");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Where this browser saves downloads (without asking).
    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// Polls until the download `file_name` is complete in [`Browser::download_dir`]; returns its path. Chromium
    /// writes into `<something>.crdownload` and renames it to the final name once all bytes are there, so the name
    /// appearing means the file is whole. Panics after `timeout`, listing what is in the directory.
    pub fn wait_download(&self, file_name: &str, timeout: Duration) -> PathBuf {
        let dir = self.download_dir();
        let path = dir.join(file_name);
        let deadline = Instant::now() + timeout;
        while !path.is_file() {
            if Instant::now() >= deadline {
                let held: Vec<String> = std::fs::read_dir(&dir)
                    .map(|dir| {
                        dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "{}: download {file_name} not complete within {timeout:?}; the directory holds {held:?}",
                    self.label
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        path
    }
}

/// WebDriver capabilities: Chromium with [`CHROMIUM_FLAGS`], a fresh profile, downloads saved into `downloads`
/// without a prompt.
fn capabilities(profile: &Path, downloads: &Path, extra_flags: &[String]) -> fantoccini::wd::Capabilities {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.extend(extra_flags.iter().cloned());
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "browserName": "chrome",
        "timeouts": { "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64 },
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": args,
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                // "Insecure content: allowed" on every site. Without it Chromium holds back any download whose page
                // or file came over plain HTTP (it stays a `.crdownload` until a person clicks "Keep"): the
                // harness's own test page is plain HTTP. (The admin UI is HTTPS, so admins never meet this.)
                "profile.default_content_setting_values.mixed_script": 1,
            },
        },
    });
    match caps {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}

/// Starts the browser thread inside `ns`: it runs the jobs it receives, in order, on its own current-thread
/// runtime, and ends when the sender is dropped.
fn browser_thread(ns: &Netns) -> (mpsc::Sender<Job>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let thread = spawn_in_netns(ns, "browser", move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        for job in rx {
            job(&rt);
        }
    });
    (tx, thread)
}

/// Runs `fut` on `rt` (the browser thread's) for at most `timeout`. The timer is made inside the runtime: tokio's
/// timers need one when they are created, not only when they are polled.
fn within<F: Future>(rt: &Runtime, timeout: Duration, fut: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    rt.block_on(async move { tokio::time::timeout(timeout, fut).await })
}

/// Sends `f` to the browser thread and waits for its result. Panics when the thread is gone (it panicked: the
/// reason is above in the test's output).
fn run_job<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    label: &str,
    f: impl FnOnce(&Runtime) -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move |rt| {
        let _ = tx.send(f(rt));
    });
    jobs.send(job).unwrap_or_else(|_| panic!("{label}: the browser thread is gone"));
    rx.recv().unwrap_or_else(|_| panic!("{label}: the browser thread died (see its panic above)"))
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session first: chromedriver then quits Chromium cleanly, and the profile directory is no longer
        // written to when it is removed. Bounded, and never a panic here (a second panic while unwinding aborts
        // the test binary and hides the first one); the ChildGuard kills whatever is left afterwards.
        if let Some(jobs) = self.jobs.take() {
            let client = self.client.clone();
            let _ = jobs.send(Box::new(move |rt| {
                let _ = within(rt, CLOSE_TIMEOUT, client.close());
            }));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Then the fields: `driver` (chromedriver's process group) and the temporary directories.
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("label", &self.label).field("driver", &self.driver).finish()
    }
}
