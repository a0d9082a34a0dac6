//! `user_overrides`: the limits operators set for a user, in one app or all.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::domain::limits::{EvictionPolicy, UserOverride};

/// A row of `user_overrides`; `app` is empty for the all-apps override.
#[derive(sqlx::FromRow)]
struct OverrideRow {
    /// The app it applies to; empty for every app.
    app: String,
    /// Per-app session cap, if set.
    max_sessions: Option<i32>,
    /// Cap across apps, if set.
    max_sessions_global: Option<i32>,
    /// Eviction policy name, if set (an unknown one is ignored).
    policy: Option<String>,
    /// Idle timeout in seconds, if set.
    idle_timeout: Option<i64>,
    /// How many ended sessions to keep, if set.
    log_limit: Option<i32>,
}

/// An [`OverrideRow`] with its user, for reads of many users at once.
#[derive(sqlx::FromRow)]
struct UserOverrideRow {
    /// Whose override it is.
    user_id: String,
    /// The override itself.
    #[sqlx(flatten)]
    row: OverrideRow,
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

/// The limits operators stored for each of `users`.
pub(crate) async fn overrides_of_users(
    conn: &mut PgConnection,
    users: &[&str],
) -> sqlx::Result<HashMap<String, Vec<UserOverride>>> {
    let mut out: HashMap<String, Vec<UserOverride>> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows: Vec<UserOverrideRow> = sqlx::query_as(
        "SELECT user_id, app, max_sessions, max_sessions_global, policy, idle_timeout,
                log_limit
         FROM user_overrides WHERE user_id = ANY($1) ORDER BY user_id, app",
    )
    .bind(users)
    .fetch_all(conn)
    .await?;
    for UserOverrideRow { user_id, row } in rows {
        out.entry(user_id).or_default().push(row.into());
    }
    Ok(out)
}

/// The limits operators stored for a user.
pub async fn overrides_of_user(
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
