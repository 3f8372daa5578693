-- Who may reach the pairing port while the window is open (`pairing open --from CIDR,...`): a comma-separated list
-- of a.b.c.d/len, kept with the window so that a restarted `serve net` opens the same door; NULL: everyone.
ALTER TABLE pairing_window ADD COLUMN open_from TEXT;
