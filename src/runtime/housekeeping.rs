//! Housekeeping: what runs beside the consumer and the relay on a timer.
//! It pings PostgreSQL (so readiness notices an outage while the queue is
//! idle), refreshes the outbox gauges, folds histogram samples into their
//! buckets, and every `retention.sweep_interval` sweeps rows past
//! `retention.max_age` (if set) and deletes tombstones past their time to
//! live.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::db;
use crate::metric;
use crate::refusal::Refusal;
use crate::shutdown::CancellationToken;
use crate::state::WorkerState;
use crate::sweep::Sweep;
use crate::telemetry;

/// How often housekeeping pings PostgreSQL for readiness.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Tombstones deleted per statement, so one pass never holds locks for long.
const TOMBSTONE_CHUNK: i64 = 10_000;

/// Runs housekeeping until the shutdown.
pub(crate) async fn run(state: &WorkerState, shutdown: &CancellationToken) {
    let every = state.settings.retention.sweep_interval;
    let mut sweep = Sweep::default();
    let mut last_sweep: Option<Instant> = None;
    loop {
        check_database(state).await;
        refresh_outbox_gauges(&state.pool).await;
        telemetry::run_metrics_upkeep();
        if last_sweep.is_none_or(|t| t.elapsed() >= every) {
            last_sweep = Some(Instant::now());
            if let Some(max_age) = state.settings.retention.max_age {
                sweep_old_rows(&state.pool, &mut sweep, max_age).await;
            }
            let ttl = Duration::from_secs(state.settings.retention.tombstone_ttl);
            expire_tombstones(&state.pool, ttl).await;
        }
        tokio::select! {
            () = tokio::time::sleep(PING_EVERY.min(every)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Pings PostgreSQL and reports to readiness whether it answered and takes
/// writes, and what refused the ping if something did.
async fn check_database(state: &WorkerState) {
    // "Takes writes", not "answers": during a planned failover an idle
    // connection to the old primary, demoted and read-only, still answers
    // a `SELECT 1` while every batch there fails (SQLSTATE 25006).
    let ping = tokio::time::timeout(PING_EVERY, async {
        let mut conn = state.pool.acquire().await?;
        db::hosts::read_only(&mut conn).await
    })
    .await;
    state.health.set_database(matches!(ping, Ok(Ok(false))));
    let refusal = match &ping {
        Ok(Err(e)) => Refusal::of_database(e),
        _ => None,
    };
    state.health.set_refusal("housekeeping", refusal);
}

/// Deletes tombstones past `ttl`, chunk by chunk; a failure is logged and
/// the next pass tries again.
async fn expire_tombstones(pool: &PgPool, ttl: Duration) {
    loop {
        match db::retention::expire_tombstones(pool, ttl, TOMBSTONE_CHUNK).await {
            Ok(n) if n as i64 == TOMBSTONE_CHUNK => continue,
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(deleted = n, "expired tombstones");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "housekeeping failed; will try again");
                return;
            }
        }
    }
}

/// One pass of retention by age (see [`crate::sweep`]); a failure is
/// logged and the next pass tries again.
async fn sweep_old_rows(pool: &PgPool, sweep: &mut Sweep, max_age: Duration) {
    match sweep.pass(pool, max_age, Utc::now()).await {
        Ok(report) => {
            metric::SESSIONS_PRUNED.add_to("by", "max_age", report.moved);
            if report.moved > 0 || !report.busy.is_empty() {
                tracing::debug!(
                    moved = report.moved,
                    busy_users = report.busy.len(),
                    "swept ended sessions past retention.max_age"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "retention sweep failed; will try again"),
    }
}

/// Sets the outbox gauges from the table (every worker's revokes).
async fn refresh_outbox_gauges(pool: &PgPool) {
    match tokio::time::timeout(PING_EVERY, db::outbox::stats(pool)).await {
        Ok(Ok((backlog, oldest))) => {
            metrics::gauge!(metric::OUTBOX_BACKLOG.name).set(backlog as f64);
            metrics::gauge!(metric::OUTBOX_OLDEST_AGE.name).set(oldest.max(0.0));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot measure the outbox"),
        Err(_) => tracing::debug!("measuring the outbox timed out"),
    }
}
