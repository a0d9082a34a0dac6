//! `session-guard check-config`: the configuration is valid (loading it
//! checked every key and value), the hook chain builds, and both services
//! accept the worker. Changes nothing.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::migrate::Migration;
use sqlx::postgres::PgConnectOptions;

use crate::apply::Enforcement;
use session_guard_amqp::url::redact_url;

use crate::configuration::Settings;
use crate::db;
use crate::refusal::Refusal;

/// How long `check-config` waits for each service to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A migration as `_sqlx_migrations` records it: version, success, checksum.
type AppliedMigration = (i64, bool, Vec<u8>);

/// Prints the effective settings as TOML, then one comment line per
/// service; fails with one line naming the setting, the service and why.
pub(super) async fn check_config(settings: &Settings) -> anyhow::Result<()> {
    Enforcement::from_settings(settings, &[])?;
    print!("{}", settings.to_toml());
    let database = check_database(settings).await?;
    println!("\n# PostgreSQL: {database}");
    let broker = check_broker(settings).await?;
    println!("# RabbitMQ: {broker}");
    println!("# configuration OK");
    Ok(())
}

/// Connects to PostgreSQL as `run` would, without creating the database,
/// and compares the applied migrations with this binary's.
async fn check_database(settings: &Settings) -> anyhow::Result<String> {
    let url = redact_url(&settings.database.url);
    let failed = |why: String| anyhow::anyhow!("database.url ({url}): {why}");
    let hosts = crate::db::hosts::Hosts::parse(&settings.database.url).map_err(failed)?;
    let options: PgConnectOptions = if hosts.is_plain() {
        settings.database.url.parse()?
    } else {
        // Several hosts: the one `run` would connect to.
        let found = crate::db::hosts::find(&hosts, crate::db::hosts::PROBE_TIMEOUT)
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        hosts.options[found].clone()
    };
    let connected =
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::PgConnection::connect_with(&options)).await;
    let mut conn = match connected {
        Err(_) => {
            return Err(failed(format!(
                "PostgreSQL did not answer within {} s",
                CHECK_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => {
            if let Some(refusal) = Refusal::of_database(&e) {
                anyhow::bail!(refusal.explain(settings));
            }
            if let Some(db) = e.as_database_error()
                && db.code().as_deref() == Some("3D000")
            {
                return Ok(format!(
                    "server at {url} reached; database {:?} does not exist yet (`migrate` or \
                     `run` creates it, with the CREATEDB privilege)",
                    options.get_database().unwrap_or_default()
                ));
            }
            return Err(failed(format!("cannot connect to PostgreSQL: {e}")));
        }
        Ok(Ok(conn)) => conn,
    };
    let applied: Result<Vec<AppliedMigration>, sqlx::Error> =
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await;
    let _ = conn.close().await;
    let schema = compare_migrations(applied).map_err(failed)?;
    Ok(format!("connected to {url}; {schema}"))
}

/// The schema's state next to this binary's migrations, in words; `Err`
/// with the reason when the worker would refuse it.
fn compare_migrations(
    applied: Result<Vec<AppliedMigration>, sqlx::Error>,
) -> Result<String, String> {
    let expected: Vec<&Migration> = db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    let applied = match applied {
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => {
            return Ok(format!(
                "schema missing, none of the {} migrations applied (`migrate` or `run` applies them)",
                expected.len()
            ));
        }
        Err(e) => return Err(format!("cannot read the applied migrations: {e}")),
        Ok(applied) => applied,
    };
    for (version, success, checksum) in &applied {
        match expected.iter().find(|m| m.version == *version) {
            None => {
                return Err(format!(
                    "the schema is newer than this binary (migration {version} is unknown \
                     to it): use a newer session-guard"
                ));
            }
            Some(_) if !success => {
                return Err(format!(
                    "migration {version} failed partway: repair it by hand, then remove \
                     its row from _sqlx_migrations"
                ));
            }
            Some(m) if m.checksum.as_ref() != checksum.as_slice() => {
                return Err(format!(
                    "migration {version} was applied from a different file than this \
                     binary's"
                ));
            }
            Some(_) => {}
        }
    }
    let behind = expected.len() - applied.len();
    Ok(if behind == 0 {
        format!("schema up to date ({} migrations)", expected.len())
    } else {
        format!(
            "schema behind: {} of {} migrations applied (`migrate` or `run` applies the rest)",
            applied.len(),
            expected.len()
        )
    })
}

/// Connects to RabbitMQ as `run` would (the credentials and the vhost),
/// without declaring anything.
async fn check_broker(settings: &Settings) -> anyhow::Result<String> {
    let amqp = &settings.amqp;
    let url = redact_url(&amqp.url);
    let brokers = session_guard_amqp::brokers::Brokers::parse(&amqp.url)
        .map_err(|e| anyhow::anyhow!("amqp.url: {e}"))?;
    let connected = tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::broker::connect_to(&brokers, amqp, "check-config"),
    )
    .await;
    match connected {
        Err(_) => anyhow::bail!(
            "amqp.url ({url}): RabbitMQ did not answer within {} s",
            CHECK_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => {
            if let Some(refusal) = Refusal::find(&e) {
                anyhow::bail!(refusal.explain(settings));
            }
            // The context names the (redacted) URL; lapin's error repeats
            // its own cause, so only the first one.
            let cause = e
                .chain()
                .nth(1)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            anyhow::bail!("amqp.url: {e}{cause}")
        }
        Ok(Ok(connected)) => {
            let _ = connected.connection.close(200, "checked".into()).await;
            Ok(match brokers.len() {
                1 => format!("connected to {url}"),
                n => format!(
                    "connected to {} (one of the {n} brokers of amqp.url)",
                    connected.shown_url
                ),
            })
        }
    }
}
