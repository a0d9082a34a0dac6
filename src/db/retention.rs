//! Retention: moving a user's oldest ended sessions out of the log into
//! `session_tombstones`, and expiring tombstones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// What a tombstone keeps of a session: inserts the rows of the CTE `moved`
/// (deleted from `sessions` by the statement around it) into
/// `session_tombstones`. One text for retention by count ([`prune_logs`])
/// and by age (`sweep`), so both keep the same.
macro_rules! bury_moved {
    () => {
        "INSERT INTO session_tombstones (app, session_id, user_id, login_at, last_seen_at,
                                         expires_at, ended_at, end_reason, max_sessions,
                                         last_revoke_at)
         SELECT app, session_id, user_id, login_at, last_seen_at, expires_at,
                coalesce(ended_at, expires_at), coalesce(end_reason, 'expired'), max_sessions,
                last_revoke_at
         FROM moved
         ON CONFLICT (app, session_id) DO NOTHING"
    };
}
pub(crate) use bury_moved;

/// How long after its `expires_at` a session that did not end otherwise may
/// be pruned by retention (a queued request could still extend it).
pub const EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Keeps the `keep` most recently ended rows of each user (any app) and
/// moves their older ended ones to the tombstones. Only these users' rows
/// are touched.
/// A session that merely expired counts as ended only [`EXPIRED_GRACE`]
/// after its expiry: a request still in the queue may extend it.
///
/// For many users at once, each with its own `keep`, in one statement.
pub(crate) async fn prune_logs(
    conn: &mut PgConnection,
    keep: &[(String, u32)],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    if keep.is_empty() {
        return Ok(0);
    }
    let (users, limits): (Vec<&str>, Vec<i64>) = keep
        .iter()
        .map(|(u, k)| (u.as_str(), i64::from(*k)))
        .unzip();
    let moved = sqlx::query(concat!(
        "WITH target AS (
             SELECT * FROM unnest($1::text[], $2::int8[]) AS t(user_id, keep)
         ), ranked AS (
             SELECT s.app, s.session_id, s.user_id, t.keep,
                    row_number() OVER (
                        PARTITION BY s.user_id
                        ORDER BY coalesce(s.ended_at, s.expires_at) DESC, s.app DESC,
                                 s.session_id DESC
                    ) AS n
             FROM sessions s JOIN target t ON s.user_id = t.user_id
             WHERE s.end_reason IS NOT NULL OR s.expires_at <= $3 - $4::interval
         ), moved AS (
             DELETE FROM sessions s USING ranked d
             WHERE d.n > d.keep AND s.user_id = d.user_id
               AND s.app = d.app AND s.session_id = d.session_id
             RETURNING s.*
         ) ",
        bury_moved!()
    ))
    .bind(&users)
    .bind(&limits)
    .bind(now)
    .bind(format!("{} seconds", EXPIRED_GRACE.as_secs()))
    .execute(conn)
    .await?;
    Ok(moved.rows_affected())
}

/// Deletes tombstones of sessions not heard of for `ttl` (counted from the
/// latest of: pruning, last event, last revoke) and past their own expiry,
/// at most `limit` at a time. A `ttl` of zero keeps them forever. Returns
/// how many went.
pub async fn expire_tombstones(pool: &PgPool, ttl: Duration, limit: i64) -> sqlx::Result<u64> {
    let Some(cutoff) = tombstone_cutoff(Utc::now(), ttl) else {
        return Ok(0);
    };
    let done = sqlx::query(
        "DELETE FROM session_tombstones WHERE (app, session_id) IN (
             SELECT app, session_id FROM session_tombstones
             WHERE greatest(pruned_at, last_seen_at, last_revoke_at) < $1
               AND (expires_at IS NULL OR expires_at < now())
             LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The time before which a tombstone not heard of has lived out `ttl`;
/// `None` when none can have: a zero `ttl` (keep forever), or one reaching
/// back before the calendar chrono represents.
fn tombstone_cutoff(now: DateTime<Utc>, ttl: Duration) -> Option<DateTime<Utc>> {
    if ttl.is_zero() {
        return None;
    }
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_sub_signed(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_tombstone_ttl_expires_nothing_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(tombstone_cutoff(now, Duration::ZERO), None);
        assert_eq!(
            tombstone_cutoff(now, Duration::from_secs(60)),
            Some(now - chrono::Duration::seconds(60))
        );
        assert_eq!(tombstone_cutoff(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(
            tombstone_cutoff(now, Duration::from_secs(400_000 * 365 * 86_400)),
            None
        );
    }
}
