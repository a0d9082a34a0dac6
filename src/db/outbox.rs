//! `outbox`: revoke messages written in the transaction that decided them,
//! and claimed, published and deleted by the relay.

use std::sync::LazyLock;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::revoke::RevokeMessage;

/// A row of the outbox, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Claim order, and the key the relay deletes by.
    pub id: i64,
    /// The message's own id (AMQP `message-id`), for apps to deduplicate.
    pub event_id: Uuid,
    /// The app's routing key on the revocations exchange.
    pub routing_key: String,
    /// The revoke message, as JSON.
    pub payload: String,
}

/// The outbox rows of revoke messages, as column arrays.
#[derive(Default)]
pub(crate) struct Columns {
    /// Each message's own id.
    event_id: Vec<Uuid>,
    /// The app's routing key.
    routing_key: Vec<String>,
    /// The message as JSON.
    payload: Vec<String>,
}

/// `INSERT INTO outbox` of the three arrays [`Columns::bind`] binds,
/// numbered from `$first`.
pub(crate) fn insert_rows(first: usize) -> String {
    format!(
        "INSERT INTO outbox (event_id, routing_key, payload)
         SELECT * FROM unnest(${}::uuid[], ${}::text[], ${}::text[])",
        first,
        first + 1,
        first + 2
    )
}

/// The statement of [`write`], built once.
static WRITE: LazyLock<String> = LazyLock::new(|| insert_rows(1) + " RETURNING 1");

impl Columns {
    /// The rows of `messages`.
    pub(crate) fn of(messages: &[RevokeMessage]) -> Columns {
        let mut c = Columns::default();
        for m in messages {
            c.event_id.push(m.event_id);
            c.routing_key.push(m.routing_key());
            c.payload
                .push(serde_json::to_string(m).expect("a revoke message always serializes"));
        }
        c
    }

    /// Whether there are no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.event_id.is_empty()
    }

    /// Binds the arrays after what `query` binds already.
    pub(crate) fn bind<'q, O>(
        &'q self,
        query: super::BoundScalar<'q, O>,
    ) -> super::BoundScalar<'q, O> {
        query
            .bind(&self.event_id)
            .bind(&self.routing_key)
            .bind(&self.payload)
    }
}

/// Writes revoke messages to the outbox, for the relay to publish (a batch
/// writes its own with its sessions: `sessions::store`).
pub async fn write(conn: &mut PgConnection, messages: &[RevokeMessage]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let rows = Columns::of(messages);
    let query = rows.bind(sqlx::query_scalar::<_, i32>(WRITE.as_str()));
    query.fetch_all(conn).await?;
    Ok(())
}

/// The outbox's backlog: how many rows wait, and the age in seconds of the
/// oldest (0 when empty), on the database's clock.
pub async fn stats(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "SELECT count(*),
                coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
         FROM outbox",
    )
    .fetch_one(pool)
    .await
}

/// Claims up to `limit` rows, oldest first, skipping those another relay
/// holds: they stay locked until the caller's transaction ends.
pub(crate) async fn claim(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, event_id, routing_key, payload FROM outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes the published rows `ids`; returns each one's age in seconds on
/// the database's clock, the one that dated it.
pub(crate) async fn delete_published(
    conn: &mut PgConnection,
    ids: &[i64],
) -> sqlx::Result<Vec<f64>> {
    sqlx::query_scalar(
        "DELETE FROM outbox WHERE id = ANY($1)
         RETURNING extract(epoch FROM clock_timestamp() - created_at)::float8",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}
