-- cas-vpn store, PostgreSQL flavour. Same tables and meaning as migrations/sqlite/0001_init.sql; keep them in step.
-- Every integer is BIGINT (decodes as i64 like SQLite's INTEGER) and timestamps are unix seconds, never
-- TIMESTAMPTZ, so one Rust row type reads both backends. Text that is sorted on uses COLLATE "C" so that the
-- order is bytewise, as in SQLite, whatever the database's locale.

-- Terminal and admin credentials share one table so that names share one namespace: `cas-vpn revoke NAME` must
-- never be ambiguous. Rows are never deleted; revocation sets revoked_at and the partial unique indexes below
-- then release the name, the tunnel address and the admin port for reuse.
CREATE TABLE credentials (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL,
    kind          TEXT   NOT NULL CHECK (kind IN ('terminal', 'admin')),
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT,
    home_instance BIGINT CHECK (home_instance >= 0),
    host_index    BIGINT CHECK (host_index >= 2),
    admin_port    BIGINT CHECK (admin_port BETWEEN 1 AND 65535),
    hw_serial     TEXT,
    version       TEXT,
    last_seen     BIGINT,
    paired_at     BIGINT,
    -- an address belongs only to a terminal, a port only to an admin credential
    CHECK (kind = 'terminal' OR (home_instance IS NULL AND host_index IS NULL)),
    CHECK (kind = 'admin' OR admin_port IS NULL)
);
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
    serial        TEXT COLLATE "C" PRIMARY KEY CHECK (serial <> '' AND serial = lower(serial)),
    ca            TEXT   NOT NULL CHECK (ca IN ('terminal', 'admin')),
    credential_id BIGINT REFERENCES credentials (id),
    common_name   TEXT   NOT NULL,
    not_before    BIGINT NOT NULL,
    not_after     BIGINT NOT NULL,
    cert_pem      TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);
CREATE INDEX certificates_credential ON certificates (credential_id);
CREATE INDEX certificates_revoked ON certificates (ca, revoked_at) WHERE revoked_at IS NOT NULL;

-- One-time pairing tokens. Only the SHA-256 of the secret is stored; `id` is the public lookup half.
CREATE TABLE pairing_tokens (
    id            TEXT   PRIMARY KEY,
    credential_id BIGINT NOT NULL REFERENCES credentials (id),
    secret_hash   TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT,
    pubkey_sha256 TEXT,
    cert_serial   TEXT,
    locked_at     BIGINT
);
CREATE INDEX pairing_tokens_credential ON pairing_tokens (credential_id);

CREATE TABLE crl_state (
    ca          TEXT   PRIMARY KEY CHECK (ca IN ('terminal', 'admin')),
    crl_number  BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL
);

-- Live VPN sessions as seen on the management sockets; client_id is OpenVPN's CID, unique per instance.
CREATE TABLE sessions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance      TEXT COLLATE "C" NOT NULL,
    credential_id BIGINT NOT NULL REFERENCES credentials (id),
    common_name   TEXT   NOT NULL,
    tunnel_ip     TEXT   NOT NULL,
    real_addr     TEXT   NOT NULL,
    since         BIGINT NOT NULL,
    bytes_in      BIGINT NOT NULL DEFAULT 0,
    bytes_out     BIGINT NOT NULL DEFAULT 0,
    client_id     BIGINT NOT NULL,
    UNIQUE (instance, client_id)
);
CREATE INDEX sessions_tunnel_ip ON sessions (tunnel_ip);
CREATE INDEX sessions_credential ON sessions (credential_id);

CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    subject TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);

-- Exactly one row: when the pairing window closes (NULL: closed).
CREATE TABLE pairing_window (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    open_until BIGINT
);
INSERT INTO pairing_window (id, open_until) VALUES (1, NULL);

CREATE TABLE ip_bans (
    ip               TEXT COLLATE "C" PRIMARY KEY,
    failures         BIGINT NOT NULL,
    first_failure_at BIGINT NOT NULL,
    banned_until     BIGINT
);
