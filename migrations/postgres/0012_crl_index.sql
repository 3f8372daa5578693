-- A CRL reads every revoked certificate of one CA grouped by revocation time and reason (`revoked_serials`):
-- this index holds all it reads, so the read needs neither the table nor a sort. It replaces
-- certificates_revoked (ca, revoked_at), of which it is an extension. Same index as
-- migrations/sqlite/0012_crl_index.sql; keep them in step.
CREATE INDEX certificates_crl ON certificates (ca, revoked_at, revoke_reason, serial) WHERE revoked_at IS NOT NULL;
DROP INDEX certificates_revoked;
