-- What a gate knows only in memory, published for `/metrics` (which the admin service, another process, serves):
-- the upgrade downloads each node's gate serves right now. A gate writes its row on every change and every 30 s,
-- so a row older than that is a gate that stopped. Transient: never backed up. Same table and meaning as
-- migrations/sqlite/0011_gate_gauges.sql; keep them in step.
CREATE TABLE gate_gauges (
    node                 TEXT    PRIMARY KEY,
    upgrade_slots_in_use BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
