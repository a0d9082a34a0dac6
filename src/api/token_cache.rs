//! Checked tokens kept between requests, so that a request costs one round
//! trip to PostgreSQL (its own query) instead of two.
//!
//! A token's row changes rarely (created, revoked), and a revoke must apply
//! at once on every server. A trigger on `api_tokens` notifies
//! [`db::tokens::CHANGED_CHANNEL`] at the commit of every change, by the
//! CLI or by hand, and each server listening there empties its cache when
//! it hears it. While that listening connection is down (not yet up, lost,
//! reconnecting) nothing is cached and every request reads the row, so a
//! notification missed in a gap cannot leave a revoked token working. An
//! entry also expires after [`ENTRY_TTL`]: the bound for a connection that
//! died without a word (no reset, no error yet). Only live tokens are
//! cached: an unknown or revoked one is read each time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::AbortHandle;

use session_guard_amqp::backoff::Backoff;

use crate::db::{self, tokens::TokenRow};

/// How long an entry is trusted without a notification: a revoked token
/// works at most this long after the listening connection died silently.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);
/// Most tokens kept; past it the cache starts over (deployments hold tens).
const MAX_ENTRIES: usize = 10_000;
/// Longest pause between attempts to listen again.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The tokens one server has checked, emptied on every change.
pub struct TokenCache {
    /// What the requests and the listening task share.
    shared: Arc<Shared>,
    /// The listening task, stopped with the cache.
    listening: AbortHandle,
}

#[derive(Default)]
struct Shared {
    /// Live tokens by hash, with when each was read. The generation of the
    /// cache is in the same lock: an entry read before a change must not
    /// be stored after the change emptied the cache.
    entries: Mutex<Entries>,
    /// Whether the listening connection is up: nothing is cached otherwise.
    up: AtomicBool,
}

#[derive(Default)]
struct Entries {
    /// Live tokens by the SHA-256 of their text.
    rows: HashMap<[u8; 32], (TokenRow, Instant)>,
    /// Bumped whenever the cache is emptied.
    generation: u64,
}

impl Shared {
    fn empty(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.rows.clear();
        entries.generation += 1;
    }
}

impl TokenCache {
    /// A cache for the tokens of `pool`'s database, listening for changes
    /// on a connection of its own.
    pub fn start(pool: &PgPool) -> TokenCache {
        let shared = Arc::new(Shared::default());
        let options = (*pool.connect_options()).clone();
        let listening = tokio::spawn(listen(shared.clone(), options)).abort_handle();
        TokenCache { shared, listening }
    }

    /// The live token whose hash is `sha256`: from the cache while it is
    /// listening and the entry is fresh, from the database otherwise.
    pub async fn find_live(
        &self,
        pool: &PgPool,
        sha256: &[u8; 32],
    ) -> sqlx::Result<Option<TokenRow>> {
        let generation = {
            let entries = self.lock();
            if self.shared.up.load(Ordering::Acquire)
                && let Some((row, read)) = entries.rows.get(sha256)
                && read.elapsed() < ENTRY_TTL
            {
                return Ok(Some(row.clone()));
            }
            entries.generation
        };
        let row = db::tokens::find_live(pool, sha256).await?;
        if let Some(row) = &row {
            let mut entries = self.lock();
            // Not if the cache was emptied meanwhile (the row may predate
            // the change) or is not listening now.
            if entries.generation == generation && self.shared.up.load(Ordering::Acquire) {
                if entries.rows.len() >= MAX_ENTRIES {
                    entries.rows.clear();
                }
                entries.rows.insert(*sha256, (row.clone(), Instant::now()));
            }
        }
        Ok(row)
    }

    /// Whether changes are being heard (and tokens cached).
    pub fn listening(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        self.listening.abort();
    }
}

/// Listens for changes to `api_tokens` for as long as the cache lives,
/// on a connection apart from the pool's; after a loss, empties the cache,
/// stops caching and listens again with backoff.
async fn listen(shared: Arc<Shared>, options: sqlx::postgres::PgConnectOptions) {
    let mut backoff = Backoff::new(MAX_RETRY);
    loop {
        match subscribe(&options).await {
            Ok(mut listener) => {
                // Anything cached before now may have missed a change.
                shared.empty();
                shared.up.store(true, Ordering::Release);
                backoff.reset();
                // `Ok(None)`: the connection was lost (and notifications
                // with it); an error: it could not be used.
                while let Ok(Some(_)) = listener.try_recv().await {
                    shared.empty();
                }
                shared.up.store(false, Ordering::Release);
                shared.empty();
                tracing::warn!(
                    "lost the token change notifications; not caching tokens until back"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for token changes; not caching tokens");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn subscribe(options: &sqlx::postgres::PgConnectOptions) -> sqlx::Result<PgListener> {
    // A pool of one, the listener's own: it never takes a connection the
    // requests need.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is ours to do, after marking the cache down.
    listener.eager_reconnect(false);
    listener.listen(db::tokens::CHANGED_CHANNEL).await?;
    Ok(listener)
}
