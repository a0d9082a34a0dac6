//! What the worker's tasks share: the consumer's batches, the outbox relay
//! and housekeeping all read the settings, use the pool and report to
//! readiness; batches also wake the relay.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

use session_guard_amqp::brokers::Brokers;

use crate::apply::Enforcement;
use crate::configuration::Settings;
use crate::health::Health;

/// State shared by the consumer, the relay and housekeeping, built once by
/// [`crate::runtime::WorkerBuilder`].
pub(crate) struct WorkerState {
    /// The settings the worker was built with; never changed while it runs.
    pub settings: Settings,
    /// Connections to PostgreSQL: one per batch in flight, plus the relay's
    /// and housekeeping's.
    pub pool: PgPool,
    /// The limits and rule hooks every batch is decided by.
    pub enforcement: Enforcement,
    /// Wakes the relay as soon as a batch wrote to the outbox, so that a
    /// revoke does not wait for the relay's next sweep.
    pub relay_wake: Notify,
    /// What readiness reports; every task updates its own part.
    pub health: Arc<Health>,
    /// The brokers of `amqp.url`, as the consumer connects to them: a
    /// reconnection tries the broker the consumer was on last.
    pub consumer_brokers: Brokers,
    /// The same, for the relay (its connection is lost on its own).
    pub relay_brokers: Brokers,
}
