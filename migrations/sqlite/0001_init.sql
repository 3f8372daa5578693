-- cas-vpn store, SQLite flavour. Same tables and meaning as migrations/postgres/0001_init.sql; keep them in step.
-- Timestamps are unix seconds (INTEGER), never SQL date types, so both backends decode them the same way.
-- STRICT tables: SQLite then refuses a value of the wrong type instead of storing it.

-- Terminal and admin credentials share one table so that names share one namespace: `cas-vpn revoke NAME` must
-- never be ambiguous. Rows are never deleted; revocation sets revoked_at and the partial unique indexes below
-- then release the name, the tunnel address and the admin port for reuse.
CREATE TABLE credentials (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('terminal', 'admin')),
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    home_instance INTEGER CHECK (home_instance >= 0),
    host_index    INTEGER CHECK (host_index >= 2),
    admin_port    INTEGER CHECK (admin_port BETWEEN 1 AND 65535),
    hw_serial     TEXT,
    version       TEXT,
    last_seen     INTEGER,
    paired_at     INTEGER,
    -- an address belongs only to a terminal, a port only to an admin credential
    CHECK (kind = 'terminal' OR (home_instance IS NULL AND host_index IS NULL)),
    CHECK (kind = 'admin' OR admin_port IS NULL)
) STRICT;
CREATE UNIQUE INDEX credentials_active_name ON credentials (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX credentials_active_address ON credentials (home_instance, host_index)
    WHERE revoked_at IS NULL AND kind = 'terminal';
CREATE UNIQUE INDEX credentials_active_admin_port ON credentials (admin_port)
    WHERE revoked_at IS NULL AND kind = 'admin';
-- finds revoked credentials by name too (the partial index above covers active ones only)
CREATE INDEX credentials_name ON credentials (name);

-- Every certificate ever issued, server certificates included (credential_id NULL): the primary key is what
-- guarantees that no serial is ever used twice, even after revocation or expiry.
CREATE TABLE certificates (
    serial        TEXT    PRIMARY KEY CHECK (serial <> '' AND serial = lower(serial)),
    ca            TEXT    NOT NULL CHECK (ca IN ('terminal', 'admin')),
    credential_id INTEGER REFERENCES credentials (id),
    common_name   TEXT    NOT NULL,
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    cert_pem      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT
) STRICT;
CREATE INDEX certificates_credential ON certificates (credential_id);
CREATE INDEX certificates_revoked ON certificates (ca, revoked_at) WHERE revoked_at IS NOT NULL;

-- One-time pairing tokens. Only the SHA-256 of the secret is stored; `id` is the public lookup half.
CREATE TABLE pairing_tokens (
    id            TEXT    PRIMARY KEY,
    credential_id INTEGER NOT NULL REFERENCES credentials (id),
    secret_hash   TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    used_at       INTEGER,
    pubkey_sha256 TEXT,
    cert_serial   TEXT,
    locked_at     INTEGER
) STRICT;
CREATE INDEX pairing_tokens_credential ON pairing_tokens (credential_id);

CREATE TABLE crl_state (
    ca          TEXT    PRIMARY KEY CHECK (ca IN ('terminal', 'admin')),
    crl_number  INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL
) STRICT;

-- Live VPN sessions as seen on the management sockets; client_id is OpenVPN's CID, unique per instance.
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    instance      TEXT    NOT NULL,
    credential_id INTEGER NOT NULL REFERENCES credentials (id),
    common_name   TEXT    NOT NULL,
    tunnel_ip     TEXT    NOT NULL,
    real_addr     TEXT    NOT NULL,
    since         INTEGER NOT NULL,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    client_id     INTEGER NOT NULL,
    UNIQUE (instance, client_id)
) STRICT;
CREATE INDEX sessions_tunnel_ip ON sessions (tunnel_ip);
CREATE INDEX sessions_credential ON sessions (credential_id);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    detail  TEXT    NOT NULL
) STRICT;

-- Exactly one row: when the pairing window closes (NULL: closed).
CREATE TABLE pairing_window (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    open_until INTEGER
) STRICT;
INSERT INTO pairing_window (id, open_until) VALUES (1, NULL);

CREATE TABLE ip_bans (
    ip               TEXT    PRIMARY KEY,
    failures         INTEGER NOT NULL,
    first_failure_at INTEGER NOT NULL,
    banned_until     INTEGER
) STRICT;
