-- Renewal tracking: why a terminal's last certificate renewal failed. Same table and meaning as
-- migrations/postgres/0010_renewal.sql; keep them in step.

-- One row per terminal whose last renewal attempt failed: master's refusal or failure (source 'master'), or what
-- the terminal reported in a heartbeat (source 'terminal'). Deleted in the transaction that records its renewed
-- certificate. Transient (not in backups): the next attempt writes it again.
CREATE TABLE renewal_failures (
    credential_id INTEGER PRIMARY KEY REFERENCES credentials (id),
    at            INTEGER NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('master', 'terminal')),
    code          TEXT    NOT NULL,
    detail        TEXT    NOT NULL
) STRICT;
CREATE INDEX renewal_failures_at ON renewal_failures (at);
