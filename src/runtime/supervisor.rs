//! The one reconnect loop: runs a task's connection after connection, with
//! backoff between failures, until it returns cleanly or the shutdown ends
//! it. Both the consumer and the outbox relay run under it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use session_guard_amqp::backoff::Backoff;

use crate::refusal::Refusal;
use crate::shutdown::{CancellationToken, pause};
use crate::state::WorkerState;

/// A connection that lived this long before failing resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What a failure during the shutdown leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenStopping {
    /// Nothing more: no attempt starts once the shutdown began.
    GiveUp,
    /// One more attempt, at once: the relay's chance to flush what the last
    /// batches wrote; whatever is left waits for the next worker's sweep.
    TryOnceMore,
}

/// A task the supervisor keeps running.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Supervised {
    /// How readiness names the task's refusals ("consumer", "relay").
    pub task: &'static str,
    /// How its log lines name it ("consumer", "outbox relay").
    pub label: &'static str,
    /// What a failure during the shutdown leads to.
    pub when_stopping: WhenStopping,
}

/// Runs `attempt` (one connection's worth of the task's work) until it
/// returns `Ok` or the shutdown ends it; after each failure, pauses with
/// backoff (cut short by the shutdown) and tries again. An attempt sets the
/// flag it is given once it got through its setup. A refusal (credentials,
/// permissions) before any attempt got that far is sent to `fatal`, which
/// ends the worker; after it, a refusal is retried like any error
/// (credentials may be rotating), but said to be one.
pub(crate) async fn supervise<F, Fut>(
    state: &WorkerState,
    fatal: &UnboundedSender<anyhow::Error>,
    task: Supervised,
    shutdown: &CancellationToken,
    mut attempt: F,
) where
    F: FnMut(Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(state.settings.worker.max_backoff());
    let got_through = Arc::new(AtomicBool::new(false));
    let mut last_try = false;
    loop {
        if task.when_stopping == WhenStopping::GiveUp && shutdown.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let Err(e) = attempt(got_through.clone()).await else {
            return;
        };
        // A connection that worked for a while starts the backoff over; one
        // that fails right after setup keeps doubling it.
        if started.elapsed() > STABLE_AFTER {
            backoff.reset();
        }
        let refusal = Refusal::find(&e);
        if let Some(refusal) = &refusal
            && !got_through.load(Ordering::Relaxed)
            && !shutdown.is_cancelled()
        {
            let _ = fatal.send(anyhow::anyhow!(refusal.explain(&state.settings)));
            return;
        }
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        match &refusal {
            Some(refusal) => tracing::error!(
                %refusal,
                retry_in_ms,
                "{} refused: retrying, in case the credentials are being rotated",
                task.label
            ),
            None => tracing::error!(
                error = format!("{e:#}"),
                retry_in_ms,
                "{} stopped",
                task.label
            ),
        }
        state.health.set_refusal(task.task, refusal);
        if shutdown.is_cancelled() {
            match task.when_stopping {
                WhenStopping::TryOnceMore if !last_try => {
                    last_try = true;
                    continue;
                }
                _ => return,
            }
        }
        // Cut short by the shutdown: the loop decides what comes next.
        pause(delay, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Settings;
    use std::sync::atomic::AtomicUsize;

    /// A worker's state with the default settings; the pool never connects.
    fn state() -> WorkerState {
        let mut settings = Settings::load_from(None, []).unwrap();
        settings.worker.max_backoff_ms = 200;
        WorkerState {
            consumer_brokers: session_guard_amqp::brokers::Brokers::parse(&settings.amqp.url)
                .unwrap(),
            relay_brokers: session_guard_amqp::brokers::Brokers::parse(&settings.amqp.url).unwrap(),
            pool: sqlx::postgres::PgPoolOptions::new()
                .connect_lazy(&settings.database.url)
                .unwrap(),
            enforcement: crate::apply::Enforcement::from_settings(&settings, &[]).unwrap(),
            settings,
            relay_wake: tokio::sync::Notify::new(),
            health: Arc::default(),
        }
    }

    /// How many attempts a task that always fails gets, the shutdown coming
    /// `after` the start (`None`: already there).
    async fn attempts(when_stopping: WhenStopping, after: Option<Duration>) -> usize {
        let state = state();
        let (fatal, _errors) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        match after {
            None => shutdown.cancel(),
            Some(after) => {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    shutdown.cancel();
                });
            }
        }
        let task = Supervised {
            task: "test",
            label: "test task",
            when_stopping,
        };
        let count = AtomicUsize::new(0);
        supervise(&state, &fatal, task, &shutdown, |_| {
            count.fetch_add(1, Ordering::Relaxed);
            async { Err(anyhow::anyhow!("down")) }
        })
        .await;
        count.into_inner()
    }

    #[tokio::test]
    async fn during_the_shutdown_the_relay_gets_one_more_attempt_and_the_consumer_none() {
        assert_eq!(attempts(WhenStopping::GiveUp, None).await, 0);
        assert_eq!(attempts(WhenStopping::TryOnceMore, None).await, 2);
        // The shutdown cuts the first pause short: the consumer stops there,
        // the relay tries again at once, and once more after that failure.
        let during_pause = Some(Duration::from_millis(20));
        assert_eq!(attempts(WhenStopping::GiveUp, during_pause).await, 1);
        assert_eq!(attempts(WhenStopping::TryOnceMore, during_pause).await, 3);
    }

    #[tokio::test]
    async fn an_attempt_that_returns_ok_ends_the_task() {
        let state = state();
        let (fatal, _errors) = tokio::sync::mpsc::unbounded_channel();
        let task = Supervised {
            task: "test",
            label: "test task",
            when_stopping: WhenStopping::TryOnceMore,
        };
        let count = AtomicUsize::new(0);
        supervise(&state, &fatal, task, &CancellationToken::new(), |_| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            async move {
                match n {
                    0 => Err(anyhow::anyhow!("down")),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(count.into_inner(), 2);
    }
}
