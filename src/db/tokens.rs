//! `api_tokens`: the sessions API's bearer tokens, stored as the SHA-256 of
//! the token (never the token itself).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The channel a trigger notifies on every change to `api_tokens`
/// (migration `20261207000002_api_tokens_notify.sql`): API servers empty
/// their token caches when they hear it.
pub const CHANGED_CHANNEL: &str = "api_tokens_changed";

/// A token as stored, without its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    /// Its unique name, recorded as `ended_by` (`token:<name>`).
    pub name: String,
    /// The apps whose sessions it may see; `*` = every app.
    pub apps: Vec<String>,
    /// What it may do (`sessions:read`...).
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new token; `Ok(false)` if the name is taken.
pub async fn create(
    pool: &PgPool,
    name: &str,
    sha256: &[u8],
    apps: &[String],
    scopes: &[String],
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO api_tokens (name, token_sha256, apps, scopes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(sha256)
    .bind(apps)
    .bind(scopes)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every token, by name.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenRow>> {
    sqlx::query_as(
        "SELECT name, apps, scopes, created_at, revoked_at FROM api_tokens ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// Marks a token revoked; `Ok(false)` if there is no such token or it was
/// revoked already.
pub async fn revoke(pool: &PgPool, name: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The live (not revoked) token whose hash is `sha256`, if any.
pub async fn find_live(pool: &PgPool, sha256: &[u8]) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(
        "SELECT name, apps, scopes, created_at, revoked_at FROM api_tokens
         WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(sha256)
    .fetch_optional(pool)
    .await
}
