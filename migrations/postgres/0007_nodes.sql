-- Several VPN nodes on one store (PostgreSQL only; SQLite serves one node, and its serve vpn refuses a second).

-- One row per node that ever ran `serve vpn`. last_seen is its heartbeat (every 5 s); run_id is random per
-- start, so two processes claiming one name are told apart. draining_since: `node drain` asked it to move its
-- terminals elsewhere (NULL: serving).
CREATE TABLE nodes (
    name           TEXT COLLATE "C" PRIMARY KEY,
    address        TEXT   NOT NULL,
    version        TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    last_seen      BIGINT NOT NULL,
    run_id         TEXT   NOT NULL,
    draining_since BIGINT
);

-- Sessions belong to the node whose openvpn holds them; (instance, client_id) is unique per node only. The rows
-- are live state (every node clears its own at start), so the table is remade rather than altered.
DROP TABLE sessions;
CREATE TABLE sessions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node          TEXT COLLATE "C" NOT NULL,
    instance      TEXT COLLATE "C" NOT NULL,
    credential_id BIGINT NOT NULL REFERENCES credentials (id),
    common_name   TEXT   NOT NULL,
    tunnel_ip     TEXT   NOT NULL,
    real_addr     TEXT   NOT NULL,
    since         BIGINT NOT NULL,
    bytes_in      BIGINT NOT NULL DEFAULT 0,
    bytes_out     BIGINT NOT NULL DEFAULT 0,
    client_id     BIGINT NOT NULL,
    UNIQUE (node, instance, client_id)
);
CREATE INDEX sessions_tunnel_ip ON sessions (tunnel_ip);
CREATE INDEX sessions_credential ON sessions (credential_id);

-- Changes that must reach live sessions on every node (a kill after a revocation or a suspension, a drain).
-- Written in the transaction of the change, with pg_notify(channel, id): nodes listen, then read the rows
-- (catch-up), so a node that missed a notification still applies the event. node: the one node it is for
-- (NULL: every node).
CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT   NOT NULL CHECK (kind IN ('kill', 'drain', 'resume', 'reload')),
    subject TEXT   NOT NULL,
    node    TEXT COLLATE "C"
);

-- What each node did with an event (so `revoke` can say which live node has not confirmed).
CREATE TABLE event_acks (
    event_id BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    node     TEXT COLLATE "C" NOT NULL,
    at       BIGINT NOT NULL,
    killed   BIGINT NOT NULL,
    PRIMARY KEY (event_id, node)
);

-- The last CRL itself, so every node can publish the same one (a node that was down heals itself).
ALTER TABLE crl_state ADD COLUMN pem TEXT;
