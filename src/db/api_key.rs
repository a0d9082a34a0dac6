//! `api_keys`: the key session handles are sealed with, created once and
//! shared by every API server and worker through the database.

use rand::TryRngCore as _;
use sqlx::PgPool;

use crate::domain::handle::{HandleKey, KEY_BYTES};

/// Fresh random bytes for a handle key (the OS's generator): here, beside
/// the table that keeps it, since the domain does no I/O.
pub fn fresh_key() -> [u8; KEY_BYTES] {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator");
    bytes
}

/// The key of session handles, from the table; a fresh random one is
/// stored first if there is none yet. Concurrent first starts (API servers,
/// workers with notices on) agree: the first insert wins and everyone reads
/// it back.
pub async fn handle_key(pool: &PgPool) -> anyhow::Result<HandleKey> {
    sqlx::query(
        "INSERT INTO api_keys (purpose, key) VALUES ('session_handle', $1)
         ON CONFLICT (purpose) DO NOTHING",
    )
    .bind(&fresh_key()[..])
    .execute(pool)
    .await?;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM api_keys WHERE purpose = 'session_handle'")
            .fetch_one(pool)
            .await?;
    HandleKey::from_bytes(&stored)
        .ok_or_else(|| anyhow::anyhow!("the stored session handle key is not 64 bytes"))
}
