//! `sessions` and `session_tombstones`: the reads and writes of the session
//! log that a batch, an operator revocation and `session-guard sessions` use.

use std::net::IpAddr;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::outbox;
use crate::domain::decision::Candidate;
use crate::domain::event::{AppName, SessionId, UserId};
use crate::domain::session::{EndReason, SessionRecord};

/// A stored session, as [`load_for_batch`] reads it: a row of the log, of
/// the tombstones (fewer columns), or a claim (see there).
#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    /// The app the session belongs to.
    pub app: String,
    /// The app's session id (empty on a claim row).
    pub session_id: String,
    /// The owner, unknown while only a logout without one was heard of.
    pub user_id: Option<String>,
    /// Event time of the login (or the earliest event seen).
    pub login_at: DateTime<Utc>,
    /// Whether `login_at` comes from a login event.
    pub login_seen: bool,
    /// Event time of the latest event (a claim row: the claim's event time).
    pub last_seen_at: DateTime<Utc>,
    /// Client address of the latest event that had one.
    pub ip: Option<IpAddr>,
    /// User agent of the latest event that had one.
    pub user_agent: Option<String>,
    /// When the app said the session expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it ended, if it did.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended, as stored.
    pub end_reason: Option<String>,
    /// For revoked sessions: the limit in force.
    pub max_sessions: Option<i32>,
    /// When the latest revoke message for it was written.
    pub last_revoke_at: Option<DateTime<Utc>>,
    /// Session attributes (a claim row: the claimed attributes).
    pub attributes: Option<serde_json::Value>,
    /// The rule, hook or operator that ended it.
    pub ended_by: Option<String>,
    /// An operator's explanation of the end.
    pub end_note: Option<String>,
    /// Whether shadow mode already flagged it.
    pub shadow_flagged: bool,
}

impl SessionRow {
    /// The domain record of a session row (`ended_by`, `end_note` and the
    /// shadow flag are not part of it: take them first).
    pub(crate) fn into_record(self) -> SessionRecord {
        SessionRecord {
            app: AppName::from_trusted(self.app),
            session_id: SessionId::from_trusted(self.session_id),
            user_id: self.user_id.map(UserId::from_trusted),
            login_at: self.login_at,
            login_seen: self.login_seen,
            last_seen_at: self.last_seen_at,
            ip: self.ip,
            user_agent: self.user_agent,
            expires_at: self.expires_at,
            ended_at: self.ended_at,
            end_reason: self.end_reason.as_deref().and_then(EndReason::parse),
            max_sessions: self.max_sessions.map(|n| n.max(0) as u32),
            last_revoke_at: self.last_revoke_at,
            attributes: self.attributes,
        }
    }
}

/// A [`SessionRow`], whether it came from `session_tombstones`, and whether
/// it is a claim or a user's history (see [`load_for_batch`]).
#[derive(sqlx::FromRow)]
pub(crate) struct LoadedRow {
    /// The row's columns.
    #[sqlx(flatten)]
    pub row: SessionRow,
    /// Read from `session_tombstones`: the session was pruned from the log.
    pub tombstone: bool,
    /// A claim of `user_attributes`, not a session.
    pub claim: bool,
    /// Where the user's sessions came from lately, for notices, not a
    /// session.
    pub history: bool,
}

/// How many of a user's sessions (the latest logins within the lookback)
/// [`load_for_batch`] reads for notices: what bounds the cost of a user
/// with a long log (a script, a shared account) to an index range of this
/// many rows. A device or network seen only in sessions older than the
/// user's latest this many counts as not seen.
pub(crate) const HISTORY_SESSIONS: usize = 50;

/// What the sign-ins a batch may add bring, whose users' history
/// [`load_for_batch`] reads for notices unless all of a user's is proven
/// known (see there): one entry per distinct (user, app, user agent) and
/// per distinct (user, app, network) of the events that name a session the
/// batch may add, each with the other `None`; the four slices are parallel.
#[derive(Clone, Copy)]
pub(crate) struct HistoryRead<'a> {
    /// Each sign-in's user.
    pub users: &'a [&'a str],
    /// Its app (for the per-app scope).
    pub apps: &'a [&'a str],
    /// Its user agent; `None`: its device cannot be new (none given, or
    /// `new_device` notices are not published).
    pub user_agents: &'a [Option<&'a str>],
    /// The first address of its network (`domain::notice::Network`, an
    /// IPv4-mapped address's as IPv4); `None`: its network cannot be new
    /// (no address given, or `new_network` notices are not published).
    pub ips: &'a [Option<IpAddr>],
    /// The history read leaves out sessions last active before this (the
    /// lookback before the batch's earliest event).
    pub since: DateTime<Utc>,
    /// The proof leaves out sessions last active before this (the lookback
    /// before the batch's latest event): a session it finds counts for
    /// every sign-in of the batch.
    pub known_since: DateTime<Utc>,
    /// Only sessions of the sign-in's app prove it (notices' per-app scope).
    pub per_app: bool,
}

/// The columns of `sessions` a batch reads, in [`SessionRow`] order.
const LOG_COLUMNS: &str = "app, session_id, user_id, login_at, login_seen, last_seen_at, ip,
    user_agent, expires_at, ended_at, end_reason, max_sessions, last_revoke_at, attributes,
    ended_by, end_note, shadow_flagged_at IS NOT NULL AS shadow_flagged";

/// The rows the history read reads of the user `{user}`: the latest
/// [`HISTORY_SESSIONS`] logins active within the window. One text for the
/// read and for the probes that spare it, so that whatever a probe finds
/// is a row the read would have read (see [`load_for_batch`]).
fn latest_sessions(user: &str) -> String {
    format!(
        "SELECT app, user_agent, ip, last_seen_at FROM sessions
         WHERE user_id = {user} AND last_seen_at >= $6
         ORDER BY login_at DESC LIMIT {HISTORY_SESSIONS}"
    )
}

/// The statement of [`load_for_batch`], built once.
static LOAD_FOR_BATCH: LazyLock<String> = LazyLock::new(|| {
    let probed = latest_sessions("c.user_id");
    let read = latest_sessions("u.user_id");
    format!(
        "WITH live AS MATERIALIZED (
             SELECT s.* FROM unnest($3::text[]) AS u(user_id)
             CROSS JOIN LATERAL (
                 SELECT {LOG_COLUMNS}, false AS tombstone, false AS claim, false AS history
                 FROM sessions
                 WHERE user_id = u.user_id AND end_reason IS NULL OFFSET 0
             ) s
         ), named AS MATERIALIZED (
             SELECT k.app, k.session_id FROM unnest($1::text[], $2::text[]) AS k(app, session_id)
             WHERE NOT EXISTS (
                 SELECT FROM live l WHERE l.app = k.app AND l.session_id = k.session_id
             )
         )
         SELECT * FROM live
         UNION ALL
         SELECT k.app, k.session_id, coalesce(s.user_id, t.user_id),
                coalesce(s.login_at, t.login_at), coalesce(s.login_seen, true),
                coalesce(s.last_seen_at, t.last_seen_at), s.ip, s.user_agent,
                coalesce(s.expires_at, t.expires_at), coalesce(s.ended_at, t.ended_at),
                coalesce(s.end_reason, t.end_reason), coalesce(s.max_sessions, t.max_sessions),
                coalesce(s.last_revoke_at, t.last_revoke_at), s.attributes, s.ended_by,
                s.end_note, coalesce(s.shadow_flagged, false), s.app IS NULL, false, false
         FROM named k
         LEFT JOIN LATERAL (
             SELECT {LOG_COLUMNS} FROM sessions
             WHERE app = k.app AND session_id = k.session_id OFFSET 0
         ) s ON true
         LEFT JOIN LATERAL (
             SELECT user_id, login_at, last_seen_at, expires_at, ended_at, end_reason,
                    max_sessions, last_revoke_at
             FROM session_tombstones
             WHERE s.app IS NULL AND app = k.app AND session_id = k.session_id OFFSET 0
         ) t ON true
         WHERE s.app IS NOT NULL OR t.login_at IS NOT NULL
         UNION ALL
         SELECT c.app, '', c.user_id, c.occurred_at, true, c.occurred_at, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, c.attributes, NULL, NULL, false, false, true, false
         FROM unnest($3::text[]) AS u(user_id)
         CROSS JOIN LATERAL (
             SELECT app, user_id, attributes, occurred_at FROM user_attributes
             WHERE $4 AND user_id = u.user_id OFFSET 0
         ) c
         UNION ALL
         SELECT coalesce(h.app, ''), '', h.user_id, coalesce(max(h.last_seen_at), $6), true,
                coalesce(max(h.last_seen_at), $6), h.network, h.user_agent, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, false, false, false, true
         FROM (
             SELECT u.user_id, r.app, r.user_agent, r.last_seen_at,
                    host(network(set_masklen(r.ip, CASE
                        WHEN family(r.ip) = 4 THEN 24
                        WHEN r.ip << '::ffff:0.0.0.0/96'::inet THEN 128
                        ELSE 48 END)))::inet AS network
             FROM (
                 SELECT DISTINCT c.user_id
                 FROM unnest($5::text[], $7::text[], $8::text[], $9::inet[])
                      AS c(user_id, app, user_agent, ip)
                 WHERE NOT (
                     (c.user_agent IS NULL OR EXISTS (
                         SELECT FROM ({probed}) k
                         WHERE k.user_agent = c.user_agent AND k.last_seen_at >= $10
                           AND (NOT $11 OR k.app = c.app)
                     ))
                     AND (c.ip IS NULL OR EXISTS (
                         SELECT FROM ({probed}) k
                         WHERE k.last_seen_at >= $10 AND k.ip <<= set_masklen(c.ip, CASE
                                   WHEN family(c.ip) = 4 THEN 24 ELSE 48 END)
                           AND NOT k.ip << '::ffff:0.0.0.0/96'::inet
                           AND (NOT $11 OR k.app = c.app)
                     ))
                 )
             ) u
             LEFT JOIN LATERAL ({read}) r ON true
         ) h
         GROUP BY h.user_id, h.app, h.user_agent, h.network"
    )
});

/// Reads, in one statement, every live session of `users` and the sessions
/// named by `(apps, ids)`: rows of the log and, for keys pruned from it,
/// their tombstones. Each part is an index probe per user or key, and a key
/// is probed only if it is not among the users' live sessions (most events
/// are requests for a live session of their own user), and among the
/// tombstones only if it is not in the log: about a third of the probes of
/// probing every key in both tables.
///
/// With `claims`, the same statement reads what each app claimed for
/// `users` (an index probe per user), as rows of their own: `claim` set,
/// `app`, `user_id` and `attributes` from `user_attributes`, `last_seen_at`
/// the claim's event time, and an empty (never valid) `session_id`. One
/// statement rather than two: a round trip costs more than the probes.
///
/// With `history`, the same statement reads, as rows of their own
/// (`history` set), where the sessions in the log of the users of
/// `history`'s sign-ins came from lately, for notices:
/// - first it tries to prove that none of a user's sign-ins can be news:
///   that among the rows the history read would read (below), one active
///   since `history.known_since` (of the sign-in's app only, with
///   `per_app`) has each sign-in's very user agent (so the same device),
///   and one an address in each's network (the IPv4 /24 or IPv6 /48; an
///   IPv4-mapped address stored proves nothing). So whatever proves a
///   sign-in known is a session the decision would count. Each is an index
///   range that stops at the first match: a user who signs in again from a
///   device and a network of theirs, most sign-ins, costs a few rows, not
///   the history;
/// - of every user it cannot prove that for, it reads the history: the
///   latest [`HISTORY_SESSIONS`] logins active since `history.since`, as one
///   row per distinct app, user agent and network (the address's IPv4 /24
///   or IPv6 /48, as its first address; an IPv4-mapped address is kept
///   whole, for the domain to read as IPv4), its latest `last_seen_at` in
///   `login_at` and `last_seen_at`, an empty `session_id`. Ended sessions
///   count too: a device the user signed out of last week is not new. A
///   user with no such session gets one row with an empty `app` (never an
///   app's name): their history was read, and is empty.
///
/// A user's history is read if and only if a history row names them.
///
/// `OFFSET 0` keeps the planner from flattening a LATERAL subquery into a
/// hash join over a seq scan of the log, which it picks on stale
/// statistics and which grows with the log instead of with the batch.
pub(crate) async fn load_for_batch(
    conn: &mut PgConnection,
    apps: &[&str],
    ids: &[&str],
    users: &[&str],
    claims: bool,
    history: Option<HistoryRead<'_>>,
) -> sqlx::Result<Vec<LoadedRow>> {
    let (h_users, h_apps, h_user_agents, h_ips) = match &history {
        Some(h) => (h.users, h.apps, h.user_agents, h.ips),
        None => (&[][..], &[][..], &[][..], &[][..]),
    };
    let rows: Vec<LoadedRow> = sqlx::query_as(LOAD_FOR_BATCH.as_str())
        .bind(apps)
        .bind(ids)
        .bind(users)
        .bind(claims)
        .bind(h_users)
        .bind(history.map(|h| h.since))
        .bind(h_apps)
        .bind(h_user_agents)
        .bind(h_ips)
        .bind(history.map(|h| h.known_since))
        .bind(history.is_some_and(|h| h.per_app))
        .fetch_all(conn)
        .await?;
    Ok(rows)
}

/// `INSERT INTO sessions ... SELECT * FROM unnest(...)` of the 16 column
/// arrays [`SessionColumns::bind`] binds, numbered from `$first`.
fn insert_rows(first: usize) -> String {
    const TYPES: [&str; 16] = [
        "text",
        "text",
        "text",
        "timestamptz",
        "bool",
        "timestamptz",
        "inet",
        "text",
        "timestamptz",
        "timestamptz",
        "text",
        "int4",
        "timestamptz",
        "jsonb",
        "text",
        "text",
    ];
    let arrays: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect();
    format!(
        "INSERT INTO sessions AS s (app, session_id, user_id, login_at, login_seen,
             last_seen_at, ip, user_agent, expires_at, ended_at, end_reason, max_sessions,
             last_revoke_at, attributes, ended_by, end_note)
         SELECT * FROM unnest({})",
        arrays.join(", ")
    )
}

/// How the upsert merges a batch's row into the stored one.
const UPSERT_SET: &str = " ON CONFLICT (app, session_id) DO UPDATE SET
     user_id = coalesce(s.user_id, EXCLUDED.user_id),
     -- The activity columns may have moved since this batch read the row
     -- (a touch by a batch that did not lock the user): they only move
     -- forward, as in the touch update.
     login_at = CASE
         WHEN EXCLUDED.login_seen = s.login_seen THEN least(s.login_at, EXCLUDED.login_at)
         WHEN EXCLUDED.login_seen THEN EXCLUDED.login_at
         ELSE s.login_at END,
     login_seen = s.login_seen OR EXCLUDED.login_seen,
     last_seen_at = greatest(s.last_seen_at, EXCLUDED.last_seen_at),
     ip = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at THEN EXCLUDED.ip ELSE s.ip END,
     user_agent = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
          THEN EXCLUDED.user_agent ELSE s.user_agent END,
     expires_at = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
          THEN EXCLUDED.expires_at ELSE s.expires_at END,
     -- An end written by someone else meanwhile (a logout that did not
     -- know its user, so took no user lock) is never undone.
     ended_at = coalesce(s.ended_at, EXCLUDED.ended_at),
     end_reason = coalesce(s.end_reason, EXCLUDED.end_reason),
     max_sessions = coalesce(s.max_sessions, EXCLUDED.max_sessions),
     last_revoke_at = EXCLUDED.last_revoke_at,
     attributes = CASE WHEN EXCLUDED.last_seen_at >= s.last_seen_at
          THEN EXCLUDED.attributes ELSE s.attributes END,
     ended_by = coalesce(s.ended_by, EXCLUDED.ended_by),
     end_note = coalesce(s.end_note, EXCLUDED.end_note)";

/// The statement of [`store`], built once. PostgreSQL does not document
/// the order in which it runs the parts of a `WITH`: today the query reads
/// `fresh` to its end first, and the parts it does not read run after.
/// Nothing here depends on that order (the parts write different keys, and
/// a deadlock with another batch is retried; see docs/SCALING.md).
static STORE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH fresh AS ({} ON CONFLICT (app, session_id) DO NOTHING RETURNING 1),
              merged AS ({}{UPSERT_SET}),
              revokes AS ({})
         SELECT count(*) FROM fresh",
        insert_rows(1),
        insert_rows(17),
        outbox::insert_rows(33),
    )
});

/// Writes a batch's sessions and outbox rows (revoke messages, notices) in one statement (one
/// round trip, while the batch holds its users' locks), and returns how
/// many of the `fresh` rows went in:
/// - `fresh`: new rows of users the batch did not read again after locking
///   them, each inserted only if its key is still absent. A key stored
///   meanwhile (by a logout that did not name its user, or under another
///   user) is left alone, and the caller runs the batch again so that its
///   read finds that row;
/// - `upserts`: changed rows of locked users, and new rows, merged into
///   the stored ones (`UPSERT_SET`);
/// - `revokes`: the outbox rows (revoke messages and notices).
///
/// Each part is in key order (the outbox has none), and the parts touch
/// different keys, so no row is written twice.
pub(crate) async fn store(
    conn: &mut PgConnection,
    fresh: &SessionColumns,
    upserts: &SessionColumns,
    revokes: &outbox::Columns,
) -> sqlx::Result<usize> {
    if fresh.app.is_empty() && upserts.app.is_empty() && revokes.is_empty() {
        return Ok(0);
    }
    let query = sqlx::query_scalar(STORE.as_str());
    let query = revokes.bind(upserts.bind(fresh.bind(query)));
    let inserted: i64 = query.fetch_one(&mut *conn).await?;
    Ok(inserted as usize)
}

/// Writes back what a batch changed in tombstones: the owner (if unknown),
/// the activity and the latest revoke.
pub(crate) async fn update_tombstones(
    conn: &mut PgConnection,
    c: &SessionColumns,
) -> sqlx::Result<()> {
    if c.app.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE session_tombstones t
         SET user_id = coalesce(t.user_id, v.user_id), last_seen_at = v.last_seen_at,
             last_revoke_at = v.last_revoke_at, login_at = v.login_at
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                     $5::timestamptz[], $6::timestamptz[])
              AS v(app, session_id, user_id, last_seen_at, last_revoke_at, login_at)
         WHERE t.app = v.app AND t.session_id = v.session_id",
    )
    .bind(&c.app)
    .bind(&c.session_id)
    .bind(&c.user_id)
    .bind(&c.last_seen_at)
    .bind(&c.last_revoke_at)
    .bind(&c.login_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the sessions `(apps, ids)` as flagged by shadow mode at `now`.
pub(crate) async fn flag_shadow(
    conn: &mut PgConnection,
    apps: &[&str],
    ids: &[&str],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if apps.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE sessions s SET shadow_flagged_at = $3
         FROM unnest($1::text[], $2::text[]) AS v(app, session_id)
         WHERE s.app = v.app AND s.session_id = v.session_id",
    )
    .bind(apps)
    .bind(ids)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Column arrays for the UNNEST statements [`store`] and
/// [`update_tombstones`], one entry per session.
#[derive(Default)]
pub(crate) struct SessionColumns {
    pub app: Vec<String>,
    pub session_id: Vec<String>,
    pub user_id: Vec<Option<String>>,
    pub login_at: Vec<DateTime<Utc>>,
    pub login_seen: Vec<bool>,
    pub last_seen_at: Vec<DateTime<Utc>>,
    pub ip: Vec<Option<IpAddr>>,
    pub user_agent: Vec<Option<String>>,
    pub expires_at: Vec<Option<DateTime<Utc>>>,
    pub ended_at: Vec<Option<DateTime<Utc>>>,
    pub end_reason: Vec<Option<String>>,
    pub max_sessions: Vec<Option<i32>>,
    pub last_revoke_at: Vec<Option<DateTime<Utc>>>,
    pub attributes: Vec<Option<serde_json::Value>>,
    pub ended_by: Vec<Option<String>>,
    pub end_note: Vec<Option<String>>,
}

impl SessionColumns {
    /// Binds the columns, as the 16 arrays of [`insert_rows`], after what
    /// `query` binds already.
    fn bind<'q, O>(&'q self, query: super::BoundScalar<'q, O>) -> super::BoundScalar<'q, O> {
        query
            .bind(&self.app)
            .bind(&self.session_id)
            .bind(&self.user_id)
            .bind(&self.login_at)
            .bind(&self.login_seen)
            .bind(&self.last_seen_at)
            .bind(&self.ip)
            .bind(&self.user_agent)
            .bind(&self.expires_at)
            .bind(&self.ended_at)
            .bind(&self.end_reason)
            .bind(&self.max_sessions)
            .bind(&self.last_revoke_at)
            .bind(&self.attributes)
            .bind(&self.ended_by)
            .bind(&self.end_note)
    }

    /// Adds one session: its record and how it ended (by whom, with what note).
    pub(crate) fn push(
        &mut self,
        r: &SessionRecord,
        ended_by: Option<&str>,
        end_note: Option<&str>,
    ) {
        self.app.push(r.app.to_string());
        self.session_id.push(r.session_id.to_string());
        self.user_id
            .push(r.user_id.as_ref().map(ToString::to_string));
        self.login_at.push(r.login_at);
        self.login_seen.push(r.login_seen);
        self.last_seen_at.push(r.last_seen_at);
        self.ip.push(r.ip);
        self.user_agent.push(r.user_agent.clone());
        self.expires_at.push(r.expires_at);
        self.ended_at.push(r.ended_at);
        self.end_reason
            .push(r.end_reason.map(|e| e.as_str().to_owned()));
        self.max_sessions
            .push(r.max_sessions.map(|n| n.min(i32::MAX as u32) as i32));
        self.last_revoke_at.push(r.last_revoke_at);
        self.attributes.push(r.attributes.clone());
        self.ended_by.push(ended_by.map(str::to_owned));
        self.end_note.push(end_note.map(str::to_owned));
    }
}

/// One session of the log, as `session-guard sessions` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoggedSession {
    /// The session's app.
    pub app: String,
    /// The app's session id.
    pub session_id: String,
    /// The owner (unknown for a session heard of only by a logout without one).
    pub user_id: Option<String>,
    /// Client address of the latest event that had one.
    pub ip: Option<IpAddr>,
    /// User agent of the latest event that had one.
    pub user_agent: Option<String>,
    /// Event time of the login (or the earliest event seen).
    pub login_at: DateTime<Utc>,
    /// Event time of the latest event.
    pub last_seen_at: DateTime<Utc>,
    /// When the app said the session expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it ended, if it did.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended, as stored.
    pub end_reason: Option<String>,
    /// The rule, hook or operator that ended it.
    pub ended_by: Option<String>,
    /// An operator's explanation of the end.
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

/// Who owns the session `(app, session_id)` and why it ended, if it exists
/// (`Some((None, _))`: only a logout without user was heard of).
pub(crate) async fn owner_and_end(
    conn: &mut PgConnection,
    app: &str,
    session_id: &str,
) -> sqlx::Result<Option<(Option<String>, Option<String>)>> {
    sqlx::query_as("SELECT user_id, end_reason FROM sessions WHERE app = $1 AND session_id = $2")
        .bind(app)
        .bind(session_id)
        .fetch_optional(conn)
        .await
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

/// A user's live (not ended, not expired at `now`) sessions in every app,
/// locked: FOR UPDATE waits for, and sees, any concurrent change to them (a
/// logout that did not know its user, so did not take the user lock).
pub(crate) async fn active_sessions(
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_statement_numbers_its_37_parameters_once_each() {
        let sql = super::STORE.as_str();
        for n in 1..=37 {
            assert_eq!(sql.matches(&format!("${n}::")).count(), 1, "${n}");
        }
        assert!(!sql.contains("$38"));
    }
}
