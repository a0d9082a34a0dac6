//! Finding the server of a `database.url` that names several hosts (taken
//! apart by [`crate::configuration::database_url`], which the settings'
//! validation uses too): connect to each in turn and ask whether it takes
//! writes.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

pub use crate::configuration::database_url::{Hosts, Target};

/// How long finding the server may spend on one host.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the server of `conn` refuses writes: a standby
/// (`pg_is_in_recovery()`), or a server whose transactions are read-only
/// by default, which is what libpq's `target_session_attrs=read-write`
/// checks (`transaction_read_only`). Recovery alone is not enough:
/// pg_auto_failover promotes the standby with `default_transaction_read_only`
/// on and turns it off only once the old primary is known to be demoted
/// (about a second of a planned failover here). Taking that
/// server for the primary on the strength of `pg_is_in_recovery()` moved
/// the pool to it early, and every batch and outbox read failed there
/// with SQLSTATE 25006 until it took writes.
pub async fn read_only(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean",
    )
    .fetch_one(conn)
    .await
}

/// The index of the first host that will do, trying them in order with
/// `timeout` each; an error names every host (no password) and why not.
pub async fn find(hosts: &Hosts, timeout: Duration) -> anyhow::Result<usize> {
    let mut why = Vec::with_capacity(hosts.options.len());
    for (index, (options, name)) in hosts.options.iter().zip(&hosts.names).enumerate() {
        let attempt = async {
            let mut conn = options.connect().await?;
            let standby = match hosts.target {
                Target::Any => false,
                Target::ReadWrite => read_only(&mut conn).await?,
            };
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(standby)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(false)) => return Ok(index),
            Ok(Ok(true)) => why.push(format!(
                "{name}: read-only (a standby, or not yet taking writes)"
            )),
            Ok(Err(e)) => why.push(format!("{name}: {e}")),
            Err(_) => why.push(format!("{name}: no answer within {timeout:?}")),
        }
    }
    let wanted = match hosts.target {
        Target::Any => "reachable",
        Target::ReadWrite => "writable (primary)",
    };
    anyhow::bail!("no {wanted} PostgreSQL server: {}", why.join("; "))
}
