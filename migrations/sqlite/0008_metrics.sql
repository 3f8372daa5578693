-- Metrics (`/metrics` on the admin UI): the scrape token and the counters that must outlive every process. Same
-- tables and meaning as migrations/postgres/0008_metrics.sql; keep them in step.

-- The bearer token a Prometheus scraper presents (`cas-vpn metrics token`), stored only as its SHA-256 (hex).
-- `metrics token` replaces every row: one token at a time.
CREATE TABLE metrics_tokens (
    id         INTEGER PRIMARY KEY,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

-- Cumulative counters, bumped inside the transactions that decide what they count (db::bans): they survive
-- restarts of every service and are shared by every gate, so Prometheus' rate() sees one steady series.
CREATE TABLE metric_counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO metric_counters (name, value) VALUES ('pairings_failed', 0), ('pairings_banned', 0), ('bans', 0);
