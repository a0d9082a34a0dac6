//! PostgreSQL: the session log, the outbox and the transaction that applies a
//! batch of events.
//!
//! One batch is one transaction: lock the batch's users (sorted, so that two
//! workers never wait on each other in a cycle), apply each event to its
//! session row, check each touched user against the limit, write the revoke
//! events to the outbox, prune the log, commit. The caller acks the batch only
//! after the commit, so a crash anywhere before it replays the batch, and
//! replaying changes nothing because every step is idempotent.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::configuration::{DatabaseSettings, redact_url};
use crate::domain::decision::Candidate;
use crate::domain::event::{AppName, SessionEvent, SessionId, UserId};
use crate::domain::limits::{
    EffectiveLimits, EvictionPolicy, HookChain, HookContext, SessionSummary, UserOverride,
};
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::EndReason;

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
    // Plan every execution with its actual arrays. A prepared statement
    // otherwise switches to a generic plan after five runs, chosen for the
    // table as it was then (tiny, on a new deployment), and keeps it for the
    // connection's life: seq scans and hash joins on a log that has since
    // grown. Planning these statements costs a fraction of a millisecond.
    let options = options.options([("plan_cache_mode", "force_custom_plan")]);
    // TCP connections have Nagle's algorithm off: the vendored sqlx-core
    // sets TCP_NODELAY on each socket it opens (vendor/sqlx-core/README.md).
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

/// Why the database cannot serve a command that does not change the schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database named in the URL does not exist (its name).
    #[error("database \"{0}\" does not exist: run `session-guard migrate` first")]
    NoDatabase(String),
    /// No migration was ever applied.
    #[error("the database has no session-guard schema: run `session-guard migrate` first")]
    NoSchema,
    /// A migration of this binary is not applied yet.
    #[error(
        "the database schema is older than this binary (migration {version} \"{description}\" \
         is not applied): run `session-guard migrate`"
    )]
    Older {
        /// The first migration of this binary that the database lacks.
        version: i64,
        /// Its description.
        description: String,
    },
    /// The database has a migration this binary does not know.
    #[error(
        "the database schema is newer than this binary (migration {version} \"{description}\" \
         is unknown to it): use the session-guard version that migrated it, or a newer one"
    )]
    Newer {
        /// A migration recorded in the database that this binary lacks.
        version: i64,
        /// Its description, as recorded.
        description: String,
    },
    /// A migration (its version) is recorded as failed.
    #[error(
        "migration {0} failed part-way and is marked failed in the database: repair the schema, \
         then run `session-guard migrate`"
    )]
    Failed(i64),
    /// A migration (its version) was applied with other content.
    #[error(
        "migration {0} in the database differs from this binary's (checksum mismatch): the \
         binary and the schema do not belong together"
    )]
    Changed(i64),
    /// The database could not be reached or read.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Connects to an existing database whose schema is exactly the one this
/// binary's migrations make, changing nothing: for the commands other than
/// `migrate` and `run`.
pub async fn connect_checked(settings: &DatabaseSettings) -> Result<PgPool, SchemaError> {
    let pool = match connect(settings).await {
        Ok(pool) => pool,
        Err(e) => {
            let missing = e
                .downcast_ref::<sqlx::Error>()
                .and_then(sqlx::Error::as_database_error)
                .and_then(|d| d.code())
                .is_some_and(|code| code == "3D000");
            if missing {
                let name = settings
                    .url
                    .parse::<PgConnectOptions>()
                    .ok()
                    .and_then(|o| o.get_database().map(str::to_owned))
                    .unwrap_or_default();
                return Err(SchemaError::NoDatabase(name));
            }
            return Err(e.into());
        }
    };
    match check_schema(&pool).await {
        Ok(()) => Ok(pool),
        Err(e) => {
            pool.close().await;
            Err(e)
        }
    }
}

/// Compares the migrations recorded in the database with [`MIGRATOR`]'s.
async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let table = MIGRATOR.table_name.as_ref();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .context("cannot read the schema version")?;
    if !exists {
        return Err(SchemaError::NoSchema);
    }
    let applied: Vec<(i64, String, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, description, success, checksum FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .context("cannot read the schema version")?;
    let known: HashMap<i64, &sqlx::migrate::Migration> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m))
        .collect();
    if applied.is_empty() {
        return Err(SchemaError::NoSchema);
    }
    for (version, description, success, checksum) in &applied {
        let Some(mine) = known.get(version) else {
            return Err(SchemaError::Newer {
                version: *version,
                description: description.clone(),
            });
        };
        if !success {
            return Err(SchemaError::Failed(*version));
        }
        if mine.checksum.as_ref() != checksum.as_slice() {
            return Err(SchemaError::Changed(*version));
        }
    }
    // In version order: the first one the database lacks.
    let missing = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .find(|m| !applied.iter().any(|(v, ..)| *v == m.version));
    match missing {
        Some(m) => Err(SchemaError::Older {
            version: m.version,
            description: m.description.to_string(),
        }),
        None => Ok(()),
    }
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
    /// A `last_seen_at` that moved by less than this is not written back:
    /// requests in a burst cost one write, not one each.
    pub last_seen_resolution: Duration,
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
            last_seen_resolution: settings.worker.last_seen_resolution(),
        })
    }
}

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Sessions revoked (limits, idle timeout, logout_others, logout_all),
    /// by reason (`EndReason::as_str`); [`BatchOutcome::revoked`] adds them up.
    pub revoked_by: std::collections::BTreeMap<&'static str, usize>,
    /// Sessions shadow mode would have revoked.
    pub shadow_revoked: usize,
    /// Revoke messages repeated for sessions an app kept using.
    pub repeated: usize,
    /// Rows moved out of the log by retention.
    pub pruned: u64,
    /// Users locked (those whose sessions the batch could add, end or revoke).
    pub locked_users: usize,
    /// Rows of users not locked, updated by the monotonic touch statement.
    pub touched: usize,
    /// Rows whose only change, a `last_seen_at` moved by less than the
    /// resolution, was not written.
    pub coalesced: usize,
    /// Passes run again with more users locked (see `batch::Pass`).
    pub relocks: usize,
}

impl BatchOutcome {
    /// Whether the outbox received messages the relay should publish now.
    pub fn wrote_outbox(&self) -> bool {
        self.revoked() + self.repeated > 0
    }

    /// Sessions revoked, whatever the reason.
    pub fn revoked(&self) -> usize {
        self.revoked_by.values().sum()
    }
}

/// Takes the transaction-scoped locks of `users`: their rows in
/// `session_users` (created if missing), locked in `user_id` order so that
/// two batches never wait on each other in a cycle. One statement whatever
/// the number of users.
pub(crate) async fn lock_users(
    conn: &mut PgConnection,
    users: &BTreeSet<String>,
) -> sqlx::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    // One statement creates the missing rows and locks the others, in user
    // order: ON CONFLICT DO UPDATE locks every conflicting row even when its
    // WHERE lets none be updated (so nothing is written for them).
    sqlx::query(
        "INSERT INTO session_users AS s (user_id)
         SELECT u FROM unnest($1::text[]) AS u ORDER BY u
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id WHERE false",
    )
    .bind(&users)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks `users` if none of them is locked by another transaction, without
/// waiting (so in any order without risk of deadlock). Returns whether all
/// of them are now locked; a user without a `session_users` row counts as
/// not locked (only [`lock_users`] creates rows).
pub(crate) async fn try_lock_users(
    conn: &mut PgConnection,
    users: &BTreeSet<String>,
) -> sqlx::Result<bool> {
    let wanted: Vec<&str> = users.iter().map(String::as_str).collect();
    let got: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM session_users WHERE user_id = ANY($1)
         ORDER BY user_id FOR UPDATE SKIP LOCKED",
    )
    .bind(&wanted)
    .fetch_all(conn)
    .await?;
    Ok(got.len() == wanted.len())
}

/// Applies `events` in one transaction and commits. On error nothing is
/// written: the caller retries or nacks.
///
/// A pass locks only the users whose sessions the batch may add, end or
/// revoke. In the rare case where the check of another user finds
/// something to revoke, the pass is rolled back and run again with that
/// user locked too, so locks are always taken in one sorted go.
pub async fn process_batch(
    pool: &PgPool,
    rules: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
) -> Result<BatchOutcome, BatchError> {
    process_batch_in_turn(
        pool,
        rules,
        events,
        now,
        &mut LockTurn::default(),
        &UserHints::default(),
    )
    .await
}

/// What a worker knows of the batches it still has in flight ahead of this
/// one (see `worker::hints_for`).
#[derive(Debug, Default, Clone)]
pub struct UserHints {
    /// Users of sessions named by the batches ahead: `(app, session_id)` →
    /// `user_id`. A logout without `user_id` for a session whose login is
    /// one batch ahead learns its user here, so it waits for that user's
    /// lock instead of racing the login.
    pub owners: HashMap<(String, String), String>,
    /// Users whose sessions the batches ahead may add, end or revoke (the
    /// users of their logins and logouts). A request of theirs is applied
    /// under their lock, after those batches commit: as a lock-free touch it
    /// would read their sessions before that commit, and often find its row
    /// locked by it at the end, which sends the whole batch round again.
    pub busy: std::collections::HashSet<String>,
}

/// Orders the lock phases of one worker's pipelined batches: a batch takes
/// its user locks only after the batch before it took its own. Then a user's
/// events that one worker has in flight are applied in delivery order, as
/// without the pipeline, while the rest of each batch overlaps.
#[derive(Debug, Default)]
pub struct LockTurn {
    /// Fires when the previous batch holds its locks (or gave up).
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired once this batch holds its locks (dropped = gave up).
    mine: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LockTurn {
    /// The turn of a batch that follows the one whose turn gave `previous`,
    /// and the receiver the next batch waits on.
    pub fn after(
        previous: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (LockTurn, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            LockTurn {
                previous,
                mine: Some(tx),
            },
            rx,
        )
    }

    /// Waits until the previous batch holds its locks (once only).
    pub(crate) async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
    }

    /// Lets the next batch take its locks.
    pub(crate) fn pass(&mut self) {
        if let Some(mine) = self.mine.take() {
            let _ = mine.send(());
        }
    }
}

/// [`process_batch`] for one of a worker's pipelined batches.
pub async fn process_batch_in_turn(
    pool: &PgPool,
    rules: &Enforcement,
    events: &[SessionEvent],
    now: DateTime<Utc>,
    turn: &mut LockTurn,
    hints: &UserHints,
) -> Result<BatchOutcome, BatchError> {
    let mut also_lock = BTreeSet::new();
    let result = async {
        for relocks in 0.. {
            let mut tx = pool.begin().await.map_err(BatchError::Connect)?;
            let pass = crate::batch::apply(&mut tx, rules, events, now, &also_lock, turn, hints);
            match pass.await? {
                crate::batch::Pass::Done(mut outcome) => {
                    tx.commit().await?;
                    outcome.relocks = relocks;
                    return Ok(outcome);
                }
                crate::batch::Pass::NeedsLocks(users) => {
                    tx.rollback().await?;
                    also_lock.extend(users);
                }
            }
        }
        unreachable!("the loop returns")
    }
    .await;
    // Whatever happened, the next batch need not wait any longer.
    turn.pass();
    result
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

/// An active session row, for operator revocations.
#[derive(sqlx::FromRow)]
struct ActiveRow {
    app: String,
    session_id: String,
    login_at: DateTime<Utc>,
    login_seen: bool,
    last_seen_at: DateTime<Utc>,
}

impl From<ActiveRow> for Candidate {
    fn from(r: ActiveRow) -> Candidate {
        Candidate {
            app: AppName::from_trusted(r.app),
            session_id: SessionId::from_trusted(r.session_id),
            login_at: r.login_at,
            login_seen: r.login_seen,
            last_seen_at: r.last_seen_at,
        }
    }
}

/// The limits operators stored for each of `users`.
pub(crate) async fn load_overrides_of(
    conn: &mut PgConnection,
    users: &[&str],
) -> sqlx::Result<std::collections::HashMap<String, Vec<UserOverride>>> {
    let rows: Vec<(String, OverrideRow)> = if users.is_empty() {
        Vec::new()
    } else {
        let rows: Vec<UserOverrideRow> = sqlx::query_as(
            "SELECT user_id, app, max_sessions, max_sessions_global, policy, idle_timeout,
                    log_limit
             FROM user_overrides WHERE user_id = ANY($1) ORDER BY user_id, app",
        )
        .bind(users)
        .fetch_all(conn)
        .await?;
        rows.into_iter()
            .map(|r| {
                (
                    r.user_id,
                    OverrideRow {
                        app: r.app,
                        max_sessions: r.max_sessions,
                        max_sessions_global: r.max_sessions_global,
                        policy: r.policy,
                        idle_timeout: r.idle_timeout,
                        log_limit: r.log_limit,
                    },
                )
            })
            .collect()
    };
    let mut out: std::collections::HashMap<String, Vec<UserOverride>> = Default::default();
    for (user, row) in rows {
        out.entry(user).or_default().push(row.into());
    }
    Ok(out)
}

/// A row of `user_overrides` with its user.
#[derive(sqlx::FromRow)]
struct UserOverrideRow {
    user_id: String,
    app: String,
    max_sessions: Option<i32>,
    max_sessions_global: Option<i32>,
    policy: Option<String>,
    idle_timeout: Option<i64>,
    log_limit: Option<i32>,
}

impl From<OverrideRow> for UserOverride {
    fn from(r: OverrideRow) -> UserOverride {
        UserOverride {
            app: (!r.app.is_empty()).then_some(r.app),
            max_sessions: r.max_sessions.map(|n| n.max(0) as u32),
            max_sessions_global: r.max_sessions_global.map(|n| n.max(0) as u32),
            policy: r.policy.and_then(|p| p.parse().ok()),
            idle_timeout: r.idle_timeout.map(|n| n.max(0) as u64),
            log_limit: r.log_limit.map(|n| n.max(0) as u32),
        }
    }
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
    Ok(rows.into_iter().map(UserOverride::from).collect())
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
    Ok(rows.into_iter().map(Candidate::from).collect())
}

/// What hooks see of the sessions.
pub(crate) fn summaries(sessions: &[Candidate]) -> Vec<SessionSummary> {
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
                EndReason::parse(&reason)
                    .unwrap_or(EndReason::SessionLimit)
                    .into(),
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
        .map(|r| (Candidate::from(r), revocation.clone()))
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
        AdminTarget::User { app, user_id } => {
            // A user without a row has never had a session: nothing to revoke,
            // and `lock_users` would create the row. An existing row is locked
            // here as `lock_users` would.
            let known: Option<String> = sqlx::query_scalar(
                "SELECT user_id FROM session_users WHERE user_id = $1 FOR UPDATE",
            )
            .bind(user_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if known.is_none() {
                return Ok(Vec::new());
            }
            (app, user_id.clone(), None)
        }
    };
    lock_users(&mut tx, &BTreeSet::from([user.as_str().to_owned()])).await?;
    // The limit in force, recorded with the revocation.
    let attributes = claimed_attributes(&mut tx, &user, app).await?;
    let limits = limits_for(&mut tx, rules, &user, app, &attributes).await?;
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
                .map(|r| (Candidate::from(r), revocation.clone()))
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
    let moved = sqlx::query(
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

/// The outbox's backlog: how many rows wait, and the age in seconds of the
/// oldest (0 when empty), on the database's clock.
pub async fn outbox_stats(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "SELECT count(*),
                coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
         FROM outbox",
    )
    .fetch_one(pool)
    .await
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
    .bind(o.max_sessions.map(int4).transpose()?)
    .bind(o.max_sessions_global.map(int4).transpose()?)
    .bind(o.policy.map(EvictionPolicy::as_str))
    .bind(o.idle_timeout.map(int8).transpose()?)
    .bind(o.log_limit.map(int4).transpose()?)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// A value for an `integer` column; out of range is refused, never clamped.
fn int4(n: u32) -> sqlx::Result<i32> {
    i32::try_from(n).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// A value for a `bigint` column; out of range is refused, never clamped.
fn int8(n: u64) -> sqlx::Result<i64> {
    i64::try_from(n).map_err(|e| sqlx::Error::Encode(Box::new(e)))
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

/// For each app a user has sessions or claims in (or just `app`), what the
/// app claims for the user (`None`: it never sent attributes).
pub async fn latest_attributes(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
) -> sqlx::Result<Vec<(String, Option<serde_json::Value>)>> {
    sqlx::query_as(
        "SELECT a.app, c.attributes FROM (
             SELECT app FROM sessions WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
             UNION
             SELECT app FROM user_attributes
             WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
         ) a
         LEFT JOIN user_attributes c ON c.user_id = $1 AND c.app = a.app
         ORDER BY a.app",
    )
    .bind(user)
    .bind(app)
    .fetch_all(pool)
    .await
}

/// What `app` claims for `user` (empty if it never sent attributes).
async fn claimed_attributes(
    conn: &mut PgConnection,
    user: &UserId,
    app: &AppName,
) -> sqlx::Result<serde_json::Map<String, serde_json::Value>> {
    let claimed: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT attributes FROM user_attributes WHERE user_id = $1 AND app = $2",
    )
    .bind(user.as_str())
    .bind(app.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(match claimed {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    })
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

    #[test]
    fn only_data_errors_are_permanent() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(BatchError::Connect(sqlx::Error::RowNotFound).is_transient());
    }
}
