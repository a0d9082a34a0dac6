//! The touch: the lock-free write of a batch's rows of users it did not
//! lock, and of the claims they renewed. It only moves activity forward.

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::event::SessionEvent;
use crate::domain::session::SessionRecord;

/// The touch statement (see [`touch`]): `$1`-`$12` are the columns of the
/// rows, `$13`-`$16` those of the renewed claims. Returns the keys it
/// wrote or found already newer: sessions as `(app, session_id, false)`,
/// claims as `(app, user_id, true)`.
const TOUCH: &str = "WITH v AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::inet[],
                                  $5::timestamptz[], $6::text[], $7::timestamptz[],
                                  $8::timestamptz[], $9::timestamptz[], $10::jsonb[],
                                  $11::timestamptz[], $12::timestamptz[])
                 AS v(app, session_id, last_seen_at, ip, ip_at, user_agent, user_agent_at,
                      expires_at, expires_at_at, attributes, attributes_at, login_at)
         ), mine AS (
             -- LATERAL: one index probe per key, whatever the planner
             -- believes of the table's size (a hash join over a seq scan of
             -- a log that grew since the last ANALYZE is ruinous here).
             SELECT l.app, l.session_id FROM v
             CROSS JOIN LATERAL (
                 SELECT s.app, s.session_id FROM sessions s
                 WHERE s.app = v.app AND s.session_id = v.session_id
                 FOR UPDATE SKIP LOCKED
             ) l
         ), touched AS (
             UPDATE sessions s SET
                 last_seen_at = greatest(s.last_seen_at, v.last_seen_at),
                 ip = CASE WHEN v.ip_at > s.last_seen_at THEN v.ip ELSE s.ip END,
                 user_agent = CASE WHEN v.user_agent_at > s.last_seen_at
                      THEN v.user_agent ELSE s.user_agent END,
                 expires_at = CASE WHEN v.expires_at_at > s.last_seen_at
                      THEN v.expires_at ELSE s.expires_at END,
                 attributes = CASE WHEN v.attributes_at > s.last_seen_at
                      THEN v.attributes ELSE s.attributes END,
                 login_at = CASE WHEN NOT s.login_seen AND v.login_at < s.login_at
                      THEN v.login_at ELSE s.login_at END
             FROM v JOIN mine m ON m.app = v.app AND m.session_id = v.session_id
             WHERE s.app = v.app AND s.session_id = v.session_id
               AND (v.last_seen_at > s.last_seen_at
                    OR (NOT s.login_seen AND v.login_at < s.login_at))
             RETURNING 1
         ), c AS (
             SELECT * FROM unnest($13::text[], $14::text[], $15::jsonb[], $16::timestamptz[])
                 AS c(user_id, app, attributes, occurred_at)
         ), held AS (
             -- Claims still as read, or renewed further meanwhile; those of
             -- a user whose lock someone holds, or being written, are left.
             SELECT l.user_id, l.app FROM c
             CROSS JOIN LATERAL (
                 SELECT FROM session_users su WHERE su.user_id = c.user_id
                 FOR SHARE SKIP LOCKED
             ) free
             CROSS JOIN LATERAL (
                 SELECT u.user_id, u.app FROM user_attributes u
                 WHERE u.user_id = c.user_id AND u.app = c.app
                   AND (u.attributes = c.attributes OR u.occurred_at >= c.occurred_at)
                 FOR UPDATE SKIP LOCKED
             ) l
         ), renewed AS (
             UPDATE user_attributes u SET occurred_at = c.occurred_at
             FROM c JOIN held h ON h.user_id = c.user_id AND h.app = c.app
             WHERE u.user_id = c.user_id AND u.app = c.app
               AND u.attributes = c.attributes AND u.occurred_at < c.occurred_at
             RETURNING 1
         )
         SELECT app, session_id, false FROM mine
         UNION ALL
         SELECT app, user_id, true FROM held";

/// Writes the rows of users not locked, and the claims they renewed, as the
/// batch's last statement, and returns what it could not write.
///
/// Another batch may write the same rows at the same time (these users are
/// not locked), so every column moves one way only: the newest event wins,
/// whatever the commit order; columns the batch did not change are sent as
/// NULL and kept. Rows another transaction holds are skipped, never waited
/// for (SKIP LOCKED): a touch therefore never waits, so no deadlock can pass
/// through one, and a transaction waiting for a touched row waits only for
/// a commit that is already under way. The caller runs the batch again
/// with the skipped rows' users locked, which writes them with the upsert.
///
/// A renewed claim moves its `occurred_at` forward only while nobody holds
/// the user's lock (a share lock on the user's `session_users` row, taken
/// without waiting), and only if the claim is still the one the batch read:
/// a batch holding the lock reads the claims after taking it, so it never
/// decides on a claim that a touch renews under it. Otherwise the caller
/// runs the batch again with the user locked.
pub(crate) async fn touch(conn: &mut PgConnection, t: &Touches) -> sqlx::Result<Skipped> {
    if t.app.is_empty() && t.claim_user.is_empty() {
        return Ok(Skipped::default());
    }
    let written: Vec<(String, String, bool)> = sqlx::query_as(TOUCH)
        .bind(&t.app)
        .bind(&t.session_id)
        .bind(&t.last_seen_at)
        .bind(&t.ip)
        .bind(&t.ip_at)
        .bind(&t.user_agent)
        .bind(&t.user_agent_at)
        .bind(&t.expires_at)
        .bind(&t.expires_at_at)
        .bind(&t.attributes)
        .bind(&t.attributes_at)
        .bind(&t.login_at)
        .bind(&t.claim_user)
        .bind(&t.claim_app)
        .bind(&t.claim_attributes)
        .bind(&t.claim_at)
        .fetch_all(conn)
        .await?;
    // Session keys, and claims as (app, user_id).
    let mut sessions: BTreeSet<(String, String)> = BTreeSet::new();
    let mut claims: BTreeSet<(String, String)> = BTreeSet::new();
    for (app, id, claim) in written {
        if claim {
            claims.insert((app, id));
        } else {
            sessions.insert((app, id));
        }
    }
    Ok(Skipped {
        sessions: t
            .app
            .iter()
            .zip(&t.session_id)
            .map(|(a, s)| (a.clone(), s.clone()))
            .filter(|k| !sessions.contains(k))
            .collect(),
        claims_of: t
            .claim_app
            .iter()
            .zip(&t.claim_user)
            .map(|(a, u)| (a.clone(), u.clone()))
            .filter(|k| !claims.contains(k))
            .map(|(_, u)| u)
            .collect(),
    })
}

/// What [`touch`] could not write: the caller runs the batch again with
/// the users of these locked.
#[derive(Default)]
pub(crate) struct Skipped {
    /// Session rows another transaction held.
    pub sessions: Vec<(String, String)>,
    /// Users whose renewed claims were not written.
    pub claims_of: Vec<String>,
}

/// Column arrays for the touch update. Each activity column comes with the
/// event time that set it in this batch (NULL: the batch did not set it),
/// so a value older than what another batch committed meanwhile is kept out.
#[derive(Default)]
pub(crate) struct Touches {
    /// Session keys: apps.
    app: Vec<String>,
    /// Session keys: session ids.
    session_id: Vec<String>,
    /// The batch's latest event time for each row.
    last_seen_at: Vec<DateTime<Utc>>,
    /// Client address set by the batch, if any.
    ip: Vec<Option<IpAddr>>,
    /// When `ip` was set.
    ip_at: Vec<Option<DateTime<Utc>>>,
    /// User agent set by the batch, if any.
    user_agent: Vec<Option<String>>,
    /// When `user_agent` was set.
    user_agent_at: Vec<Option<DateTime<Utc>>>,
    /// Expiry set by the batch, if any.
    expires_at: Vec<Option<DateTime<Utc>>>,
    /// When `expires_at` was set.
    expires_at_at: Vec<Option<DateTime<Utc>>>,
    /// Session attributes set by the batch, if any.
    attributes: Vec<Option<serde_json::Value>>,
    /// When `attributes` were set.
    attributes_at: Vec<Option<DateTime<Utc>>>,
    /// The row's login time after the batch (an inferred one only moves earlier).
    login_at: Vec<DateTime<Utc>>,
    /// Users of renewed claims (same index as the three below).
    claim_user: Vec<String>,
    /// Apps of renewed claims.
    claim_app: Vec<String>,
    /// The claimed attributes, as read and claimed again.
    claim_attributes: Vec<serde_json::Value>,
    /// Event time of each renewal.
    claim_at: Vec<DateTime<Utc>>,
}

impl Touches {
    /// A claim renewed by a user not locked: the same attributes, claimed
    /// again at `occurred_at`.
    pub(crate) fn push_claim(
        &mut self,
        user: &str,
        app: &str,
        claim: &crate::domain::claims::Claim,
    ) {
        self.claim_user.push(user.to_owned());
        self.claim_app.push(app.to_owned());
        self.claim_attributes
            .push(serde_json::Value::Object(claim.attributes.clone()));
        self.claim_at.push(claim.occurred_at);
    }

    /// One row: replays the batch's events on it (in arrival order, as
    /// `apply_event` does) to learn when each column was set.
    pub(crate) fn push(
        &mut self,
        key: &(String, String),
        r: &SessionRecord,
        loaded: &SessionRecord,
        events: &[&SessionEvent],
    ) {
        // The last event (that moved last_seen_at) to set each column;
        // borrowed while replaying, copied once below.
        let mut seen = loaded.last_seen_at;
        let (mut ip, mut user_agent, mut expires_at, mut attributes) = (None, None, None, None);
        for &e in events {
            if e.occurred_at <= seen {
                continue;
            }
            seen = e.occurred_at;
            if e.ip.is_some() {
                ip = Some(e);
            }
            if e.user_agent.is_some() {
                user_agent = Some(e);
            }
            if e.expires_at.is_some() {
                expires_at = Some(e);
            }
            if e.attributes.as_ref().is_some_and(|a| !a.is_empty()) {
                attributes = Some(e);
            }
        }
        self.app.push(key.0.clone());
        self.session_id.push(key.1.clone());
        self.last_seen_at.push(r.last_seen_at);
        push_set(&mut self.ip, &mut self.ip_at, ip, |e| e.ip);
        push_set(
            &mut self.user_agent,
            &mut self.user_agent_at,
            user_agent,
            |e| e.user_agent.clone(),
        );
        push_set(
            &mut self.expires_at,
            &mut self.expires_at_at,
            expires_at,
            |e| e.expires_at,
        );
        push_set(
            &mut self.attributes,
            &mut self.attributes_at,
            attributes,
            |e| e.attributes.clone().map(serde_json::Value::Object),
        );
        self.login_at.push(r.login_at);
    }
}

/// Pushes one column of a touch: the value `by` set and when (its event
/// time), or NULL and NULL if no event of the batch set it.
fn push_set<T>(
    values: &mut Vec<Option<T>>,
    times: &mut Vec<Option<DateTime<Utc>>>,
    by: Option<&SessionEvent>,
    value: impl FnOnce(&SessionEvent) -> Option<T>,
) {
    values.push(by.and_then(value));
    times.push(by.map(|e| e.occurred_at));
}
