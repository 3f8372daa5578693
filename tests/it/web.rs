//! The admin web UI's router (`cas_vpn::web::router`), driven without a socket on SQLite: a small browser
//! (cookie jar, CSRF token picked up from each page, chosen source address) logs in the real way (setup link →
//! password → TOTP enrolment → full session) and proves what the UI promises:
//!
//! - without a session every page sends to /login, every form changes nothing, and the API answers 401;
//! - every state-changing form needs the session's CSRF token and a same-origin request;
//! - a password alone (no TOTP) opens nothing;
//! - wrong passwords ban the source and slow the user, never lock them out, and an unknown user looks like a
//!   wrong password;
//! - the audit trail names the web or API user and their address;
//! - API tokens keep to their scope and die with expiry, revocation and a disabled user;
//! - the OpenAPI document and the API's routes are the same set;
//! - security headers on every response, and errors that leak nothing;
//! - idle and absolute session timeouts, logging out (here and everywhere), disabled users;
//! - the terminals list's search, filters and paging;
//! - one-time admin VPN download links.
//!
//! Time moves only with the fixture's test clock: nothing here sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use cas_vpn::db::{AuditQuery, AuditRow, NewSession, Store};
use cas_vpn::domain::Name;
use cas_vpn::ops;
use cas_vpn::web::{COOKIE, WebState};
use serde_json::{Value, json};
use sqlx::Row;
use tower::ServiceExt;

use crate::gate::Fixture;

/// Every web user's password here: long enough for the policy, and containing no user name.
const PASSWORD: &str = "correct horse battery staple";
/// Source addresses (documentation range; never contacted: the router only reads them).
const IP_ALICE: &str = "192.0.2.10";
const IP_OTHER: &str = "192.0.2.20";
/// Where a TOTP code moves to the next step: the same user's next login must wait this long (replay rule).
const TOTP_STEP: i64 = 30;

// ---------------------------------------------------------------------------------------------------------------
// the client

/// What a response carried.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `<code id="ID" …>TEXT</code>` of a page.
    fn code(&self, id: &str) -> String {
        let start = format!("<code id=\"{id}\"");
        let rest = &self.body[self.body.find(&start).unwrap_or_else(|| panic!("no #{id} in {}", self.body))..];
        let rest = &rest[rest.find('>').unwrap() + 1..];
        rest[..rest.find("</code>").unwrap()].to_owned()
    }

    /// The names of the rows of the terminals table.
    fn terminal_rows(&self) -> Vec<String> {
        self.body.split("<tr data-name=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_owned()).collect()
    }
}

/// A redirect (any of the kinds a browser follows with GET) to `/login`.
#[track_caller]
fn assert_to_login(r: &Resp, what: &str) {
    assert!(
        matches!(r.status, StatusCode::SEE_OTHER | StatusCode::FOUND | StatusCode::TEMPORARY_REDIRECT),
        "{what}: expected a redirect to /login, got {} {}",
        r.status,
        r.body
    );
    assert_eq!(r.header("location"), "/login", "{what}");
}

/// How a form's CSRF token is sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Csrf {
    /// The session's token, as the page gave it (none if no page gave one).
    Current,
    Wrong,
    Missing,
}

/// One browser: a cookie jar holding the session cookie, the CSRF token of the last page that had one, and the
/// address its requests come from.
struct Client<'w> {
    web: &'w Web,
    peer: SocketAddr,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Client<'_> {
    async fn send(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: Body) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, format!("{COOKIE}={c}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(body).unwrap();
        // What the server puts in every request (a `MockConnectInfo` layer would not do: the UI reads the
        // extension itself, never falling back to a mock).
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let resp = self.web.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        for set in headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let Some(value) = set.strip_prefix(&format!("{COOKIE}=")) else { continue };
            let value = value.split(';').next().unwrap_or("");
            // An empty value (with Max-Age=0) is the server ending the session: the jar forgets it.
            self.cookie = Some(value.to_owned()).filter(|v| !v.is_empty());
            if self.cookie.is_none() {
                self.csrf = None;
            }
        }
        if let Some(i) = body.find("name=\"csrf\" value=\"") {
            let rest = &body[i + 19..];
            self.csrf = Some(rest[..rest.find('"').unwrap()].to_owned());
        }
        Resp { status, headers, body }
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], Body::empty()).await
    }

    /// A form POST; `csrf` says whether (and which) token is added to `form`.
    async fn post(&mut self, path: &str, form: &[(&str, &str)], csrf: Csrf, headers: &[(&str, &str)]) -> Resp {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        match (csrf, &self.csrf) {
            (Csrf::Current, Some(t)) => {
                body.append_pair("csrf", t);
            }
            (Csrf::Wrong, _) => {
                body.append_pair("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            }
            _ => {}
        }
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.send(Method::POST, path, &all, Body::from(body.finish())).await
    }

    /// A form POST with the session's CSRF token, as the page would send it.
    async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.post(path, form, Csrf::Current, &[]).await
    }

    /// Makes an API token on My account; returns the token (shown once).
    async fn api_token(&mut self, label: &str, scope: &str, days: u32) -> String {
        let r =
            self.post_form("/account/tokens", &[("label", label), ("scope", scope), ("days", &days.to_string())]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.code("api-token")
    }
}

/// A web user as the tests know them: what they would type.
struct User {
    name: String,
    id: i64,
    password: String,
    seed: String,
}

/// An initialised installation (with its in-process signer), and the web UI's router on its context.
struct Web {
    f: Fixture,
    router: Router,
}

impl Web {
    async fn new() -> Web {
        let f = Fixture::new().await;
        let router = cas_vpn::web::router(WebState::new(f.ctx.clone()));
        Web { f, router }
    }

    fn now(&self) -> i64 {
        self.f.ctx.clock.now()
    }

    fn advance(&self, secs: i64) {
        self.f.advance(secs);
    }

    fn store(&self) -> &Store {
        &self.f.ctx.store
    }

    /// A browser with no cookie, at `ip`.
    fn client(&self, ip: &str) -> Client<'_> {
        Client { web: self, peer: format!("{ip}:50000").parse().unwrap(), cookie: None, csrf: None }
    }

    /// `web-user add NAME` (as the CLI does it), then the setup link is followed and a password set: a session
    /// at stage "enroll". Returns the setup path (`/setup/TOKEN`) too.
    async fn set_up(&self, name: &str, ip: &str) -> (Client<'_>, String) {
        let added = ops::web_users::add(&self.f.ctx, &name.parse().unwrap(), false).await.unwrap();
        let path = added.setup_url.split_once(":7777").expect("https://IP:7777/setup/TOKEN").1.to_owned();
        assert!(path.starts_with("/setup/"), "{path}");
        let mut c = self.client(ip);
        let r = c.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = c.post_form(&path, &[("password", PASSWORD), ("password2", PASSWORD)]).await;
        assert_eq!((r.status, r.header("location")), (StatusCode::SEE_OTHER, "/enroll"), "{}", r.body);
        assert!(c.cookie.is_some(), "the setup starts a session");
        (c, path)
    }

    /// A new user, all the way: setup link, password, TOTP enrolment (recovery codes shown), full session.
    async fn enrol(&self, name: &str, ip: &str) -> (User, Client<'_>) {
        let (mut c, _) = self.set_up(name, ip).await;
        let r = c.get("/enroll").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let seed = r.code("totp-secret");
        let code = cas_vpn::web::totp::code_at(&seed, name, self.now()).unwrap();
        let r = c.post_form("/enroll", &[("code", &code)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("id=\"recovery-codes\""), "{}", r.body);
        let id = self.store().web_user_by_name(name).await.unwrap().unwrap().id;
        let user = User { name: name.to_owned(), id, password: PASSWORD.to_owned(), seed };
        // The recovery page has no form: the next page gives the full session's CSRF token.
        let r = c.get("/account").await;
        assert_eq!(r.status, StatusCode::OK, "a full session after enrolling: {}", r.body);
        (user, c)
    }

    /// The password step of a login from `ip`: a session at stage "password", on the TOTP page.
    async fn password_only(&self, u: &User, ip: &str) -> Client<'_> {
        let mut c = self.client(ip);
        let r = c.post_form("/login", &[("username", &u.name), ("password", &u.password)]).await;
        assert_eq!((r.status, r.header("location")), (StatusCode::SEE_OTHER, "/login/totp"), "{}", r.body);
        let r = c.get("/login/totp").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        c
    }

    /// A full login (password, then a TOTP code) from `ip`. The clock moves one TOTP step first: a code is
    /// accepted once per user.
    async fn login(&self, u: &User, ip: &str) -> Client<'_> {
        self.advance(TOTP_STEP);
        let mut c = self.password_only(u, ip).await;
        let code = cas_vpn::web::totp::code_at(&u.seed, &u.name, self.now()).unwrap();
        let r = c.post_form("/login/totp", &[("code", &code)]).await;
        assert_eq!((r.status, r.header("location")), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
        let r = c.get("/account").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        c
    }

    /// An API call from `ip` with `token` (no cookie).
    async fn api(&self, ip: &str, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
        let mut c = self.client(ip);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let body = body.map_or_else(Body::empty, |v| Body::from(serde_json::to_vec(v).unwrap()));
        c.send(method, path, &headers, body).await
    }

    async fn add_terminal(&self, name: &str, server_keygen: bool) -> ops::terminal::Added {
        let opts = ops::terminal::AddOptions { expires: None, server_keygen };
        ops::terminal::add(&self.f.ctx, name.parse().unwrap(), &opts).await.unwrap()
    }

    async fn audit(&self, action: &str) -> Vec<AuditRow> {
        let q = AuditQuery { action: Some(action.to_owned()), limit: 1000, ..AuditQuery::default() };
        self.store().audit_page(&q).await.unwrap()
    }

    /// Every row of every table, as text: what "nothing changed" is checked against.
    async fn dump(&self) -> BTreeMap<&'static str, Vec<String>> {
        let Store::Sqlite(pool) = self.store() else { panic!("the router tests run on SQLite") };
        let mut out = BTreeMap::new();
        for table in TABLES {
            let rows = sqlx::query(&format!("SELECT * FROM {table}")).fetch_all(pool).await.unwrap();
            let mut text: Vec<String> = rows
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| match row.try_get::<Option<i64>, _>(i) {
                            Ok(v) => format!("{v:?}"),
                            Err(_) => format!("{:?}", row.try_get::<Option<String>, _>(i).unwrap()),
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            text.sort();
            out.insert(table, text);
        }
        out
    }
}

/// Every table of the store (migrations 0001–0006).
const TABLES: [&str; 15] = [
    "credentials",
    "certificates",
    "pairing_tokens",
    "crl_state",
    "sessions",
    "audit",
    "pairing_window",
    "ip_bans",
    "pending_pairings",
    "web_users",
    "web_setup_links",
    "web_recovery_codes",
    "web_sessions",
    "api_tokens",
    "web_downloads",
];

/// The pages behind a full session (GET). `/terminals/atm-1` and the download link need not exist: the session
/// is checked first.
const PAGES: [&str; 12] = [
    "/",
    "/terminals",
    "/terminals?q=atm&filter=online",
    "/terminals/atm-1",
    "/admin-vpn",
    "/admin-vpn/download/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "/sessions",
    "/audit",
    "/audit.csv",
    "/users",
    "/account",
    "/enroll",
];

/// A state-changing form: where it goes and a body that a logged-in user with the right CSRF token gets
/// accepted (so that a refusal in the tests below is the CSRF or origin check's doing, not a bad body).
struct Form {
    path: &'static str,
    fields: Vec<(&'static str, &'static str)>,
    /// With the right token it changes the store (a few only answer 404 here: no pending pairing exists).
    changes: bool,
}

fn form(path: &'static str, fields: &[(&'static str, &'static str)], changes: bool) -> Form {
    Form { path, fields: fields.to_vec(), changes }
}

/// Every state-changing form of a full session, in an order where each still works after the ones before it
/// (what ends the session comes last; after `/logout` a test logs in again). Needs [`forms_world`].
fn forms() -> Vec<Form> {
    vec![
        form("/pairing/open", &[("minutes", "15")], true),
        form("/pairing/close", &[], true),
        form("/pairing/p-unknown/approve", &[("code", "123456"), ("name", "atm-9")], false),
        form("/pairing/p-unknown/reject", &[], false),
        form("/terminals", &[("name", "atm-new")], true),
        form("/terminals/revoke", &[("names", "atm-1"), ("confirm", "REVOKE 1")], true),
        form("/terminals/atm-2/revoke", &[("confirm", "atm-2")], true),
        form("/admin-vpn", &[("name", "ops-laptop")], true),
        form("/admin-vpn/adm-1/revoke", &[("confirm", "adm-1")], true),
        form("/users", &[("name", "dave")], true),
        form("/users/bob/disable", &[], true),
        form("/users/carol/enable", &[], true),
        form("/users/carol/reset-totp", &[], true),
        form(
            "/account/password",
            &[("current", PASSWORD), ("password", "another long passphrase"), ("password2", "another long passphrase")],
            true,
        ),
        form("/account/tokens", &[("label", "ci"), ("scope", "read"), ("days", "30")], true),
        form("/account/tokens/1/revoke", &[], true),
        form("/logout", &[], true),
        form("/account/logout-everywhere", &[], true),
    ]
}

/// What [`forms`] act on: terminals atm-1 and atm-2, admin credential adm-1, users alice (returned, logged in,
/// owning API token 1), bob (enabled) and carol (enrolled, then disabled).
async fn forms_world(w: &Web) -> (User, Client<'_>) {
    w.add_terminal("atm-1", false).await;
    w.add_terminal("atm-2", false).await;
    let out = tempfile::tempdir().unwrap();
    ops::admin::issue(&w.f.ctx, &"adm-1".parse().unwrap(), Some(&out.path().join("adm-1.ovpn"))).await.unwrap();
    let (alice, mut c) = w.enrol("alice", IP_ALICE).await;
    w.enrol("bob", IP_OTHER).await;
    let (carol, _) = w.enrol("carol", IP_OTHER).await;
    w.store().set_web_user_disabled(carol.id, Some(w.now())).await.unwrap();
    c.api_token("first", "read", 30).await;
    assert_eq!(w.store().api_tokens_of(alice.id).await.unwrap()[0].id, 1, "the token the forms revoke");
    (alice, c)
}

// ---------------------------------------------------------------------------------------------------------------
// 1–2: no session

#[tokio::test]
async fn without_a_session_pages_send_to_login_forms_change_nothing_and_the_api_wants_a_token() {
    let w = Web::new().await;
    let (_alice, _c) = forms_world(&w).await;
    let before = w.dump().await;

    let mut anon = w.client(IP_OTHER);
    for path in PAGES.iter().chain(&["/login/totp"]) {
        assert_to_login(&anon.get(path).await, path);
    }
    // The login page itself, and a setup link that does not exist: no redirect loop, nothing to take.
    assert_eq!(anon.get("/login").await.status, StatusCode::OK);
    assert_eq!(anon.get("/setup/nope").await.status, StatusCode::GONE);

    // Every form, with a plausible (forged) token: nothing is done, whatever the answer.
    let mut posts: Vec<Form> = forms();
    posts.push(form("/login/totp", &[("code", "123456")], true));
    posts.push(form("/enroll", &[("code", "123456")], true));
    posts.push(form("/setup/nope", &[("password", PASSWORD), ("password2", PASSWORD)], true));
    for f in &posts {
        let r = anon.post(f.path, &f.fields, Csrf::Wrong, &[]).await;
        assert!(!r.status.is_success(), "{}: {} {}", f.path, r.status, r.body);
        if f.path != "/setup/nope" {
            assert_to_login(&r, f.path);
        }
        assert!(anon.cookie.is_none(), "{}: no session was started", f.path);
    }
    assert_eq!(w.dump().await, before, "an unauthenticated request changed the store");

    // The API: 401 with a JSON error and the scheme to use, for every route (writes too).
    for (i, (method, path)) in [
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/terminals"),
        (Method::POST, "/api/v1/terminals"),
        (Method::GET, "/api/v1/terminals/atm-1"),
        (Method::POST, "/api/v1/credentials/atm-1/revoke"),
        (Method::GET, "/api/v1/sessions"),
        (Method::GET, "/api/v1/admin-vpn"),
        (Method::GET, "/api/v1/audit"),
    ]
    .into_iter()
    .enumerate()
    {
        for (j, token) in [None, Some("cvapi_not-a-real-token"), Some("not even the right prefix")].iter().enumerate() {
            // A source per request: five wrong tokens from one would ban it (429), which is tested elsewhere.
            let ip = format!("192.0.2.{}", 30 + 3 * i + j);
            let r = w.api(&ip, method.clone(), path, *token, Some(&json!({"name": "atm-x"}))).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), "Bearer", "{method} {path}");
            assert_eq!(r.json()["error"]["code"], "unauthorized", "{method} {path}");
        }
    }
    assert_eq!(w.dump().await, before, "an unauthenticated API request changed the store");
}

// ---------------------------------------------------------------------------------------------------------------
// 3: CSRF and same-origin

#[tokio::test]
async fn every_form_needs_the_sessions_csrf_token_and_a_same_origin_request() {
    let w = Web::new().await;
    let (mut alice, mut c) = forms_world(&w).await;
    let before = w.dump().await;

    let foreign: [(&str, &str); 4] = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
        // The right host on another port or scheme is another origin.
        ("origin", "http://10.3.2.1:7777"),
    ];
    for f in forms() {
        for csrf in [Csrf::Wrong, Csrf::Missing] {
            let r = c.post(f.path, &f.fields, csrf, &[]).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{} with a {csrf:?} token: {}", f.path, r.body);
        }
        for h in foreign {
            let r = c.post(f.path, &f.fields, Csrf::Current, &[h]).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{} with {h:?} and the right token: {}", f.path, r.body);
        }
        assert_eq!(w.dump().await, before, "{}: a refused form changed the store", f.path);
        assert!(c.cookie.is_some(), "{}: the session survives a refused form", f.path);
    }

    // The login form has no session to hold a token: the origin check alone guards it.
    let mut other = w.client(IP_OTHER);
    for h in foreign {
        let r = other.post("/login", &[("username", "alice"), ("password", PASSWORD)], Csrf::Missing, &[h]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "/login with {h:?}: {}", r.body);
        assert!(other.cookie.is_none());
    }
    assert_eq!(w.dump().await, before, "a cross-site login changed the store");

    // The control: the very same forms with the right token, same-origin (what a browser sends: its own origin,
    // `Sec-Fetch-Site: same-origin`), are accepted, and those that change something do.
    let origin = format!("https://{}:7777", w.f.ctx.cfg.network.admin_bind_ip);
    let own = [("sec-fetch-site", "same-origin"), ("origin", origin.as_str())];
    let mut last = before;
    for f in forms() {
        let r = c.post(f.path, &f.fields, Csrf::Current, &own).await;
        assert_ne!(r.status, StatusCode::FORBIDDEN, "{} with the right token: {}", f.path, r.body);
        assert!(!r.status.is_server_error(), "{}: {} {}", f.path, r.status, r.body);
        let now = w.dump().await;
        assert_eq!(now != last, f.changes, "{}: did it change the store? ({})", f.path, r.status);
        last = now;
        if f.path == "/account/password" {
            alice.password = f.fields[1].1.to_owned();
        }
        if f.path == "/logout" {
            c = w.login(&alice, IP_ALICE).await;
            last = w.dump().await;
        }
    }
}

#[tokio::test]
async fn the_login_steps_check_the_csrf_token_too() {
    let w = Web::new().await;
    let (alice, c) = w.enrol("alice", IP_ALICE).await;
    drop(c);
    // Stage "enroll": a user whose authenticator was reset.
    let (mut enrolling, _) = w.set_up("bob", IP_OTHER).await;
    enrolling.get("/enroll").await;
    let mut half = w.password_only(&alice, IP_ALICE).await;
    w.advance(TOTP_STEP);
    let before = w.dump().await;
    let code = cas_vpn::web::totp::code_at(&alice.seed, "alice", w.now()).unwrap();
    for csrf in [Csrf::Wrong, Csrf::Missing] {
        let r = half.post("/login/totp", &[("code", &code)], csrf, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "/login/totp with a {csrf:?} token: {}", r.body);
        let r = enrolling.post("/enroll", &[("code", "123456")], csrf, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "/enroll with a {csrf:?} token: {}", r.body);
        let r = half.post("/logout", &[], csrf, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "/logout with a {csrf:?} token: {}", r.body);
    }
    assert_eq!(w.dump().await, before, "a refused login step changed the store");
    // The right token: the code is taken (the refusals above did not use it up).
    let r = half.post_form("/login/totp", &[("code", &code)]).await;
    assert_eq!((r.status, r.header("location")), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
}

// ---------------------------------------------------------------------------------------------------------------
// 4: TOTP is required

#[tokio::test]
async fn a_password_alone_opens_nothing() {
    let w = Web::new().await;
    let (alice, c) = w.enrol("alice", IP_ALICE).await;
    drop(c);
    let (mut enrolling, _) = w.set_up("bob", IP_OTHER).await;
    let mut half = w.password_only(&alice, IP_ALICE).await;
    for (who, c) in [("password only", &mut half), ("not enrolled", &mut enrolling)] {
        for path in PAGES.iter().filter(|p| **p != "/enroll") {
            assert_to_login(&c.get(path).await, &format!("{who}: {path}"));
        }
        // The API does not take a session cookie, half-made or not.
        let r = c.get("/api/v1/status").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{who}: {}", r.body);
        // Nor can it make itself a token.
        let r = c.post_form("/account/tokens", &[("label", "x"), ("scope", "write"), ("days", "30")]).await;
        assert_to_login(&r, who);
    }
    assert_to_login(&half.get("/enroll").await, "a password session cannot enrol a new authenticator");
    assert!(w.store().api_tokens_of(alice.id).await.unwrap().is_empty());
    // The sessions were not ended by being turned away: the code still completes the login.
    let code = cas_vpn::web::totp::code_at(&alice.seed, "alice", w.now() + TOTP_STEP).unwrap();
    w.advance(TOTP_STEP);
    let r = half.post_form("/login/totp", &[("code", &code)]).await;
    assert_eq!(r.header("location"), "/", "{}", r.body);
    assert_eq!(half.get("/terminals").await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------------------------
// 5: bans and slow-down

async fn login_attempt(c: &mut Client<'_>, user: &str, password: &str) -> Resp {
    c.post_form("/login", &[("username", user), ("password", password)]).await
}

#[tokio::test]
async fn wrong_passwords_ban_the_source_and_slow_the_user_without_locking_them_out() {
    let w = Web::new().await;
    let (alice, c) = w.enrol("alice", IP_ALICE).await;
    drop(c);
    const A: &str = "192.0.2.101";
    const B: &str = "192.0.2.102";

    // Five wrong passwords from A: A is banned, even with the right password.
    let mut a = w.client(A);
    for i in 0..5 {
        let r = login_attempt(&mut a, "alice", &format!("wrong password {i}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}: {}", r.body);
    }
    let r = login_attempt(&mut a, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(a.cookie.is_none(), "no session for a banned source");

    // Alice has failed five times in a row now: her next password check waits (a second), from anywhere.
    let u = w.store().web_user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(u.failed_logins, 5);
    let until = u.slow_until.expect("alice is slowed");
    assert!(until > w.now() && until <= w.now() + 60, "{until} vs {}", w.now());
    let mut b = w.client(B);
    let r = login_attempt(&mut b, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "slowed, from another source too: {}", r.body);
    // Past it she logs in from B (never locked out); A stays banned for its 15 minutes.
    w.advance(until - w.now());
    w.login(&alice, B).await;
    let u = w.store().web_user_by_name("alice").await.unwrap().unwrap();
    assert_eq!((u.failed_logins, u.slow_until), (0, None), "a good login clears the slow-down");
    let r = login_attempt(&mut a, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    w.advance(15 * 60);
    w.login(&alice, A).await;

    // An unknown user name is answered exactly like a wrong password.
    let mut e = w.client("192.0.2.105");
    let wrong = login_attempt(&mut e, "alice", "not the password at all").await;
    let unknown = login_attempt(&mut e, "nobody", "not the password at all").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body));
    assert_eq!(
        w.store().web_user_by_name("alice").await.unwrap().unwrap().failed_logins,
        1,
        "the unknown one is no one's"
    );

    // Wrong passwords for unknown users count for the source too.
    let mut c = w.client("192.0.2.103");
    for i in 0..5 {
        let r = login_attempt(&mut c, &format!("nobody{i}"), "whatever it is").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    let r = login_attempt(&mut c, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);

    // Each failure is audited with its source and the user it was for ("-": no such user).
    let failed = w.audit("web.login_failed").await;
    let from = |ip: &str, subject: &str| {
        failed.iter().filter(|r| r.source.as_deref() == Some(ip) && r.subject == subject).count()
    };
    assert_eq!((from(A, "alice"), from("192.0.2.103", "-"), from("192.0.2.105", "-")), (5, 5, 1));
    assert_eq!(failed.len(), 12, "{failed:?}");
    assert!(failed.iter().any(|r| r.detail.contains("banned")), "the ban is on record");
}

// ---------------------------------------------------------------------------------------------------------------
// 6: the audit trail names who and from where

#[tokio::test]
async fn actions_are_audited_as_the_web_or_api_user_from_their_address() {
    let w = Web::new().await;
    let (_alice, mut c) = w.enrol("alice", "192.0.2.61").await;
    let r = c.post_form("/terminals", &[("name", "atm-web-1")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.code("pairing-token").is_empty());
    let token = c.api_token("script", "write", 7).await;
    let body = json!({"name": "atm-api-1"});
    let r = w.api("192.0.2.62", Method::POST, "/api/v1/terminals", Some(&token), Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let rows = w.audit("terminal.add").await;
    let who = |name: &str| {
        let r = rows.iter().find(|r| r.subject == name).unwrap_or_else(|| panic!("no terminal.add of {name}"));
        (r.actor.to_string(), r.source.clone())
    };
    assert_eq!(who("atm-web-1"), ("web:alice".to_owned(), Some("192.0.2.61".to_owned())));
    assert_eq!(who("atm-api-1"), ("api:alice".to_owned(), Some("192.0.2.62".to_owned())));
    // Setting up, enrolling and making the token are on record, from the same address.
    for action in ["web.setup", "web.totp_enrolled", "web.api_token_created"] {
        let found = w.audit(action).await;
        assert!(
            found.iter().any(|r| r.actor.to_string() == "web:alice" && r.source.as_deref() == Some("192.0.2.61")),
            "{action}: {found:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 7: API tokens

#[tokio::test]
async fn api_tokens_keep_to_their_scope_and_die_with_expiry_revocation_and_a_disabled_user() {
    let w = Web::new().await;
    let (alice, mut c) = w.enrol("alice", IP_ALICE).await;
    let (_bob, mut bc) = w.enrol("bob", IP_OTHER).await;
    let read = c.api_token("reader", "read", 30).await;
    let write = c.api_token("writer", "write", 30).await;
    let short = c.api_token("short", "read", 1).await;
    let revoked = c.api_token("revoked", "write", 30).await;
    let bobs = bc.api_token("bob's", "write", 30).await;
    assert!(read.starts_with("cvapi_") && write.starts_with("cvapi_"), "{read} {write}");
    let call = |m: Method, path: &'static str, t: &str, body: Option<Value>| {
        let t = t.to_owned();
        let w = &w;
        async move { w.api(IP_OTHER, m, path, Some(&t), body.as_ref()).await }
    };

    // read: every GET; no write.
    for path in ["/api/v1/terminals", "/api/v1/status", "/api/v1/sessions", "/api/v1/admin-vpn", "/api/v1/audit"] {
        let r = call(Method::GET, path, &read, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    let before = w.store().list_credentials(None, true).await.unwrap().len();
    let r = call(Method::POST, "/api/v1/terminals", &read, Some(json!({"name": "atm-ro"}))).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("read_only")));
    let r = call(Method::POST, "/api/v1/credentials/atm-ro/revoke", &read, None).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("read_only")));
    assert_eq!(w.store().list_credentials(None, true).await.unwrap().len(), before, "the read token wrote");

    // write: adds a terminal; its pairing token is in the answer.
    let r = call(Method::POST, "/api/v1/terminals", &write, Some(json!({"name": "atm-rw"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let v = r.json();
    assert_eq!(v["name"], "atm-rw");
    assert!(v["token"].as_str().is_some_and(|t| t.len() > 20), "{v}");
    let r = call(Method::GET, "/api/v1/terminals?q=atm-rw", &read, None).await;
    assert_eq!(r.json()["terminals"][0]["name"], "atm-rw");
    let r = call(Method::POST, "/api/v1/terminals", &write, Some(json!({"nom": "x"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Revoked on My account: 401 at once.
    assert_eq!(call(Method::GET, "/api/v1/status", &revoked, None).await.status, StatusCode::OK);
    let id = w.store().api_tokens_of(alice.id).await.unwrap().into_iter().find(|t| t.label == "revoked").unwrap().id;
    let r = c.post_form(&format!("/account/tokens/{id}/revoke"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = call(Method::GET, "/api/v1/status", &revoked, None).await;
    assert_eq!((r.status, r.header("www-authenticate")), (StatusCode::UNAUTHORIZED, "Bearer"));

    // Bob is disabled: his token dies with him (and stays dead if he is enabled again).
    assert_eq!(call(Method::GET, "/api/v1/status", &bobs, None).await.status, StatusCode::OK);
    assert_eq!(c.post_form("/users/bob/disable", &[]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(call(Method::GET, "/api/v1/status", &bobs, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.post_form("/users/bob/enable", &[]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(call(Method::GET, "/api/v1/status", &bobs, None).await.status, StatusCode::UNAUTHORIZED);

    // The one-day token: fine just before its end, 401 at it.
    let short_row = w.store().api_tokens_of(alice.id).await.unwrap().into_iter().find(|t| t.label == "short").unwrap();
    w.advance(short_row.expires_at - 1 - w.now());
    assert_eq!(call(Method::GET, "/api/v1/status", &short, None).await.status, StatusCode::OK);
    w.advance(1);
    assert_eq!(call(Method::GET, "/api/v1/status", &short, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(call(Method::GET, "/api/v1/status", &read, None).await.status, StatusCode::OK, "a 30-day one lives");
}

// ---------------------------------------------------------------------------------------------------------------
// 8: the OpenAPI document is the API

/// The API's routes, by hand: a route added to `api::parts()` (or to the router beside it) without being listed
/// here and in the document fails `the_openapi_document_lists_exactly_the_api`.
const API_ROUTES: [(&str, &str); 8] = [
    ("get", "/status"),
    ("get", "/terminals"),
    ("post", "/terminals"),
    ("get", "/terminals/{name}"),
    ("post", "/credentials/{name}/revoke"),
    ("get", "/sessions"),
    ("get", "/admin-vpn"),
    ("get", "/audit"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// (method, path) of every operation in an OpenAPI document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            item.keys().filter(|m| METHODS.contains(&m.as_str())).map(|m| (m.clone(), path.clone())).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_api() {
    let w = Web::new().await;
    let (_alice, mut c) = w.enrol("alice", IP_ALICE).await;
    let token = c.api_token("probe", "write", 30).await;
    w.add_terminal("atm-1", false).await;

    // Served (without a token: it documents the API, it is not part of what a token opens) and valid JSON.
    let r = w.api(IP_OTHER, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.header("content-type").starts_with("application/json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let (_, made) = cas_vpn::web::api::parts();
    assert_eq!(doc, serde_json::to_value(&made).unwrap(), "the served document is the one made with the routes");

    let listed = operations(&doc);
    let by_hand: BTreeSet<(String, String)> =
        API_ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(listed, by_hand, "the document and the hand-written list of API routes differ");

    // Paths are relative to the document's server (the OpenAPI default is "/").
    let base = doc["servers"][0]["url"].as_str().unwrap_or("/").trim_end_matches('/').to_owned();
    // Every operation answers (with names that exist); writes last, revocation very last.
    let mut ops: Vec<&(String, String)> = listed.iter().collect();
    ops.sort_by_key(|(m, p)| (m == "post", p.contains("revoke")));
    for (m, p) in ops {
        let path = format!("{base}{}", p.replace("{name}", "atm-1"));
        let method: Method = m.to_uppercase().parse().unwrap();
        let body = (m == "post").then(|| json!({"name": "atm-probe"}));
        let r = w.api(IP_OTHER, method, &path, Some(&token), body.as_ref()).await;
        assert!(r.status.is_success(), "{m} {path} (listed as {p}): {} {}", r.status, r.body);
        assert!(r.header("content-type").starts_with("application/json"), "{m} {path}");
    }
    // And the router has no other method on those paths.
    for (_, p) in &listed {
        let path = format!("{base}{}", p.replace("{name}", "atm-1"));
        for m in METHODS.iter().filter(|m| !listed.contains(&((**m).to_owned(), p.clone()))) {
            let r = w.api(IP_OTHER, m.to_uppercase().parse().unwrap(), &path, Some(&token), None).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: undocumented but answered");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 9: headers and errors

#[track_caller]
fn assert_security_headers(r: &Resp, what: &str) {
    let csp = r.header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: CSP {csp:?}");
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{what}: CSP {csp:?}");
    assert_eq!(r.header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(r.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(r.header("x-frame-options"), "DENY", "{what}");
}

/// The page runs under that CSP: an inline script or style would be blocked, so there must be none.
#[track_caller]
fn assert_no_inline_code(r: &Resp, what: &str) {
    for bad in ["<script>", " style=\"", "<style", " onclick=", " onload=", "javascript:"] {
        assert!(!r.body.contains(bad), "{what}: {bad:?} in the page");
    }
    // Scripts only from a file of ours (`/static/…`), never inline.
    for tag in r.body.split("<script").skip(1) {
        let head = tag.split('>').next().unwrap_or("");
        assert!(head.contains(" src=\"/static/"), "{what}: an inline script: <script{head}>");
    }
}

#[track_caller]
fn assert_leaks_nothing(r: &Resp, what: &str) {
    for bad in ["/tmp", ".rs", "src/", "SELECT", "sqlite", "no such", "sqlx", "panicked", "backtrace", "cv-it-"] {
        assert!(!r.body.to_lowercase().contains(&bad.to_lowercase()), "{what}: {bad:?} in {}", r.body);
    }
}

#[tokio::test]
async fn every_response_has_the_security_headers_and_errors_leak_nothing() {
    let w = Web::new().await;
    let (_alice, mut c) = w.enrol("alice", IP_ALICE).await;
    let token = c.api_token("probe", "read", 30).await;
    w.add_terminal("atm-1", false).await;

    let mut anon = w.client(IP_OTHER);
    for path in ["/login", "/static/app.css", "/", "/no-such-page", "/setup/nope"] {
        assert_security_headers(&anon.get(path).await, path);
    }
    for (path, t) in [("/api/v1/status", None), ("/api/v1/status", Some(token.as_str())), ("/api/v1/nope", None)] {
        assert_security_headers(&w.api(IP_OTHER, Method::GET, path, t, None).await, path);
    }
    // Authenticated pages: never cached.
    for path in PAGES.iter().filter(|p| !p.contains("download") && **p != "/enroll") {
        let r = c.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_security_headers(&r, path);
        assert_eq!(r.header("cache-control"), "no-store", "{path}");
        assert_no_inline_code(&r, path);
    }
    for path in ["/login", "/setup/nope"] {
        assert_no_inline_code(&anon.get(path).await, path);
    }

    // 404: says so, and nothing about the request or the server.
    let r = c.get("/etc/passwd-no-such-page-%3Cscript%3E").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.body.contains("passwd") && !r.body.contains("<script"), "{}", r.body);
    assert_leaks_nothing(&r, "404");
    let r = w.api(IP_OTHER, Method::GET, "/api/v1/terminals/no-such-terminal", Some(&token), None).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    // 500: the store fails under the page and the API (a table gone); the answer is a reference, no detail.
    let Store::Sqlite(pool) = w.store() else { unreachable!() };
    sqlx::query("DROP TABLE sessions").execute(pool).await.unwrap();
    let r = c.get("/sessions").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert!(r.body.contains("reference"), "{}", r.body);
    assert_leaks_nothing(&r, "500 page");
    assert_security_headers(&r, "500 page");
    let r = w.api(IP_OTHER, Method::GET, "/api/v1/sessions", Some(&token), None).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("internal")));
    assert_leaks_nothing(&r, "500 API");
    assert_security_headers(&r, "500 API");
}

// ---------------------------------------------------------------------------------------------------------------
// 10: sessions end

#[tokio::test]
async fn sessions_end_when_idle_at_twelve_hours_and_on_logout_or_disable() {
    let w = Web::new().await;
    let (alice, mut c) = w.enrol("alice", IP_ALICE).await;

    // Idle: 29 minutes is fine (and counts as activity), 31 more is not.
    w.advance(29 * 60);
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    w.advance(31 * 60);
    assert_to_login(&c.get("/").await, "idle 31 minutes");
    assert!(w.store().web_sessions_of(alice.id).await.unwrap().is_empty(), "the idle session is deleted");

    // Absolute: active every 20 minutes, still out after 12 hours.
    let mut c = w.login(&alice, IP_ALICE).await;
    let started = w.now();
    while w.now() + 20 * 60 - started <= 12 * 3600 {
        w.advance(20 * 60);
        assert_eq!(c.get("/account").await.status, StatusCode::OK, "{} min in", (w.now() - started) / 60);
    }
    w.advance(20 * 60);
    assert_to_login(&c.get("/account").await, "past 12 hours");

    // Logout: the old cookie is worth nothing afterwards.
    let mut c = w.login(&alice, IP_ALICE).await;
    let old = c.cookie.clone();
    let r = c.post_form("/logout", &[]).await;
    assert_to_login(&r, "logout");
    assert!(c.cookie.is_none(), "the cookie is cleared");
    c.cookie = old;
    assert_to_login(&c.get("/").await, "the cookie of a logged-out session");

    // Log out everywhere: every session of the user, not only this one; other users keep theirs.
    let mut one = w.login(&alice, IP_ALICE).await;
    let mut two = w.login(&alice, IP_OTHER).await;
    let (bob, mut bc) = w.enrol("bob", IP_OTHER).await;
    let r = one.post_form("/account/logout-everywhere", &[]).await;
    assert_to_login(&r, "logout everywhere");
    assert_to_login(&two.get("/").await, "alice's other session");
    assert!(w.store().web_sessions_of(alice.id).await.unwrap().is_empty());
    assert_eq!(bc.get("/").await.status, StatusCode::OK, "bob's session is not alice's");

    // Disabling a user ends their sessions at once.
    let mut admin = w.login(&alice, IP_ALICE).await;
    assert_eq!(admin.post_form("/users/bob/disable", &[]).await.status, StatusCode::SEE_OTHER);
    assert_to_login(&bc.get("/").await, "a disabled user's session");
    assert!(w.store().web_sessions_of(bob.id).await.unwrap().is_empty());
    // And they cannot log in again (an unknown-looking answer, no session).
    let r = login_attempt(&mut w.client(IP_OTHER), "bob", PASSWORD).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------------------------
// 11: the terminals list

/// `/terminals?…` as the names of its rows, and the page's "N terminals · page X of Y".
async fn terminals(c: &mut Client<'_>, query: &str) -> (Vec<String>, String) {
    let r = c.get(&format!("/terminals?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
    let count = r.body.split("<p class=\"muted\">").nth(1).map(|s| s[..s.find("</p>").unwrap()].to_owned());
    (r.terminal_rows(), count.unwrap_or_default())
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn terminals_search_filter_and_page() {
    let w = Web::new().await;
    let mut atm07_ip = None;
    for i in 0..60 {
        let a = w.add_terminal(&format!("atm-{i:02}"), false).await;
        if i == 7 {
            atm07_ip = a.tunnel_ip;
        }
    }
    for n in ["a_b", "axb", "online-1", "offline-1", "revoked-1"] {
        w.add_terminal(n, false).await;
    }
    // The VPN config `init` writes (Scenario A) lets the server make a terminal's key: a certificate on record.
    w.add_terminal("keygen-1", true).await;
    let store = w.store();
    let id = |n: &'static str| async move {
        store.credential_by_name(&n.parse::<Name>().unwrap()).await.unwrap().unwrap().id
    };
    let online = id("online-1").await;
    store
        .upsert_session(&NewSession {
            node: "n1".into(),
            instance: "terminal-0".into(),
            credential_id: online,
            common_name: "online-1".into(),
            tunnel_ip: "198.18.0.99".into(),
            real_addr: "203.0.113.5:40000".into(),
            since: w.now(),
            client_id: 1,
        })
        .await
        .unwrap();
    store.mark_paired(id("offline-1").await, None, w.now()).await.unwrap();
    let actor = w.f.ctx.actor.clone();
    store.revoke(&"revoked-1".parse().unwrap(), cas_pki::RevocationReason::Unspecified, &actor, w.now()).await.unwrap();
    let serial = store.certificates_of(id("keygen-1").await).await.unwrap()[0].serial.clone();
    // keygen-1's certificate ends in 730 days: move to 20 days before that, inside the 30-day expiry horizon.
    let not_after = store.certificates_of(id("keygen-1").await).await.unwrap()[0].not_after;
    w.advance(not_after - 20 * 86_400 - w.now());
    // online-1's session is on node n1, alive now (its heartbeat is fresh by the fixture's clock).
    crate::store::register(store, "n1", w.now()).await;
    let (_alice, mut c) = w.enrol("alice", IP_ALICE).await;

    // The dashboard's renewal table: keygen-1 ends within 30 days and is past its renewal point (the latest is 30
    // days before the end); once its renewal failed, it is named with why.
    let cell = |body: &str, k: &str| {
        let (_, rest) = body.split_once(&format!("data-renewal=\"{k}\">")).unwrap();
        rest.split_once('<').unwrap().0.to_owned()
    };
    let r = c.get("/").await;
    let got: Vec<String> = ["expiring-7d", "expiring-30d", "expiring-60d", "expired", "overdue", "failed"]
        .iter()
        .map(|k| cell(&r.body, k))
        .collect();
    assert_eq!(got, ["0", "1", "1", "0", "1", "0"], "{}", r.body);
    assert!(!r.body.contains("renewal-failures"));
    let (code, detail) = ("invalid_csr".parse().unwrap(), "invalid CSR: <not PEM>".parse().unwrap());
    let source = cas_vpn::domain::renewal::FailureSource::Master;
    store.record_renewal_failure(id("keygen-1").await, source, &code, &detail, w.now()).await.unwrap();
    let r = c.get("/").await;
    assert_eq!(cell(&r.body, "failed"), "1");
    assert!(r.body.contains("<a href=\"/terminals/keygen-1\">keygen-1</a>"), "{}", r.body);
    assert!(r.body.contains("<code>invalid_csr</code> invalid CSR: &#60;not PEM&#62;</td>"), "escaped: {}", r.body);
    store.clear_renewal_failure(id("keygen-1").await).await.unwrap();

    // Filters.
    assert_eq!(terminals(&mut c, "filter=online").await.0, names(&["online-1"]));
    assert_eq!(terminals(&mut c, "filter=offline").await.0, names(&["offline-1"]));
    assert_eq!(terminals(&mut c, "filter=revoked").await.0, names(&["revoked-1"]));
    assert_eq!(terminals(&mut c, "filter=expiring").await.0, names(&["keygen-1"]));
    let (rows, count) = terminals(&mut c, "filter=never_paired").await;
    assert!(count.starts_with("63 terminals"), "60 atm-, a_b, axb, keygen-1: {count}");
    assert!(!rows.iter().any(|n| ["online-1", "offline-1", "revoked-1"].contains(&n.as_str())), "{rows:?}");
    assert!(terminals(&mut c, "").await.1.starts_with("65 terminals"), "active: all but the revoked one");
    assert_eq!(c.get("/terminals?filter=bogus").await.status, StatusCode::BAD_REQUEST);

    // Paging: 60 atm- terminals are two pages, in name order.
    let (first, count) = terminals(&mut c, "q=atm-").await;
    assert_eq!(count, "60 terminals · page 1 of 2");
    assert_eq!(first, (0..50).map(|i| format!("atm-{i:02}")).collect::<Vec<_>>());
    let (second, count) = terminals(&mut c, "q=atm-&page=2").await;
    assert_eq!(count, "60 terminals · page 2 of 2");
    assert_eq!(second, (50..60).map(|i| format!("atm-{i:02}")).collect::<Vec<_>>());

    // Search: name substring; `%` and `_` are literal characters, not patterns.
    assert_eq!(terminals(&mut c, "q=line-").await.0, names(&["offline-1", "online-1"]));
    assert_eq!(terminals(&mut c, "q=a_b").await.0, names(&["a_b"]));
    assert_eq!(terminals(&mut c, "q=_").await.0, names(&["a_b"]));
    assert_eq!(terminals(&mut c, "q=%25").await.0, names(&[]));
    assert_eq!(terminals(&mut c, "q=atm-0%25").await.0, names(&[]));
    // Certificate serial: a prefix (in either case), not any substring.
    assert_eq!(terminals(&mut c, &format!("q={}", &serial[..10])).await.0, names(&["keygen-1"]));
    assert_eq!(terminals(&mut c, &format!("q={}", serial[..10].to_uppercase())).await.0, names(&["keygen-1"]));
    assert_eq!(terminals(&mut c, &format!("q={}", &serial[6..16])).await.0, names(&[]), "{serial}");
    // Tunnel address.
    let ip = atm07_ip.expect("Scenario A gives tunnel addresses");
    assert_eq!(terminals(&mut c, &format!("q={ip}")).await.0, names(&["atm-07"]));
    // Search and filter together (the search's and the expiry horizon's parameters both bound).
    assert_eq!(terminals(&mut c, "q=keygen&filter=expiring").await.0, names(&["keygen-1"]));
    assert_eq!(terminals(&mut c, &format!("q={}&filter=expiring", &serial[..8])).await.0, names(&["keygen-1"]));
    assert_eq!(terminals(&mut c, "q=atm&filter=expiring").await.0, names(&[]));
    assert_eq!(terminals(&mut c, "q=keygen&filter=online").await.0, names(&[]));
    assert_eq!(terminals(&mut c, "q=revoked&filter=revoked").await.0, names(&["revoked-1"]));
    assert_eq!(terminals(&mut c, "q=revoked").await.0, names(&[]), "the default filter hides revoked ones");

    // Health: the session's node alive, online-1 has its tunnel up but no heartbeat yet: agent silent.
    assert_eq!(terminals(&mut c, "filter=agent_silent").await.0, names(&["online-1"]));
    assert_eq!(terminals(&mut c, "filter=healthy").await.0, names(&[]));
    let page = c.get("/terminals?q=online-1").await;
    assert!(page.body.contains("tunnel up, agent silent"), "{}", page.body);
    // Its node stops heartbeating (a crashed `serve vpn`): the session row is still there, but counts no more.
    w.advance(cas_vpn::cluster::ALIVE_FOR_SECS + 1);
    assert_eq!(terminals(&mut c, "filter=online").await.0, names(&[]));
    assert_eq!(terminals(&mut c, "filter=offline").await.0, names(&["offline-1"]));
    assert_eq!(terminals(&mut c, "filter=never_paired&q=online-1").await.0, names(&["online-1"]));
}

// ---------------------------------------------------------------------------------------------------------------
// 12: one-time admin VPN downloads

#[tokio::test]
async fn a_download_link_works_once_for_its_session_for_ten_minutes() {
    let w = Web::new().await;
    let (alice, mut c) = w.enrol("alice", IP_ALICE).await;
    let mut other = w.login(&alice, IP_OTHER).await;

    let link = |r: &Resp| {
        let i = r.body.find("href=\"/admin-vpn/download/").unwrap_or_else(|| panic!("no link in {}", r.body));
        let rest = &r.body[i + 6..];
        rest[..rest.find('"').unwrap()].to_owned()
    };
    let r = c.post_form("/admin-vpn", &[("name", "ops-laptop")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let first = link(&r);

    // Another session of the same user: as if the link did not exist.
    let r = other.get(&first).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // Its own session: the profile (made now by the signer), never cached; then never again.
    let r = c.get(&first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(r.header("content-disposition"), "attachment; filename=\"ops-laptop.ovpn\"");
    assert!(r.body.contains("<cert>") && r.body.contains("PRIVATE KEY"), "a complete profile");
    assert_security_headers(&r, "download");
    let r = c.get(&first).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(!r.body.contains("PRIVATE KEY"));

    // Ten minutes after it was made, a link is gone too.
    let r = c.post_form("/admin-vpn", &[("name", "ops-desktop")]).await;
    let second = link(&r);
    w.advance(10 * 60);
    let r = c.get(&second).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(w.store().credential_by_name(&"ops-desktop".parse().unwrap()).await.unwrap().is_none(), "not issued");
    assert_eq!(c.get("/admin-vpn/download/unknown-ticket").await.status, StatusCode::NOT_FOUND);
}
