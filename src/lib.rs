//! session-guard: enforces how many sessions a user may hold at once, for any
//! number of web apps, from login/request/logout events on RabbitMQ, and keeps
//! a log of every session in PostgreSQL.
//!
//! - [`domain`]: the wire contract, session records and the decision core (pure);
//! - [`store`]: PostgreSQL, the batch transaction and the outbox;
//! - [`broker`]: RabbitMQ topology and confirmed publishing;
//! - [`worker`]: the consumer loop, batching, acks and shutdown;
//! - [`relay`]: the outbox relay that publishes revoke events;
//! - [`health`]: readiness and the HTTP endpoint for it and the metrics;
//! - [`metric`]: every exported metric, defined once;
//! - [`sweep`]: retention by age (`retention.max_age`);
//! - [`configuration`], [`telemetry`], [`terminal`], [`cli`]: the edges.

// Sockets, descriptors and FFI are left to the crates that own them.
#![forbid(unsafe_code)]

pub mod backoff;
mod batch;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod configuration;
pub mod demo;
pub mod domain;
pub mod health;
pub mod metric;
pub mod refusal;
mod relay;
pub mod shutdown;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod terminal;
pub mod worker;

pub use configuration::Settings;
pub use worker::{Worker, WorkerBuilder};
