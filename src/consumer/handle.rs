//! Handling one decoded batch: dead-letter what is invalid, apply the rest in
//! one transaction (retrying transient database errors), and settle every
//! delivery: acked, requeued or dead-lettered.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use session_guard_amqp::backoff::Backoff;
use session_guard_amqp::quorum::delivery_count;
use tokio::time::Instant;

use super::decode::{Decoded, kind_of};
use crate::apply::{self, AheadHints, BatchOutcome, LockTurn, PipelinePlace};
use crate::broker;
use crate::domain::dead_letter::ErrorKind;
use crate::domain::event::{EventKind, SessionEvent};
use crate::metric;
use crate::shutdown::{CancellationToken, pause};
use crate::state::WorkerState;

/// Pause before requeueing an event the database refused, times its
/// delivery count.
const REQUEUE_PAUSE: Duration = Duration::from_millis(100);

/// The channels a batch's deliveries are settled on; cheap to clone into a
/// batch's task.
#[derive(Clone)]
pub(super) struct Channels {
    /// The channel the deliveries came on: acks and nacks must go there.
    pub events: Channel,
    /// With publisher confirms, so a dead letter is on the broker before
    /// its delivery is acked.
    pub dead_letters: Channel,
}

/// A batch's deliveries, and which of them were already settled one by one
/// (acked after dead-lettering, or nacked).
struct Deliveries {
    /// In delivery order.
    all: Vec<Delivery>,
    /// Settled already: the closing multiple-ack must not name one of them,
    /// or the broker closes the channel for an unknown delivery tag.
    settled: Vec<bool>,
}

impl Deliveries {
    /// The highest delivery tag still open: a multiple-ack of it settles
    /// every open tag up to it on this channel.
    fn last_open(&self) -> Option<u64> {
        self.all
            .iter()
            .zip(&self.settled)
            .filter(|(_, done)| !**done)
            .map(|(d, _)| d.delivery_tag)
            .max()
    }
}

/// Dead-letters what is invalid in a decoded batch (acking those at once) and
/// applies the rest in one transaction. Returns the delivery tag the caller
/// acks through (with a multiple-ack) once earlier batches are acked.
/// Errors returned here are broker errors: the caller reconnects and the
/// unacked deliveries come back.
pub(super) async fn handle_batch(
    state: &WorkerState,
    channels: &Channels,
    batch: Vec<Delivery>,
    decoded: Decoded,
    mut order: PipelinePlace,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    let Decoded {
        events,
        positions,
        invalid,
    } = decoded;
    let events: &[SessionEvent] = &events;
    let mut deliveries = Deliveries {
        settled: vec![false; batch.len()],
        all: batch,
    };
    for (i, error, kind) in invalid {
        // Acked at once: if this batch is redelivered later (say the
        // database is down at shutdown), it is not dead-lettered twice.
        reject_and_ack(state, channels, &deliveries.all[i], &error, kind).await?;
        deliveries.settled[i] = true;
    }

    let started = Instant::now();
    match apply_with_retry(state, events, &mut order, shutdown).await {
        Applied::Committed => {}
        Applied::ShuttingDown => {
            // Nothing was committed: leave the valid deliveries unacked; the
            // broker gives them to another worker once this channel closes.
            anyhow::bail!("shutdown while the database was unavailable");
        }
        Applied::Rejected(error) => {
            // Something in the batch makes PostgreSQL refuse it every time:
            // apply the events one by one so only the culprit is set aside.
            tracing::warn!(error = %error, size = events.len(), "batch refused; applying its events one by one");
            let valid = positions.iter().copied().zip(events);
            apply_one_by_one(
                state,
                channels,
                &mut deliveries,
                valid,
                &order.hints,
                shutdown,
            )
            .await?;
        }
    }
    metric::EVENTS_PROCESSED.add(events.len() as u64);
    tracing::trace!(
        size = deliveries.all.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch done"
    );
    Ok(deliveries.last_open())
}

/// Applies each of `valid` (position in the batch, event) in a transaction
/// of its own; settles at once each one the database refuses.
async fn apply_one_by_one(
    state: &WorkerState,
    channels: &Channels,
    deliveries: &mut Deliveries,
    valid: impl Iterator<Item = (usize, &SessionEvent)>,
    hints: &AheadHints,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for (i, event) in valid {
        let mut alone = PipelinePlace {
            turn: LockTurn::default(),
            hints: hints.clone(),
        };
        match apply_with_retry(state, std::slice::from_ref(event), &mut alone, shutdown).await {
            Applied::Committed => {}
            Applied::ShuttingDown => {
                anyhow::bail!("shutdown while the database was unavailable")
            }
            Applied::Rejected(error) => {
                let delivery = &deliveries.all[i];
                refused(state, channels, delivery, event, &error, shutdown).await?;
                deliveries.settled[i] = true;
            }
        }
    }
    Ok(())
}

/// Settles an event the database refused on its own: requeued, after a
/// pause, until it reaches `amqp.max_redeliveries`; then dead-lettered.
async fn refused(
    state: &WorkerState,
    channels: &Channels,
    delivery: &Delivery,
    event: &SessionEvent,
    error: &apply::BatchError,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let count = delivery_count(&delivery.properties);
    let text = format!("database refused the event: {error}");
    if count >= state.settings.amqp.max_redeliveries {
        return reject_and_ack(state, channels, delivery, &text, ErrorKind::Failed).await;
    }
    tracing::warn!(error = %text, delivery_count = count, "event failed; requeued");
    count_events(event.kind.as_str(), "requeued", 1);
    // Not straight back into a hot loop; a shutdown cuts the pause short
    // (the nack still goes out).
    pause(REQUEUE_PAUSE * (count + 1), shutdown).await;
    channels
        .events
        .basic_nack(
            delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .context("cannot nack")
}

/// Acks every open delivery up to `tag` with one multiple-ack.
pub(super) async fn ack_through(channel: &Channel, tag: Option<u64>) -> anyhow::Result<()> {
    if let Some(tag) = tag {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .context("cannot ack")?;
    }
    Ok(())
}

/// Sends a delivery to the dead-letter exchange with its reason, then acks
/// it on its own.
async fn reject_and_ack(
    state: &WorkerState,
    channels: &Channels,
    delivery: &Delivery,
    reason: &str,
    kind: ErrorKind,
) -> anyhow::Result<()> {
    tracing::warn!(
        error = reason,
        routing_key = %delivery.routing_key,
        bytes = delivery.data.len(),
        "event dead-lettered"
    );
    metric::EVENTS_DEAD_LETTERED.add_to("kind", kind.as_str(), 1);
    count_events(kind_of(&delivery.data), kind.as_str(), 1);
    broker::dead_letter(
        &channels.dead_letters,
        &state.settings.amqp.dead_letter_exchange,
        delivery.routing_key.as_str(),
        &delivery.data,
        &delivery.properties,
        reason,
        kind,
    )
    .await?;
    channels
        .events
        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
        .await
        .context("cannot ack")
}

/// How applying a batch ended.
enum Applied {
    Committed,
    /// PostgreSQL refused the batch for a reason retrying will not fix.
    Rejected(apply::BatchError),
    ShuttingDown,
}

/// Applies `events` in one transaction; retries transient database errors
/// (connection lost, deadlock, serialization failure) with backoff for as
/// long as it takes, since nothing is acked meanwhile.
async fn apply_with_retry(
    state: &WorkerState,
    events: &[SessionEvent],
    order: &mut PipelinePlace,
    shutdown: &CancellationToken,
) -> Applied {
    if events.is_empty() {
        return Applied::Committed;
    }
    let mut backoff = Backoff::new(state.settings.worker.max_backoff());
    // Whether this batch recorded a refusal for readiness, to clear on commit.
    let mut refused = false;
    loop {
        let started = Instant::now();
        let attempt = apply::process_batch_in_turn(
            &state.pool,
            &state.enforcement,
            events,
            Utc::now(),
            order,
        );
        match attempt.await {
            Ok(outcome) => {
                state.health.set_database(true);
                if refused {
                    state.health.set_refusal("batches", None);
                }
                if outcome.wrote_outbox() {
                    state.relay_wake.notify_one();
                }
                record_commit(events, &outcome, started.elapsed());
                if outcome.revoked() > 0 || outcome.repeated > 0 {
                    tracing::debug!(
                        revoked = outcome.revoked(),
                        repeated = outcome.repeated,
                        "batch committed"
                    );
                }
                return Applied::Committed;
            }
            Err(e) if e.is_transient() => {
                state.health.set_database(false);
                let delay = backoff.next_delay();
                metric::DATABASE_RETRIES.add(1);
                match e.refusal() {
                    Some(refusal) => {
                        tracing::error!(%refusal, retry_in_ms = delay.as_millis() as u64, "database refused the worker: retrying, in case the credentials are being rotated");
                        state.health.set_refusal("batches", Some(refusal));
                        refused = true;
                    }
                    None => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database error; retrying")
                    }
                }
                if !pause(delay, shutdown).await {
                    return Applied::ShuttingDown;
                }
            }
            Err(e) => return Applied::Rejected(e),
        }
    }
}

/// Adds `n` events of type `kind` with `outcome` to [`metric::EVENTS`].
fn count_events(kind: &'static str, outcome: &'static str, n: u64) {
    metrics::counter!(metric::EVENTS.name, "type" => kind, "outcome" => outcome).increment(n);
}

/// The metrics of a committed batch: its events by type and how long after
/// their event time they committed, what it revoked and pruned, how long
/// its transaction took.
fn record_commit(events: &[SessionEvent], outcome: &BatchOutcome, took: Duration) {
    let committed = Utc::now();
    let lag = metrics::histogram!(metric::EVENT_LAG.name);
    let mut by_kind: HashMap<EventKind, u64> = HashMap::new();
    for e in events {
        // Events dated ahead of this clock count as no lag at all.
        let behind = (committed - e.occurred_at).to_std().unwrap_or_default();
        lag.record(behind.as_secs_f64());
        *by_kind.entry(e.kind).or_default() += 1;
    }
    for (kind, n) in by_kind {
        count_events(kind.as_str(), "applied", n);
    }
    metrics::histogram!(metric::BATCH_DURATION.name).record(took.as_secs_f64());
    for (reason, n) in &outcome.revoked_by {
        metric::SESSIONS_REVOKED.add_to("reason", reason, *n as u64);
    }
    metric::SESSIONS_PRUNED.add_to("by", "log_limit", outcome.pruned);
    metric::REVOKES_REPEATED.add(outcome.repeated as u64);
    metric::SHADOW_REVOCATIONS.add(outcome.shadow_revoked as u64);
    metric::ROWS_TOUCHED.add(outcome.touched as u64);
    metric::LAST_SEEN_WRITES_SKIPPED.add(outcome.coalesced as u64);
    metric::BATCH_RELOCKS.add(outcome.relocks as u64);
    metrics::histogram!(metric::BATCH_LOCKED_USERS.name).record(outcome.locked_users as f64);
}
