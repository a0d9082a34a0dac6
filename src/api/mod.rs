//! The sessions API (`/v1/...`): a user's sessions across apps, ending
//! them (reason `user`, through the same revoke path as every other), and
//! their limits, for apps holding a bearer token. Served by `run` when
//! `api.listen` is set and alone by `session-guard api`; stateless apart
//! from the database, so any number of servers may share the load.
//!
//! - [`router`]: the routes, their layers (body limit, timeout, request
//!   log, metrics) and serving them;
//! - [`auth`]: the bearer token and its scopes; [`token`]: making and
//!   hashing tokens (pure); [`token_cache`]: checked tokens, emptied on
//!   every change;
//! - [`handle`], [`cursor`]: the opaque names of sessions and pages (a
//!   session id is never shown);
//! - [`sessions`], [`limits`]: the handlers; [`device`]: the user agent,
//!   read; [`input`]: bodies and parameters, checked;
//! - [`problem`]: errors as `application/problem+json`;
//! - [`state`]: what the handlers share ([`ApiState`]);
//! - [`openapi`]: what the OpenAPI document holds besides the routes.
//!
//! It sits beside [`crate::runtime`], which may start it; it must not
//! import the consumer or the relay.

pub mod auth;
pub mod cursor;
pub mod input;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod router;
pub mod sessions;
pub mod state;
pub mod token;
pub mod token_cache;

pub use router::{openapi_document, serve};
pub use state::ApiState;
