//! PostgreSQL: the session log, the outbox and the transaction that applies a
//! batch of events.
//!
//! One batch is one transaction: lock the batch's users (sorted, so that two
//! workers never wait on each other in a cycle), apply each event to its
//! session row, check each touched user against the limit, write the revoke
//! events to the outbox, prune the log, commit. The caller acks the batch only
//! after the commit, so a crash anywhere before it replays the batch, and
//! replaying changes nothing because every step is idempotent.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::configuration::{DatabaseSettings, LimitSettings, RetentionSettings, redact_url};
use crate::domain::decision::{Candidate, Limits, sessions_to_revoke};
use crate::domain::event::{AppName, EventKind, SessionEvent, SessionId, UserId};
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::{EndReason, SessionRecord, apply_event};

/// Migrations in ./migrations, embedded so the binary can apply them itself.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database named in `settings.url` if it does not exist yet.
pub async fn ensure_database(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let url = &settings.url;
    let exists = Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", redact_url(url)))?;
    if !exists {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!(database = %redact_url(url), "created database"),
            // Another worker created it between our check and our CREATE.
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create database {}", redact_url(url)));
            }
        }
    }
    Ok(())
}

/// A connection pool for `settings.url`.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse()
        .with_context(|| format!("invalid database URL {}", redact_url(&settings.url)))?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(&settings.url)))
}

/// Creates the database if needed, connects and applies the migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    ensure_database(settings).await?;
    let pool = connect(settings).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("failed to apply database migrations")?;
    Ok(pool)
}

/// How long after its `expires_at` a session that did not end otherwise may
/// be pruned by retention (a queued request could still extend it).
pub const EXPIRED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What the store needs to know to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Limits applied to every user (rule hooks come later).
    pub limits: Limits,
    /// Least time between two revoke messages for one session.
    pub repeat_revoke_after: Duration,
    /// Ended rows kept per user; `None` keeps all.
    pub log_limit: Option<u32>,
}

impl Policy {
    pub fn from_settings(limits: &LimitSettings, retention: &RetentionSettings) -> Policy {
        Policy {
            limits: Limits {
                max_sessions: limits.max_sessions,
            },
            repeat_revoke_after: Duration::from_secs(limits.repeat_revoke_after),
            log_limit: retention.log_limit,
        }
    }
}

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Sessions revoked because of the limit.
    pub revoked: usize,
    /// Revoke messages repeated for sessions an app kept using.
    pub repeated: usize,
    /// Rows moved out of the log by retention.
    pub pruned: u64,
}

impl BatchOutcome {
    /// Whether the outbox received messages the relay should publish now.
    pub fn wrote_outbox(&self) -> bool {
        self.revoked + self.repeated > 0
    }
}

/// The advisory-lock key of a user: FNV-1a, stable across processes and
/// versions so that every worker takes the same lock for the same user.
/// Collisions only make two users wait for each other, never break anything.
pub fn user_lock_key(user_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Takes the transaction-scoped locks of `users`, in ascending key order.
async fn lock_users(conn: &mut PgConnection, users: &BTreeSet<String>) -> sqlx::Result<()> {
    let mut keys: Vec<i64> = users.iter().map(|u| user_lock_key(u)).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n")
        .bind(&keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies `events` in one transaction and commits. On error nothing is
/// written: the caller retries or nacks.
pub async fn process_batch(
    pool: &PgPool,
    policy: &Policy,
    events: &[SessionEvent],
    now: DateTime<Utc>,
) -> sqlx::Result<BatchOutcome> {
    let mut tx = pool.begin().await?;
    let outcome = apply_batch(&mut tx, policy, events, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The body of [`process_batch`], on a connection inside a transaction.
pub async fn apply_batch(
    conn: &mut PgConnection,
    policy: &Policy,
    events: &[SessionEvent],
    now: DateTime<Utc>,
) -> sqlx::Result<BatchOutcome> {
    // Who the batch touches: a logout may leave its user out, so look it up.
    let mut users: BTreeSet<String> = BTreeSet::new();
    let mut event_users: Vec<Option<UserId>> = Vec::with_capacity(events.len());
    for event in events {
        let user = match &event.user_id {
            Some(u) => Some(u.clone()),
            None => find_user(conn, &event.app, &event.session_id).await?,
        };
        if let Some(u) = &user {
            users.insert(u.as_str().to_owned());
        }
        event_users.push(user);
    }
    lock_users(conn, &users).await?;

    let mut outcome = BatchOutcome::default();
    let mut outbox: Vec<RevokeMessage> = Vec::new();
    for (event, user) in events.iter().zip(&event_users) {
        let applied = loop {
            let current = fetch_session(conn, &event.app, &event.session_id).await?;
            let from_tombstone = matches!(current, Some((_, true)));
            let existed = current.is_some();
            let applied = apply_event(
                current.map(|(r, _)| r),
                event,
                now,
                policy.repeat_revoke_after,
            );
            if !applied.changed {
                break applied;
            }
            if from_tombstone {
                update_tombstone(conn, &applied.record).await?;
            } else if existed {
                update_session(conn, &applied.record).await?;
            } else if !insert_session(conn, &applied.record).await? {
                // Another transaction created the row meanwhile: start over
                // from its version.
                continue;
            }
            break applied;
        };
        if applied.repeat_revoke {
            let r = &applied.record;
            if let (Some(user_id), Some(reason), Some(revoked_at)) =
                (&r.user_id, r.end_reason, r.ended_at)
            {
                outbox.push(RevokeMessage::new(
                    &r.app,
                    r.session_id.as_str(),
                    user_id.as_str(),
                    reason,
                    revoked_at,
                    r.max_sessions.unwrap_or(policy.limits.max_sessions),
                    true,
                ));
                outcome.repeated += 1;
            }
        }
        if event.kind != EventKind::Logout
            && let Some(user) = user
        {
            let revoked = check_limit(conn, policy.limits, user, &event.app, now).await?;
            outcome.revoked += revoked.len();
            outbox.extend(revoked);
        }
    }
    write_outbox(conn, &outbox).await?;
    if let Some(keep) = policy.log_limit {
        for user in &users {
            outcome.pruned += prune_log(conn, user, keep, now).await?;
        }
    }
    Ok(outcome)
}

/// The user of a known session, for a logout that did not name one.
async fn find_user(
    conn: &mut PgConnection,
    app: &AppName,
    session_id: &SessionId,
) -> sqlx::Result<Option<UserId>> {
    let user: Option<Option<String>> = sqlx::query_scalar(
        "SELECT user_id FROM sessions WHERE app = $1 AND session_id = $2
         UNION ALL
         SELECT user_id FROM session_tombstones WHERE app = $1 AND session_id = $2
         LIMIT 1",
    )
    .bind(app.as_str())
    .bind(session_id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(user.flatten().map(UserId::from_trusted))
}

/// A session row as stored.
#[derive(sqlx::FromRow)]
struct SessionRow {
    app: String,
    session_id: String,
    user_id: Option<String>,
    login_at: DateTime<Utc>,
    login_seen: bool,
    last_seen_at: DateTime<Utc>,
    ip: Option<IpAddr>,
    user_agent: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    max_sessions: Option<i32>,
    last_revoke_at: Option<DateTime<Utc>>,
}

impl From<SessionRow> for SessionRecord {
    fn from(row: SessionRow) -> SessionRecord {
        SessionRecord {
            app: AppName::from_trusted(row.app),
            session_id: SessionId::from_trusted(row.session_id),
            user_id: row.user_id.map(UserId::from_trusted),
            login_at: row.login_at,
            login_seen: row.login_seen,
            last_seen_at: row.last_seen_at,
            ip: row.ip,
            user_agent: row.user_agent,
            expires_at: row.expires_at,
            ended_at: row.ended_at,
            end_reason: row.end_reason.as_deref().and_then(EndReason::parse),
            max_sessions: row.max_sessions.map(|n| n.max(0) as u32),
            last_revoke_at: row.last_revoke_at,
        }
    }
}

/// The session's record, locked for this transaction; `true` when it comes
/// from the tombstones (its log row was pruned).
async fn fetch_session(
    conn: &mut PgConnection,
    app: &AppName,
    session_id: &SessionId,
) -> sqlx::Result<Option<(SessionRecord, bool)>> {
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT app, session_id, user_id, login_at, login_seen, last_seen_at, ip, user_agent,
                expires_at, ended_at, end_reason, max_sessions, last_revoke_at
         FROM sessions WHERE app = $1 AND session_id = $2 FOR UPDATE",
    )
    .bind(app.as_str())
    .bind(session_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = row {
        return Ok(Some((row.into(), false)));
    }
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT app, session_id, user_id, login_at, true AS login_seen, last_seen_at,
                NULL::inet AS ip, NULL::text AS user_agent, expires_at, ended_at, end_reason,
                max_sessions, last_revoke_at
         FROM session_tombstones WHERE app = $1 AND session_id = $2 FOR UPDATE",
    )
    .bind(app.as_str())
    .bind(session_id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.into(), true)))
}

/// Inserts a new row; `false` if a concurrent transaction inserted it first.
async fn insert_session(conn: &mut PgConnection, r: &SessionRecord) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at, ip,
                               user_agent, expires_at, ended_at, end_reason, max_sessions,
                               last_revoke_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (app, session_id) DO NOTHING",
    )
    .bind(r.app.as_str())
    .bind(r.session_id.as_str())
    .bind(r.user_id.as_ref().map(UserId::as_str))
    .bind(r.login_at)
    .bind(r.login_seen)
    .bind(r.last_seen_at)
    .bind(r.ip)
    .bind(r.user_agent.as_deref())
    .bind(r.expires_at)
    .bind(r.ended_at)
    .bind(r.end_reason.map(EndReason::as_str))
    .bind(r.max_sessions.map(|n| n as i32))
    .bind(r.last_revoke_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn update_session(conn: &mut PgConnection, r: &SessionRecord) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET user_id = $3, login_at = $4, login_seen = $5, last_seen_at = $6,
                ip = $7, user_agent = $8, expires_at = $9, ended_at = $10, end_reason = $11,
                max_sessions = $12, last_revoke_at = $13
         WHERE app = $1 AND session_id = $2",
    )
    .bind(r.app.as_str())
    .bind(r.session_id.as_str())
    .bind(r.user_id.as_ref().map(UserId::as_str))
    .bind(r.login_at)
    .bind(r.login_seen)
    .bind(r.last_seen_at)
    .bind(r.ip)
    .bind(r.user_agent.as_deref())
    .bind(r.expires_at)
    .bind(r.ended_at)
    .bind(r.end_reason.map(EndReason::as_str))
    .bind(r.max_sessions.map(|n| n as i32))
    .bind(r.last_revoke_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A pruned session only tracks what the repeat-revoke rule needs.
async fn update_tombstone(conn: &mut PgConnection, r: &SessionRecord) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE session_tombstones SET user_id = $3, login_at = $4, last_seen_at = $5,
                last_revoke_at = $6
         WHERE app = $1 AND session_id = $2",
    )
    .bind(r.app.as_str())
    .bind(r.session_id.as_str())
    .bind(r.user_id.as_ref().map(UserId::as_str))
    .bind(r.login_at)
    .bind(r.last_seen_at)
    .bind(r.last_revoke_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Checks one user in one app against the limit and revokes what exceeds it.
/// Sessions are ranked by event time; expiry is judged at `now`, the
/// worker's clock, so a session that has expired by the time a late event is
/// processed never costs a live session its place.
async fn check_limit(
    conn: &mut PgConnection,
    limits: Limits,
    user: &UserId,
    app: &AppName,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<RevokeMessage>> {
    if limits.is_unlimited() {
        return Ok(Vec::new());
    }
    // FOR UPDATE: wait for, and see, any concurrent change to these rows (a
    // logout that did not know its user, so did not take the user lock).
    let rows: Vec<(String, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT session_id, login_at, login_seen FROM sessions
         WHERE user_id = $1 AND app = $2 AND end_reason IS NULL
           AND (expires_at IS NULL OR expires_at > $3)
         FOR UPDATE",
    )
    .bind(user.as_str())
    .bind(app.as_str())
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() <= limits.max_sessions as usize {
        return Ok(Vec::new());
    }
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|(session_id, login_at, login_seen)| Candidate {
            app: app.clone(),
            session_id: SessionId::from_trusted(session_id),
            login_at,
            login_seen,
        })
        .collect();
    let victims: Vec<String> = sessions_to_revoke(&candidates, limits)
        .into_iter()
        .map(|c| c.session_id.into_inner())
        .collect();
    let revoked: Vec<String> = sqlx::query_scalar(
        "UPDATE sessions SET ended_at = $3, end_reason = $4, max_sessions = $5,
                last_revoke_at = $3
         WHERE app = $1 AND session_id = ANY($2) AND end_reason IS NULL
         RETURNING session_id",
    )
    .bind(app.as_str())
    .bind(&victims)
    .bind(now)
    .bind(EndReason::SessionLimit.as_str())
    .bind(limits.max_sessions as i32)
    .fetch_all(conn)
    .await?;
    Ok(revoked
        .iter()
        .map(|session_id| {
            RevokeMessage::new(
                app,
                session_id,
                user.as_str(),
                EndReason::SessionLimit,
                now,
                limits.max_sessions,
                false,
            )
        })
        .collect())
}

/// Writes revoke messages to the outbox, for the relay to publish.
pub async fn write_outbox(conn: &mut PgConnection, messages: &[RevokeMessage]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(messages.len());
    let mut keys = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for m in messages {
        ids.push(m.event_id);
        keys.push(m.routing_key());
        payloads.push(serde_json::to_string(m).expect("a revoke message always serializes"));
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps the `keep` most recently ended rows of one user (any app) and moves
/// the older ended ones to the tombstones. Only this user's rows are touched.
/// A session that merely expired counts as ended only [`EXPIRED_GRACE`]
/// after its expiry: a request still in the queue may extend it.
async fn prune_log(
    conn: &mut PgConnection,
    user: &str,
    keep: u32,
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let moved = sqlx::query(
        "WITH doomed AS (
             SELECT app, session_id FROM sessions
             WHERE user_id = $1 AND (end_reason IS NOT NULL OR expires_at <= $2 - $4::interval)
             ORDER BY coalesce(ended_at, expires_at) DESC, app DESC, session_id DESC
             OFFSET $3
         ), moved AS (
             DELETE FROM sessions s USING doomed d
             WHERE s.user_id = $1 AND s.app = d.app AND s.session_id = d.session_id
             RETURNING s.*
         )
         INSERT INTO session_tombstones (app, session_id, user_id, login_at, last_seen_at,
                                         expires_at, ended_at, end_reason, max_sessions,
                                         last_revoke_at)
         SELECT app, session_id, user_id, login_at, last_seen_at, expires_at,
                coalesce(ended_at, expires_at), coalesce(end_reason, 'expired'), max_sessions,
                last_revoke_at
         FROM moved
         ON CONFLICT (app, session_id) DO NOTHING",
    )
    .bind(user)
    .bind(now)
    .bind(i64::from(keep))
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
    if ttl.is_zero() {
        return Ok(0);
    }
    let cutoff = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
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

/// A row of the outbox, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: String,
}

/// One session of the log, as `session-guard sessions` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoggedSession {
    pub app: String,
    pub session_id: String,
    pub user_id: Option<String>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub login_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

/// A user's sessions, newest login first, optionally in one app.
pub async fn user_sessions(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
) -> sqlx::Result<Vec<LoggedSession>> {
    sqlx::query_as(
        "SELECT app, session_id, user_id, ip, user_agent, login_at, last_seen_at, expires_at,
                ended_at, end_reason
         FROM sessions
         WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
         ORDER BY login_at DESC, app, session_id",
    )
    .bind(user)
    .bind(app)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable() {
        // FNV-1a test vectors: the key must never change between versions,
        // or two versions running side by side would not exclude each other.
        assert_eq!(user_lock_key(""), 0xcbf29ce484222325_u64 as i64);
        assert_eq!(user_lock_key("a"), 0xaf63dc4c8601ec8c_u64 as i64);
        assert_ne!(user_lock_key("u1"), user_lock_key("u2"));
    }
}
