//! Finding the server of a `database.url` that names several hosts (taken
//! apart by [`crate::configuration::database_url`], which the settings'
//! validation uses too): connect to each in turn and ask whether it is a
//! standby.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

pub use crate::configuration::database_url::{Hosts, Target};

/// How long finding the server may spend on one host.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the server of `conn` is a standby (`pg_is_in_recovery()`).
pub async fn in_recovery(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
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
                Target::ReadWrite => in_recovery(&mut conn).await?,
            };
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(standby)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(false)) => return Ok(index),
            Ok(Ok(true)) => why.push(format!("{name}: in recovery (a standby)")),
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
