//! A page of a user's sessions for the sessions API: newest login first,
//! by keyset (`login_at DESC, app, session_id`) on `sessions_by_user`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::sessions::LoggedSession;

/// Which of a user's sessions to read.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    /// Whose sessions.
    pub user: &'a str,
    /// Only these apps (`None`: every app).
    pub apps: Option<&'a [String]>,
    /// `Some(true)`: only active ones; `Some(false)`: only ended ones.
    pub active: Option<bool>,
    /// Start after this session (`login_at`, `app`, `session_id`).
    pub after: Option<(DateTime<Utc>, &'a str, &'a str)>,
    /// At most this many rows.
    pub limit: i64,
    /// What "active" is judged at (expiry).
    pub now: DateTime<Utc>,
}

/// One page of sessions, in order.
pub async fn page(pool: &PgPool, q: &PageQuery<'_>) -> sqlx::Result<Vec<LoggedSession>> {
    let (after_at, after_app, after_id) = match q.after {
        Some((at, app, id)) => (Some(at), Some(app), Some(id)),
        None => (None, None, None),
    };
    sqlx::query_as(
        "SELECT app, session_id, user_id, ip, user_agent, login_at, last_seen_at, expires_at,
                ended_at, end_reason, ended_by, end_note
         FROM sessions
         WHERE user_id = $1
           AND ($2::text[] IS NULL OR app = ANY($2))
           AND ($3::bool IS NULL
                OR $3 = (end_reason IS NULL AND (expires_at IS NULL OR expires_at > $4)))
           AND ($5::timestamptz IS NULL OR login_at < $5
                OR (login_at = $5 AND (app, session_id) > ($6::text, $7::text)))
         ORDER BY login_at DESC, app, session_id
         LIMIT $8",
    )
    .bind(q.user)
    .bind(q.apps)
    .bind(q.active)
    .bind(q.now)
    .bind(after_at)
    .bind(after_app)
    .bind(after_id)
    .bind(q.limit)
    .fetch_all(pool)
    .await
}

/// One session of the log, by its key.
pub async fn one(
    pool: &PgPool,
    app: &str,
    session_id: &str,
) -> sqlx::Result<Option<LoggedSession>> {
    sqlx::query_as(
        "SELECT app, session_id, user_id, ip, user_agent, login_at, last_seen_at, expires_at,
                ended_at, end_reason, ended_by, end_note
         FROM sessions WHERE app = $1 AND session_id = $2",
    )
    .bind(app)
    .bind(session_id)
    .fetch_optional(pool)
    .await
}
