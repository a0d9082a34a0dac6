//! The consumer: one connection's worth of consuming events in batches.
//!
//! Each batch is decoded and checked here ([`decode`]), then handled by a
//! task of its own ([`handle`]): invalid deliveries dead-lettered, the rest
//! applied in one transaction, then acked. Up to `worker.pipeline` batches are
//! in the database at once; they finish in any order but are acked in
//! delivery order. Reconnecting is the supervisor's job
//! ([`crate::runtime`]).

mod decode;
mod handle;
mod queue_depth;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use lapin::{Connection, Consumer};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::apply::{AheadHints, LockTurn, PipelinePlace};
use crate::broker;
use crate::configuration::Settings;
use crate::domain::event::SessionEvent;
use crate::shutdown::CancellationToken;
use crate::state::WorkerState;
use decode::decode;
use handle::{Channels, ack_through, handle_batch};
use queue_depth::QueueDepth;

/// How long, after the consumer was cancelled, to wait for deliveries the
/// broker had already pushed to us.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// One connection's worth of consuming. Returns `Ok` on shutdown, after the
/// batches in flight and those the broker had already pushed are acked.
/// Sets `consumed` once the consumer is started: from then on a refusal is
/// retried rather than ending the worker.
pub(crate) async fn consume(
    state: &Arc<WorkerState>,
    shutdown: &CancellationToken,
    consumed: &AtomicBool,
) -> anyhow::Result<()> {
    let settings = &state.settings;
    // A broker out of reach may take a while to say so: a shutdown need not wait.
    let connection = tokio::select! {
        connection = broker::connect_to(&state.consumer_brokers, &settings.amqp, "consumer") => connection?.connection,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut link = Link::open(connection, settings).await?;
    // Counts the queues while this connection consumes; stops with it.
    let _queue_depth = QueueDepth::start(&link.connection, &settings.amqp).await?;
    tracing::info!(queue = %settings.amqp.events_queue, "consuming");
    state.health.set_broker(true);
    state.health.set_refusal("consumer", None);
    consumed.store(true, Ordering::Relaxed);

    pipeline(state, &mut link, shutdown).await?;
    drain(state, &mut link).await?;
    link.close().await;
    Ok(())
}

/// A connection that is consuming: its channels and its consumer.
struct Link {
    /// Closed last, once its channels are.
    connection: Connection,
    /// Where deliveries are acked and dead-lettered.
    channels: Channels,
    /// The deliveries of the events queue.
    consumer: Consumer,
}

impl Link {
    /// Declares the topology on a channel of its own, then opens the
    /// consuming and dead-lettering channels and starts consuming.
    async fn open(connection: Connection, settings: &Settings) -> anyhow::Result<Link> {
        broker::declare_topology(&connection, &settings.amqp).await?;

        let events = connection.create_channel().await?;
        let dead_letters = broker::confirm_channel(&connection).await?;
        let consumer = broker::consume_events(&events, &settings.amqp).await?;
        Ok(Link {
            connection,
            channels: Channels {
                events,
                dead_letters,
            },
            consumer,
        })
    }

    async fn close(self) {
        let _ = self
            .channels
            .events
            .close(200, "shutting down".into())
            .await;
        let _ = self
            .channels
            .dead_letters
            .close(200, "shutting down".into())
            .await;
        let _ = self.connection.close(200, "shutting down".into()).await;
    }
}

/// Fills batches and hands each to its own task until the shutdown, acking
/// them in delivery order as they finish; then waits for those in flight
/// (they finish, or give up if the database is unavailable) and acks them.
async fn pipeline(
    state: &Arc<WorkerState>,
    link: &mut Link,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let depth = state.settings.worker.pipeline.max(1);
    let mut batches = InFlight::default();
    let mut ended: Option<anyhow::Error> = None;
    loop {
        if batches.tasks.is_empty()
            && let Some(error) = ended.take()
        {
            return Err(error);
        }
        tokio::select! {
            biased;
            done = batches.tasks.next(), if !batches.tasks.is_empty() => {
                let done: anyhow::Result<Option<u64>> = done.expect("tasks is not empty");
                batches.ahead.pop_front();
                ack_through(&link.channels.events, done?).await?;
            }
            () = shutdown.cancelled() => break,
            next = link.consumer.next(), if batches.has_room(depth) && ended.is_none() => {
                let first = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e).context("consumer failed"),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                };
                let (batch, end) = fill_batch(&state.settings, &mut link.consumer, first).await;
                batches.start(state, &link.channels, batch, shutdown);
                ended = end;
            }
        }
    }
    while let Some(done) = batches.tasks.next().await {
        ack_through(&link.channels.events, done?).await?;
    }
    Ok(())
}

/// Stops the flow, then handles what the broker had already pushed to us, so
/// a restart does not count as a failed delivery for those messages.
async fn drain(state: &WorkerState, link: &mut Link) -> anyhow::Result<()> {
    link.channels
        .events
        .basic_cancel(link.consumer.tag(), BasicCancelOptions::default())
        .await
        .context("cannot cancel the consumer")?;
    // These batches are not given up because the shutdown is under way: a
    // token nobody cancels.
    let carry_on = CancellationToken::new();
    loop {
        let next = tokio::time::timeout(DRAIN_WAIT, link.consumer.next()).await;
        let Ok(Some(Ok(first))) = next else { break };
        let (batch, ended) = fill_batch(&state.settings, &mut link.consumer, first).await;
        let decoded = decode(&state.settings, &batch);
        let last = handle_batch(
            state,
            &link.channels,
            batch,
            decoded,
            PipelinePlace::default(),
            &carry_on,
        )
        .await?;
        ack_through(&link.channels.events, last).await?;
        if ended.is_some() {
            break;
        }
    }
    Ok(())
}

/// The batches in the database, oldest first.
#[derive(Default)]
struct InFlight {
    /// Their tasks, yielding in delivery order whatever order they finish in
    /// (FuturesOrdered), so a multiple-ack never covers a delivery of a
    /// batch that has not committed yet.
    tasks: FuturesOrdered<BatchTask>,
    /// Their events, to tell each new batch what the ones ahead of it do to
    /// its users (popped as they complete, in the same order).
    ahead: VecDeque<Arc<[SessionEvent]>>,
    /// The lock turn the newest batch hands on to the next one.
    last_turn: Option<oneshot::Receiver<()>>,
    /// Whether the last batch was full. A worker that keeps up gains nothing
    /// from overlapping batches and would pay for it in latency (the next
    /// batch waits on the one ahead), so it runs one at a time.
    behind: bool,
}

impl InFlight {
    /// Whether another batch may start: up to `depth` when behind, else one.
    fn has_room(&self, depth: usize) -> bool {
        self.tasks.len() < if self.behind { depth } else { 1 }
    }

    /// Decodes `batch` and starts its task, after the batches in flight.
    fn start(
        &mut self,
        state: &Arc<WorkerState>,
        channels: &Channels,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) {
        // Only a full batch says the worker is behind; then the next one may
        // start while this one is in the database.
        self.behind = batch.len() >= state.settings.worker.batch_size;
        let decoded = decode(&state.settings, &batch);
        let (turn, next_turn) = LockTurn::after(self.last_turn.take());
        self.last_turn = Some(next_turn);
        let order = PipelinePlace {
            turn,
            hints: AheadHints::of(&decoded.events, &self.ahead),
        };
        self.ahead.push_back(decoded.events.clone());
        let (state, channels, shutdown) = (state.clone(), channels.clone(), shutdown.clone());
        // A task of its own, so the batch keeps talking to the database while
        // the consumer fills the next one.
        self.tasks.push_back(BatchTask(tokio::spawn(async move {
            handle_batch(&state, &channels, batch, decoded, order, &shutdown).await
        })));
    }
}

/// Collects deliveries after `first` until the batch is full or
/// `batch_wait_ms` passed. Returns the batch and, if the stream ended or
/// failed, why (the batch is still handled first).
async fn fill_batch(
    settings: &Settings,
    consumer: &mut Consumer,
    first: Delivery,
) -> (Vec<Delivery>, Option<anyhow::Error>) {
    let worker = &settings.worker;
    let mut batch = Vec::with_capacity(worker.batch_size.min(1024));
    batch.push(first);
    let deadline = Instant::now() + worker.batch_wait();
    while batch.len() < worker.batch_size {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => batch.push(delivery),
            Ok(Some(Err(e))) => {
                return (
                    batch,
                    Some(anyhow::Error::new(e).context("consumer failed")),
                );
            }
            Ok(None) => return (batch, Some(anyhow::anyhow!("the consumer was cancelled"))),
            Err(_elapsed) => break,
        }
    }
    (batch, None)
}

/// A batch being handled by its own task; aborted if the consumer drops it
/// (it gave up on the connection: the batch's deliveries come back anyway).
struct BatchTask(tokio::task::JoinHandle<anyhow::Result<Option<u64>>>);

impl Drop for BatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for BatchTask {
    type Output = anyhow::Result<Option<u64>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.unwrap_or_else(|e| Err(anyhow::anyhow!("batch task failed: {e}"))))
    }
}
