//! `api_keys`: the key session handles are sealed with, created once and
//! shared by every API server through the database.

use sqlx::PgPool;

/// The key of session handles, from the table; `fresh` (random) is stored
/// first if there is none yet. Concurrent first starts agree: the first
/// insert wins and everyone reads it back.
pub async fn handle_key(pool: &PgPool, fresh: &[u8]) -> sqlx::Result<Vec<u8>> {
    sqlx::query(
        "INSERT INTO api_keys (purpose, key) VALUES ('session_handle', $1)
         ON CONFLICT (purpose) DO NOTHING",
    )
    .bind(fresh)
    .execute(pool)
    .await?;
    sqlx::query_scalar("SELECT key FROM api_keys WHERE purpose = 'session_handle'")
        .fetch_one(pool)
        .await
}
