//! `session-guard api`: serves only the sessions API (`api.listen`), and
//! health and metrics on `http.listen`, so that API servers and consumers
//! scale apart. It migrates nothing: like
//! `sessions`, it refuses a schema older or newer than the binary's.

use std::sync::Arc;

use anyhow::Context as _;

use super::enforcement::built_in_enforcement;
use crate::api::{self, ApiState};
use crate::configuration::Settings;
use crate::health::Health;
use crate::{db, runtime, shutdown, telemetry};

pub(super) async fn api(settings: &Settings) -> anyhow::Result<()> {
    let listen = &settings.api.listen;
    if listen.is_empty() {
        anyhow::bail!("api.listen is empty: set it to the address to serve the sessions API on");
    }
    telemetry::init_api_metrics();
    let pool = db::connect_checked_planning(&settings.api_database(), db::Planning::Cached).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {listen}"))?;
    // Without a relay here: the workers' relays publish the revokes it
    // writes, within their sweep interval.
    let state = ApiState::new(pool.clone(), built_in_enforcement(settings), None).await?;
    let stop = shutdown::CancellationToken::new();
    // Health and metrics on `http.listen`, as a worker serves them: ready
    // while the database answered and not stopping.
    let health = Arc::new(Health::api_only());
    health.set_database(true);
    health.publish_gauges();
    if !settings.http.listen.is_empty() {
        tokio::spawn(runtime::serve_health(
            settings.http.listen.clone(),
            health.clone(),
            stop.clone(),
        ));
    }
    let server = tokio::spawn(api::serve(
        Arc::new(state),
        settings.api.clone(),
        listener,
        stop.clone(),
    ));
    shutdown::signal().await;
    health.set_stopping();
    stop.cancel();
    let served = server.await;
    // Closed whatever happened, within a bound: the API's connections must
    // not outlive it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pool.close()).await;
    served?.context("the sessions API stopped")
}
