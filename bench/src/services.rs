//! The bench's own database, exchanges and queues, and resetting the
//! session log between runs.

use std::time::Instant;

use session_guard::Settings;
use session_guard::broker;
use session_guard::configuration::with_database;
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase as _;

/// The sessions of the large history, kept while drain runs come and go.
const HISTORY_APP: &str = "bench-history";
/// The history's users are this prefix and a number below
/// [`HISTORY_USERS`]: ids the event decoder accepts, so the sessions API
/// can be asked about them.
const HISTORY_USER_PREFIX: &str = "old";
/// Distinct users of the history; the rows go round them, so each user
/// of a 5,000,000-row log has 5 ended sessions.
const HISTORY_USERS: u64 = 1_000_000;

/// The id of the `n`th user with sessions in a history of `rows` rows
/// (`n` taken modulo the number of users it has); `None` for no rows.
pub fn history_user(rows: u64, n: u64) -> Option<String> {
    let users = rows.min(HISTORY_USERS);
    (users > 0).then(|| format!("{HISTORY_USER_PREFIX}{}", n % users))
}

/// The configured servers under names of the bench's own: a fresh database,
/// and exchanges and queues no one else uses; the limit at 1 per user.
pub fn bench_settings(base: &Settings) -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let mut settings = base.clone();
    settings.database.url = with_database(&base.database.url, &format!("sg_bench_{id}"));
    settings.amqp.events_exchange = format!("sg_bench.{id}.events");
    settings.amqp.events_queue = format!("sg_bench.{id}.events");
    settings.amqp.revocations_exchange = format!("sg_bench.{id}.revocations");
    settings.amqp.notices_exchange = format!("sg_bench.{id}.notices");
    settings.amqp.dead_letter_exchange = format!("sg_bench.{id}.dead");
    settings.amqp.dead_letter_queue = format!("sg_bench.{id}.dead");
    settings.limits.max_sessions = 1;
    settings
}

/// Deletes the bench's database, exchanges and queues.
pub async fn clean_up(settings: &Settings) {
    broker::delete_topology(&settings.amqp, "bench cleanup").await;
    let _ = sqlx::Postgres::force_drop_database(&settings.database.url).await;
}

/// Whether the pool's connections use TLS.
pub async fn uses_tls(pool: &PgPool) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await?,
    )
}

/// Empties the session log between runs, so each starts from the same state.
pub async fn reset_log(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE sessions, session_tombstones, outbox, user_overrides, session_users")
        .execute(pool)
        .await?;
    Ok(())
}

/// Puts `rows` ended sessions of months ago in the log, as a log that grew
/// over time has.
pub async fn fill_history(pool: &PgPool, rows: u64) -> anyhow::Result<()> {
    let filled = Instant::now();
    sqlx::query(
        "INSERT INTO sessions (app, session_id, user_id, login_at, login_seen, last_seen_at,
                               ended_at, end_reason)
         SELECT $2, 'h' || g, $3 || (g % $4),
                now() - interval '30 days', true, now() - interval '29 days',
                now() - interval '29 days', 'logout'
         FROM generate_series(1, $1) g",
    )
    .bind(rows as i64)
    .bind(HISTORY_APP)
    .bind(HISTORY_USER_PREFIX)
    .bind(HISTORY_USERS as i64)
    .execute(pool)
    .await?;
    // A log that grew over months has been vacuumed along the way; one
    // filled in a second has not, and autovacuum would then scan all of
    // it during the drain. Measure the steady state.
    sqlx::query("VACUUM ANALYZE sessions").execute(pool).await?;
    println!(
        "log filled with {rows} rows and vacuumed in {:?}",
        filled.elapsed()
    );
    Ok(())
}

/// Removes what a drain run wrote, keeping the large history around it.
pub async fn forget_bench_sessions(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE app <> $1")
        .bind(HISTORY_APP)
        .execute(pool)
        .await?;
    sqlx::query("TRUNCATE session_tombstones, outbox, session_users")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE sessions").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_users_are_the_ones_the_fill_writes() {
        assert_eq!(history_user(0, 5), None);
        assert_eq!(history_user(3, 4).as_deref(), Some("old1"));
        assert_eq!(
            history_user(5_000_000, 1_234_567).as_deref(),
            Some("old234567")
        );
    }
}
