-- Rule hooks, operator overrides and operator revocations.

-- Who or what ended a session: the hook or rule that set the limit in force
-- ("config", "rules:staff", "user_overrides:shop"...), "user" for
-- logout_others / logout_all, "operator:<name>" for `session-guard revoke`.
ALTER TABLE sessions ADD COLUMN ended_by text;
-- The operator's explanation (`revoke --reason`).
ALTER TABLE sessions ADD COLUMN end_note text;
-- The attributes of the latest event that had any, for `limits get`.
ALTER TABLE sessions ADD COLUMN attributes jsonb;
-- Shadow mode (limits.enforce = false): when a check first found that it
-- would revoke this session, so each is logged and counted once.
ALTER TABLE sessions ADD COLUMN shadow_flagged_at timestamptz;

-- The limit check now looks at a user's live sessions in every app.
CREATE INDEX sessions_active_by_user_all_apps ON sessions (user_id) WHERE end_reason IS NULL;

-- Limits an operator stored for one user (`session-guard limits set`), for all
-- apps (app = '') or one app. NULL columns leave the value to other hooks.
CREATE TABLE user_overrides (
    user_id             text        NOT NULL,
    app                 text        NOT NULL DEFAULT '',
    max_sessions        integer     CHECK (max_sessions >= 0),
    max_sessions_global integer     CHECK (max_sessions_global >= 0),
    policy              text        CHECK (policy IN ('evict_oldest', 'evict_idle', 'deny_new')),
    idle_timeout        bigint      CHECK (idle_timeout >= 0),
    log_limit           integer     CHECK (log_limit >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text,
    PRIMARY KEY (user_id, app)
);
