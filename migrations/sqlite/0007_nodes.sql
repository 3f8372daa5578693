-- Several VPN nodes on one store (PostgreSQL only; SQLite serves one node, and its serve vpn refuses a second).
-- The same tables as on PostgreSQL, so one code path serves both.

CREATE TABLE nodes (
    name           TEXT    PRIMARY KEY,
    address        TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    run_id         TEXT    NOT NULL,
    draining_since INTEGER
) STRICT;

DROP TABLE sessions;
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    node          TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    credential_id INTEGER NOT NULL REFERENCES credentials (id),
    common_name   TEXT    NOT NULL,
    tunnel_ip     TEXT    NOT NULL,
    real_addr     TEXT    NOT NULL,
    since         INTEGER NOT NULL,
    bytes_in      INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL DEFAULT 0,
    client_id     INTEGER NOT NULL,
    UNIQUE (node, instance, client_id)
) STRICT;
CREATE INDEX sessions_tunnel_ip ON sessions (tunnel_ip);
CREATE INDEX sessions_credential ON sessions (credential_id);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL CHECK (kind IN ('kill', 'drain', 'resume', 'reload')),
    subject TEXT    NOT NULL,
    node    TEXT
) STRICT;

CREATE TABLE event_acks (
    event_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    node     TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    killed   INTEGER NOT NULL,
    PRIMARY KEY (event_id, node)
) STRICT;

ALTER TABLE crl_state ADD COLUMN pem TEXT;
