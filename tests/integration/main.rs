//! Integration tests against the real RabbitMQ and PostgreSQL.
//! Each test has its own database and its own exchanges and queues.

mod helpers;
mod listening;
mod load;
mod private_broker;

mod api;
mod bad_input;
mod batching;
mod check_config;
mod claims;
mod client_api;
mod client_listener;
mod client_notices;
mod cluster;
mod compose;
mod contract;
mod demo;
mod docs_drift;
mod enforcement;
mod failover;
mod faults;
mod hosts;
mod layers;
mod lifecycle;
mod monitoring;
mod nodelay;
mod notices;
mod operations;
mod operator_commands;
mod publisher;
mod refusals;
mod repeat;
mod retention;
mod roundtrip;
mod rules;
