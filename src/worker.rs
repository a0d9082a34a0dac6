//! The worker: consumes events in batches, applies each batch in one
//! transaction, acks after the commit, and runs the outbox relay beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::{Channel, Consumer};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::apply::{self, AheadHints, BatchOutcome, Enforcement, LockTurn, PipelinePlace};
use crate::backoff::{Backoff, pause};
use crate::broker;
use crate::configuration::Settings;
use crate::db;
use crate::domain::dead_letter::ErrorKind;
use crate::domain::event::{EventKind, SessionEvent};
use crate::domain::limits::RuleHook;
use crate::health::Health;
use crate::metric;
use crate::refusal::Refusal;
use crate::relay;
use crate::shutdown::{self, Shutdown};
use crate::sweep::Sweep;
use crate::telemetry;

/// Pause before requeueing an event the database refused, times its
/// delivery count.
const REQUEUE_PAUSE: Duration = Duration::from_millis(100);
/// How often housekeeping pings PostgreSQL for readiness.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Tombstones deleted per statement, so one pass never holds locks for long.
const HOUSEKEEPING_CHUNK: i64 = 10_000;
/// How long, after the consumer was cancelled, to wait for deliveries the
/// broker had already pushed to us.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// A connection that lived this long before failing resets the backoff.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Most time `run` waits for the pool to close once the tasks are done.
const POOL_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// State shared by the consumer, the relay and housekeeping.
pub(crate) struct Context {
    pub settings: Settings,
    pub pool: PgPool,
    pub enforcement: Enforcement,
    /// Wakes the relay as soon as a batch wrote to the outbox.
    pub relay_wake: Notify,
    /// What readiness reports.
    pub health: Arc<Health>,
    /// Where a task sends the error that must end `run`: PostgreSQL or
    /// RabbitMQ refused the worker before it ever got through.
    pub fatal: tokio::sync::mpsc::UnboundedSender<anyhow::Error>,
}

/// Builds a [`Worker`], with rule hooks of the embedding program's own.
pub struct WorkerBuilder {
    settings: Settings,
    hooks: Vec<Arc<dyn RuleHook>>,
}

impl WorkerBuilder {
    /// Registers a rule hook. It runs where its name appears in
    /// `limits.hooks`, or after the configured hooks if it does not.
    pub fn hook(mut self, hook: impl RuleHook) -> WorkerBuilder {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Checks the hook configuration, connects to PostgreSQL (creating the
    /// database if needed) and migrates. A refusal (credentials,
    /// permissions) is one line naming the setting.
    pub async fn build(self) -> anyhow::Result<Worker> {
        let enforcement = Enforcement::from_settings(&self.settings, &self.hooks)?;
        tracing::info!(hooks = ?enforcement.hooks.names(), enforce = enforcement.enforce, "rule hooks");
        let pool = match db::connect_and_migrate(&self.settings.database).await {
            Ok(pool) => pool,
            Err(e) => match Refusal::find(&e) {
                Some(refusal) => anyhow::bail!(refusal.explain(&self.settings)),
                None => return Err(e),
            },
        };
        let health = Arc::new(Health::default());
        health.set_database(true);
        let (fatal, fatal_errors) = tokio::sync::mpsc::unbounded_channel();
        Ok(Worker {
            context: Arc::new(Context {
                settings: self.settings,
                pool,
                enforcement,
                relay_wake: Notify::new(),
                health,
                fatal,
            }),
            fatal_errors,
        })
    }
}

/// A session-guard worker, ready to run.
pub struct Worker {
    context: Arc<Context>,
    /// Errors that end `run` (see [`Context::fatal`]).
    fatal_errors: tokio::sync::mpsc::UnboundedReceiver<anyhow::Error>,
}

impl Worker {
    pub fn builder(settings: Settings) -> WorkerBuilder {
        WorkerBuilder {
            settings,
            hooks: Vec::new(),
        }
    }

    /// The database pool the worker uses.
    pub fn pool(&self) -> &PgPool {
        &self.context.pool
    }

    /// The worker's health, as `/health/ready` reports it.
    pub fn health(&self) -> Arc<Health> {
        self.context.health.clone()
    }

    /// Consumes and relays until `shutdown` resolves, then stops consuming,
    /// finishes and acks the batch in flight, flushes the outbox and returns.
    /// Returns an error, after the same stop, if RabbitMQ refused the
    /// worker's credentials or permissions before it ever got through.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Worker {
            context: ctx,
            mut fatal_errors,
        } = self;
        let (stop_consuming, consumer_shutdown) = shutdown::channel();
        // The relay stops only after the consumer, so that revokes written by
        // the last batch are still published.
        let (stop_relaying, relay_shutdown) = shutdown::channel();
        let (stop_housekeeping, housekeeping_shutdown) = shutdown::channel();

        ctx.health.publish_gauges();
        let consumer = tokio::spawn(run_consumer(ctx.clone(), consumer_shutdown));
        let relay = tokio::spawn(relay::run(ctx.clone(), relay_shutdown));
        let housekeeping = tokio::spawn(run_housekeeping(ctx.clone(), housekeeping_shutdown));
        let (stop_serving, serving_shutdown) = shutdown::channel();
        if !ctx.settings.metrics.listen.is_empty() {
            tokio::spawn(crate::health::serve(
                ctx.settings.metrics.listen.clone(),
                ctx.health.clone(),
                serving_shutdown,
            ));
        }

        let fatal = tokio::select! {
            () = shutdown => None,
            Some(error) = fatal_errors.recv() => Some(error),
        };
        tracing::info!("stopping: finishing in-flight events");
        ctx.health.set_stopping();
        stop_consuming.trigger();
        stop_housekeeping.trigger();
        let timeout = ctx.settings.worker.shutdown_timeout();
        let (consumer_abort, relay_abort, housekeeping_abort) = (
            consumer.abort_handle(),
            relay.abort_handle(),
            housekeeping.abort_handle(),
        );
        let graceful = async {
            if let Err(e) = consumer.await {
                tracing::error!(error = %e, "consumer task failed");
            }
            stop_relaying.trigger();
            if let Err(e) = relay.await {
                tracing::error!(error = %e, "relay task failed");
            }
            let _ = housekeeping.await;
        };
        if tokio::time::timeout(timeout, graceful).await.is_err() {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "shutdown timed out; unacked events will be redelivered and unpublished \
                 revokes stay in the outbox"
            );
            consumer_abort.abort();
            relay_abort.abort();
            housekeeping_abort.abort();
        } else {
            tracing::info!("stopped cleanly");
        }
        // Bounded: an aborted task may not have returned its connection.
        let _ = tokio::time::timeout(POOL_CLOSE_WAIT, ctx.pool.close()).await;
        stop_serving.trigger();
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Keeps a consumer running: reconnects with backoff after any broker error.
/// A refusal before the first successful start ends `run`; after it, it is
/// retried like any error (credentials may be rotating), but said to be one.
async fn run_consumer(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let mut backoff = Backoff::new(ctx.settings.worker.max_backoff());
    let mut consumed = false;
    while !shutdown.is_triggered() {
        let started = Instant::now();
        let result = consume(&ctx, &mut shutdown, &mut consumed).await;
        ctx.health.set_broker(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                // A connection that worked for a while starts the backoff
                // over; one that fails right after setup keeps doubling it.
                if started.elapsed() > STABLE_AFTER {
                    backoff.reset();
                }
                let refusal = Refusal::find(&e);
                if let Some(refusal) = &refusal
                    && !consumed
                {
                    let _ = ctx
                        .fatal
                        .send(anyhow::anyhow!(refusal.explain(&ctx.settings)));
                    return;
                }
                let delay = backoff.next_delay();
                match &refusal {
                    Some(refusal) => tracing::error!(
                        %refusal,
                        retry_in_ms = delay.as_millis() as u64,
                        "consumer refused: retrying, in case the credentials are being rotated"
                    ),
                    None => tracing::error!(
                        error = format!("{e:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "consumer stopped"
                    ),
                }
                ctx.health.set_refusal("consumer", refusal);
                if !pause(delay, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One connection's worth of consuming. Returns `Ok` on shutdown. Sets
/// `consumed` once the consumer is started.
async fn consume(
    ctx: &Arc<Context>,
    shutdown: &mut Shutdown,
    consumed: &mut bool,
) -> anyhow::Result<()> {
    let settings = &ctx.settings;
    // A broker out of reach may take a while to say so: a shutdown need not wait.
    let connection = tokio::select! {
        connection = broker::connect(&settings.amqp, "consumer") => connection?,
        () = shutdown.wait() => return Ok(()),
    };
    let setup = connection.create_channel().await?;
    broker::declare_topology(&setup, &settings.amqp).await?;
    let _ = setup.close(200, "topology declared".into()).await;

    let channel = connection.create_channel().await?;
    let dead_letters = broker::confirm_channel(&connection).await?;
    let mut consumer = broker::consume_events(&channel, &settings.amqp).await?;
    tracing::info!(queue = %settings.amqp.events_queue, "consuming");
    ctx.health.set_broker(true);
    ctx.health.set_refusal("consumer", None);
    *consumed = true;

    // Up to `worker.pipeline` batches in the database at once, each on its
    // own connection; they finish in any order but are acked in delivery
    // order (FuturesOrdered), so a multiple-ack never covers a delivery of a
    // batch that has not committed yet.
    let depth = settings.worker.pipeline.max(1);
    let mut in_flight = FuturesOrdered::new();
    // The users each batch in flight names, oldest first (popped as they
    // complete, in the same order).
    let mut ahead: std::collections::VecDeque<Arc<[SessionEvent]>> =
        std::collections::VecDeque::new();
    let mut last_turn: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let mut ended: Option<anyhow::Error> = None;
    // Whether the last batch was full. A worker that keeps up gains nothing
    // from overlapping batches and would pay for it in latency (the next
    // batch waits on the one ahead), so it runs one at a time.
    let mut behind = false;
    loop {
        if in_flight.is_empty()
            && let Some(error) = ended.take()
        {
            return Err(error);
        }
        tokio::select! {
            biased;
            done = in_flight.next(), if !in_flight.is_empty() => {
                let done: anyhow::Result<Option<u64>> = done.expect("in_flight is not empty");
                ahead.pop_front();
                ack_through(&channel, done?).await?;
            }
            () = shutdown.wait() => break,
            next = consumer.next(), if in_flight.len() < depth.min(if behind { depth } else { 1 })
                && ended.is_none() =>
            {
                let first = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e).context("consumer failed"),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                };
                let (batch, end) = fill_batch(ctx, &mut consumer, first).await;
                // Only a full batch says the worker is behind; then the next
                // one may start while this one is in the database.
                behind = batch.len() >= settings.worker.batch_size;
                let decoded = decode(ctx, &batch);
                let (turn, next_turn) = LockTurn::after(last_turn.take());
                last_turn = Some(next_turn);
                let order = PipelinePlace {
                    turn,
                    hints: AheadHints::of(&decoded.events, &ahead),
                };
                ahead.push_back(decoded.events.clone());
                let mut listener = shutdown.clone();
                let (ctx, channel, dead_letters) = (ctx.clone(), channel.clone(), dead_letters.clone());
                // A task of its own, so the batch keeps talking to the
                // database while this loop fills the next one.
                in_flight.push_back(BatchTask(tokio::spawn(async move {
                    handle_batch(&ctx, &channel, &dead_letters, batch, decoded, order, &mut listener)
                        .await
                })));
                ended = end;
            }
        }
    }
    // Batches already in the database finish (or give up if the database
    // is unavailable) and are acked in order.
    while let Some(done) = in_flight.next().await {
        ack_through(&channel, done?).await?;
    }

    // Stop the flow, then handle what the broker had already pushed to us, so
    // a restart does not count as a failed delivery for those messages.
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .context("cannot cancel the consumer")?;
    loop {
        let next = tokio::time::timeout(DRAIN_WAIT, consumer.next()).await;
        let Ok(Some(Ok(first))) = next else { break };
        let (batch, ended) = fill_batch(ctx, &mut consumer, first).await;
        // Do not give up on this batch because the shutdown already fired
        // (the trigger must stay alive: a dropped trigger counts as fired).
        let (_keep, mut no_shutdown) = shutdown::channel();
        let decoded = decode(ctx, &batch);
        let order = PipelinePlace::default();
        let last = handle_batch(
            ctx,
            &channel,
            &dead_letters,
            batch,
            decoded,
            order,
            &mut no_shutdown,
        )
        .await?;
        ack_through(&channel, last).await?;
        if ended.is_some() {
            break;
        }
    }
    let _ = channel.close(200, "shutting down".into()).await;
    let _ = dead_letters.close(200, "shutting down".into()).await;
    let _ = connection.close(200, "shutting down".into()).await;
    Ok(())
}

/// Collects deliveries after `first` until the batch is full or
/// `batch_wait_ms` passed. Returns the batch and, if the stream ended or
/// failed, why (the batch is still handled first).
async fn fill_batch(
    ctx: &Context,
    consumer: &mut Consumer,
    first: Delivery,
) -> (Vec<Delivery>, Option<anyhow::Error>) {
    let worker = &ctx.settings.worker;
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

/// A batch's deliveries, decoded and checked.
struct Decoded {
    /// Valid events, in delivery order; shared with the batches behind this
    /// one while it is in flight (see [`AheadHints::of`]).
    events: Arc<[SessionEvent]>,
    /// Where each valid event sits in the batch.
    positions: Vec<usize>,
    /// Deliveries to dead-letter: position, reason, kind.
    invalid: Vec<(usize, String, ErrorKind)>,
}

/// Decodes and checks every delivery (no I/O: the consumer does it before
/// the batch goes in flight, so the next batch knows this one's users).
fn decode(ctx: &Context, batch: &[Delivery]) -> Decoded {
    let amqp = &ctx.settings.amqp;
    let max_skew = ctx.settings.limits.max_clock_skew();
    let now = Utc::now();
    let mut events = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    let mut invalid = Vec::new();
    for (i, delivery) in batch.iter().enumerate() {
        let checked = SessionEvent::decode(&delivery.data)
            .map_err(|e| (e.to_string(), ErrorKind::Invalid))
            .and_then(|event| {
                broker::check_app_identity(amqp, &delivery.properties, event.app.as_str())
                    .map(|()| event)
                    .map_err(|e| (e, ErrorKind::Forbidden))
            })
            .and_then(|event| match max_skew {
                Some(skew) => event
                    .check_clock(now, skew)
                    .map(|()| event)
                    .map_err(|e| (e.to_string(), ErrorKind::ClockSkew)),
                None => Ok(event),
            });
        match checked {
            Ok(event) => {
                events.push(event);
                positions.push(i);
            }
            Err((error, kind)) => invalid.push((i, error, kind)),
        }
    }
    Decoded {
        events: events.into(),
        positions,
        invalid,
    }
}

/// Dead-letters what is invalid in a decoded batch (acking those at once) and
/// applies the rest in one transaction. Returns the delivery tag the caller
/// acks through (with a multiple-ack) once earlier batches are acked.
/// Errors returned here are broker errors: the caller reconnects and the
/// unacked deliveries come back.
async fn handle_batch(
    ctx: &Context,
    channel: &Channel,
    dead_letters: &Channel,
    batch: Vec<Delivery>,
    decoded: Decoded,
    mut order: PipelinePlace,
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<u64>> {
    let amqp = &ctx.settings.amqp;
    let Decoded {
        events,
        positions,
        invalid,
    } = decoded;
    let events: &[SessionEvent] = &events;
    // Deliveries already settled one by one (acked after dead-lettering, or
    // nacked): the closing multiple-ack must not name one of them, or the
    // broker closes the channel for an unknown delivery tag.
    let mut settled = vec![false; batch.len()];
    for (i, error, kind) in invalid {
        let delivery = &batch[i];
        reject(ctx, dead_letters, delivery, &error, kind).await?;
        // Acked at once: if this batch is redelivered later (say the
        // database is down at shutdown), it is not dead-lettered twice.
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
            .await
            .context("cannot ack")?;
        settled[i] = true;
    }

    let started = Instant::now();
    match apply_with_retry(ctx, events, &mut order, shutdown).await {
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
            for (i, event) in positions.iter().zip(events) {
                let delivery = &batch[*i];
                let mut alone = PipelinePlace {
                    turn: LockTurn::default(),
                    hints: order.hints.clone(),
                };
                match apply_with_retry(ctx, std::slice::from_ref(event), &mut alone, shutdown).await
                {
                    Applied::Committed => {}
                    Applied::ShuttingDown => {
                        anyhow::bail!("shutdown while the database was unavailable")
                    }
                    Applied::Rejected(error) => {
                        let count = broker::delivery_count(&delivery.properties);
                        let text = format!("database refused the event: {error}");
                        if count >= amqp.max_redeliveries {
                            reject(ctx, dead_letters, delivery, &text, ErrorKind::Failed).await?;
                            channel
                                .basic_ack(
                                    delivery.delivery_tag,
                                    BasicAckOptions { multiple: false },
                                )
                                .await
                                .context("cannot ack")?;
                        } else {
                            tracing::warn!(error = %text, delivery_count = count, "event failed; requeued");
                            count_events(event.kind.as_str(), "requeued", 1);
                            // Not straight back into a hot loop; a shutdown
                            // cuts the pause short (the nack still goes out).
                            pause(REQUEUE_PAUSE * (count + 1), shutdown).await;
                            channel
                                .basic_nack(
                                    delivery.delivery_tag,
                                    BasicNackOptions {
                                        multiple: false,
                                        requeue: true,
                                    },
                                )
                                .await
                                .context("cannot nack")?;
                        }
                        settled[*i] = true;
                    }
                }
            }
        }
    }
    // One ack for the rest of the batch, sent by the caller once every
    // earlier batch is acked: a multiple-ack of the highest tag still open
    // settles every open tag up to it on this channel.
    let last_open = batch
        .iter()
        .zip(&settled)
        .filter(|(_, done)| !**done)
        .map(|(d, _)| d.delivery_tag)
        .max();
    metrics::counter!(metric::EVENTS_PROCESSED.name).increment(events.len() as u64);
    tracing::trace!(
        size = batch.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch done"
    );
    Ok(last_open)
}

/// Acks every open delivery up to `tag` with one multiple-ack.
async fn ack_through(channel: &Channel, tag: Option<u64>) -> anyhow::Result<()> {
    if let Some(tag) = tag {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .context("cannot ack")?;
    }
    Ok(())
}

/// Sends a delivery to the dead-letter exchange with its reason.
async fn reject(
    ctx: &Context,
    dead_letters: &Channel,
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
    metrics::counter!(metric::EVENTS_DEAD_LETTERED.name, "kind" => kind.as_str()).increment(1);
    count_events(kind_of(&delivery.data), kind.as_str(), 1);
    broker::dead_letter(
        dead_letters,
        &ctx.settings.amqp.dead_letter_exchange,
        delivery.routing_key.as_str(),
        &delivery.data,
        &delivery.properties,
        reason,
        kind,
    )
    .await
}

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
    ctx: &Context,
    events: &[SessionEvent],
    order: &mut PipelinePlace,
    shutdown: &mut Shutdown,
) -> Applied {
    if events.is_empty() {
        return Applied::Committed;
    }
    let mut backoff = Backoff::new(ctx.settings.worker.max_backoff());
    // Whether this batch recorded a refusal for readiness, to clear on commit.
    let mut refused = false;
    loop {
        let started = Instant::now();
        let attempt =
            apply::process_batch_in_turn(&ctx.pool, &ctx.enforcement, events, Utc::now(), order);
        match attempt.await {
            Ok(outcome) => {
                ctx.health.set_database(true);
                if refused {
                    ctx.health.set_refusal("batches", None);
                }
                if outcome.wrote_outbox() {
                    ctx.relay_wake.notify_one();
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
                ctx.health.set_database(false);
                let delay = backoff.next_delay();
                metrics::counter!(metric::DATABASE_RETRIES.name).increment(1);
                match Refusal::of_batch(&e) {
                    Some(refusal) => {
                        tracing::error!(%refusal, retry_in_ms = delay.as_millis() as u64, "database refused the worker: retrying, in case the credentials are being rotated");
                        ctx.health.set_refusal("batches", Some(refusal));
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

/// Pings PostgreSQL (so readiness notices an outage while the queue is
/// idle), refreshes the outbox gauges, folds histogram samples into their
/// buckets, and every `retention.sweep_interval` sweeps rows past
/// `retention.max_age` (if set) and deletes tombstones past their time to
/// live.
async fn run_housekeeping(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let ttl = Duration::from_secs(ctx.settings.retention.tombstone_ttl);
    let every = ctx.settings.retention.sweep_interval;
    let mut sweep = Sweep::default();
    let mut last_sweep: Option<Instant> = None;
    loop {
        let ping =
            tokio::time::timeout(PING_EVERY, sqlx::query("SELECT 1").execute(&ctx.pool)).await;
        ctx.health.set_database(matches!(ping, Ok(Ok(_))));
        refresh_outbox_gauges(&ctx.pool).await;
        telemetry::run_metrics_upkeep();
        let refusal = match &ping {
            Ok(Err(e)) => Refusal::of_database(e),
            _ => None,
        };
        ctx.health.set_refusal("housekeeping", refusal);
        if last_sweep.is_none_or(|t| t.elapsed() >= every) {
            last_sweep = Some(Instant::now());
            if let Some(max_age) = ctx.settings.retention.max_age {
                sweep_old_rows(&ctx.pool, &mut sweep, max_age).await;
            }
            loop {
                match db::retention::expire_tombstones(&ctx.pool, ttl, HOUSEKEEPING_CHUNK).await {
                    Ok(n) if n as i64 == HOUSEKEEPING_CHUNK => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(deleted = n, "expired tombstones");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "housekeeping failed; will try again");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PING_EVERY.min(every)) => {}
            () = shutdown.wait() => return,
        }
    }
}

/// One pass of retention by age (see [`crate::sweep`]); a failure is
/// logged and the next pass tries again.
async fn sweep_old_rows(pool: &PgPool, sweep: &mut Sweep, max_age: Duration) {
    match sweep.pass(pool, max_age, Utc::now()).await {
        Ok(report) => {
            metrics::counter!(metric::SESSIONS_PRUNED.name, "by" => "max_age")
                .increment(report.moved);
            if report.moved > 0 || !report.busy.is_empty() {
                tracing::debug!(
                    moved = report.moved,
                    busy_users = report.busy.len(),
                    "swept ended sessions past retention.max_age"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "retention sweep failed; will try again"),
    }
}

/// Sets the outbox gauges from the table (every worker's revokes).
async fn refresh_outbox_gauges(pool: &PgPool) {
    match tokio::time::timeout(PING_EVERY, db::outbox::stats(pool)).await {
        Ok(Ok((backlog, oldest))) => {
            metrics::gauge!(metric::OUTBOX_BACKLOG.name).set(backlog as f64);
            metrics::gauge!(metric::OUTBOX_OLDEST_AGE.name).set(oldest.max(0.0));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot measure the outbox"),
        Err(_) => tracing::debug!("measuring the outbox timed out"),
    }
}

/// Every kind of event, to name the one a message claims.
const EVENT_KINDS: [EventKind; 5] = [
    EventKind::Login,
    EventKind::Request,
    EventKind::Logout,
    EventKind::LogoutOthers,
    EventKind::LogoutAll,
];

/// The `type` a message claims, as a metric label: an event kind's name,
/// or "unknown" when the message does not decode that far.
fn kind_of(body: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Type<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Type>(body)
        .ok()
        .and_then(|t| EVENT_KINDS.into_iter().find(|k| k.as_str() == t.kind))
        .map_or("unknown", EventKind::as_str)
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
        metrics::counter!(metric::SESSIONS_REVOKED.name, "reason" => *reason).increment(*n as u64);
    }
    metrics::counter!(metric::SESSIONS_PRUNED.name, "by" => "log_limit").increment(outcome.pruned);
    metrics::counter!(metric::REVOKES_REPEATED.name).increment(outcome.repeated as u64);
    metrics::counter!(metric::SHADOW_REVOCATIONS.name).increment(outcome.shadow_revoked as u64);
    metrics::counter!(metric::ROWS_TOUCHED.name).increment(outcome.touched as u64);
    metrics::counter!(metric::LAST_SEEN_WRITES_SKIPPED.name).increment(outcome.coalesced as u64);
    metrics::counter!(metric::BATCH_RELOCKS.name).increment(outcome.relocks as u64);
    metrics::histogram!(metric::BATCH_LOCKED_USERS.name).record(outcome.locked_users as f64);
}
