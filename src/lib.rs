//! session-guard: enforces how many sessions a user may hold at once, for any
//! number of web apps, from login/request/logout events on RabbitMQ, and keeps
//! a log of every session in PostgreSQL.
//!
//! - [`domain`]: the wire contract, session records and the decision core (pure);
//! - [`apply`]: applying a batch of events (plan, load, decide, write), and
//!   operators' revocations through the same steps;
//! - [`db`]: the database statements, by table or concern;
//! - [`broker`]: RabbitMQ topology and confirmed publishing;
//! - [`consumer`]: consuming events in batches, decoding, acks and dead letters;
//! - [`relay`]: the outbox relay that publishes revoke events;
//! - [`state`]: what the consumer, the relay and housekeeping share;
//! - [`runtime`]: the worker's builder, the reconnect supervisor,
//!   housekeeping and the HTTP endpoint (health and metrics), above all of
//!   these;
//! - [`api`]: the sessions API (`/v1/...`) for apps: list and end a user's
//!   sessions, their limits; served by `run` and `api`, beside the runtime;
//! - [`health`]: what readiness reports;
//! - [`shutdown`]: the signals and the cancellation token that stop the worker;
//! - [`metric`]: every exported metric, defined once;
//! - [`sweep`]: retention by age (`retention.max_age`);
//! - [`configuration`], [`telemetry`], [`terminal`]: the edges;
//! - [`cli`]: the command line, one module per command.

// Sockets, descriptors and FFI are left to the crates that own them.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod broker;
pub mod cli;
pub mod configuration;
mod consumer;
pub mod db;
pub mod domain;
pub mod health;
pub mod metric;
pub mod refusal;
mod relay;
mod runtime;
pub mod shutdown;
mod state;
pub mod sweep;
pub mod telemetry;
pub mod terminal;

pub use configuration::Settings;
pub use runtime::{Worker, WorkerBuilder};
