-- The sessions API (issue 21): its bearer tokens, and the key its session
-- handles are sealed with.
--
-- A token is stored as the SHA-256 of its text only: a dump of this table
-- holds no usable token. Tokens are 32 random bytes, so a fast hash is
-- enough (no password-style stretching). Every API request looks its token
-- up here, so a revoke (`revoked_at`) applies at once on every worker.
CREATE TABLE api_tokens (
    name text COLLATE "C" PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE,
    -- The apps whose sessions it may see; '{*}' = every app.
    apps text[] COLLATE "C" NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- The AES-SIV key of session handles (64 random bytes), created by the
-- first API server (INSERT ... ON CONFLICT DO NOTHING) and shared by all,
-- so every worker issues and accepts the same handles.
CREATE TABLE api_keys (
    purpose text PRIMARY KEY,
    key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
