//! Receiving what session-guard publishes for an app: revokes
//! ([`RevocationListener`]) and notices ([`NoticeListener`]). Each consumes
//! a queue of the app's own, hands each message to your handler, and acks it
//! once the handler returned `Ok`.
//!
//! On the broker, for an app `shop` with the default names:
//!
//! - `shop.revocations`: a durable quorum queue bound to the topic exchange
//!   `session_guard.revocations` with `revoke.shop`; `shop.notices`, one
//!   bound to `session_guard.notices` with `*.shop` (every kind of notice,
//!   those added later too). Every instance of the app consumes these
//!   queues, so each message is handled by one instance. Their
//!   `x-delivery-limit` is `max_attempts - 1` (a delivery and at most that
//!   many redeliveries) and their dead-letter exchange is `<queue>.dead`;
//! - `shop.revocations.dead`, `shop.notices.dead`: a durable fanout exchange
//!   of the app's own and a durable quorum queue of the same name bound to
//!   it, where messages the handler kept failing on, and bodies that are not
//!   what the queue carries, end up.
//!
//! Every declaration is idempotent: each instance makes them at start and
//! after every reconnect, in any order.
//!
//! Both listeners are one machinery (`Listener`) over what they receive
//! (`Received`): the queue's binding and the body's decoding differ, the
//! declarations, retries, dead letters, reconnection and shutdown do not.

mod notices;
mod revocations;

pub use notices::{NoticeListener, SignInNotice};
pub use revocations::{RevocationListener, Revoke};

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use session_guard_amqp::url::redact_url;

use crate::connection::CLOSE_TIMEOUT;
use futures::future::{Fuse, FusedFuture};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use session_guard_amqp::backoff::Backoff;
use session_guard_amqp::brokers::{Brokers, CONNECT_TIMEOUT};
use session_guard_amqp::quorum::{
    DEFAULT_INITIAL_GROUP_SIZE, declare_quorum_queue, delivery_count, replicated_quorum_arguments,
};
use session_guard_protocol::event::AppName;
use session_guard_protocol::names;
use tokio::time::Instant;

/// Pause before a failed message goes back to the queue, times its attempt
/// number: a handler failing on a passing outage gets some time to recover
/// before its attempts run out.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long, once the consumer is cancelled, to wait for messages the
/// broker had already sent.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// A connection that lived this long before failing starts the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Where and how a [`RevocationListener`] or a [`NoticeListener`] listens.
/// [`ListenerConfig::new`] gives a revocation listener's defaults,
/// [`ListenerConfig::notices`] a notice listener's; change fields before
/// connecting.
#[derive(Clone)]
pub struct ListenerConfig {
    /// The broker, e.g. `amqp://shop:secret@mq.internal:5672/%2f`
    /// (`amqps://` for TLS; `?heartbeat=10` sets the heartbeat); or the
    /// URLs of a cluster's nodes, comma-separated
    /// ([`ListenerConfig::with_urls`] writes them so). The listener connects
    /// to one, picked at random, and after a lost connection tries the
    /// others at once, the lost one last.
    pub url: String,
    /// The app whose revokes or notices to receive: the queue is bound
    /// with `revoke.<app>` (revokes) or `*.<app>` (notices).
    pub app: AppName,
    /// The topic exchange session-guard publishes to (default
    /// `session_guard.revocations`, the worker's `amqp.revocations_exchange`,
    /// for revokes; `session_guard.notices`, its `amqp.notices_exchange`, for
    /// notices). session-guard declares it; the listener only binds to it.
    pub exchange: String,
    /// The queue the app's instances share (default `<app>.revocations`, or
    /// `<app>.notices`).
    /// Dead letters go to `<queue>.dead` ([`ListenerConfig::dead_letter_queue`]).
    pub queue: String,
    /// Messages the broker sends ahead, unacked, to this listener (default
    /// 100).
    pub prefetch: u16,
    /// Deliveries of one message before it is dead-lettered: with the default
    /// 5, a handler that keeps failing sees it 5 times. At least 1. Part of
    /// the queue's arguments: changing it for an existing queue needs the
    /// queue deleted (see the crate's README).
    pub max_attempts: u32,
    /// Longest pause between reconnection attempts (default 10 s).
    pub max_backoff: Duration,
    /// Replicas of the queue and its dead-letter queue
    /// (`x-quorum-initial-group-size`, default 3, like the worker's
    /// `amqp.quorum_initial_group_size`): 3 survives the loss of one node;
    /// a cluster of fewer nodes gets one per node it has. Counts only when
    /// the queue is created: an existing queue keeps its replicas (the
    /// listener logs a warning and goes on).
    pub quorum_initial_group_size: u32,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL usually carries a password: never print it.
        f.debug_struct("ListenerConfig")
            .field("url", &redact_url(&self.url))
            .field("app", &self.app)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("max_attempts", &self.max_attempts)
            .field("max_backoff", &self.max_backoff)
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .finish()
    }
}

impl ListenerConfig {
    /// A [`RevocationListener`]'s defaults for `app` on the broker at
    /// `url`: the default revocations exchange, the queue
    /// `<app>.revocations`, prefetch 100, 5 attempts, backoff up to 10 s.
    pub fn new(url: impl Into<String>, app: AppName) -> Self {
        ListenerConfig {
            url: url.into(),
            exchange: names::REVOCATIONS_EXCHANGE.to_owned(),
            queue: names::revoke_queue(&app),
            app,
            prefetch: 100,
            max_attempts: 5,
            max_backoff: Duration::from_secs(10),
            quorum_initial_group_size: DEFAULT_INITIAL_GROUP_SIZE,
        }
    }

    /// A [`NoticeListener`]'s defaults for `app` on the broker at `url`:
    /// the default notices exchange, the queue `<app>.notices`, and the
    /// rest as [`ListenerConfig::new`].
    pub fn notices(url: impl Into<String>, app: AppName) -> Self {
        ListenerConfig {
            exchange: names::NOTICES_EXCHANGE.to_owned(),
            queue: names::notice_queue(&app),
            ..ListenerConfig::new(url, app)
        }
    }

    /// [`ListenerConfig::new`] for several brokers (a cluster's nodes); a
    /// notice listener's: `ListenerConfig { exchange, queue,
    /// ..ListenerConfig::with_urls(urls, app) }` with
    /// [`ListenerConfig::notices`]' names.
    pub fn with_urls<I, S>(urls: I, app: AppName) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        ListenerConfig::new(urls.join(","), app)
    }

    /// The dead-letter exchange and queue (one name for both):
    /// `<queue>.dead`, e.g. `shop.revocations.dead`, `shop.notices.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Refuses values the broker would refuse, or that make no sense.
    fn check(&self) -> Result<(), ListenerError> {
        let invalid = |why: String| Err(ListenerError::Config(why));
        if self.queue.is_empty() || self.queue.len() > 250 {
            return invalid(format!(
                "queue: {:?} must be 1 to 250 bytes long (`.dead` is added for the dead-letter queue)",
                self.queue
            ));
        }
        if self.exchange.is_empty() {
            return invalid("exchange: must not be empty".to_owned());
        }
        if self.prefetch == 0 {
            return invalid("prefetch: must be at least 1".to_owned());
        }
        if self.quorum_initial_group_size == 0 || self.quorum_initial_group_size > i32::MAX as u32 {
            return invalid(format!(
                "quorum_initial_group_size: {} is not between 1 and {}",
                self.quorum_initial_group_size,
                i32::MAX
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > i32::MAX as u32 {
            return invalid(format!(
                "max_attempts: {} is not between 1 and {}",
                self.max_attempts,
                i32::MAX
            ));
        }
        Ok(())
    }

    /// The name the connection shows in RabbitMQ's management UI and
    /// `rabbitmqctl list_connections`.
    fn connection_name(&self) -> String {
        format!("session-guard-client listener ({})", self.queue)
    }
}

/// A message handed to a listener's handler: a [`Revoke`] or a
/// [`SignInNotice`].
#[derive(Debug, Clone)]
pub struct Delivered<M> {
    /// What session-guard sent.
    pub message: M,
    /// Deliveries of this message before this one: 0 the first time, 1
    /// after the handler failed once... A connection lost while the message
    /// was delivered and not yet acked counts too.
    pub delivery_count: u32,
}

/// Why the listener could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// A [`ListenerConfig`] value that cannot work; the text names the field.
    #[error("invalid listener configuration: {0}")]
    Config(String),
    /// The broker could not be reached, or refused the credentials or the
    /// vhost.
    #[error("cannot connect to RabbitMQ at {url}: {cause}")]
    Connect {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What lapin reported.
        cause: Box<lapin::Error>,
    },
    /// The broker did not complete the connection in time (TCP, TLS and
    /// the AMQP handshake).
    #[error("cannot connect to RabbitMQ at {url}: no answer within {} s", after.as_secs())]
    ConnectTimeout {
        /// The URL, its password replaced by `***`.
        url: String,
        /// How long the listener waited.
        after: Duration,
    },
    /// The revocations (or notices) exchange does not exist: session-guard
    /// declares it when it starts.
    #[error(
        "exchange {exchange} does not exist: start session-guard first (it declares it), or set \
         the listener's exchange to the worker's {setting}"
    )]
    NoExchange {
        /// The exchange named in the configuration.
        exchange: String,
        /// The worker's setting that names it: `amqp.revocations_exchange`
        /// or `amqp.notices_exchange`.
        setting: &'static str,
    },
    /// The queue exists with other arguments (another `max_attempts`, or
    /// declared by hand without a delivery limit): RabbitMQ cannot change a
    /// queue's arguments.
    #[error(
        "queue {queue} already exists with other arguments (x-delivery-limit {limit}, \
         x-dead-letter-exchange {dead_letter}, quorum): delete it, or set max_attempts as it was \
         ({cause})"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The delivery limit this listener asked for (`max_attempts - 1`).
        limit: u32,
        /// The dead-letter exchange this listener asked for.
        dead_letter: String,
        /// What RabbitMQ answered.
        cause: Box<lapin::Error>,
    },
    /// RabbitMQ's permissions refuse this user an operation.
    #[error(
        "RabbitMQ refused to {action}: {cause} (the app's user needs the permissions listed in \
         the session-guard-client README)"
    )]
    Refused {
        /// What the listener tried.
        action: String,
        /// What RabbitMQ answered.
        cause: Box<lapin::Error>,
    },
    /// Any other broker error while setting up.
    #[error("cannot {action}: {cause}")]
    Broker {
        /// What the listener tried.
        action: String,
        /// What lapin reported.
        cause: Box<lapin::Error>,
    },
}

/// What a listener receives: how its queue is bound, how a body is read,
/// what the log calls it. Sealed: revokes and notices.
pub(crate) trait Received: Sized {
    /// The listener, as the log names it: `revocation`, `notice`.
    const LISTENER: &'static str;
    /// One message, as the log names it: `revoke`, `notice`.
    const WHAT: &'static str;
    /// The worker's setting that names the exchange, for
    /// [`ListenerError::NoExchange`].
    const EXCHANGE_SETTING: &'static str;
    /// The key `app`'s queue is bound to the exchange with.
    fn binding_key(app: &AppName) -> String;
    /// The message in `body`, or why it is not one.
    fn decode(body: &[u8]) -> Result<Self, String>;
    /// Its event id, for the log.
    fn event_id(&self) -> &dyn Display;
    /// The session it is about (its id or handle), for the log.
    fn session(&self) -> &str;
}

/// The machinery of both listeners: connects, declares, consumes, retries,
/// dead-letters and reconnects for a queue of `M`s.
pub(crate) struct Listener<M> {
    /// What to listen to, and how.
    config: ListenerConfig,
    /// The brokers of `config.url`, and which one a reconnection tries last
    /// (the one the lost connection was on).
    brokers: Brokers,
    /// The connection `connect` opened and declared on, used by `run` first.
    connection: Connection,
    /// What the queue carries.
    received: PhantomData<fn() -> M>,
}

impl<M: Received> Listener<M> {
    /// Connects and declares (idempotently) the durable quorum queue bound
    /// with [`Received::binding_key`], with `x-delivery-limit` and the
    /// dead-letter exchange and queue.
    pub(crate) async fn connect(config: ListenerConfig) -> Result<Listener<M>, ListenerError> {
        config.check()?;
        // One URL or several (comma-separated); the message masks passwords.
        let brokers =
            Brokers::parse(&config.url).map_err(|e| ListenerError::Config(format!("url: {e}")))?;
        let connection = open::<M>(&config, &brokers).await?;
        Ok(Listener {
            config,
            brokers,
            connection,
            received: PhantomData,
        })
    }

    /// The configuration in use.
    pub(crate) fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// Lists the queue and the URL, never its password.
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("queue", &self.config.queue)
            .field("url", &redact_url(&self.config.url))
            .finish_non_exhaustive()
    }

    /// Calls `handler` for each message until `shutdown` resolves: see
    /// [`RevocationListener::run`], which says it for revokes.
    pub(crate) async fn run<F, Fut, E>(
        self,
        mut handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ListenerError>
    where
        F: FnMut(Delivered<M>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let Listener {
            config,
            brokers,
            connection,
            ..
        } = self;
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        let mut connection = Some(connection);
        let mut backoff = Backoff::new(config.max_backoff);
        loop {
            let current = match connection.take() {
                Some(c) => c,
                None => {
                    let opened = tokio::select! {
                        opened = open::<M>(&config, &brokers) => opened,
                        () = &mut shutdown => return Ok(()),
                    };
                    match opened {
                        Ok(c) => c,
                        Err(e @ ListenerError::QueueMismatch { .. }) => return Err(e),
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::error!(
                                queue = %config.queue,
                                error = %e,
                                retry_in_ms = delay.as_millis() as u64,
                                "cannot reconnect the {} listener",
                                M::LISTENER
                            );
                            if !pause(delay, &mut shutdown).await {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
            };
            let started = Instant::now();
            let result =
                consume::<M, _, _, _, _>(&config, &current, &mut handler, &mut shutdown).await;
            close(&current).await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if started.elapsed() > STABLE_AFTER {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        queue = %config.queue,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "{} listener lost its connection; reconnecting",
                        M::LISTENER
                    );
                    if !pause(delay, &mut shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The shutdown future, pinned and fused so that every wait can poll it.
type ShutdownFuture<'a, S> = Pin<&'a mut Fuse<S>>;

/// Connects to one of the brokers (one pass over them, the one shared
/// with the worker; after a lost connection the broker it was on is tried
/// last) and declares the listener's queues.
async fn open<M: Received>(
    config: &ListenerConfig,
    brokers: &Brokers,
) -> Result<Connection, ListenerError> {
    let properties =
        ConnectionProperties::default().with_connection_name(config.connection_name().into());
    let connected = brokers.connect(properties).await.map_err(|e| {
        if e.timed_out() {
            ListenerError::ConnectTimeout {
                url: brokers.shown(),
                after: CONNECT_TIMEOUT,
            }
        } else {
            ListenerError::Connect {
                url: brokers.shown(),
                cause: Box::new(e.into_cause()),
            }
        }
    })?;
    if brokers.len() > 1 {
        tracing::info!(queue = %config.queue, broker = %connected.shown_url, "{} listener connected", M::LISTENER);
    }
    let connection = connected.connection;
    let channel = connection
        .create_channel()
        .await
        .map_err(|cause| broker_error("open a channel", cause))?;
    let declared = declare::<M>(&connection, &channel, config).await;
    let _ = channel.close(200, "declared".into()).await;
    if let Err(e) = declared {
        close(&connection).await;
        return Err(e);
    }
    Ok(connection)
}

/// Closes a connection we are done with, without waiting long: a broker out
/// of reach would never answer.
async fn close(connection: &Connection) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "done".into())).await;
}

/// Declares the dead-letter exchange and queue, then the listener's queue
/// and its binding. Each failure is a channel error, so the next step would
/// fail too: the first one is returned.
async fn declare<M: Received>(
    connection: &Connection,
    channel: &Channel,
    config: &ListenerConfig,
) -> Result<(), ListenerError> {
    declare_dead_letters(connection, channel, config).await?;
    declare_listened_queue::<M>(connection, channel, config).await
}

/// Declares the quorum queue `name` with `args` (on channels of its own):
/// an existing queue that differs only in its initial group size is kept
/// as it is, with a warning.
async fn declare_queue(
    connection: &Connection,
    name: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    if let Some(kept) = declare_quorum_queue(connection, name, durable_queue, args).await? {
        tracing::warn!(queue = name, "quorum_initial_group_size: {kept}");
    }
    Ok(())
}

/// The app's dead-letter exchange (fanout) and queue, bound together.
async fn declare_dead_letters(
    connection: &Connection,
    channel: &Channel,
    config: &ListenerConfig,
) -> Result<(), ListenerError> {
    let dead = config.dead_letter_queue();
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    // An exchange of the app's own rather than the default exchange: writing
    // to the default exchange would let the app's user publish to any queue
    // of the vhost.
    channel
        .exchange_declare(
            dead.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await
        .map_err(|cause| broker_error(&format!("declare exchange {dead}"), cause))?;
    declare_queue(
        connection,
        &dead,
        replicated_quorum_arguments(config.quorum_initial_group_size),
    )
    .await
    .map_err(|cause| broker_error(&format!("declare queue {dead}"), cause))?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dead.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|cause| broker_error(&format!("bind queue {dead} to exchange {dead}"), cause))?;
    Ok(())
}

/// The listener's queue (quorum, delivery limit, dead-lettering to the
/// app's exchange), bound with [`Received::binding_key`].
async fn declare_listened_queue<M: Received>(
    connection: &Connection,
    channel: &Channel,
    config: &ListenerConfig,
) -> Result<(), ListenerError> {
    let dead = config.dead_letter_queue();
    let limit = config.max_attempts - 1;
    let mut args = replicated_quorum_arguments(config.quorum_initial_group_size);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    // RabbitMQ 3.x quorum queues have no delivery limit by default: a
    // message the handler always fails on would come back forever.
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit as i32));
    // At-least-once dead-lettering: the queue keeps a dead letter until the
    // dead-letter queue has it (at-most-once would drop it if that queue were
    // gone). It requires the reject-publish overflow mode, which changes
    // nothing without a length limit.
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_queue(connection, &config.queue, args)
        .await
        .map_err(|cause| {
            if soft_error(&cause) == Some(AMQPSoftError::PRECONDITIONFAILED) {
                ListenerError::QueueMismatch {
                    queue: config.queue.clone(),
                    limit,
                    dead_letter: dead.clone(),
                    cause: Box::new(cause),
                }
            } else {
                broker_error(&format!("declare queue {}", config.queue), cause)
            }
        })?;
    let key = M::binding_key(&config.app);
    channel
        .queue_bind(
            config.queue.as_str().into(),
            config.exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|cause| {
            if soft_error(&cause) == Some(AMQPSoftError::NOTFOUND) {
                ListenerError::NoExchange {
                    exchange: config.exchange.clone(),
                    setting: M::EXCHANGE_SETTING,
                }
            } else {
                broker_error(
                    &format!(
                        "bind queue {} to exchange {} with {key}",
                        config.queue, config.exchange
                    ),
                    cause,
                )
            }
        })?;
    Ok(())
}

/// The AMQP soft error (a channel error) behind `e`, if it is one.
fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// A refusal by the permissions, or another broker error, while doing `action`.
fn broker_error(action: &str, cause: lapin::Error) -> ListenerError {
    let action = action.to_owned();
    let refused = soft_error(&cause) == Some(AMQPSoftError::ACCESSREFUSED);
    let cause = Box::new(cause);
    if refused {
        ListenerError::Refused { action, cause }
    } else {
        ListenerError::Broker { action, cause }
    }
}

/// Why one connection's consuming ended: the connection or channel failed.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {cause}")]
struct ConnectionLost {
    /// What the listener was doing.
    action: &'static str,
    /// What lapin reported, or what happened.
    cause: String,
}

impl ConnectionLost {
    fn new(action: &'static str, cause: impl Display) -> ConnectionLost {
        ConnectionLost {
            action,
            cause: cause.to_string(),
        }
    }
}

/// Consumes on `connection` until `shutdown` (`Ok`) or a broker error.
async fn consume<M, F, Fut, E, S>(
    config: &ListenerConfig,
    connection: &Connection,
    handler: &mut F,
    shutdown: &mut ShutdownFuture<'_, S>,
) -> Result<(), ConnectionLost>
where
    M: Received,
    F: FnMut(Delivered<M>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
    S: Future<Output = ()>,
{
    let (channel, dead_letters, mut consumer) = start_consuming(config, connection).await?;
    tracing::info!(queue = %config.queue, "listening for {}s", M::WHAT);
    let dead = DeadLetters {
        channel: &dead_letters,
        exchange: config.dead_letter_queue(),
    };
    loop {
        let next = tokio::select! {
            biased;
            () = &mut *shutdown => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(ConnectionLost::new("the consumer failed", e)),
            None => {
                return Err(ConnectionLost::new(
                    "the consumer ended",
                    "cancelled by the broker (was the queue deleted?)",
                ));
            }
        };
        handle::<M, _, _, _, _>(config, &dead, delivery, handler, shutdown).await?;
    }
    // A message given back to the queue counts as a delivery on RabbitMQ
    // 3.x: enough restarts would dead-letter it unhandled. So stop the flow,
    // and hand the messages the broker had already sent to the handler.
    let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
    match tokio::time::timeout(CLOSE_TIMEOUT, cancel).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ConnectionLost::new("cannot cancel the consumer", e)),
        Err(_) => {
            return Err(ConnectionLost::new(
                "cannot cancel the consumer",
                "no answer from the broker",
            ));
        }
    }
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DRAIN_WAIT, consumer.next()).await {
        handle::<M, _, _, _, _>(config, &dead, delivery, handler, shutdown).await?;
    }
    for channel in [&channel, &dead_letters] {
        let closing = channel.close(200, "shutting down".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
    Ok(())
}

/// Opens the consuming channel (with the prefetch) and the confirm channel
/// for dead letters, and starts consuming.
async fn start_consuming(
    config: &ListenerConfig,
    connection: &Connection,
) -> Result<(Channel, Channel, lapin::Consumer), ConnectionLost> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| ConnectionLost::new("cannot open a channel", e))?;
    // Per-consumer prefetch (global: false): RabbitMQ 3.x refuses global QoS
    // on quorum queues with an error that closes the whole connection.
    channel
        .basic_qos(config.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| ConnectionLost::new("cannot set the prefetch", e))?;
    let dead_letters = connection
        .create_channel()
        .await
        .map_err(|e| ConnectionLost::new("cannot open a channel", e))?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| ConnectionLost::new("cannot enable publisher confirms", e))?;
    let consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| ConnectionLost::new("cannot consume", e))?;
    Ok((channel, dead_letters, consumer))
}

/// Where a listener sends what it gives up on.
struct DeadLetters<'a> {
    /// A channel in confirm mode.
    channel: &'a Channel,
    /// The app's dead-letter exchange.
    exchange: String,
}

impl DeadLetters<'_> {
    /// Publishes a copy of `delivery` with the reason in the error headers,
    /// and waits for the broker's confirm.
    async fn send(&self, delivery: &Delivery, error: &str, kind: &str) -> Result<(), String> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            names::ERROR_HEADER.into(),
            AMQPValue::LongString(LongString::from(names::error_header_value(error))),
        );
        headers.insert(
            names::ERROR_KIND_HEADER.into(),
            AMQPValue::LongString(LongString::from(kind)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                ShortString::from(delivery.routing_key.as_str()),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err("the broker refused the dead letter".to_owned()),
        }
    }
}

/// One delivery: parse it, call the handler, settle it.
async fn handle<M, F, Fut, E, S>(
    config: &ListenerConfig,
    dead: &DeadLetters<'_>,
    delivery: Delivery,
    handler: &mut F,
    shutdown: &mut ShutdownFuture<'_, S>,
) -> Result<(), ConnectionLost>
where
    M: Received,
    F: FnMut(Delivered<M>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
    S: Future<Output = ()>,
{
    let delivery_count = delivery_count(&delivery.properties);
    let message = match M::decode(&delivery.data) {
        Ok(message) => message,
        Err(why) => {
            tracing::warn!(
                queue = %config.queue,
                error = %why,
                "a message in the {what} queue is not a {what}: dead-lettered",
                what = M::WHAT
            );
            return give_up(dead, &delivery, &why, "invalid").await;
        }
    };
    let (event_id, session) = (message.event_id().to_string(), message.session().to_owned());
    let received = Delivered {
        message,
        delivery_count,
    };
    match handler(received).await {
        Ok(()) => settled(
            delivery.ack(BasicAckOptions::default()).await,
            "cannot ack a message",
        ),
        Err(e) => {
            let error = e.to_string();
            let attempt = delivery_count.saturating_add(1);
            if attempt >= config.max_attempts {
                tracing::error!(
                    queue = %config.queue,
                    %event_id,
                    %session,
                    attempt,
                    error = %error,
                    "the {what} handler failed on the last attempt: {what} dead-lettered",
                    what = M::WHAT
                );
                return give_up(dead, &delivery, &error, "failed").await;
            }
            tracing::warn!(
                queue = %config.queue,
                %event_id,
                %session,
                attempt,
                max_attempts = config.max_attempts,
                error = %error,
                "the {what} handler failed: the {what} will be delivered again",
                what = M::WHAT
            );
            let wait = (RETRY_PAUSE * attempt).min(config.max_backoff);
            if !shutdown.is_terminated() {
                // A shutdown requeues at once rather than holding the message.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut *shutdown => {}
                }
            }
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            settled(delivery.nack(requeue).await, "cannot requeue a message")
        }
    }
}

/// Dead-letters `delivery` with `error`, then acks it. If the copy cannot be
/// published, rejects it instead: the broker dead-letters it itself (without
/// the error headers).
async fn give_up(
    dead: &DeadLetters<'_>,
    delivery: &Delivery,
    error: &str,
    kind: &str,
) -> Result<(), ConnectionLost> {
    match dead.send(delivery, error, kind).await {
        Ok(()) => settled(
            delivery.ack(BasicAckOptions::default()).await,
            "cannot ack a dead-lettered message",
        ),
        Err(e) => {
            tracing::warn!(
                exchange = %dead.exchange,
                error = %e,
                "cannot publish the dead letter: rejecting it to the broker's dead-lettering"
            );
            settled(
                delivery.reject(BasicRejectOptions { requeue: false }).await,
                "cannot reject a message",
            )
        }
    }
}

/// An ack, nack or reject that did not reach the broker means the channel is
/// gone: the broker delivers the message again after the reconnect.
fn settled(result: lapin::Result<bool>, action: &'static str) -> Result<(), ConnectionLost> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConnectionLost::new(action, "the channel is closed")),
        Err(e) => Err(ConnectionLost::new(action, e)),
    }
}

/// Sleeps for `delay` unless `shutdown` resolves first; `false` if it did.
async fn pause<S: Future<Output = ()>>(
    delay: Duration,
    shutdown: &mut ShutdownFuture<'_, S>,
) -> bool {
    if shutdown.is_terminated() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = &mut *shutdown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_protocol_names() {
        let c = ListenerConfig::new("amqp://x", AppName::parse("shop").unwrap());
        assert_eq!(c.queue, "shop.revocations");
        assert_eq!(c.dead_letter_queue(), "shop.revocations.dead");
        assert_eq!(
            c.dead_letter_queue(),
            names::revoke_dead_letter_queue(&c.app)
        );
        assert_eq!(c.exchange, names::REVOCATIONS_EXCHANGE);
        assert_eq!((c.prefetch, c.max_attempts), (100, 5));
        assert_eq!(c.quorum_initial_group_size, 3);
        assert!(c.check().is_ok());

        let n = ListenerConfig::notices("amqp://x", AppName::parse("shop").unwrap());
        assert_eq!(n.queue, names::notice_queue(&n.app));
        assert_eq!(n.dead_letter_queue(), "shop.notices.dead");
        assert_eq!(n.exchange, names::NOTICES_EXCHANGE);
        assert_eq!((n.prefetch, n.max_attempts), (c.prefetch, c.max_attempts));
    }

    #[test]
    fn unusable_values_are_refused_naming_the_field() {
        let base = ListenerConfig::new("amqp://x", AppName::parse("shop").unwrap());
        let err = |c: ListenerConfig| c.check().unwrap_err().to_string();
        assert_eq!(
            err(ListenerConfig {
                max_attempts: 0,
                ..base.clone()
            }),
            "invalid listener configuration: max_attempts: 0 is not between 1 and 2147483647"
        );
        assert_eq!(
            err(ListenerConfig {
                quorum_initial_group_size: 0,
                ..base.clone()
            }),
            "invalid listener configuration: quorum_initial_group_size: 0 is not between 1 and \
             2147483647"
        );
        assert_eq!(
            err(ListenerConfig {
                prefetch: 0,
                ..base.clone()
            }),
            "invalid listener configuration: prefetch: must be at least 1"
        );
        assert!(
            err(ListenerConfig {
                queue: String::new(),
                ..base
            })
            .starts_with("invalid listener configuration: queue: \"\" must be 1 to 250 bytes")
        );
    }
}
