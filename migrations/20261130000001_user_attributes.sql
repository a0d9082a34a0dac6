-- What each app last claimed about each user (the events' `attributes`):
-- the rule hooks evaluate a user's limits in an app with the app's own
-- claims, also for events that carry none. Written under the user's lock,
-- by event time: a row is replaced only by a claim at least as recent.
CREATE TABLE user_attributes (
    user_id     text        NOT NULL,
    app         text        NOT NULL,
    attributes  jsonb       NOT NULL,
    -- Event time of the latest event that made this claim.
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, app)
);

-- Requests that renew a claim rewrite occurred_at, which no index covers:
-- leave room on each page so those updates stay HOT.
ALTER TABLE user_attributes SET (fillfactor = 70);

-- The claims known so far: the non-empty attributes of each user's latest
-- session that had any, in each app. The session's last event time stands
-- for the claim's (the event that carried them is not known), so an older
-- event arriving late does not replace them.
INSERT INTO user_attributes (user_id, app, attributes, occurred_at)
SELECT DISTINCT ON (user_id, app) user_id, app, attributes, last_seen_at
FROM sessions
WHERE user_id IS NOT NULL AND jsonb_typeof(attributes) = 'object'
ORDER BY user_id, app, last_seen_at DESC;
