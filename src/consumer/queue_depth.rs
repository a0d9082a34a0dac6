//! The queue gauges ([`metric::QUEUE_MESSAGES`]): how many messages wait in
//! the events queue (a backlog the workers are not keeping up with) and in
//! the dead-letter queue (messages for an operator to look at). RabbitMQ's
//! own metrics say it too, but only where its Prometheus plugin is enabled
//! and scraped; the worker already talks to the broker, so its `/metrics`
//! carry everything the dashboard and the alerts need.

use std::time::Duration;

use lapin::{Channel, Connection};

use crate::broker;
use crate::configuration::AmqpSettings;
use crate::metric;

/// How often the queues are counted: as often as housekeeping refreshes the
/// outbox gauges, so both kinds of backlog are equally fresh.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Counts the queues on a channel of its own of the consumer's connection,
/// every [`COUNT_EVERY`], until dropped (the consumer's connection ends with
/// it). A failed count ends the counting, not the consumer: the next
/// connection starts it again.
pub(super) struct QueueDepth(tokio::task::JoinHandle<()>);

impl QueueDepth {
    pub(super) async fn start(
        connection: &Connection,
        settings: &AmqpSettings,
    ) -> anyhow::Result<QueueDepth> {
        let channel = connection.create_channel().await?;
        let queues = [
            ("events", settings.events_queue.clone()),
            ("dead_letter", settings.dead_letter_queue.clone()),
        ];
        Ok(QueueDepth(tokio::spawn(count(channel, queues))))
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn count(channel: Channel, queues: [(&'static str, String); 2]) {
    loop {
        for (role, name) in &queues {
            match broker::ready_messages(&channel, name).await {
                Ok(n) => {
                    metrics::gauge!(metric::QUEUE_MESSAGES.name, "queue" => *role).set(f64::from(n))
                }
                Err(e) => {
                    tracing::debug!(error = format!("{e:#}"), "stopped counting the queues");
                    return;
                }
            }
        }
        tokio::time::sleep(COUNT_EVERY).await;
    }
}
