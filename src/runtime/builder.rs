//! Building a worker (rule hooks, database, migrations) and running it: the
//! order in which its tasks start and stop.

use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::task::TaskTracker;

use super::supervisor::{Supervised, WhenStopping, supervise};
use super::{housekeeping, http};
use crate::api;
use session_guard_amqp::brokers::Brokers;

use anyhow::Context as _;

use crate::apply::{Enforcement, Notices};
use crate::configuration::Settings;
use crate::consumer;
use crate::db;
use crate::domain::limits::RuleHook;
use crate::health::Health;
use crate::refusal::Refusal;
use crate::relay;
use crate::shutdown::CancellationToken;
use crate::state::WorkerState;

/// Most time `run` waits for the pool to close once the tasks are done.
const POOL_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The consumer, as the supervisor runs it: it never starts once the
/// shutdown began.
const CONSUMER: Supervised = Supervised {
    task: "consumer",
    label: "consumer",
    when_stopping: WhenStopping::GiveUp,
};

/// The outbox relay, as the supervisor runs it: a failure during the
/// shutdown gets one more attempt, to publish what the last batches wrote.
const RELAY: Supervised = Supervised {
    task: "relay",
    label: "outbox relay",
    when_stopping: WhenStopping::TryOnceMore,
};

/// Builds a [`Worker`], with rule hooks of the embedding program's own.
pub struct WorkerBuilder {
    /// The settings the worker will run with.
    settings: Settings,
    /// Hooks registered by the embedding program, beside the built-in ones.
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
        for (old, new) in &self.settings.deprecated {
            tracing::warn!(
                deprecated = old,
                use_instead = new,
                "the setting {old} is deprecated: it is read as {new}; rename it"
            );
        }
        let mut enforcement = Enforcement::from_settings(&self.settings, &self.hooks)?;
        tracing::info!(hooks = ?enforcement.hooks.names(), enforce = enforcement.enforce, "rule hooks");
        let health = Arc::new(Health::default());
        // A pool on several hosts says at once when it has no primary; it
        // comes back up with the next batch or ping that gets through.
        let down = health.clone();
        let lost: db::follow::Lost = Arc::new(move || down.set_database(false));
        let pool =
            match db::connect_and_migrate_reporting(&self.settings.database, Some(lost)).await {
                Ok(pool) => pool,
                Err(e) => match Refusal::find(&e) {
                    Some(refusal) => anyhow::bail!(refusal.explain(&self.settings)),
                    None => return Err(e),
                },
            };
        health.set_database(true);
        if self.settings.notices.enabled {
            // Notices name sessions by the sessions API's handle, whether
            // this worker serves the API or not.
            let handles = db::api_key::handle_key(&pool)
                .await
                .context("cannot read the session handle key (api_keys)")?;
            enforcement.notices = Notices::from_settings(&self.settings, handles);
        }
        let brokers = || {
            Brokers::parse(&self.settings.amqp.url).map_err(|e| anyhow::anyhow!("amqp.url: {e}"))
        };
        let (consumer_brokers, relay_brokers) = (brokers()?, brokers()?);
        Ok(Worker {
            state: Arc::new(WorkerState {
                consumer_brokers,
                relay_brokers,
                settings: self.settings,
                pool,
                enforcement,
                relay_wake: Notify::new(),
                health,
            }),
        })
    }
}

/// A session-guard worker, ready to run.
pub struct Worker {
    /// What its tasks share.
    state: Arc<WorkerState>,
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
        &self.state.pool
    }

    /// The worker's health, as `/health/ready` reports it.
    pub fn health(&self) -> Arc<Health> {
        self.state.health.clone()
    }

    /// Consumes and relays until `shutdown` resolves, then stops consuming,
    /// finishes and acks the batch in flight, flushes the outbox and returns.
    /// Returns an error, after the same stop, if RabbitMQ refused the
    /// worker's credentials or permissions before it ever got through.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let state = self.state;
        // Where a task sends the error that must end `run`: PostgreSQL or
        // RabbitMQ refused the worker before it ever got through.
        let (fatal, mut fatal_errors) = mpsc::unbounded_channel();
        state.health.publish_gauges();
        let running = Running::start(&state, fatal);

        let fatal = tokio::select! {
            () = shutdown => None,
            Some(error) = fatal_errors.recv() => Some(error),
        };
        tracing::info!("stopping: finishing in-flight events");
        state.health.set_stopping();
        running.stop(&state).await;
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The worker's tasks while it runs, and what stops each of them.
struct Running {
    /// Stops the consumer and housekeeping, first.
    stop_consuming: CancellationToken,
    /// Stops the relay, once the consumer has acked its last batch, so that
    /// the revokes that batch wrote are still published.
    stop_relaying: CancellationToken,
    /// Stops the HTTP endpoint, last: readiness says "shutting down" until
    /// the worker is gone.
    stop_serving: CancellationToken,
    /// The consumer's task, awaited first.
    consumer: JoinHandle<()>,
    /// The relay's task, awaited once the consumer is done.
    relay: JoinHandle<()>,
    /// Every task the graceful stop waits for.
    tasks: TaskTracker,
    /// To end every task at once when the graceful stop takes too long.
    aborts: Vec<AbortHandle>,
}

impl Running {
    /// Starts the consumer, the relay, housekeeping and (if `http.listen`
    /// and `api.listen` are set) the HTTP endpoint and the sessions API.
    fn start(state: &Arc<WorkerState>, fatal: UnboundedSender<anyhow::Error>) -> Running {
        let stop_consuming = CancellationToken::new();
        let stop_relaying = CancellationToken::new();
        let stop_serving = CancellationToken::new();
        let tasks = TaskTracker::new();
        let consumer = tasks.spawn({
            let (state, fatal, stop) = (state.clone(), fatal.clone(), stop_consuming.clone());
            async move {
                supervise(&state, &fatal, CONSUMER, &stop, |consumed| {
                    let (state, stop) = (state.clone(), stop.clone());
                    async move {
                        let result = consumer::consume(&state, &stop, &consumed).await;
                        // However the attempt ended, nothing consumes now.
                        state.health.set_broker(false);
                        result
                    }
                })
                .await;
            }
        });
        let relay = tasks.spawn({
            let (state, stop) = (state.clone(), stop_relaying.clone());
            async move {
                supervise(&state, &fatal, RELAY, &stop, |connected| {
                    let (state, stop) = (state.clone(), stop.clone());
                    async move { relay::relay(&state, &stop, &connected).await }
                })
                .await;
            }
        });
        let housekeeping = tasks.spawn({
            let (state, stop) = (state.clone(), stop_consuming.clone());
            async move { housekeeping::run(&state, &stop).await }
        });
        tasks.close();
        let listen = &state.settings.http.listen;
        if !listen.is_empty() {
            // Not among the tasks waited for: it stops after them, and a
            // client that holds its connection must not hold up the exit.
            tokio::spawn(http::serve(
                listen.clone(),
                state.health.clone(),
                stop_serving.clone(),
            ));
        }
        if !state.settings.api.listen.is_empty() {
            // Like the health endpoint: stops last, not waited for.
            tokio::spawn(serve_api(state.clone(), stop_serving.clone()));
        }
        Running {
            aborts: vec![
                consumer.abort_handle(),
                relay.abort_handle(),
                housekeeping.abort_handle(),
            ],
            stop_consuming,
            stop_relaying,
            stop_serving,
            consumer,
            relay,
            tasks,
        }
    }

    /// Stops the tasks in order within `worker.shutdown_timeout` (ending
    /// them at once past it), closes the pool, then stops serving.
    async fn stop(self, state: &WorkerState) {
        let Running {
            stop_consuming,
            stop_relaying,
            stop_serving,
            consumer,
            relay,
            tasks,
            aborts,
        } = self;
        stop_consuming.cancel();
        let timeout = state.settings.worker.shutdown_timeout();
        let graceful = async {
            if let Err(e) = consumer.await {
                tracing::error!(error = %e, "consumer task failed");
            }
            stop_relaying.cancel();
            if let Err(e) = relay.await {
                tracing::error!(error = %e, "relay task failed");
            }
            tasks.wait().await;
        };
        if tokio::time::timeout(timeout, graceful).await.is_err() {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "shutdown timed out; unacked events will be redelivered and unpublished \
                 revokes stay in the outbox"
            );
            for task in &aborts {
                task.abort();
            }
        } else {
            tracing::info!("stopped cleanly");
        }
        // Bounded: an aborted task may not have returned its connection.
        let _ = tokio::time::timeout(POOL_CLOSE_WAIT, state.pool.close()).await;
        stop_serving.cancel();
    }
}

/// Serves the sessions API beside the worker, with the worker's rule hooks,
/// waking its relay after each revoke. A port that cannot be bound (or a
/// handle key that cannot be read) is logged, not fatal: the API must not
/// stop the worker; `session-guard api` is the way to insist on it.
async fn serve_api(state: Arc<WorkerState>, shutdown: CancellationToken) {
    let listen = state.settings.api.listen.clone();
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot serve the sessions API; going on without");
            return;
        }
    };
    let wake: Arc<dyn Fn() + Send + Sync> = {
        let state = state.clone();
        Arc::new(move || state.relay_wake.notify_one())
    };
    // A pool of its own: requests never wait behind a batch for a
    // connection, and never hold one a batch needs.
    let pool = match db::connect_planning(&state.settings.api_database(), db::Planning::Cached)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot serve the sessions API; going on without");
            return;
        }
    };
    let api = match api::ApiState::new(pool.clone(), state.enforcement.clone(), Some(wake)).await {
        Ok(api) => Arc::new(api),
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot serve the sessions API; going on without");
            return;
        }
    };
    if let Err(e) = api::serve(api, state.settings.api.clone(), listener, shutdown).await {
        tracing::warn!(%listen, error = %e, "the sessions API stopped");
    }
    pool.close().await;
}
