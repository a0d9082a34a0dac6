//! What the sessions API's handlers share: the pool, the rule hooks, the
//! handle key, the checked tokens, and a way to wake the relay of the
//! worker it runs in.

use std::sync::Arc;

use sqlx::PgPool;

use super::token_cache::TokenCache;
use crate::apply::Enforcement;
use crate::db;
use crate::domain::handle::HandleKey;

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
    /// Checked tokens, emptied at every change to `api_tokens`.
    pub tokens: TokenCache,
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
        let handles = db::api_key::handle_key(&pool).await?;
        Ok(ApiState {
            tokens: TokenCache::start(&pool),
            pool,
            enforcement,
            handles,
            wake_relay,
        })
    }

    /// Tells the relay there is a revoke in the outbox.
    pub(super) fn relay_wake(&self) {
        if let Some(wake) = &self.wake_relay {
            wake();
        }
    }
}
