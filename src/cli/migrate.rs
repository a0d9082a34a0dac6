//! `session-guard migrate`: create the database if missing, apply migrations.

use crate::configuration::Settings;
use crate::db;

pub(super) async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&settings.database).await?;
    pool.close().await;
    tracing::info!("database is up to date");
    Ok(())
}
