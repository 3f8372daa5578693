//! The pages, as askama templates (`templates/web/`): HTML-escaped by default, no inline script or style (the
//! CSP forbids both), usable without JavaScript. Each struct is what its template shows and nothing more.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::StatusCode;

use crate::db::{ApiToken, AuditRow, TerminalFilter, WebSession, WebUser};
use crate::ops::browse::{ExpiryItem, SessionItem, TerminalItem, TerminalPage};

/// The bar every logged-in page has: who is logged in, and the CSRF token its forms carry.
pub struct Nav {
    pub user: String,
    pub csrf: String,
    pub active: &'static str,
    pub bootstrap: bool,
}

impl Nav {
    pub fn new(s: &super::auth::Session, active: &'static str) -> Nav {
        Nav { user: s.user.name.to_string(), csrf: s.csrf().to_owned(), active, bootstrap: s.bootstrap }
    }
}

/// A page that only says something (errors, confirmations).
#[derive(Template, WebTemplate)]
#[template(path = "web/message.html")]
pub struct Message {
    pub title: String,
    pub message: String,
    /// An element id tests and scripts can find (`link-used`, …).
    pub id: &'static str,
}

impl Message {
    pub fn error(status: StatusCode, message: &str) -> Message {
        let id = match status {
            StatusCode::GONE => "link-used",
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "too-many",
            _ => "error",
        };
        Message { title: status.canonical_reason().unwrap_or("Error").to_owned(), message: message.to_owned(), id }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "web/login.html")]
pub struct LoginPage {
    pub error: Option<String>,
    pub bootstrap: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/totp.html")]
pub struct TotpPage {
    pub error: Option<String>,
    pub csrf: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/setup.html")]
pub struct SetupPage {
    pub name: String,
    pub error: Option<String>,
    pub bootstrap: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/enroll.html")]
pub struct Enroll {
    pub name: String,
    pub secret: String,
    /// `data:image/svg+xml;base64,…`
    pub qr: String,
    pub csrf: String,
    pub error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/recovery.html")]
pub struct Recovery {
    pub codes: Vec<String>,
}

pub struct PendingView {
    pub id: String,
    pub code: String,
    pub common_name: String,
    pub source_ip: String,
    pub expires_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/dashboard.html")]
pub struct Dashboard {
    pub nav: Nav,
    pub scenario: String,
    pub terminals: usize,
    pub terminals_paired: usize,
    pub admins: usize,
    pub sessions: usize,
    /// (name, port, state, sessions)
    pub instances: Vec<(String, u16, String, usize)>,
    pub serve_running: bool,
    pub window_open: bool,
    pub window_until: String,
    pub window_minutes_left: i64,
    pub window_seconds_left: i64,
    pub pending: Vec<PendingView>,
    pub expiries: Vec<ExpiryItem>,
    /// The fleet's certificate renewals (`status`'s report).
    pub renewal: crate::ops::status::RenewalReport,
    pub warnings: Vec<String>,
    pub web_fingerprint: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/terminals.html")]
pub struct Terminals {
    pub nav: Nav,
    pub page: TerminalPage,
    pub q: String,
    pub filter: TerminalFilter,
    pub filters: Vec<(&'static str, &'static str)>,
    pub version: String,
    pub versions: Vec<String>,
    /// Query string (without `page=`) for the paging links.
    pub query: String,
    pub error: Option<String>,
}

impl Terminals {
    pub fn filter_str(&self) -> &'static str {
        self.filter.as_str()
    }
    pub fn items(&self) -> &[TerminalItem] {
        &self.page.terminals
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "web/terminal_added.html")]
pub struct TerminalAdded {
    pub nav: Nav,
    pub name: String,
    pub token: String,
    pub qr: String,
    pub expires_at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/terminal.html")]
pub struct TerminalDetail {
    pub nav: Nav,
    pub name: String,
    pub state: String,
    pub health: crate::domain::Health,
    /// When it entered that health, or `-`.
    pub health_since: String,
    pub tunnel_ip: String,
    pub version: String,
    pub hw_serial: String,
    pub created_at: String,
    pub paired_at: String,
    pub last_seen: String,
    pub revoked: bool,
    pub revoke_reason: String,
    /// (serial, not_after, revoked_at)
    pub certificates: Vec<(String, String, String)>,
    pub sessions: Vec<SessionItem>,
    pub audit: Vec<AuditView>,
}

pub struct AdminRowView {
    pub name: String,
    pub port: String,
    pub state: String,
    pub created_at: String,
    pub session: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/admin_vpn.html")]
pub struct AdminVpn {
    pub nav: Nav,
    pub rows: Vec<AdminRowView>,
    pub suggested: String,
    pub error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/admin_issued.html")]
pub struct AdminIssued {
    pub nav: Nav,
    pub name: String,
    pub link: String,
    pub minutes: i64,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/sessions.html")]
pub struct Sessions {
    pub nav: Nav,
    pub rows: Vec<SessionItem>,
}

pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
    pub source: String,
}

impl From<&AuditRow> for AuditView {
    fn from(r: &AuditRow) -> Self {
        AuditView {
            id: r.id,
            at: crate::app::rfc3339(r.at),
            actor: r.actor.to_string(),
            action: r.action.clone(),
            subject: r.subject.clone(),
            detail: r.detail.clone(),
            source: r.source.clone().unwrap_or_else(|| "local".into()),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "web/audit.html")]
pub struct Audit {
    pub nav: Nav,
    pub rows: Vec<AuditView>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// Query string for the next (older) page, when there is one.
    pub older: Option<String>,
    pub csv: String,
}

pub struct UserView {
    pub name: String,
    pub state: String,
    pub totp: bool,
    pub created_at: String,
    pub disabled: bool,
    pub me: bool,
}

impl UserView {
    pub fn of(u: &WebUser, me: &str) -> UserView {
        UserView {
            name: u.name.to_string(),
            state: if u.disabled_at.is_some() {
                "disabled".into()
            } else if u.password_hash.is_none() {
                "setup link sent".into()
            } else {
                "active".into()
            },
            totp: u.totp_secret.is_some(),
            created_at: crate::app::rfc3339(u.created_at),
            disabled: u.disabled_at.is_some(),
            me: u.name.as_str() == me,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "web/users.html")]
pub struct Users {
    pub nav: Nav,
    pub rows: Vec<UserView>,
    pub error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "web/user_added.html")]
pub struct UserAdded {
    pub nav: Nav,
    pub name: String,
    pub link: String,
    pub expires_at: String,
}

pub struct SessionView {
    pub source: String,
    pub created_at: String,
    pub last_seen: String,
    pub current: bool,
}

impl SessionView {
    pub fn of(s: &WebSession, current: &str) -> SessionView {
        SessionView {
            source: s.source.clone(),
            created_at: crate::app::rfc3339(s.created_at),
            last_seen: crate::app::rfc3339(s.last_seen),
            current: s.id_hash == current,
        }
    }
}

pub struct TokenView {
    pub id: i64,
    pub label: String,
    pub scope: String,
    pub expires_at: String,
    pub state: String,
    pub last_used_at: String,
}

impl TokenView {
    pub fn of(t: &ApiToken, now: i64) -> TokenView {
        TokenView {
            id: t.id,
            label: t.label.clone(),
            scope: t.scope.as_str().into(),
            expires_at: crate::app::rfc3339(t.expires_at),
            state: if t.revoked_at.is_some() {
                "revoked".into()
            } else if t.expires_at <= now {
                "expired".into()
            } else {
                "active".into()
            },
            last_used_at: t.last_used_at.map(crate::app::rfc3339).unwrap_or_else(|| "never".into()),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "web/account.html")]
pub struct Account {
    pub nav: Nav,
    pub sessions: Vec<SessionView>,
    pub tokens: Vec<TokenView>,
    pub recovery_left: i64,
    pub message: Option<String>,
    pub error: Option<String>,
    /// A token just created: shown once.
    pub new_token: Option<String>,
}
