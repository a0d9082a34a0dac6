//! Connecting to PostgreSQL: creating the database, the pool's connection
//! options, applying the embedded migrations, and checking that an existing
//! schema is exactly the one this binary's migrations make.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use session_guard_amqp::url::redact_url;

use crate::configuration::DatabaseSettings;
use crate::db::follow;
use crate::db::hosts::{self, Hosts, Target};

/// Migrations in ./migrations, embedded so the binary can apply them itself.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The database sqlx's `database_exists` and `create_database` connect to
/// (`template1` when the database to create is `postgres` itself).
const MAINTENANCE_DATABASE: &str = "postgres";

/// Creates the database named in `settings.url` if it does not exist yet.
pub async fn ensure_database(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let hosts = Hosts::parse(&settings.url)
        .map_err(|e| anyhow::anyhow!("invalid database URL {}: {e}", redact_url(&settings.url)))?;
    let url = if hosts.is_plain() {
        &settings.url
    } else {
        // The primary is found on the maintenance database, as sqlx's
        // `create_database` connects to it: probing the database itself,
        // which is what is missing here, fails on every host (3D000) and
        // `run` on a fresh cluster could never create it.
        let mut maintenance = hosts.clone();
        for options in &mut maintenance.options {
            *options = options.clone().database(MAINTENANCE_DATABASE);
        }
        &hosts.urls[hosts::find(&maintenance, hosts::PROBE_TIMEOUT).await?]
    };
    let exists = Postgres::database_exists(url)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", redact_url(url)))?;
    if !exists {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!(database = %redact_url(url), "created database"),
            // Another worker created it between our check and our CREATE.
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create database {}", redact_url(url)));
            }
        }
    }
    Ok(())
}

/// How a pool's connections plan the statements they prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planning {
    /// Every execution planned with its actual parameters: the worker's
    /// batches and the commands. A prepared statement otherwise switches to
    /// a generic plan after five runs, chosen for the table as it was then
    /// (tiny, on a new deployment) and kept for the connection's life: seq
    /// scans and hash joins on a log that has since grown, for statements
    /// whose arrays change size with every batch.
    EachExecution,
    /// PostgreSQL's default (`auto`): a generic plan once it costs no more
    /// than the custom ones. For the sessions API's reads, keyed on one
    /// user (walking `sessions_by_user` in `login_at` order, whatever the
    /// other parameters) or one session: planning them again each time
    /// cost several times their execution (0.07-0.5 ms against 0.02-0.05
    /// ms, BENCHMARKS.md, issue 21). The revokes the API writes go through
    /// the worker's batch statements and plan each execution as the worker
    /// does (`apply::operator::revoke` says so in its transaction).
    /// Connections are renewed every [`API_CONNECTION_LIFETIME`], so a plan
    /// made on a young table does not outlive its growth for long.
    Cached,
}

/// How long a connection of a [`Planning::Cached`] pool lives, and with it
/// the generic plans it made.
pub const API_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// A connection pool for `settings.url`, planning every execution.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    connect_planning(settings, Planning::EachExecution).await
}

/// A connection pool for `settings.url` that plans as `planning` says.
pub async fn connect_planning(
    settings: &DatabaseSettings,
    planning: Planning,
) -> anyhow::Result<PgPool> {
    connect_reporting(settings, planning, None).await
}

/// [`connect_planning`], and for a URL listing several hosts, `lost` is
/// called whenever the pool's watcher ([`follow`]) finds its server gone
/// (or read-only) and no other that will do.
async fn connect_reporting(
    settings: &DatabaseSettings,
    planning: Planning,
    lost: Option<follow::Lost>,
) -> anyhow::Result<PgPool> {
    let hosts = Hosts::parse(&settings.url)
        .map_err(|e| anyhow::anyhow!("invalid database URL {}: {e}", redact_url(&settings.url)))?;
    let mut pool = PgPoolOptions::new();
    if planning == Planning::Cached {
        pool = pool.max_lifetime(API_CONNECTION_LIFETIME);
    }
    // What every connection of the pool says at startup, whichever server.
    let finish = move |options: PgConnectOptions| match planning {
        // Planning these statements costs a fraction of a millisecond.
        Planning::EachExecution => options.options([("plan_cache_mode", "force_custom_plan")]),
        // Said, not assumed: a role or database may set another mode.
        Planning::Cached => options.options([("plan_cache_mode", "auto")]),
    };
    let pool = pool
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10));
    if hosts.is_plain() {
        // One host, no target_session_attrs: as before, no check of the
        // server, no query added to a new connection, no watcher.
        let options: PgConnectOptions = settings
            .url
            .parse()
            .with_context(|| format!("invalid database URL {}", redact_url(&settings.url)))?;
        // TCP connections have Nagle's algorithm off: sqlx (0.9.1 on) sets
        // TCP_NODELAY on each socket it opens (tests/integration/nodelay.rs).
        return pool
            .connect_with(finish(options))
            .await
            .with_context(|| format!("cannot connect to {}", redact_url(&settings.url)));
    }
    // Several hosts (or read-write asked for): the first that will do,
    // found here, then followed by a watcher (`follow`) through failovers.
    // Every new connection must land on a primary too, or it is refused
    // (one query per new connection, not per batch), so a connection that
    // reaches a demoted server before the watcher has moved the pool never
    // carries a batch; and a connection opened before a switch is not
    // taken from the pool after it.
    let found = hosts::find(&hosts, hosts::PROBE_TIMEOUT).await?;
    tracing::info!(host = %hosts.names[found], "connecting to the database server found");
    let switches = Arc::new(follow::Switches::default());
    let keep = switches.clone();
    let mut pool = pool.before_acquire(move |_conn, meta| {
        let keep = keep.keep(meta.age);
        Box::pin(async move { Ok(keep) })
    });
    if hosts.target == Target::ReadWrite {
        pool = pool.after_connect(|conn, _| {
            Box::pin(async move {
                if hosts::read_only(conn).await? {
                    return Err(sqlx::Error::Configuration(
                        "the server is read-only (a standby, or not yet taking writes): refused for \
                         target_session_attrs=read-write"
                            .into(),
                    ));
                }
                Ok(())
            })
        });
    }
    let pool = pool
        .connect_with(finish(hosts.options[found].clone()))
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(&settings.url)))?;
    follow::spawn(pool.clone(), hosts, found, switches, lost, finish);
    Ok(pool)
}

/// Creates the database if needed, connects and applies the migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    connect_and_migrate_reporting(settings, None).await
}

/// [`connect_and_migrate`], telling `lost` when a pool on several hosts
/// has lost its primary (see [`connect_reporting`]): the worker's readiness.
pub async fn connect_and_migrate_reporting(
    settings: &DatabaseSettings,
    lost: Option<follow::Lost>,
) -> anyhow::Result<PgPool> {
    ensure_database(settings).await?;
    let pool = connect_reporting(settings, Planning::EachExecution, lost).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("failed to apply database migrations")?;
    Ok(pool)
}

/// Why the database cannot serve a command that does not change the schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database named in the URL does not exist (its name).
    #[error("database \"{0}\" does not exist: run `session-guard migrate` first")]
    NoDatabase(String),
    /// No migration was ever applied.
    #[error("the database has no session-guard schema: run `session-guard migrate` first")]
    NoSchema,
    /// A migration of this binary is not applied yet.
    #[error(
        "the database schema is older than this binary (migration {version} \"{description}\" \
         is not applied): run `session-guard migrate`"
    )]
    Older {
        /// The first migration of this binary that the database lacks.
        version: i64,
        /// Its description.
        description: String,
    },
    /// The database has a migration this binary does not know.
    #[error(
        "the database schema is newer than this binary (migration {version} \"{description}\" \
         is unknown to it): use the session-guard version that migrated it, or a newer one"
    )]
    Newer {
        /// A migration recorded in the database that this binary lacks.
        version: i64,
        /// Its description, as recorded.
        description: String,
    },
    /// A migration (its version) is recorded as failed.
    #[error(
        "migration {0} failed part-way and is marked failed in the database: repair the schema, \
         then run `session-guard migrate`"
    )]
    Failed(i64),
    /// A migration (its version) was applied with other content.
    #[error(
        "migration {0} in the database differs from this binary's (checksum mismatch): the \
         binary and the schema do not belong together"
    )]
    Changed(i64),
    /// The database could not be reached or read.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Connects to an existing database whose schema is exactly the one this
/// binary's migrations make, changing nothing: for the commands other than
/// `migrate` and `run`.
pub async fn connect_checked(settings: &DatabaseSettings) -> Result<PgPool, SchemaError> {
    connect_checked_planning(settings, Planning::EachExecution).await
}

/// [`connect_checked`], planning as `planning` says.
pub async fn connect_checked_planning(
    settings: &DatabaseSettings,
    planning: Planning,
) -> Result<PgPool, SchemaError> {
    let pool = match connect_planning(settings, planning).await {
        Ok(pool) => pool,
        Err(e) => {
            let missing = e
                .downcast_ref::<sqlx::Error>()
                .and_then(sqlx::Error::as_database_error)
                .and_then(|d| d.code())
                .is_some_and(|code| code == "3D000");
            if missing {
                let name = Hosts::parse(&settings.url)
                    .ok()
                    .and_then(|h| h.options[0].get_database().map(str::to_owned))
                    .unwrap_or_default();
                return Err(SchemaError::NoDatabase(name));
            }
            return Err(e.into());
        }
    };
    match check_schema(&pool).await {
        Ok(()) => Ok(pool),
        Err(e) => {
            pool.close().await;
            Err(e)
        }
    }
}

/// Compares the migrations recorded in the database with [`MIGRATOR`]'s.
async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let table = MIGRATOR.table_name.as_ref();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .context("cannot read the schema version")?;
    if !exists {
        return Err(SchemaError::NoSchema);
    }
    let applied: Vec<(i64, String, bool, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, description, success, checksum FROM {table} ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .context("cannot read the schema version")?;
    let known: HashMap<i64, &sqlx::migrate::Migration> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m))
        .collect();
    if applied.is_empty() {
        return Err(SchemaError::NoSchema);
    }
    for (version, description, success, checksum) in &applied {
        let Some(mine) = known.get(version) else {
            return Err(SchemaError::Newer {
                version: *version,
                description: description.clone(),
            });
        };
        if !success {
            return Err(SchemaError::Failed(*version));
        }
        if mine.checksum.as_ref() != checksum.as_slice() {
            return Err(SchemaError::Changed(*version));
        }
    }
    // In version order: the first one the database lacks.
    let missing = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .find(|m| !applied.iter().any(|(v, ..)| *v == m.version));
    match missing {
        Some(m) => Err(SchemaError::Older {
            version: m.version,
            description: m.description.to_string(),
        }),
        None => Ok(()),
    }
}
