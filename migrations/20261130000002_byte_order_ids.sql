-- Identifiers compare byte by byte (COLLATE "C"). Every statement of a
-- batch probes b-tree indexes on app, session_id and user_id, and under a
-- language collation (the database default, such as en_US.UTF-8 or C.UTF-8)
-- each comparison goes through the C library's strcoll: in the
-- first-sightings benchmark that was about a fifth of PostgreSQL's CPU
-- (BENCHMARKS.md, issue 13). These values are opaque tokens chosen by the
-- apps, so a language's sort order means nothing for them; only equality
-- and a stable order (the user lock order) matter, and bytes give both.
--
-- Changing only the collation of a text column rewrites no table, but the
-- indexes on these columns are rebuilt, under an ACCESS EXCLUSIVE lock:
-- on a large log, run `session-guard migrate` with the workers stopped
-- (docs/OPERATIONS.md, "Upgrading").
ALTER TABLE sessions
    ALTER COLUMN app TYPE text COLLATE "C",
    ALTER COLUMN session_id TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE session_tombstones
    ALTER COLUMN app TYPE text COLLATE "C",
    ALTER COLUMN session_id TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE session_users
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE user_overrides
    ALTER COLUMN user_id TYPE text COLLATE "C",
    ALTER COLUMN app TYPE text COLLATE "C";
ALTER TABLE user_attributes
    ALTER COLUMN user_id TYPE text COLLATE "C",
    ALTER COLUMN app TYPE text COLLATE "C";
