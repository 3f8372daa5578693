-- Audit actors get one stable text form (domain::Actor): what earlier versions wrote is rewritten to it, so every
-- row reads back. The CLI runs as root; the signer wrote its owner as `signer-owner(uid N)` and strangers as
-- `uid N`.
UPDATE audit SET actor = 'cli:root' WHERE actor IN ('cli', 'signer-owner(uid 0)');
UPDATE audit SET actor = 'uid:' || substr(actor, 18, length(actor) - 18) WHERE actor LIKE 'signer-owner(uid %)';
UPDATE audit SET actor = 'uid:' || substr(actor, 5) WHERE actor LIKE 'uid %';
