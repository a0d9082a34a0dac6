//! PostgreSQL: the session log, the outbox and the transaction that applies a
//! batch of events.
//!
//! One batch is one transaction: lock the batch's users (sorted, so that two
//! workers never wait on each other in a cycle), apply each event to its
//! session row, check each touched user against the limit, write the revoke
//! events to the outbox, prune the log, commit. The caller acks the batch only
//! after the commit, so a crash anywhere before it replays the batch, and
//! replaying changes nothing because every step is idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::configuration::{DatabaseSettings, redact_url};
use crate::domain::decision::{Candidate, Caps, Scope, idle_sessions, select_victims};
use crate::domain::event::{AppName, EventKind, SessionEvent, SessionId, UserId};
use crate::domain::limits::{
    EffectiveLimits, EvictionPolicy, HookChain, HookContext, Limits, SessionSummary, UserOverride,
};
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
pub struct Enforcement {
    /// The configured rule hooks and the base limits they start from.
    pub hooks: HookChain,
    /// Least time between two revoke messages for one session.
    pub repeat_revoke_after: Duration,
    /// `false` = shadow mode: decide, log and count, revoke nothing.
    pub enforce: bool,
}

impl Enforcement {
    /// From the settings, with hooks of an embedding program's own.
    pub fn from_settings(
        settings: &crate::configuration::Settings,
        custom: &[std::sync::Arc<dyn crate::domain::limits::RuleHook>],
    ) -> anyhow::Result<Enforcement> {
        Ok(Enforcement {
            hooks: settings.hook_chain(custom)?,
            repeat_revoke_after: Duration::from_secs(settings.limits.repeat_revoke_after),
            enforce: settings.limits.enforce,
        })
    }
}

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Sessions revoked (limits, idle timeout, logout_others, logout_all).
    pub revoked: usize,
    /// Sessions shadow mode would have revoked.
    pub shadow_revoked: usize,
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
    rules: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
) -> Result<BatchOutcome, BatchError> {
    let mut tx = pool.begin().await.map_err(BatchError::Connect)?;
    let outcome = apply_batch(&mut tx, rules, events, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// No connection or transaction could be had: never the events' fault.
    #[error("cannot start a transaction: {0}")]
    Connect(#[source] sqlx::Error),
    /// A statement (or the commit) failed.
    #[error(transparent)]
    Statement(#[from] sqlx::Error),
}

impl BatchError {
    /// Whether retrying the same events later can succeed: everything but
    /// errors that point at the events' own data.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Connect(_) => true,
            BatchError::Statement(e) => is_transient(e),
        }
    }
}

/// Errors that say "try again later" rather than "these events are wrong".
///
/// Only errors about the data are permanent: SQLSTATE classes 22 (data
/// exception), 23 (integrity constraint), P0 (raised by a PL/pgSQL
/// function), 42 (syntax or undefined object: a bug, same every time; but not
/// 42501, a missing privilege an operator can grant), and decoding errors.
/// Everything else (connection loss, a database that refuses connections,
/// deadlocks, serialization failures, shutdowns, resource limits) is retried
/// with backoff for as long as it takes, and nothing is acked meanwhile.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                let permanent = ["22", "23", "P0", "42"].iter().any(|c| code.starts_with(c));
                !permanent || code == "42501"
            }
            None => true,
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::InvalidArgument(_) => false,
        _ => true,
    }
}

/// The body of [`process_batch`], on a connection inside a transaction.
pub async fn apply_batch(
    conn: &mut PgConnection,
    rules: &Enforcement,
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
    // The log_limit that applies to each user: from the last check of them,
    // or, for a user who only logged out, to be asked of the hooks.
    let mut log_limits: BTreeMap<String, LogLimit> = BTreeMap::new();
    for (event, user) in events.iter().zip(&event_users) {
        let applied = loop {
            let current = fetch_session(conn, &event.app, &event.session_id).await?;
            let from_tombstone = matches!(current, Some((_, true)));
            let existed = current.is_some();
            let applied = apply_event(
                current.map(|(r, _)| r),
                event,
                now,
                rules.repeat_revoke_after,
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
                    r.max_sessions.unwrap_or(rules.hooks.base().max_sessions),
                    true,
                ));
                outcome.repeated += 1;
            }
        }
        let Some(user) = user else { continue };
        match event.kind {
            EventKind::Login | EventKind::Request => {
                let check = check_user(conn, rules, user, event, now).await?;
                outcome.revoked += check.revokes.len();
                outcome.shadow_revoked += check.shadow_revoked;
                outbox.extend(check.revokes);
                log_limits.insert(
                    user.as_str().to_owned(),
                    LogLimit::Known(check.limits.log_limit),
                );
            }
            EventKind::LogoutOthers | EventKind::LogoutAll => {
                let (keep, reason) = if event.kind == EventKind::LogoutOthers {
                    (Some(&event.session_id), EndReason::LogoutOthers)
                } else {
                    (None, EndReason::LogoutAll)
                };
                let limits = limits_for(conn, rules, user, &event.app, &event.attributes).await?;
                let revokes = revoke_users_sessions(
                    conn,
                    user,
                    &event.app,
                    keep,
                    event.occurred_at,
                    Revocation {
                        reason,
                        ended_by: "user".to_owned(),
                        note: None,
                        max_sessions: limits.limits.max_sessions,
                    },
                    now,
                )
                .await?;
                outcome.revoked += revokes.len();
                outbox.extend(revokes);
                log_limits.insert(
                    user.as_str().to_owned(),
                    LogLimit::Known(limits.limits.log_limit),
                );
            }
            EventKind::Logout => {
                log_limits
                    .entry(user.as_str().to_owned())
                    .or_insert_with(|| LogLimit::Unknown(event.app.clone()));
            }
        }
    }
    write_outbox(conn, &outbox).await?;
    for (user, log_limit) in log_limits {
        let keep = match log_limit {
            LogLimit::Known(keep) => keep,
            // Only logged out in this batch: ask the hooks, with the
            // attributes of the user's latest event in that app.
            LogLimit::Unknown(app) => {
                let user = UserId::from_trusted(user.clone());
                let attributes = stored_attributes(conn, &user, &app).await?;
                limits_for(conn, rules, &user, &app, &attributes)
                    .await?
                    .limits
                    .log_limit
            }
        };
        if let Some(keep) = keep {
            outcome.pruned += prune_log(conn, &user, keep, now).await?;
        }
    }
    Ok(outcome)
}

/// The log_limit of a user touched by a batch.
enum LogLimit {
    /// Computed by a check (`None` = keep everything).
    Known(Option<u32>),
    /// Not computed yet: the user only logged out, in this app.
    Unknown(AppName),
}

/// The attributes of the user's latest event in `app` that had any.
async fn stored_attributes(
    conn: &mut PgConnection,
    user: &UserId,
    app: &AppName,
) -> sqlx::Result<serde_json::Map<String, serde_json::Value>> {
    let value: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT attributes FROM sessions
         WHERE user_id = $1 AND app = $2 AND attributes IS NOT NULL
         ORDER BY last_seen_at DESC LIMIT 1",
    )
    .bind(user.as_str())
    .bind(app.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(match value {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    })
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
    attributes: Option<serde_json::Value>,
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
            attributes: row.attributes,
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
                expires_at, ended_at, end_reason, max_sessions, last_revoke_at, attributes
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
                max_sessions, last_revoke_at, NULL::jsonb AS attributes
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
                               last_revoke_at, attributes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
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
    .bind(&r.attributes)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn update_session(conn: &mut PgConnection, r: &SessionRecord) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET user_id = $3, login_at = $4, login_seen = $5, last_seen_at = $6,
                ip = $7, user_agent = $8, expires_at = $9, ended_at = $10, end_reason = $11,
                max_sessions = $12, last_revoke_at = $13, attributes = $14
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
    .bind(&r.attributes)
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

/// What a check decided.
struct Check {
    revokes: Vec<RevokeMessage>,
    shadow_revoked: usize,
    limits: Limits,
}

/// An active session row, for the check.
#[derive(sqlx::FromRow)]
struct ActiveRow {
    app: String,
    session_id: String,
    login_at: DateTime<Utc>,
    login_seen: bool,
    last_seen_at: DateTime<Utc>,
}

/// The limits operators stored for a user.
pub async fn load_overrides(
    conn: &mut PgConnection,
    user: &str,
) -> sqlx::Result<Vec<UserOverride>> {
    let rows: Vec<OverrideRow> = sqlx::query_as(
        "SELECT app, max_sessions, max_sessions_global, policy, idle_timeout, log_limit
         FROM user_overrides WHERE user_id = $1 ORDER BY app",
    )
    .bind(user)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| UserOverride {
            app: (!r.app.is_empty()).then_some(r.app),
            max_sessions: r.max_sessions.map(|n| n.max(0) as u32),
            max_sessions_global: r.max_sessions_global.map(|n| n.max(0) as u32),
            policy: r.policy.and_then(|p| p.parse().ok()),
            idle_timeout: r.idle_timeout.map(|n| n.max(0) as u64),
            log_limit: r.log_limit.map(|n| n.max(0) as u32),
        })
        .collect())
}

/// A row of `user_overrides`; `app` is empty for the all-apps override.
#[derive(sqlx::FromRow)]
struct OverrideRow {
    app: String,
    max_sessions: Option<i32>,
    max_sessions_global: Option<i32>,
    policy: Option<String>,
    idle_timeout: Option<i64>,
    log_limit: Option<i32>,
}

/// A user's live (not ended, not expired at `now`) sessions in every app,
/// locked: FOR UPDATE waits for, and sees, any concurrent change to them (a
/// logout that did not know its user, so did not take the user lock).
async fn active_sessions(
    conn: &mut PgConnection,
    user: &UserId,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Candidate>> {
    let rows: Vec<ActiveRow> = sqlx::query_as(
        "SELECT app, session_id, login_at, login_seen, last_seen_at FROM sessions
         WHERE user_id = $1 AND end_reason IS NULL
           AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY app, session_id
         FOR UPDATE",
    )
    .bind(user.as_str())
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            app: AppName::from_trusted(r.app),
            session_id: SessionId::from_trusted(r.session_id),
            login_at: r.login_at,
            login_seen: r.login_seen,
            last_seen_at: r.last_seen_at,
        })
        .collect())
}

fn summaries(sessions: &[Candidate]) -> Vec<SessionSummary> {
    sessions
        .iter()
        .map(|c| SessionSummary {
            app: c.app.clone(),
            session_id: c.session_id.to_string(),
            login_at: c.login_at,
            last_seen_at: c.last_seen_at,
        })
        .collect()
}

/// The limits that apply to `user` in `app`, from the hooks.
pub async fn limits_for(
    conn: &mut PgConnection,
    rules: &Enforcement,
    user: &UserId,
    app: &AppName,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> sqlx::Result<EffectiveLimits> {
    let overrides = load_overrides(&mut *conn, user.as_str()).await?;
    let sessions = active_sessions(&mut *conn, user, Utc::now()).await?;
    let summaries = summaries(&sessions);
    Ok(rules.hooks.evaluate(&HookContext {
        app,
        user_id: user,
        attributes,
        sessions: &summaries,
        overrides: &overrides,
    }))
}

/// Checks one user, as of an event in `app`: runs the hooks, expires idle
/// sessions, applies the per-app and global limits with the policy, and
/// revokes what does not fit (or, in shadow mode, only logs and counts it).
/// Sessions are ranked by event time; expiry is judged at `now`, the worker's
/// clock, so a session that has expired by the time a late event is
/// processed never costs a live session its place.
async fn check_user(
    conn: &mut PgConnection,
    rules: &Enforcement,
    user: &UserId,
    event: &SessionEvent,
    now: DateTime<Utc>,
) -> sqlx::Result<Check> {
    let app = &event.app;
    let sessions = active_sessions(&mut *conn, user, now).await?;
    let overrides = load_overrides(&mut *conn, user.as_str()).await?;
    let summaries = summaries(&sessions);
    let evaluate = |app: &AppName| {
        rules.hooks.evaluate(&HookContext {
            app,
            user_id: user,
            attributes: &event.attributes,
            sessions: &summaries,
            overrides: &overrides,
        })
    };
    // The limits of every app the user is in: each app's own idle timeout
    // and cap apply to its sessions; the checked app's policy and global cap
    // to all.
    let mut per_app: BTreeMap<AppName, EffectiveLimits> = BTreeMap::new();
    per_app.insert(app.clone(), evaluate(app));
    for c in &sessions {
        if !per_app.contains_key(&c.app) {
            per_app.insert(c.app.clone(), evaluate(&c.app));
        }
    }
    let effective = per_app[app].clone();

    // Idle sessions count as expired, judged at event time (a backlog must
    // not make live sessions look idle), never the session of this event.
    let mut revocations: Vec<(Candidate, Revocation)> = Vec::new();
    for (a, limits) in &per_app {
        let idle = idle_sessions(
            &sessions,
            a,
            limits.limits.idle_timeout,
            event.occurred_at,
            Some(&event.session_id).filter(|_| a == app),
        );
        for session in idle {
            revocations.push((
                session.clone(),
                Revocation {
                    reason: EndReason::IdleTimeout,
                    ended_by: limits.set_by.idle_timeout.clone(),
                    note: None,
                    max_sessions: limits.limits.max_sessions,
                },
            ));
        }
    }
    let live: Vec<Candidate> = sessions
        .iter()
        .filter(|c| !revocations.iter().any(|(idle, _)| idle == *c))
        .cloned()
        .collect();
    let caps = Caps {
        per_app: per_app
            .iter()
            .map(|(a, l)| (a.clone(), l.limits.max_sessions))
            .collect(),
        global: effective.limits.max_sessions_global,
        policy: effective.limits.policy,
    };
    let reason = if effective.limits.policy == EvictionPolicy::DenyNew {
        EndReason::SessionLimitDenied
    } else {
        EndReason::SessionLimit
    };
    for victim in select_victims(&live, &caps) {
        let (ended_by, max_sessions) = match victim.scope {
            Scope::App => {
                let own = &per_app[&victim.session.app];
                (own.set_by.max_sessions.clone(), own.limits.max_sessions)
            }
            Scope::Global => (
                effective.set_by.max_sessions_global.clone(),
                effective.limits.max_sessions_global,
            ),
        };
        revocations.push((
            victim.session,
            Revocation {
                reason,
                ended_by,
                note: None,
                max_sessions,
            },
        ));
    }

    if !rules.enforce {
        let flagged = flag_shadow(conn, &revocations, now).await?;
        for (session, revocation) in revocations.iter().filter(|(c, _)| flagged.contains(c)) {
            tracing::info!(
                user = %user,
                app = %session.app,
                session_id = %session.session_id,
                reason = %revocation.reason,
                set_by = %revocation.ended_by,
                max_sessions = revocation.max_sessions,
                "shadow mode: would revoke"
            );
        }
        return Ok(Check {
            revokes: Vec::new(),
            shadow_revoked: flagged.len(),
            limits: effective.limits,
        });
    }
    let revokes = revoke_sessions(conn, user, revocations, now).await?;
    Ok(Check {
        revokes,
        shadow_revoked: 0,
        limits: effective.limits,
    })
}

/// Shadow mode: marks the sessions a check would revoke, and returns those
/// not marked before, so each is logged and counted once, not at every event.
async fn flag_shadow(
    conn: &mut PgConnection,
    revocations: &[(Candidate, Revocation)],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<Candidate>> {
    if revocations.is_empty() {
        return Ok(Vec::new());
    }
    let apps: Vec<&str> = revocations.iter().map(|(c, _)| c.app.as_str()).collect();
    let ids: Vec<&str> = revocations
        .iter()
        .map(|(c, _)| c.session_id.as_str())
        .collect();
    let flagged: Vec<(String, String)> = sqlx::query_as(
        "UPDATE sessions s SET shadow_flagged_at = $3
         FROM unnest($1::text[], $2::text[]) AS v(app, session_id)
         WHERE s.app = v.app AND s.session_id = v.session_id AND s.shadow_flagged_at IS NULL
         RETURNING s.app, s.session_id",
    )
    .bind(&apps)
    .bind(&ids)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(revocations
        .iter()
        .filter(|(c, _)| {
            flagged
                .iter()
                .any(|(a, id)| a == c.app.as_str() && id == c.session_id.as_str())
        })
        .map(|(c, _)| c.clone())
        .collect())
}

/// Why and by whom sessions are being revoked.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub reason: EndReason,
    /// The rule, hook or operator responsible, recorded in `sessions.ended_by`.
    pub ended_by: String,
    /// An operator's explanation.
    pub note: Option<String>,
    /// The limit in force, for the revoke message.
    pub max_sessions: u32,
}

/// Ends the given sessions (those still active when the row lock is taken)
/// and returns their revoke messages, for the outbox.
async fn revoke_sessions(
    conn: &mut PgConnection,
    user: &UserId,
    revocations: Vec<(Candidate, Revocation)>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<RevokeMessage>> {
    if revocations.is_empty() {
        return Ok(Vec::new());
    }
    let mut apps = Vec::new();
    let mut ids = Vec::new();
    let mut reasons = Vec::new();
    let mut by = Vec::new();
    let mut notes: Vec<Option<String>> = Vec::new();
    let mut maxes = Vec::new();
    for (session, r) in &revocations {
        apps.push(session.app.as_str());
        ids.push(session.session_id.as_str());
        reasons.push(r.reason.as_str());
        by.push(r.ended_by.as_str());
        notes.push(r.note.clone());
        maxes.push(r.max_sessions.min(i32::MAX as u32) as i32);
    }
    let done: Vec<(String, String, String, i32, Option<String>)> = sqlx::query_as(
        "UPDATE sessions s
         SET ended_at = $7, end_reason = v.reason, ended_by = v.by, end_note = v.note,
             max_sessions = v.max, last_revoke_at = $7
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])
              AS v(app, session_id, reason, by, note, max)
         WHERE s.app = v.app AND s.session_id = v.session_id AND s.end_reason IS NULL
         RETURNING s.app, s.session_id, s.end_reason, s.max_sessions, s.end_note",
    )
    .bind(&apps)
    .bind(&ids)
    .bind(&reasons)
    .bind(&by)
    .bind(&notes)
    .bind(&maxes)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(done
        .into_iter()
        .map(|(app, session_id, reason, max, note)| {
            RevokeMessage::new(
                &AppName::from_trusted(app),
                &session_id,
                user.as_str(),
                EndReason::parse(&reason).unwrap_or(EndReason::SessionLimit),
                now,
                max.max(0) as u32,
                false,
            )
            .with_note(note)
        })
        .collect())
}

/// Revokes every session of `user` in `app` that had logged in by `by_time`
/// (and every one whose login was never seen), except `keep`.
async fn revoke_users_sessions(
    conn: &mut PgConnection,
    user: &UserId,
    app: &AppName,
    keep: Option<&SessionId>,
    by_time: DateTime<Utc>,
    revocation: Revocation,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<RevokeMessage>> {
    let rows: Vec<ActiveRow> = sqlx::query_as(
        "SELECT app, session_id, login_at, login_seen, last_seen_at FROM sessions
         WHERE user_id = $1 AND app = $2 AND end_reason IS NULL
           AND (expires_at IS NULL OR expires_at > $5)
           AND (login_at <= $3 OR NOT login_seen)
           AND session_id IS DISTINCT FROM $4
         ORDER BY session_id
         FOR UPDATE",
    )
    .bind(user.as_str())
    .bind(app.as_str())
    .bind(by_time)
    .bind(keep.map(SessionId::as_str))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let revocations = rows
        .into_iter()
        .map(|r| {
            (
                Candidate {
                    app: AppName::from_trusted(r.app),
                    session_id: SessionId::from_trusted(r.session_id),
                    login_at: r.login_at,
                    login_seen: r.login_seen,
                    last_seen_at: r.last_seen_at,
                },
                revocation.clone(),
            )
        })
        .collect();
    revoke_sessions(conn, user, revocations, now).await
}

/// What an operator revokes.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// One session.
    Session { app: AppName, session_id: SessionId },
    /// Every active session of a user in an app.
    User { app: AppName, user_id: UserId },
}

/// Why an operator revocation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminRevokeError {
    #[error("no session {session_id} in app {app}")]
    UnknownSession { app: String, session_id: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Revokes through the outbox, as a worker would (reason `admin`): the
/// workers' relays publish the revoke events. Returns what was revoked;
/// sessions already ended are left alone.
pub async fn admin_revoke(
    pool: &PgPool,
    rules: &Enforcement,
    target: &AdminTarget,
    operator: &str,
    note: Option<String>,
) -> Result<Vec<RevokeMessage>, AdminRevokeError> {
    let mut tx = pool.begin().await?;
    let (app, user, keep_only) = match target {
        AdminTarget::Session { app, session_id } => {
            let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT user_id, end_reason FROM sessions WHERE app = $1 AND session_id = $2",
            )
            .bind(app.as_str())
            .bind(session_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                None => {
                    return Err(AdminRevokeError::UnknownSession {
                        app: app.to_string(),
                        session_id: session_id.to_string(),
                    });
                }
                // Already ended (a logout-only row has no user): nothing to do.
                Some((None, _)) | Some((_, Some(_))) => return Ok(Vec::new()),
                Some((Some(user), None)) => (app, UserId::from_trusted(user), Some(session_id)),
            }
        }
        AdminTarget::User { app, user_id } => (app, user_id.clone(), None),
    };
    lock_users(&mut tx, &BTreeSet::from([user.as_str().to_owned()])).await?;
    let limits = limits_for(&mut tx, rules, &user, app, &serde_json::Map::new()).await?;
    let revocation = Revocation {
        reason: EndReason::Admin,
        ended_by: format!("operator:{operator}"),
        note,
        max_sessions: limits.limits.max_sessions,
    };
    let revokes = match keep_only {
        Some(session_id) => {
            let rows: Vec<ActiveRow> = sqlx::query_as(
                "SELECT app, session_id, login_at, login_seen, last_seen_at FROM sessions
                 WHERE app = $1 AND session_id = $2 AND user_id = $3 AND end_reason IS NULL
                 FOR UPDATE",
            )
            .bind(app.as_str())
            .bind(session_id.as_str())
            .bind(user.as_str())
            .fetch_all(&mut *tx)
            .await?;
            let revocations = rows
                .into_iter()
                .map(|r| {
                    (
                        Candidate {
                            app: AppName::from_trusted(r.app),
                            session_id: SessionId::from_trusted(r.session_id),
                            login_at: r.login_at,
                            login_seen: r.login_seen,
                            last_seen_at: r.last_seen_at,
                        },
                        revocation.clone(),
                    )
                })
                .collect();
            revoke_sessions(&mut tx, &user, revocations, Utc::now()).await?
        }
        None => {
            // Every active session, whatever its login time: "far future".
            let far = DateTime::<Utc>::MAX_UTC;
            revoke_users_sessions(&mut tx, &user, app, None, far, revocation, Utc::now()).await?
        }
    };
    write_outbox(&mut tx, &revokes).await?;
    tx.commit().await?;
    Ok(revokes)
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
    pub ended_by: Option<String>,
    pub end_note: Option<String>,
}

/// A user's sessions, newest login first, optionally in one app.
pub async fn user_sessions(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
) -> sqlx::Result<Vec<LoggedSession>> {
    sqlx::query_as(
        "SELECT app, session_id, user_id, ip, user_agent, login_at, last_seen_at, expires_at,
                ended_at, end_reason, ended_by, end_note
         FROM sessions
         WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
         ORDER BY login_at DESC, app, session_id",
    )
    .bind(user)
    .bind(app)
    .fetch_all(pool)
    .await
}

/// Stores (or merges into) an operator's override for a user, for one app
/// or all (`app: None`). Fields left `None` keep their stored value.
pub async fn set_override(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
    o: &UserOverride,
    by: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_overrides (user_id, app, max_sessions, max_sessions_global, policy,
                                     idle_timeout, log_limit, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id, app) DO UPDATE SET
             max_sessions = coalesce(EXCLUDED.max_sessions, user_overrides.max_sessions),
             max_sessions_global =
                 coalesce(EXCLUDED.max_sessions_global, user_overrides.max_sessions_global),
             policy = coalesce(EXCLUDED.policy, user_overrides.policy),
             idle_timeout = coalesce(EXCLUDED.idle_timeout, user_overrides.idle_timeout),
             log_limit = coalesce(EXCLUDED.log_limit, user_overrides.log_limit),
             updated_at = now(),
             updated_by = EXCLUDED.updated_by",
    )
    .bind(user)
    .bind(app.unwrap_or(""))
    .bind(o.max_sessions.map(|n| n.min(i32::MAX as u32) as i32))
    .bind(o.max_sessions_global.map(|n| n.min(i32::MAX as u32) as i32))
    .bind(o.policy.map(EvictionPolicy::as_str))
    .bind(o.idle_timeout.map(|n| n.min(i64::MAX as u64) as i64))
    .bind(o.log_limit.map(|n| n.min(i32::MAX as u32) as i32))
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes an operator's override; returns whether there was one.
pub async fn clear_override(pool: &PgPool, user: &str, app: Option<&str>) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM user_overrides WHERE user_id = $1 AND app = $2")
        .bind(user)
        .bind(app.unwrap_or(""))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// For each app a user has sessions in (or just `app`), the attributes of
/// the user's most recent event there that had any.
pub async fn latest_attributes(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
) -> sqlx::Result<Vec<(String, Option<serde_json::Value>)>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (app) app, attributes FROM sessions
         WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
         ORDER BY app, (attributes IS NULL), last_seen_at DESC",
    )
    .bind(user)
    .bind(app)
    .fetch_all(pool)
    .await
}

/// The effective limits of `user` in `app` with the given attributes, as
/// the worker would compute them at the user's next event.
pub async fn effective_limits(
    pool: &PgPool,
    rules: &Enforcement,
    user: &UserId,
    app: &AppName,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> sqlx::Result<EffectiveLimits> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let limits = limits_for(&mut tx, rules, user, app, attributes).await?;
    tx.rollback().await?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_permanent() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(BatchError::Connect(sqlx::Error::RowNotFound).is_transient());
    }

    #[test]
    fn lock_keys_are_stable() {
        // FNV-1a test vectors: the key must never change between versions,
        // or two versions running side by side would not exclude each other.
        assert_eq!(user_lock_key(""), 0xcbf29ce484222325_u64 as i64);
        assert_eq!(user_lock_key("a"), 0xaf63dc4c8601ec8c_u64 as i64);
        assert_ne!(user_lock_key("u1"), user_lock_key("u2"));
    }
}
