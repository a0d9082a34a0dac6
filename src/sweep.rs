//! Retention by age (`retention.max_age`): housekeeping moves session rows
//! whose end is older than that from the log to `session_tombstones`, in
//! small transactions that never wait for a batch.
//!
//! A row "ended" when it was logged out or revoked (`ended_at`), or, for a
//! session that simply expired, at its `expires_at`, and such a row counts
//! only [`EXPIRED_GRACE`] after that (as for `retention.log_limit`: a request
//! still queued may extend it). Active sessions are never touched.
//!
//! Locking. A user's rows are written only under that user's lock (its
//! `session_users` row, see `db::locks::lock_users` and the batch engine's module
//! docs), except by the lock-free touch, which only moves a row's activity
//! (of a live row, or of an ended one the app still uses) and skips rows
//! another transaction holds: a touch of a row the sweep moved finds it
//! gone and sends its batch round again, under the user's lock, to the
//! tombstone. So the sweep takes the locks of the users whose
//! rows are due with `FOR UPDATE SKIP LOCKED` (a user some transaction holds
//! is skipped until the next pass), takes their due rows the same way, moves
//! them and commits at once: the sweep never waits, and a batch that needs
//! one of these users waits at most for one short transaction. Rows with no
//! user (a logout for a session never seen) have no user lock; their row
//! locks are taken with SKIP LOCKED. A batch may have read such a row,
//! without a lock, just before the sweep moved it (an event naming that
//! session months after its logout); it then writes the ended row back, still
//! ended, and a later pass moves it again.
//!
//! Finding due rows:
//! - ended rows, with or without a user, through the partial index on
//!   `ended_at` (migration 4), oldest first;
//! - sessions that expired without ending, by a walk over the users (a page
//!   of [`WALK_PAGE`] at a time, at most [`WALK_PAGES`] a pass, resumed at
//!   the next pass): an index on `expires_at` would make every request that
//!   moves a session's expiry update every index of the log instead of
//!   staying a HOT update. The same walk finds claims (`user_attributes`)
//!   older than `max_age` in an app where the user has no session at all:
//!   an `attributes` event, or an app publishing every user's claims, can
//!   claim for a user who never logged in there.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::db::retention::{EXPIRED_GRACE, bury_moved};

/// Due rows read per step, and so most users locked by one transaction.
const CHUNK: i64 = 200;
/// Most steps of each kind in one pass: a pass moves at most this many
/// chunks of ended rows and of user-less rows; the rest waits for the next.
const MAX_CHUNKS: usize = 50;
/// Users looked at per page of the walk for expired sessions.
const WALK_PAGE: i64 = 1_000;
/// Most pages of the walk per pass.
const WALK_PAGES: usize = 20;

/// The due rows' tombstones, then the rows' owners: shared by every move.
/// `doomed` (defined before it) names the rows to move, already locked.
const MOVE: &str = concat!(
    "
     ), moved AS (
         DELETE FROM sessions s USING doomed d
         WHERE s.app = d.app AND s.session_id = d.session_id
         RETURNING s.*
     ), buried AS (
         ",
    bury_moved!(),
    "
     )
     SELECT user_id FROM moved"
);

/// Whether a row of `sessions` (alias `s`) is due: `$2` is the end before
/// which an ended row is due, `$3` the expiry before which a row that never
/// ended is.
const DUE: &str = "((s.end_reason IS NOT NULL AND s.ended_at < $2)
                    OR (s.end_reason IS NULL AND s.expires_at < $3))";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Rows moved from the log to the tombstones.
    pub moved: u64,
    /// Users skipped because another transaction held their lock (or their
    /// due rows); their rows wait for a later pass.
    pub busy: BTreeSet<String>,
    /// Claims (`user_attributes` rows) removed with their user's last rows
    /// in an app, or found alone in an app by the walk.
    pub claims_forgotten: u64,
}

/// The sweep's state between passes: where the walk for expired sessions
/// stopped.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The last user the walk looked at; `None`: start from the first.
    walked_to: Option<String>,
}

/// The two cut-offs of a pass.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// An ended row is due if it ended before this.
    ended_before: DateTime<Utc>,
    /// A row that never ended is due if it expired before this.
    expired_before: DateTime<Utc>,
}

impl Sweep {
    /// One pass with `max_age` at `now`: moves what is due, a bounded amount
    /// of it (see the constants); a later pass goes on.
    pub async fn pass(
        &mut self,
        pool: &PgPool,
        max_age: Duration,
        now: DateTime<Utc>,
    ) -> sqlx::Result<SweepReport> {
        let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let ended_before = now
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let grace = chrono::Duration::from_std(EXPIRED_GRACE).expect("a day fits");
        let due = Due {
            ended_before,
            expired_before: ended_before.min(now - grace),
        };
        let mut report = SweepReport::default();
        sweep_ended(pool, due, &mut report).await?;
        sweep_unowned(pool, due, &mut report).await?;
        self.walk_expired(pool, due, &mut report).await?;
        Ok(report)
    }

    /// The walk over the users, for sessions that expired without ending
    /// and claims old enough in apps where the user has no session.
    async fn walk_expired(
        &mut self,
        pool: &PgPool,
        due: Due,
        report: &mut SweepReport,
    ) -> sqlx::Result<()> {
        for _ in 0..WALK_PAGES {
            let page: Vec<(String, bool)> = sqlx::query_as(
                "SELECT u.user_id, EXISTS (
                     SELECT FROM sessions s
                     WHERE s.user_id = u.user_id AND s.end_reason IS NULL
                       AND s.expires_at < $3
                 ) OR EXISTS (
                     SELECT FROM user_attributes a
                     WHERE a.user_id = u.user_id AND a.occurred_at < $4
                       AND NOT EXISTS (
                           SELECT FROM sessions s WHERE s.user_id = a.user_id AND s.app = a.app
                       )
                 )
                 FROM session_users u
                 WHERE $1::text IS NULL OR u.user_id > $1
                 ORDER BY u.user_id LIMIT $2",
            )
            .bind(self.walked_to.as_deref())
            .bind(WALK_PAGE)
            .bind(due.expired_before)
            .bind(due.ended_before)
            .fetch_all(pool)
            .await?;
            let full = page.len() as i64 == WALK_PAGE;
            // The next page starts after this one, or the next pass from
            // the first user.
            self.walked_to = if full {
                page.last().map(|(user, _)| user.clone())
            } else {
                None
            };
            let users: Vec<String> = page
                .into_iter()
                .filter(|(_, has_due)| *has_due)
                .map(|(user, _)| user)
                .collect();
            for chunk in users.chunks(CHUNK as usize) {
                let chunk: BTreeSet<String> = chunk.iter().cloned().collect();
                move_users_rows(pool, &chunk, due, report).await?;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }
}

/// Ended rows of users, oldest first, a chunk of users at a time.
async fn sweep_ended(pool: &PgPool, due: Due, report: &mut SweepReport) -> sqlx::Result<()> {
    // Users whose due rows this pass could not move: not asked again, so
    // that every step either moves rows or grows this set.
    let mut passed_over: Vec<String> = Vec::new();
    for _ in 0..MAX_CHUNKS {
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM sessions
             WHERE end_reason IS NOT NULL AND ended_at < $1 AND user_id IS NOT NULL
               AND user_id <> ALL($2)
             ORDER BY ended_at LIMIT $3",
        )
        .bind(due.ended_before)
        .bind(&passed_over)
        .bind(CHUNK)
        .fetch_all(pool)
        .await?;
        let more = owners.len() as i64 == CHUNK;
        let users: BTreeSet<String> = owners.into_iter().collect();
        if users.is_empty() {
            break;
        }
        let moved = move_users_rows(pool, &users, due, report).await?;
        passed_over.extend(users.difference(&moved).cloned());
        if !more {
            break;
        }
    }
    Ok(())
}

/// Locks those of `users` no transaction holds, moves their due rows and
/// commits. Returns the users some of whose rows were moved.
async fn move_users_rows(
    pool: &PgPool,
    users: &BTreeSet<String>,
    due: Due,
    report: &mut SweepReport,
) -> sqlx::Result<BTreeSet<String>> {
    let wanted: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut tx = pool.begin().await?;
    // A user without a `session_users` row is not returned either: every
    // writer of a user's rows creates it first (`lock_users`), so such a
    // user has no rows and was named by a row gone meanwhile.
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM session_users WHERE user_id = ANY($1)
         ORDER BY user_id FOR UPDATE SKIP LOCKED",
    )
    .bind(&wanted)
    .fetch_all(&mut *tx)
    .await?;
    let held: BTreeSet<&str> = locked.iter().map(String::as_str).collect();
    report.busy.extend(
        wanted
            .iter()
            .filter(|u| !held.contains(*u))
            .map(|u| u.to_string()),
    );
    if locked.is_empty() {
        tx.rollback().await?;
        return Ok(BTreeSet::new());
    }
    let query = format!(
        "WITH doomed AS (
             SELECT s.app, s.session_id FROM sessions s
             WHERE s.user_id = ANY($1) AND {DUE}
             FOR UPDATE SKIP LOCKED
         {MOVE}"
    );
    let owners: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(&locked)
        .bind(due.ended_before)
        .bind(due.expired_before)
        .fetch_all(&mut *tx)
        .await?;
    // What an app claimed about a user (`user_attributes`) goes with the
    // user's last row in that app, once the claim is as old as the rows
    // retention removes: it is data about the user like the log is, and
    // under the same lock.
    let forgotten = sqlx::query(
        "DELETE FROM user_attributes a
         WHERE a.user_id = ANY($1) AND a.occurred_at < $2
           AND NOT EXISTS (
               SELECT FROM sessions s WHERE s.user_id = a.user_id AND s.app = a.app
           )",
    )
    .bind(&locked)
    .bind(due.ended_before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    report.moved += owners.len() as u64;
    report.claims_forgotten += forgotten.rows_affected();
    Ok(owners.into_iter().flatten().collect())
}

/// Ended rows with no user (logouts of sessions never seen), a chunk at a
/// time, their row locks taken without waiting.
async fn sweep_unowned(pool: &PgPool, due: Due, report: &mut SweepReport) -> sqlx::Result<()> {
    let query = format!(
        "WITH doomed AS (
             SELECT s.app, s.session_id FROM sessions s
             WHERE s.user_id IS NULL AND s.end_reason IS NOT NULL AND s.ended_at < $2
             ORDER BY s.ended_at LIMIT $1
             FOR UPDATE SKIP LOCKED
         {MOVE}"
    );
    for _ in 0..MAX_CHUNKS {
        let mut tx = pool.begin().await?;
        let moved: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone()))
            .bind(CHUNK)
            .bind(due.ended_before)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        report.moved += moved.len() as u64;
        if (moved.len() as i64) < CHUNK {
            break;
        }
    }
    Ok(())
}
