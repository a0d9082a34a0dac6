-- The session log: one row per (app, session_id), kept after the session ends
-- so operators can see who logged in when and from where.
CREATE TABLE sessions (
    app             text        NOT NULL,
    session_id      text        NOT NULL,
    -- NULL only while all we know of the session is a logout without user_id.
    user_id         text,
    -- Event time of the login; inferred from the first event until a login arrives.
    login_at        timestamptz NOT NULL,
    login_seen      boolean     NOT NULL,
    -- Event time of the latest event for the session.
    last_seen_at    timestamptz NOT NULL,
    ip              inet,
    user_agent      text,
    expires_at      timestamptz,
    ended_at        timestamptz,
    -- 'logout', 'session_limit'; NULL while the session has not ended.
    end_reason      text,
    -- The limit that was in force when the session was revoked.
    max_sessions    integer,
    -- Wall-clock time of the latest revoke message written for the session.
    last_revoke_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, session_id),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);

-- The limit check: a user's live sessions in one app.
CREATE INDEX sessions_active_by_user ON sessions (user_id, app) WHERE end_reason IS NULL;
-- `sessions --user` and retention: all of a user's rows.
CREATE INDEX sessions_by_user ON sessions (user_id, login_at DESC);

-- Keys of sessions whose log row was pruned by retention, so that a late
-- request cannot bring a revoked session back. Deleted after
-- retention.tombstone_ttl (and not before the session's own expiry).
CREATE TABLE session_tombstones (
    app             text        NOT NULL,
    session_id      text        NOT NULL,
    user_id         text,
    login_at        timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    expires_at      timestamptz,
    ended_at        timestamptz NOT NULL,
    end_reason      text        NOT NULL,
    max_sessions    integer,
    last_revoke_at  timestamptz,
    pruned_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, session_id)
);
CREATE INDEX session_tombstones_pruned_at ON session_tombstones (pruned_at);

-- Revoke events written in the same transaction as the decision, published by
-- the relay with publisher confirms, deleted once the broker confirmed them.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    -- The message's event_id (AMQP message_id); kept on every re-send.
    event_id    uuid        NOT NULL UNIQUE,
    routing_key text        NOT NULL,
    -- The exact JSON body, so a re-send is byte-for-byte the same message.
    payload     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
