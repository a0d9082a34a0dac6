-- One row per user, locked (SELECT ... FOR UPDATE, in user_id order) by every
-- batch that touches the user: one statement for a whole batch, where
-- transaction-scoped advisory locks cost one function call per user.
CREATE TABLE session_users (
    user_id text PRIMARY KEY
);

-- Requests rewrite last_seen_at, which no index covers: leave room on each
-- page so those updates stay HOT (no index maintenance).
ALTER TABLE sessions SET (fillfactor = 70);

-- (user_id, app) WHERE end_reason IS NULL serves user_id-only lookups too.
DROP INDEX sessions_active_by_user_all_apps;
