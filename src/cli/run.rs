//! `session-guard run`: the worker, until SIGINT or SIGTERM.

use crate::Worker;
use session_guard_amqp::url::redact_url;

use crate::configuration::Settings;
use crate::{shutdown, telemetry};

pub(super) async fn run_worker(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %redact_url(&settings.database.url),
        amqp = %redact_url(&settings.amqp.url),
        max_sessions = settings.limits.max_sessions,
        "starting session-guard"
    );
    telemetry::init_metrics();
    let worker = Worker::builder(settings).build().await?;
    worker.run(shutdown::signal()).await
}
