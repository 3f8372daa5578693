-- The admin web UI (serve admin): its users, their server-side sessions, recovery codes, one-time setup links,
-- API tokens and one-time credential downloads; and where each audited action came from. Same tables and meaning
-- as migrations/sqlite/0006_web.sql; keep them in step. Every secret here is stored as a hash, except the TOTP
-- seed, which the server must read to check a code.

-- password_hash is NULL until the user follows their setup link; totp_secret (base32) is NULL until they enrol.
-- failed_logins and slow_until slow down password guessing against one user without ever locking them out.
CREATE TABLE web_users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT,
    totp_secret   TEXT,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    slow_until    BIGINT
);

CREATE TABLE web_setup_links (
    token_hash TEXT    PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES web_users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE web_recovery_codes (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   BIGINT NOT NULL REFERENCES web_users (id),
    code_hash TEXT    NOT NULL,
    used_at   BIGINT
);
CREATE INDEX web_recovery_codes_user ON web_recovery_codes (user_id);

-- stage: 'password' (the password was right, TOTP comes next), 'enroll' (must enrol TOTP), 'full'.
-- pending_totp: the seed shown while enrolling, until a code from it is confirmed.
CREATE TABLE web_sessions (
    id_hash      TEXT    PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES web_users (id),
    stage        TEXT    NOT NULL CHECK (stage IN ('password', 'enroll', 'full')),
    csrf         TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    pending_totp TEXT
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);

CREATE TABLE api_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES web_users (id),
    label        TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('read', 'write')),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- "Issue my credential": a one-time link, bound to the web session that asked, valid minutes. The credential is
-- issued when the link is used, so the profile is never stored on the server.
CREATE TABLE web_downloads (
    ticket_hash     TEXT    PRIMARY KEY,
    session_hash    TEXT    NOT NULL,
    credential_name TEXT    NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);

ALTER TABLE audit ADD COLUMN source TEXT;
CREATE INDEX audit_actor ON audit (actor);

-- Bootstrap mode (config/firewall admin_ui_bootstrap=yes) ends for good with the first admin VPN session: one row,
-- written by the store when it records that session; the firewall then closes public 7777.
CREATE TABLE web_bootstrap (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    ended_at BIGINT NOT NULL
);
