//! Checked tokens kept between requests, so that a request costs one round
//! trip to PostgreSQL (its own query) instead of two.
//!
//! A token's row changes rarely (created, revoked), and a revoke must apply
//! on every server as soon as it commits. A trigger on `api_tokens`
//! notifies [`db::tokens::CHANGED_CHANNEL`] at the commit of every change,
//! by the CLI or by hand, and each server listening there empties its cache
//! when it hears it: milliseconds after the commit.
//!
//! Hearing nothing must not pass for "nothing changed". Each server also
//! sends a [`HEARTBEAT`] on the channel every [`HEARTBEAT_EVERY`] through
//! its request pool; the cache is on only while heartbeats come back. A
//! connection that died without an error, or a pooler in transaction mode
//! that accepts `LISTEN` and never delivers, stops them: within
//! [`HEARTBEAT_LIMIT`] the cache is emptied and off, every request reads its
//! token, and the server listens again on a new connection. An entry is
//! also trusted for [`ENTRY_TTL`] at most, counted from before its read.
//! Only live tokens are cached: an unknown or revoked one is read each time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::task::AbortHandle;

use crate::db::{self, tokens::TokenRow};

/// The payload of a heartbeat; a change (the trigger's) has an empty one.
pub const HEARTBEAT: &str = "heartbeat";
/// How often a server sends a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Without a notification for this long, the listening connection is taken
/// for dead: three heartbeats missed.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(3);
/// How long an entry is trusted at most, whatever is heard.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);
/// Most tokens kept; past it the cache starts over (deployments hold tens).
const MAX_ENTRIES: usize = 10_000;
/// Pause before listening again after a failure or a loss.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The tokens one server has checked, emptied on every change.
pub struct TokenCache {
    /// What the requests and the listening task share.
    shared: Arc<Shared>,
    /// The listening and heartbeat tasks, stopped with the cache.
    tasks: [AbortHandle; 2],
}

#[derive(Default)]
struct Shared {
    /// Live tokens and the cache's generation, under one lock.
    entries: Mutex<Entries>,
    /// Whether changes are being heard: nothing is cached otherwise.
    up: AtomicBool,
}

#[derive(Default)]
struct Entries {
    /// Live tokens by the SHA-256 of their text, with when their read
    /// began.
    rows: HashMap<[u8; 32], (TokenRow, Instant)>,
    /// Bumped whenever the cache is emptied: a row read before that must
    /// not be stored after it.
    generation: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every entry.
    fn empty(&self) {
        let mut entries = self.lock();
        entries.rows.clear();
        entries.generation += 1;
    }

    /// Turns the cache off (and empties it) or on.
    fn set_up(&self, up: bool) {
        if !up {
            self.up.store(false, Ordering::Release);
        }
        self.empty();
        if up {
            self.up.store(true, Ordering::Release);
        }
    }

    /// A fresh entry for `sha256`, if the cache is on; else the generation
    /// a row read now must still find to be stored.
    fn get(&self, sha256: &[u8; 32]) -> Result<TokenRow, u64> {
        let entries = self.lock();
        if self.up.load(Ordering::Acquire)
            && let Some((row, read)) = entries.rows.get(sha256)
            && read.elapsed() < ENTRY_TTL
        {
            return Ok(row.clone());
        }
        Err(entries.generation)
    }

    /// Stores `row`, read from `read` on, unless the cache was emptied
    /// since `generation` was taken or is off.
    fn store(&self, generation: u64, sha256: [u8; 32], row: TokenRow, read: Instant) {
        let mut entries = self.lock();
        if entries.generation != generation || !self.up.load(Ordering::Acquire) {
            return;
        }
        if entries.rows.len() >= MAX_ENTRIES {
            entries.rows.clear();
        }
        entries.rows.insert(sha256, (row, read));
    }
}

impl TokenCache {
    /// A cache for the tokens of `pool`'s database: listens for changes on
    /// a connection of its own and sends heartbeats through `pool`.
    pub fn start(pool: &PgPool) -> TokenCache {
        let shared = Arc::new(Shared::default());
        let listening = tokio::spawn(listen(shared.clone(), pool.clone())).abort_handle();
        let beating = tokio::spawn(beat(pool.clone())).abort_handle();
        TokenCache {
            shared,
            tasks: [listening, beating],
        }
    }

    /// The live token whose hash is `sha256`: from the cache while it is on
    /// and the entry is fresh, from the database otherwise.
    pub async fn find_live(
        &self,
        pool: &PgPool,
        sha256: &[u8; 32],
    ) -> sqlx::Result<Option<TokenRow>> {
        let generation = match self.shared.get(sha256) {
            Ok(row) => return Ok(Some(row)),
            Err(generation) => generation,
        };
        let read = Instant::now();
        let row = db::tokens::find_live(pool, sha256).await?;
        if let Some(row) = &row {
            self.shared.store(generation, *sha256, row.clone(), read);
        }
        Ok(row)
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Sends a heartbeat on the channel every [`HEARTBEAT_EVERY`], for every
/// server listening there (its own included). A failure is left to the
/// listeners: they stop hearing heartbeats and turn their caches off.
async fn beat(pool: PgPool) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = tokio::time::timeout(
            HEARTBEAT_EVERY,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(db::tokens::CHANGED_CHANNEL)
                .bind(HEARTBEAT)
                .execute(&pool),
        )
        .await;
    }
}

/// Listens for changes to `api_tokens` for as long as the cache lives, on
/// a connection apart from the pool's. The cache is on from the first
/// heartbeat heard; a change empties it; a lost connection, or heartbeats
/// that stop, turn it off until the server listens again.
async fn listen(shared: Arc<Shared>, pool: PgPool) {
    let mut failing = false;
    loop {
        // The pool's options as they are now: after a failover they name
        // the new primary (`db::follow`).
        let options = (*pool.connect_options()).clone();
        match subscribe(&options).await {
            Ok(mut listener) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("listening for token changes again");
                }
                // `timeout` may cut a read short: only when the connection
                // is dropped right after, with the cache off.
                while let Ok(Ok(Some(notification))) =
                    tokio::time::timeout(HEARTBEAT_LIMIT, listener.try_recv()).await
                {
                    if notification.payload() == HEARTBEAT {
                        if !shared.up.load(Ordering::Acquire) {
                            shared.set_up(true);
                        }
                    } else {
                        shared.empty();
                    }
                }
                shared.set_up(false);
                tracing::warn!(
                    "token changes are not heard (connection lost, or no heartbeat for {} s); \
                     reading every token until they are",
                    HEARTBEAT_LIMIT.as_secs()
                );
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for token changes; reading every token until it can");
                }
                failing = true;
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// How long connecting the listener may take before the next round.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

async fn subscribe(options: &PgConnectOptions) -> sqlx::Result<PgListener> {
    // A pool of one, the listener's own: it never takes a connection the
    // requests need.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        // Not sqlx's 30 s of retries: a server going away in a failover
        // (the options name the old primary until `db::follow` moves the
        // pool) was retried here for 10 s and more, while the next round
        // would have taken the new primary's options.
        .acquire_timeout(SUBSCRIBE_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is ours to do, after turning the cache off.
    listener.eager_reconnect(false);
    listener.listen(db::tokens::CHANGED_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> TokenRow {
        TokenRow {
            name: name.to_owned(),
            apps: vec!["*".to_owned()],
            scopes: vec!["sessions:read".to_owned()],
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn nothing_is_cached_while_changes_are_not_heard() {
        let shared = Shared::default();
        let generation = shared.get(&[1; 32]).unwrap_err();
        shared.store(generation, [1; 32], row("a"), Instant::now());
        assert!(shared.get(&[1; 32]).is_err(), "off: not stored");
        shared.set_up(true);
        let generation = shared.get(&[1; 32]).unwrap_err();
        shared.store(generation, [1; 32], row("a"), Instant::now());
        assert_eq!(shared.get(&[1; 32]).unwrap().name, "a");
        shared.set_up(false);
        assert!(shared.get(&[1; 32]).is_err(), "off: not served");
        shared.set_up(true);
        assert!(shared.get(&[1; 32]).is_err(), "emptied when turned off");
    }

    #[test]
    fn a_row_read_before_a_change_is_not_stored_after_it() {
        let shared = Shared::default();
        shared.set_up(true);
        let generation = shared.get(&[2; 32]).unwrap_err();
        // The token changes while its row is being read.
        shared.empty();
        shared.store(generation, [2; 32], row("stale"), Instant::now());
        assert!(shared.get(&[2; 32]).is_err());
    }

    #[test]
    fn an_entry_is_trusted_for_its_ttl_from_its_read() {
        let shared = Shared::default();
        shared.set_up(true);
        let generation = shared.get(&[3; 32]).unwrap_err();
        let long_ago = Instant::now() - ENTRY_TTL;
        shared.store(generation, [3; 32], row("old"), long_ago);
        assert!(shared.get(&[3; 32]).is_err(), "expired");
    }
}
