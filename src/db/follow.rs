//! Following the primary of a `database.url` that lists several hosts,
//! after a failover: a watcher task per pool checks the server its pool
//! connects to, and when that server is gone or has become a standby, finds
//! the new primary ([`hosts::find`]) and points the pool's future
//! connections there (`Pool::set_connect_options`).
//!
//! Why our own: sqlx 0.9.1 neither parses a libpq host list nor honours
//! `target_session_attrs` (<https://github.com/transact-rs/sqlx/issues/179>,
//! <https://github.com/launchbadge/sqlx/issues/2290>), so a pool of its own
//! would keep dialling the old primary forever. What a failover leaves
//! behind is handled by the rest of the worker as any database outage:
//! - a batch whose statement or commit fails is retried with backoff and
//!   acked only after a commit (`consumer::handle`); its events are applied
//!   idempotently, so a commit that did land before the connection died
//!   changes nothing when the batch runs again on the new primary;
//! - a connection opened while the pool still points at a demoted server
//!   is refused by the pool's `after_connect` check (`connection`), never
//!   carrying a batch;
//! - idle connections opened before a switch are dropped when next taken
//!   from the pool ([`Switches::keep`]), in case the old server is still up
//!   as a standby and kept them;
//! - readiness goes down as soon as the watcher finds its server gone and
//!   no other primary ([`Lost`], the worker's health), and up once a batch
//!   or the housekeeping ping gets through again. The batches alone did
//!   not say it in time: one waiting for a connection to a server that was
//!   killed waits out the pool's acquire timeout (10 s) before it fails,
//!   and the housekeeping ping (every 5 s, 5 s to answer) as long, so a
//!   worker went on reporting ready for up to 10 s of an outage, as long
//!   as a quick promotion takes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::db::hosts::{self, Hosts, Target};

/// How often the watcher asks the pool's server whether it is still the
/// primary: a failover is noticed within this (plus the promotion itself,
/// seconds in pg_auto_failover), and it costs one trivial query on a
/// connection of the watcher's own.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Called by the watcher each time it finds its server gone (or
/// read-only) and no other server that will do: the pool has no primary.
pub type Lost = Arc<dyn Fn() + Send + Sync>;

/// When a pool was last pointed at another server.
#[derive(Debug, Default)]
pub struct Switches {
    /// The instant of the last switch; `None` before any.
    last: Mutex<Option<Instant>>,
}

impl Switches {
    /// Records a switch now.
    fn mark(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether a pooled connection that has lived `age` may be used: only
    /// if it was opened after the last switch (a connection to the old
    /// server, if that one still answers, is to a standby now).
    pub fn keep(&self, age: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| age < at.elapsed())
    }
}

/// Starts a task that keeps `pool` pointed at the server of `hosts` that
/// will do, beginning with `current`; `finish` adds the pool's own options
/// (its planning) to a host's. The task ends when the pool is closed.
pub fn spawn(
    pool: PgPool,
    hosts: Hosts,
    current: usize,
    switches: Arc<Switches>,
    lost: Option<Lost>,
    finish: impl Fn(PgConnectOptions) -> PgConnectOptions + Send + 'static,
) {
    tokio::spawn(watch(pool, hosts, current, switches, lost, finish));
}

/// The watcher's loop: check, and when the check fails, find and switch.
async fn watch(
    pool: PgPool,
    hosts: Hosts,
    mut current: usize,
    switches: Arc<Switches>,
    lost: Option<Lost>,
    finish: impl Fn(PgConnectOptions) -> PgConnectOptions,
) {
    let mut probe: Option<PgConnection> = None;
    // Logged once per outage, not at every attempt.
    let mut lost_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if pool.is_closed() {
            if let Some(conn) = probe.take() {
                let _ = conn.close().await;
            }
            return;
        }
        let check = check(&mut probe, &hosts.options[current], hosts.target).await;
        if check == Check::Fine {
            continue;
        }
        probe = None;
        if lost_since.is_none() {
            lost_since = Some(Instant::now());
            tracing::warn!(
                host = %hosts.names[current],
                why = check.describe(),
                "the database server is no longer usable: looking for the primary"
            );
        }
        match hosts::find(&hosts, hosts::PROBE_TIMEOUT).await {
            Ok(found) => {
                let took = lost_since.take().map(|t| t.elapsed());
                if found != current || check == Check::Standby {
                    pool.set_connect_options(finish(hosts.options[found].clone()));
                    switches.mark();
                    tracing::warn!(
                        from = %hosts.names[current],
                        to = %hosts.names[found],
                        searched_ms = took.map_or(0, |t| t.as_millis() as u64),
                        "following the new database primary"
                    );
                    current = found;
                } else {
                    tracing::info!(host = %hosts.names[current], "the database server is back");
                }
            }
            // Nothing will do yet (a promotion takes seconds): the next
            // round tries again; the batches wait with their own backoff.
            Err(e) => {
                if let Some(lost) = &lost {
                    lost();
                }
                tracing::debug!(error = %e, "no database primary yet");
            }
        }
    }
}

/// What a check of the current server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// It answers and will do.
    Fine,
    /// It answers as a standby (demoted).
    Standby,
    /// It does not answer (down, unreachable, or too slow).
    Gone,
}

impl Check {
    fn describe(self) -> &'static str {
        match self {
            Check::Fine => "fine",
            Check::Standby => "read-only (a standby, or not yet taking writes)",
            Check::Gone => "no answer",
        }
    }
}

/// Asks the server of `options` whether it will do, on the watcher's own
/// connection (opened if there is none).
async fn check(
    probe: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    target: Target,
) -> Check {
    let attempt = async {
        if probe.is_none() {
            *probe = Some(options.connect().await?);
        }
        let conn = probe.as_mut().expect("just opened");
        match target {
            Target::Any => sqlx::query("SELECT 1").execute(conn).await.map(|_| false),
            Target::ReadWrite => hosts::read_only(conn).await,
        }
    };
    match tokio::time::timeout(hosts::PROBE_TIMEOUT, attempt).await {
        Ok(Ok(false)) => Check::Fine,
        Ok(Ok(true)) => Check::Standby,
        _ => Check::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_switch_every_connection_is_kept() {
        let switches = Switches::default();
        assert!(switches.keep(Duration::from_secs(3600)));
    }

    #[test]
    fn after_a_switch_only_younger_connections_are_kept() {
        let switches = Switches::default();
        switches.mark();
        std::thread::sleep(Duration::from_millis(20));
        assert!(switches.keep(Duration::from_millis(1)));
        assert!(!switches.keep(Duration::from_secs(1)));
    }
}
