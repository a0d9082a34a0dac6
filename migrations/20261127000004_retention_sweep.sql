-- Retention by age (retention.max_age): housekeeping finds ended rows by the
-- time they ended, oldest first. Partial, on columns that never change once a
-- session has ended and that no update of a live session writes: requests
-- that move last_seen_at (or ip, user_agent, expires_at, attributes) stay HOT.
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE end_reason IS NOT NULL;

-- An outbox row is dated when it is written, just before its transaction
-- commits, not when that transaction began (now()): its age then measures
-- the relay's delay (session_guard_revoke_delivery_seconds,
-- session_guard_outbox_oldest_age_seconds) and not the batch's own length.
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
