-- An admin credential whose session keeps being taken over from different addresses is suspended (refused on
-- connect) until an admin resumes or re-issues it. Same meaning as migrations/postgres/0004_admin_suspension.sql.
ALTER TABLE credentials ADD COLUMN suspended_at INTEGER;
