//! The sessions API (`/v1/...`): a user's sessions across apps, ending
//! them (reason `user`, through the same revoke path as every other), and
//! their limits, for apps holding a bearer token. Served by `run` when
//! `api.listen` is set and alone by `session-guard api`; stateless apart
//! from the database, so any number of servers may share the load.
//!
//! - [`router`]: the routes, their layers (body limit, timeout, request
//!   log, metrics) and serving them;
//! - [`auth`]: the bearer token and its scopes; [`token`]: making and
//!   hashing tokens (pure);
//! - [`handle`], [`cursor`]: the opaque names of sessions and pages (a
//!   session id is never shown);
//! - [`sessions`], [`limits`]: the handlers; [`device`]: the user agent,
//!   read; [`input`]: bodies and parameters, checked;
//! - [`problem`]: errors as `application/problem+json`;
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//!
//! It sits beside [`crate::runtime`], which may start it; it must not
//! import the consumer or the relay.

pub mod auth;
pub mod cursor;
pub mod device;
pub mod handle;
pub mod input;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod router;
pub mod sessions;
pub mod token;

use std::sync::Arc;

use sqlx::PgPool;

use crate::apply::Enforcement;
use crate::db;
use handle::HandleKey;

pub use router::serve;

/// What the handlers share.
pub struct ApiState {
    /// The session log.
    pub pool: PgPool,
    /// What a revoke records as the limit in force, and what the limits
    /// routes evaluate: the worker's own (with its hooks) under `run`, the
    /// built-in hooks under `api`.
    pub enforcement: Enforcement,
    /// The key session handles are sealed with, shared by every server.
    pub handles: HandleKey,
    /// Wakes the outbox relay of the worker this API runs in (`run`), so a
    /// revoke goes out at once; `None` under `api`, where the workers'
    /// relays find it on their next sweep.
    pub wake_relay: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl ApiState {
    /// The state for `pool`, with the handle key read from the database
    /// (created there by the first server to start).
    pub async fn new(
        pool: PgPool,
        enforcement: Enforcement,
        wake_relay: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> anyhow::Result<ApiState> {
        let stored = db::api_key::handle_key(&pool, &HandleKey::random_bytes()).await?;
        let handles = HandleKey::from_bytes(&stored)
            .ok_or_else(|| anyhow::anyhow!("the stored session handle key is not 64 bytes"))?;
        Ok(ApiState {
            pool,
            enforcement,
            handles,
            wake_relay,
        })
    }

    /// Tells the relay there is a revoke in the outbox.
    fn relay_wake(&self) {
        if let Some(wake) = &self.wake_relay {
            wake();
        }
    }
}
