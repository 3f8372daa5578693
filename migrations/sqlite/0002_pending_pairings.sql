-- Approval-flow pairings: a terminal without a token sent its CSR; an admin compares the short code
-- derived from its public key and approves (`cas-vpn pairing approve ID --code CODE`) or rejects it. Same tables and
-- meaning as migrations/postgres/0002_pending_pairings.sql; keep them in step. A CSR holds no secret.
CREATE TABLE pending_pairings (
    id            TEXT    PRIMARY KEY,
    pubkey_sha256 TEXT    NOT NULL,
    csr_pem       TEXT    NOT NULL,
    code          TEXT    NOT NULL,
    common_name   TEXT,
    hw_serial     TEXT,
    version       TEXT,
    source_ip     TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    decided_at    INTEGER,
    credential_id INTEGER REFERENCES credentials (id),
    cert_serial   TEXT,
    CHECK (state <> 'approved' OR (credential_id IS NOT NULL AND cert_serial IS NOT NULL))
) STRICT;
-- One pairing per key: a terminal that asks again with the same key gets the same pairing.
CREATE UNIQUE INDEX pending_pairings_pubkey ON pending_pairings (pubkey_sha256);
CREATE INDEX pending_pairings_state ON pending_pairings (state, expires_at);
