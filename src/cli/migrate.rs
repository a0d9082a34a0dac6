//! `session-guard migrate`: create the database if missing, apply migrations.

use crate::configuration::Settings;
use crate::store;

pub(super) async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect_and_migrate(&settings.database).await?;
    pool.close().await;
    tracing::info!("database is up to date");
    Ok(())
}
