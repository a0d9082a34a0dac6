//! The runtime: builds a worker and runs its tasks until the shutdown.
//!
//! - [`builder`]: [`WorkerBuilder`] and [`Worker`], and the order in which
//!   the tasks start and stop;
//! - [`supervisor`]: the one reconnect loop the consumer and the relay run
//!   under;
//! - [`housekeeping`]: pings, gauges and retention on a timer;
//! - [`http`]: `/health/live`, `/health/ready` and `/metrics`.
//!
//! It sits above the consumer ([`crate::consumer`]) and the outbox relay
//! ([`crate::relay`]), which share [`crate::state::WorkerState`] and know
//! nothing of it.

mod builder;
mod housekeeping;
mod http;
mod supervisor;

pub use builder::{Worker, WorkerBuilder};
/// Health and metrics, for `session-guard api`, which runs no worker.
pub(crate) use http::serve as serve_health;
