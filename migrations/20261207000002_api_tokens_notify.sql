-- API servers keep checked tokens in memory (src/api/token_cache.rs), so a
-- request costs one round trip to the database instead of two. Every change
-- to api_tokens, by the CLI or by hand in SQL, tells them at commit: they
-- empty their caches at once. A server that is not listening caches nothing.
CREATE FUNCTION session_guard_api_tokens_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_tokens_changed', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION session_guard_api_tokens_changed();
