//! `outbox`: revoke messages and notices written in the transaction that
//! decided them, and claimed, published and deleted by the relay.

use std::sync::LazyLock;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::notice::Notice;
use crate::domain::revoke::RevokeMessage;

/// Which of the worker's exchanges an outbox row goes to (the `exchange`
/// column; the relay maps it to the configured name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// `amqp.revocations_exchange`.
    Revocations,
    /// `amqp.notices_exchange`.
    Notices,
}

impl Exchange {
    /// The name in the `exchange` column.
    fn as_str(self) -> &'static str {
        match self {
            Exchange::Revocations => "revocations",
            Exchange::Notices => "notices",
        }
    }
}

/// A row of the outbox, ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Claim order, and the key the relay deletes by.
    pub id: i64,
    /// The message's own id (AMQP `message-id`), for apps to deduplicate.
    pub event_id: Uuid,
    /// The routing key on its exchange.
    pub routing_key: String,
    /// The message, as JSON.
    pub payload: String,
    /// `revocations` or `notices` (see [`OutboxRow::exchange`]).
    pub exchange: String,
    /// The AMQP `type`: `revoke`, or the notice's type.
    pub message_type: String,
}

impl OutboxRow {
    /// The exchange the row goes to (a value the table's check refuses
    /// cannot be read back).
    pub fn exchange(&self) -> Exchange {
        if self.exchange == Exchange::Notices.as_str() {
            Exchange::Notices
        } else {
            Exchange::Revocations
        }
    }
}

/// Outbox rows (revoke messages, notices), as column arrays.
#[derive(Default)]
pub(crate) struct Columns {
    /// Each message's own id.
    event_id: Vec<Uuid>,
    /// The routing key.
    routing_key: Vec<String>,
    /// The message as JSON.
    payload: Vec<String>,
    /// The exchange, as [`Exchange::as_str`] names it.
    exchange: Vec<&'static str>,
    /// The AMQP `type`.
    message_type: Vec<String>,
}

/// `INSERT INTO outbox` of the five arrays [`Columns::bind`] binds,
/// numbered from `$first`.
pub(crate) fn insert_rows(first: usize) -> String {
    format!(
        "INSERT INTO outbox (event_id, routing_key, payload, exchange, message_type)
         SELECT * FROM unnest(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::text[])",
        first,
        first + 1,
        first + 2,
        first + 3,
        first + 4
    )
}

/// The statement of [`write`], built once.
static WRITE: LazyLock<String> = LazyLock::new(|| insert_rows(1) + " RETURNING 1");

impl Columns {
    /// The rows of `messages`.
    pub(crate) fn of(messages: &[RevokeMessage]) -> Columns {
        let mut c = Columns::default();
        for m in messages {
            let payload = serde_json::to_string(m).expect("a revoke message always serializes");
            c.push(
                m.event_id,
                m.routing_key(),
                payload,
                Exchange::Revocations,
                "revoke",
            );
        }
        c
    }

    /// Adds the rows of `notices`.
    pub(crate) fn add_notices(&mut self, notices: &[Notice]) {
        for n in notices {
            let payload = serde_json::to_string(n).expect("a notice always serializes");
            self.push(
                n.event_id,
                n.routing_key(),
                payload,
                Exchange::Notices,
                &n.kind,
            );
        }
    }

    /// Adds one row.
    fn push(
        &mut self,
        event_id: Uuid,
        routing_key: String,
        payload: String,
        exchange: Exchange,
        message_type: &str,
    ) {
        self.event_id.push(event_id);
        self.routing_key.push(routing_key);
        self.payload.push(payload);
        self.exchange.push(exchange.as_str());
        self.message_type.push(message_type.to_owned());
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
            .bind(&self.exchange)
            .bind(&self.message_type)
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
        "SELECT id, event_id, routing_key, payload, exchange, message_type FROM outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes the published rows `ids`; returns the age in seconds, on the
/// database's clock (the one that dated them), of each revoke among them.
pub(crate) async fn delete_published(
    conn: &mut PgConnection,
    ids: &[i64],
) -> sqlx::Result<Vec<f64>> {
    sqlx::query_scalar(
        "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING exchange, created_at)
         SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM gone
         WHERE exchange = 'revocations'",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}
