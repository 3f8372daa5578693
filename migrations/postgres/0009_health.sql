-- Terminal health (db::health): when each terminal's derived health last changed, and when master's probe of its
-- agent last succeeded. Same table and meaning as migrations/sqlite/0009_health.sql; keep them in step.
--
-- The health itself is always derived from the facts at read time (domain::health); `state` is the last state
-- master recorded, so that `since` (the time it changed to that state) survives restarts of every service. A row
-- is written by master: its heartbeat handler (healthy) and its prober's tick (every transition it sees).
CREATE TABLE terminal_health (
    credential_id BIGINT PRIMARY KEY REFERENCES credentials (id) ON DELETE CASCADE,
    state         TEXT   NOT NULL,
    since         BIGINT NOT NULL,
    probed_ok_at  BIGINT
);
