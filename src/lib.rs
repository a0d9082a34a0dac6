//! session-guard: enforces how many sessions a user may hold at once, for any
//! number of web apps, from login/request/logout events on RabbitMQ, and keeps
//! a log of every session in PostgreSQL.
//!
//! - [`domain`]: the wire contract, session records and the decision core (pure);
//! - [`apply`]: applying a batch of events (plan, load, decide, write), and
//!   operators' revocations through the same steps;
//! - [`db`]: the database statements, by table or concern;
//! - [`broker`]: RabbitMQ topology and confirmed publishing;
//! - [`worker`]: the consumer loop, batching, acks and shutdown;
//! - [`relay`]: the outbox relay that publishes revoke events;
//! - [`health`]: readiness and the HTTP endpoint for it and the metrics;
//! - [`metric`]: every exported metric, defined once;
//! - [`sweep`]: retention by age (`retention.max_age`);
//! - [`configuration`], [`telemetry`], [`terminal`]: the edges;
//! - [`cli`]: the command line, one module per command.

// Sockets, descriptors and FFI are left to the crates that own them.
#![forbid(unsafe_code)]

pub mod apply;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod configuration;
pub mod db;
pub mod domain;
pub mod health;
pub mod metric;
pub mod refusal;
mod relay;
pub mod shutdown;
pub mod sweep;
pub mod telemetry;
pub mod terminal;
pub mod worker;

pub use configuration::Settings;
pub use worker::{Worker, WorkerBuilder};
