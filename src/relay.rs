//! The outbox relay: publishes the revoke events and notices written by
//! committed batches, each to its exchange, with publisher confirms, and
//! deletes each row once the broker confirmed it.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so any number of workers
//! relay side by side without publishing a row twice while they live. If a
//! worker dies after publishing but before deleting, the row is published
//! again by whoever claims it next, with the same event_id (= AMQP
//! message_id): apps drop the duplicate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};

use session_guard_amqp::backoff::Backoff;

use crate::broker;
use crate::db::{self, outbox};
use crate::domain::session::EndReason;
use crate::metric;
use crate::refusal::Refusal;
use crate::shutdown::{CancellationToken, pause};
use crate::state::WorkerState;

/// Rows claimed and published per round trip of confirms.
const CHUNK: i64 = 500;
/// How often the relay looks at the outbox without being woken: this is what
/// sweeps up rows left by a worker that crashed after its commit.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One connection's worth of relaying; sets `connected` once it has its
/// channel. Returns `Ok` after the flush that follows the shutdown.
/// Reconnecting is the supervisor's job ([`crate::runtime`]).
pub(crate) async fn relay(
    state: &WorkerState,
    shutdown: &CancellationToken,
    connected: &AtomicBool,
) -> anyhow::Result<()> {
    let connection = broker::connect_to(&state.relay_brokers, &state.settings.amqp, "relay")
        .await?
        .connection;
    broker::declare_topology(&connection, &state.settings.amqp).await?;
    let channel = broker::confirm_channel(&connection).await?;
    connected.store(true, Ordering::Relaxed);
    // Cleared after the first flush that went through, not before: a
    // refusal may come from the database too.
    let mut cleared = false;
    let mut database_backoff = Backoff::new(state.settings.worker.max_backoff());
    let mut database_down = false;
    loop {
        // Read before flushing: the shutdown reaches the relay once the
        // consumer has committed its last batch, so a flush that starts after
        // seeing it sees every revoke, whereas one that claimed its rows just
        // before that commit would miss that batch's revokes.
        let stopping = shutdown.is_cancelled();
        match flush(state, &channel).await {
            Ok(()) => {
                if std::mem::take(&mut database_down) {
                    tracing::info!("outbox relay: the database answers again");
                }
                database_backoff.reset();
            }
            // The database away (a failover, a restart): the broker
            // connection is fine, so it is kept, and the flush tried again
            // with backoff. Rows claimed by the failed transaction were not
            // deleted: they are claimed again, and any already confirmed is
            // published again with its event id. Everything else (the
            // broker, a refusal, a shutdown) is the supervisor's.
            Err(e) if !stopping && database_outage(&e) => {
                let delay = database_backoff.next_delay();
                if !std::mem::replace(&mut database_down, true) {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "outbox relay: database unavailable; retrying");
                }
                if !pause(delay, shutdown).await {
                    return Err(e);
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        if !cleared {
            state.health.set_refusal("relay", None);
            cleared = true;
        }
        if stopping {
            break;
        }
        tokio::select! {
            () = state.relay_wake.notified() => {}
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = shutdown.cancelled() => {}
        }
    }
    let _ = channel.close(200, "shutting down".into()).await;
    let _ = connection.close(200, "shutting down".into()).await;
    Ok(())
}

/// Whether `error` is the database failing for a while (connection lost,
/// read-only after a demotion, shutting down), not a refusal an operator
/// must fix nor an error of the broker.
fn database_outage(error: &anyhow::Error) -> bool {
    Refusal::find(error).is_none()
        && error
            .chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .is_some_and(db::is_transient)
}

/// Publishes everything in the outbox, chunk by chunk.
async fn flush(state: &WorkerState, channel: &Channel) -> anyhow::Result<()> {
    while publish_chunk(state, channel).await? == CHUNK as usize {}
    Ok(())
}

/// Claims up to [`CHUNK`] rows, publishes them all, waits for every confirm,
/// deletes the confirmed rows and commits. Returns how many were claimed.
async fn publish_chunk(state: &WorkerState, channel: &Channel) -> anyhow::Result<usize> {
    let mut tx = state
        .pool
        .begin()
        .await
        .context("cannot start a transaction")?;
    let rows = outbox::claim(&mut tx, CHUNK)
        .await
        .context("cannot read the outbox")?;
    if rows.is_empty() {
        return Ok(0);
    }

    // Publish them all first, then wait: many confirms in flight at once.
    let amqp = &state.settings.amqp;
    let revocations = ShortString::from(amqp.revocations_exchange.as_str());
    let notices = ShortString::from(amqp.notices_exchange.as_str());
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let exchange = match row.exchange() {
            outbox::Exchange::Revocations => revocations.clone(),
            outbox::Exchange::Notices => notices.clone(),
        };
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(row.event_id.to_string().into())
            .with_app_id("session-guard".into())
            .with_type(row.message_type.as_str().into());
        let confirm = channel
            .basic_publish(
                exchange,
                row.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                row.payload.as_bytes(),
                properties,
            )
            .await
            .with_context(|| format!("cannot publish a {}", row.message_type))?;
        pending.push(confirm);
    }
    let mut confirmed = Vec::with_capacity(rows.len());
    let mut published = Published::default();
    let mut refused = 0usize;
    for (row, confirm) in rows.iter().zip(pending) {
        let confirmation = confirm
            .await
            .with_context(|| format!("no confirm for a {}", row.message_type))?;
        match confirmation {
            Confirmation::Ack(returned) => {
                if returned.is_some() {
                    unroutable(row);
                }
                confirmed.push(row.id);
                published.add(row);
            }
            Confirmation::NotRequested => {
                confirmed.push(row.id);
                published.add(row);
            }
            Confirmation::Nack(_) => refused += 1,
        }
    }
    let ages = outbox::delete_published(&mut tx, &confirmed)
        .await
        .context("cannot delete published outbox rows")?;
    tx.commit().await.context("cannot commit the outbox")?;
    published.record(&ages);
    tracing::debug!(published = confirmed.len(), "outbox rows published");
    if refused > 0 {
        anyhow::bail!("the broker refused {refused} message(s); they stay in the outbox");
    }
    Ok(rows.len())
}

/// The reason a revoke message gives, as a metric label: one of the
/// revocation reasons, or "unknown" for a payload that does not say.
fn reason_of(payload: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Reason<'a> {
        #[serde(borrow)]
        reason: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Reason>(payload)
        .ok()
        .and_then(|r| EndReason::parse(&r.reason))
        .map_or("unknown", EndReason::as_str)
}

/// Counts and logs a row the broker returned: no queue was bound for it.
fn unroutable(row: &outbox::OutboxRow) {
    match row.exchange() {
        outbox::Exchange::Revocations => {
            metric::REVOKES_UNROUTABLE.add(1);
            tracing::warn!(
                routing_key = %row.routing_key,
                event_id = %row.event_id,
                "no queue is bound for this app's revokes; the revoke was dropped by the broker"
            );
        }
        outbox::Exchange::Notices => {
            metric::NOTICES_UNROUTABLE.add(1);
            tracing::info!(
                routing_key = %row.routing_key,
                event_id = %row.event_id,
                "no queue is bound for this app's notices; the notice was dropped by the broker"
            );
        }
    }
}

/// What a chunk published, for the metrics.
#[derive(Default)]
struct Published {
    /// Revokes, by reason.
    reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Notices, by kind.
    kinds: std::collections::BTreeMap<&'static str, u64>,
}

impl Published {
    /// Counts the confirmed `row`.
    fn add(&mut self, row: &outbox::OutboxRow) {
        match row.exchange() {
            outbox::Exchange::Revocations => {
                *self.reasons.entry(reason_of(&row.payload)).or_default() += 1;
            }
            outbox::Exchange::Notices => {
                let kind = crate::domain::notice::NoticeKind::parse(&row.message_type).as_str();
                *self.kinds.entry(kind).or_default() += 1;
            }
        }
    }

    /// Adds the counts to the metrics, and the revokes' `ages` to their
    /// delivery histogram.
    fn record(&self, ages: &[f64]) {
        for (reason, n) in &self.reasons {
            metric::REVOKES_PUBLISHED.add_to("reason", reason, *n);
        }
        for (kind, n) in &self.kinds {
            metric::NOTICES_PUBLISHED.add_to("kind", kind, *n);
        }
        let delivery = metrics::histogram!(metric::REVOKE_DELIVERY.name);
        for age in ages {
            delivery.record(age.max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_label_comes_from_the_payload() {
        let message = crate::domain::revoke::RevokeMessage::new(
            &crate::domain::event::AppName::from_trusted("shop".to_owned()),
            "s1",
            "ann",
            EndReason::IdleTimeout.into(),
            chrono::Utc::now(),
            1,
            false,
        );
        let payload = serde_json::to_string(&message).unwrap();
        assert_eq!(reason_of(&payload), "idle_timeout");
        assert_eq!(reason_of(r#"{"reason":"made_up"}"#), "unknown");
        assert_eq!(reason_of("not json"), "unknown");
    }
}
