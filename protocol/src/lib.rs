//! The wire contract of session-guard, defined once: what apps publish
//! (session events), what they receive (revoke events), what the worker adds
//! to a message it cannot accept (dead-letter headers), and the default
//! names of the exchanges and queues.
//!
//! The worker decodes events with [`event::SessionEvent::decode`]; apps build
//! them with [`event::EventBody`] (or the `session-guard-client` crate). No
//! I/O here: no AMQP, no database, no runtime.
//!
//! The same contract, for apps in any language: JSON Schemas generated from
//! these types ([`schema`], checked in as `schema/*.schema.json`) and the
//! AsyncAPI document `docs/asyncapi.yaml` that ties them to the exchanges.
//! The sessions API's request and answer bodies are in [`api`]; their
//! contract is the OpenAPI document `docs/openapi.json`.

pub mod api;
pub mod dead_letter;
pub mod event;
pub mod names;
pub mod notice;
pub mod revoke;
pub mod schema;
